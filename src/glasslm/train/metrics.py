"""``metrics.jsonl`` (one JSON object per logged step), power/energy sampling, MFU.

Power comes from what the machine lets us read: Intel RAPL package counters
(``/sys/class/powercap/intel-rapl:N/energy_uj``, often root-only) for the CPU, NVML (``pynvml``, from
the ``nvidia-ml-py`` package) for GPUs. Sources that cannot be read are simply absent from the rows;
nothing is estimated.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from glasslm.model.olmo2 import OLMo2

# Dense bf16 peak FLOP/s per device (vendor datasheets), for MFU. Unknown devices get no MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from glasslm.trace.energy import this_cpu  # one description of the CPU for the trainer and the pipeline

    return this_cpu()


def memory_gb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


class _Rapl:
    """Cumulative CPU package energy from RAPL counters, with wrap-around handled."""

    def __init__(self) -> None:
        root = Path("/sys/class/powercap")
        self.zones: list[tuple[Path, int]] = []
        # Top-level packages only (intel-rapl:0, not intel-rapl:0:0) so sub-zones are not counted twice.
        for zone in sorted(root.glob("intel-rapl:*")) if root.is_dir() else []:
            if zone.name.count(":") != 1:
                continue
            try:
                int((zone / "energy_uj").read_text())
                limit = int((zone / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                continue
            self.zones.append((zone / "energy_uj", limit))
        self.last = self._read()
        self.total_j = 0.0

    def _read(self) -> list[int]:
        return [int(p.read_text()) for p, _ in self.zones]

    def sample(self) -> float:
        """Joules since the previous sample."""
        now = self._read()
        delta = 0.0
        for (_, limit), a, b in zip(self.zones, self.last, now, strict=True):
            delta += (b - a if b >= a else b + limit - a) / 1e6
        self.last = now
        self.total_j += delta
        return delta


class PowerMeter:
    """Energy of CPU packages (RAPL) and GPUs (NVML) between calls to ``sample``."""

    def __init__(self, device: torch.device):
        self.rapl = _Rapl()
        self.gpus: list[Any] = []
        self.nvml: Any = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml = pynvml
                self.gpus = [pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)]
            except Exception:  # no pynvml, or no driver access: no GPU power in the metrics
                self.gpus = []
        self.gpu_energy = [self._gpu_energy_mj(h) for h in self.gpus]
        self.last_t = time.monotonic()
        self.energy_j = 0.0

    def _gpu_energy_mj(self, handle: Any) -> int | None:
        try:
            return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle))  # millijoules since driver load
        except Exception:
            return None

    @property
    def sources(self) -> list[str]:
        return (["rapl"] if self.rapl.zones else []) + [f"nvml:{i}" for i in range(len(self.gpus))]

    def sample(self) -> dict[str, float]:
        """Average watts per source since the previous sample, and cumulative energy (J)."""
        now = time.monotonic()
        dt = max(now - self.last_t, 1e-9)
        self.last_t = now
        out: dict[str, float] = {}
        if self.rapl.zones:
            joules = self.rapl.sample()
            out["cpu_w"] = joules / dt
            self.energy_j += joules
        for i, handle in enumerate(self.gpus):
            mj = self._gpu_energy_mj(handle)
            before = self.gpu_energy[i]
            if mj is not None and before is not None:
                joules = (mj - before) / 1e3
                out[f"gpu{i}_w"] = joules / dt
                self.energy_j += joules
            else:  # older GPUs have no energy counter: sample instantaneous power
                with contextlib.suppress(Exception):
                    out[f"gpu{i}_w"] = self.nvml.nvmlDeviceGetPowerUsage(handle) / 1e3
            self.gpu_energy[i] = mj
        if out:
            out["energy_j"] = self.energy_j
        return out


class MetricsLog:
    """Append-only ``metrics.jsonl``; one line per logged step, flushed as written."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the whole run)

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def truncate_metrics(path: Path, last_step: int) -> int:
    """Keep only complete rows with ``step <= last_step`` (rows after a checkpoint would be replayed).

    A kill can leave a half-written last line; it is dropped too. Replaced atomically. Returns the
    number of rows dropped.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if not line.endswith("\n") or row.get("step", 0) > last_step:
            dropped += 1
            continue
        kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)
    return dropped


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class HeldoutEval:
    """In-loop held-out evaluation: bits per byte per domain of a tokens artifact's ``heldout/`` split.

    Runs ``glasslm.eval.harness.evaluate_model`` (the perplexity suite of ``glasslm eval``: whole
    documents, one conditioning EOS, bits per byte on the UTF-8 bytes) on the model in memory. It
    draws no random numbers and does not touch the data loader, so a run's losses are the same with
    evaluation on or off; ``evaluate_model`` switches to eval mode and restores the training mode.
    """

    def __init__(
        self, tokens_dir: Path, tokenizer_path: Path | None, max_docs: int | None, batch_tokens: int
    ):
        from glasslm.config import ConfigError
        from glasslm.eval.harness import EvalConfig
        from glasslm.tokenizer import Tokenizer

        if tokenizer_path is None:
            raise ConfigError(
                f"trainer.eval_every: {tokens_dir} names no tokenizer in its manifest, and bits per byte "
                "needs it; set trainer.eval_every=0 or tokenize with `glasslm data tokenize --tokenizer`"
            )
        if not (tokens_dir / "heldout").is_dir():
            raise ConfigError(
                f"trainer.eval_every: {tokens_dir} has no heldout/ split to evaluate on; tokenize with "
                "held-out documents (`glasslm data tokenize … --heldout DIR`) or set trainer.eval_every=0"
            )
        self.tokenizer = Tokenizer.from_file(tokenizer_path)
        self.config = EvalConfig(
            suite=["perplexity"], tokens=str(tokens_dir), ppl_max_docs=max_docs, batch_tokens=batch_tokens
        )

    def __call__(self, model: OLMo2) -> dict[str, float]:
        """``eval/bpb/<domain>`` for every held-out domain, ``eval/bpb_macro`` and ``eval_s``."""
        from glasslm.eval.harness import evaluate_model

        start = time.monotonic()
        results, _ = evaluate_model(model, self.tokenizer, self.config, where="in-loop evaluation")
        ppl = results["perplexity"]
        row = {f"eval/bpb/{d['domain']}": float(d["bits_per_byte"]) for d in ppl["domains"]}
        row["eval/bpb_macro"] = float(ppl["macro"]["bits_per_byte"])
        row["eval_s"] = time.monotonic() - start
        return row


class TensorBoardLog:
    """Scalars of each metrics row into ``RUN/tensorboard/`` (``torch.utils.tensorboard``)."""

    def __init__(self, directory: Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

        self.writer = SummaryWriter(log_dir=str(directory))

    @staticmethod
    def available() -> str | None:
        """None when TensorBoard logging can work, else why not."""
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return "the `tensorboard` package is not installed (pip install tensorboard)"
        return None

    def write(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key not in ("step", "time") and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLog:
    """Each metrics row into a Weights & Biases run whose files live in ``RUN/wandb/``.

    Offline by default: wandb writes ``RUN/wandb/offline-run-<time>-<id>/`` (the ``.wandb`` event log
    with every logged row, the config, the system info) and needs no network or account, so the
    record travels with the run's artifact; ``wandb sync`` can upload it later. The run id is kept
    in ``RUN/wandb/glasslm-run-id`` so a resumed training continues the same W&B run.
    """

    ID_FILE = "glasslm-run-id"

    def __init__(
        self,
        run_dir: Path,
        project: str,
        mode: Literal["offline", "online"],
        name: str,
        config: dict[str, Any],
    ):
        self.require()
        import wandb

        directory = run_dir / "wandb"
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        id_file = directory / self.ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + "\n")
        # dir=run_dir: wandb puts its files under <dir>/wandb/.
        self.run = wandb.init(
            project=project,
            name=name,
            mode=mode,
            dir=str(run_dir),
            config=config,
            id=run_id,
            resume="allow",
            settings=wandb.Settings(console="off"),
        )

    @staticmethod
    def require() -> None:
        """Raise a ConfigError naming the extra to install when the wandb package is missing."""
        from glasslm.config import ConfigError

        try:
            import wandb  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "trainer.wandb is true but the `wandb` package is not installed: "
                "pip install 'glasslm[wandb]' (or set trainer.wandb=false)"
            ) from exc

    def write(self, row: dict[str, Any]) -> None:
        scalars = {
            k: float(v)
            for k, v in row.items()
            if k not in ("step", "time") and isinstance(v, int | float)  # bools (skipped) as 0/1
        }
        self.run.log(scalars, step=int(row["step"]))

    def close(self) -> None:
        self.run.finish()
        regular_files_only(self.directory)


def regular_files_only(directory: Path) -> None:
    """Leave only regular files below ``directory``, which is part of an artifact (links are refused as
    artifact content: docs/glass-box.md). wandb makes symlinks: conveniences into its own run folders
    (``latest-run``, ``debug.log``), dropped since their targets are there; and a log in its cache
    outside the run (``logs/debug-core.log``), replaced by a copy so the record stays with the run."""
    root = directory.resolve()
    for path in sorted(directory.rglob("*"), reverse=True):  # deepest first
        if not path.is_symlink():
            continue
        target = path.resolve()
        path.unlink()
        if target.is_file() and root not in target.parents:
            shutil.copyfile(target, path)

"""`glasslm train` on one process: learning, run layout, exact resume after SIGKILL, continued
pretraining, config errors, divergence, and the pure pieces (schedules, decay groups, skip-step)."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_train_support import glasslm_cmd, make_tokens, subprocess_env, write_config

from glasslm import artifacts
from glasslm.cli import main
from glasslm.model.checkpoint import load_model
from glasslm.model.olmo2 import ModelConfig, OLMo2
from glasslm.train.config import OptimConfig, ScheduleConfig, SkipStepConfig
from glasslm.train.metrics import read_metrics
from glasslm.train.optim import SkipStepGuard, param_groups
from glasslm.train.schedule import build_schedule

STEPS = 60
TRAIN = {"max_steps": STEPS, "checkpoint_every": 10}
OPTIM = {"lr": 1e-2}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokens(tmp_path_factory.mktemp("tok") / "tokens")


@pytest.fixture(scope="module")
def reference(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run, in-process."""
    root = tmp_path_factory.mktemp("ref")
    cfg = write_config(root / "c.yaml", tokens, trainer=TRAIN, optim=OPTIM)
    assert main(["train", str(cfg), "--out", str(root / "run")]) == 0
    return root / "run"


def losses(run: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(run / "metrics.jsonl")]


# ---------------------------------------------------------------- learning and layout


def test_loss_falls_and_run_layout(reference: Path, tokens: Path) -> None:
    rows = read_metrics(reference / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-5:]) / 5
    assert first > math.log(128) - 0.5  # starts near uniform over the 128-token vocabulary
    assert last < 0.6 * first, f"loss did not fall enough: {first:.3f} -> {last:.3f}"
    for key in ("tokens", "ce", "z_loss", "lr", "grad_norm", "skipped", "tokens_per_s", "wall_s", "mem_gb"):
        assert key in rows[-1]
    assert rows[-1]["tokens"] == STEPS * 8 * 64

    manifest = artifacts.read_manifest(reference)
    assert manifest["kind"] == "train_run"
    assert manifest["inputs"][0]["kind"] == "tokens" and manifest["metrics"]["steps"] == STEPS
    assert manifest["metrics"]["final_loss"] == rows[-1]["loss"]
    saved = json.loads(json.dumps(manifest["config"]))
    assert saved["data"]["loader"]["seq_len"] == 64 and saved["model"]["vocab_size"] == 128

    latest = (reference / "latest").read_text().strip()
    assert latest == "checkpoints/step000060"
    ck = reference / latest
    assert artifacts.read_manifest(ck)["kind"] == "checkpoint" and artifacts.verify(ck).ok
    # the checkpoint's energy counter says what the manifest says: a number where RAPL/NVML measured
    # it, else unknown (null) in both, never a 0 J that a resumed run would add to
    state = json.loads((ck / "trainer_state" / "trainer.json").read_text())
    assert state["energy_j"] == manifest["metrics"]["energy_j"] or (
        state["energy_j"] is not None and manifest["metrics"]["energy_j"] is not None
    )
    assert (state["energy_j"] is None) == (manifest["metrics"]["energy_j"] is None)
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == [
        f"step{s:06d}" for s in (10, 20, 30, 40, 50, 60)
    ]
    loaded = load_model(reference)  # eval/serve/convert path: a run resolves to its latest checkpoint
    assert loaded.path == ck and loaded.config.d_model == 32


def test_gradient_accumulation_matches_one_big_batch(reference: Path, tokens: Path, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "c.yaml", tokens, trainer={**TRAIN, "max_steps": 6, "micro_batch_size": 1}, optim=OPTIM
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--trainer.precision=fp32"]) == 0
    # 8 micro-batches of 1 vs one batch of 8. Steps 1-4 use the same learning rates in both runs
    # (warm-up of 3 steps; the cosine horizons differ only from step 5 on).
    accumulated = read_metrics(tmp_path / "run" / "metrics.jsonl")[:4]
    whole = read_metrics(reference / "metrics.jsonl")[:4]
    for a, b in zip(accumulated, whole, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_retention_keeps_last_k_and_every_m(tokens: Path, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "c.yaml",
        tokens,
        trainer={"max_steps": 20, "checkpoint_every": 4, "keep_last": 2, "keep_every": 8},
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step000008", "step000016", "step000020"]


# ---------------------------------------------------------------- exact resume after SIGKILL


def _start(cfg: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        glasslm_cmd("train", str(cfg), "--out", str(out), "--resume", "auto"),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill_when(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], delay: float = 0.0, timeout: float = 120
) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    proc.kill()
    raise AssertionError("training subprocess made no progress")


def _rows(out: Path) -> int:
    path = out / "metrics.jsonl"
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def test_sigkill_at_random_moments_then_resume_is_bitwise_identical(
    reference: Path, tokens: Path, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.yaml", tokens, trainer=TRAIN, optim=OPTIM)
    out = tmp_path / "run"
    rng = random.Random(1234)

    # 1) Kill in the middle of writing a checkpoint: the temporary directory is there, unfinished.
    proc = _start(cfg, out)
    assert _kill_when(proc, lambda: any((out / "checkpoints").glob(".step*.tmp")))
    assert any((out / "checkpoints").glob(".step*.tmp")), "the kill did not land inside a checkpoint write"
    latest = out / "latest"
    if latest.exists():  # whatever 'latest' names must be complete and loadable
        load_model(out)

    # 2) Kills at random moments during training steps (progress-triggered plus a random delay).
    kills = 1
    for _ in range(3):
        proc = _start(cfg, out)
        target = _rows(out) + rng.randint(2, 12)
        if _kill_when(proc, lambda target=target: _rows(out) >= target, delay=rng.uniform(0, 0.05)):
            kills += 1

    # 3) Kill right after 'latest' moves (between publishing a checkpoint and the next steps).
    proc = _start(cfg, out)
    before = latest.read_text() if latest.exists() else ""
    if _kill_when(proc, lambda: latest.exists() and latest.read_text() != before):
        kills += 1

    # 4) Run to the end.
    proc = _start(cfg, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert kills >= 3
    assert losses(out) == losses(reference)  # bitwise: floats compared exactly, every step exactly once
    assert not list((out / "checkpoints").glob(".step*"))  # stale temporaries cleaned up


def test_existing_run_needs_resume_flag(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--out", str(reference), "--trainer.max_steps=3"]) == 2
    assert "--resume auto" in capsys.readouterr().err


def test_resume_with_changed_model_is_refused(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert main(["train", "--out", str(run), "--resume", "auto", "--model.d_model=64"]) == 2
    assert "model.d_model" in capsys.readouterr().err


# ---------------------------------------------------------------- continued pretraining


def _first_loss(run: Path) -> float:
    return read_metrics(run / "metrics.jsonl")[0]["loss"]


def test_continued_pretraining_from_checkpoint_and_hf(reference: Path, tokens: Path, tmp_path: Path) -> None:
    from glasslm.train.config import TrainConfig
    from glasslm.train.distributed import World
    from glasslm.train.pretrain import pretraining
    from glasslm.train.trainer import Trainer

    fresh_first = _first_loss(reference)
    ck = reference / "checkpoints" / "step000060"
    base = write_config(
        tmp_path / "c.yaml", tokens, model=None, trainer={"max_steps": 3, "checkpoint_every": 3}
    )
    # Continue from the run's own checkpoint, weights only.
    assert main(["train", str(base), "--out", str(tmp_path / "w"), f"--model.init_from={reference}"]) == 0
    # ... and from its Hugging Face export, both directly and re-imported with convert from-hf.
    assert main(["convert", "to-hf", str(ck), str(tmp_path / "hf")]) == 0
    assert main(["convert", "from-hf", str(tmp_path / "hf"), str(tmp_path / "imported")]) == 0
    for src, name in ((tmp_path / "hf", "h"), (tmp_path / "imported", "i")):
        assert main(["train", str(base), "--out", str(tmp_path / name), f"--model.init_from={src}"]) == 0
    cont = _first_loss(tmp_path / "w")
    assert cont < fresh_first - 1.0  # starts where the pretrained model is, not from scratch
    assert (
        _first_loss(tmp_path / "h") == cont and _first_loss(tmp_path / "i") == cont
    )  # same weights bit for bit
    inputs = artifacts.read_manifest(tmp_path / "w")["inputs"]
    assert [i["kind"] for i in inputs] == ["tokens", "checkpoint"]

    # With the optimizer state: AdamW moments come from the checkpoint (its step counter is STEPS).
    from glasslm.config import load

    def trainer(extra: list[str], out: Path) -> Trainer:
        config = load(TrainConfig, base, [f"--model.init_from={ck}", *extra])
        return pretraining(config, out, World(0, 1, 0, torch.device("cpu"), "none"), "never")

    with_opt = trainer(["--model.load_optimizer=true"], tmp_path / "o")
    state = next(iter(with_opt.optimizer.state.values()))
    assert float(state["step"]) == STEPS and float(state["exp_avg_sq"].abs().sum()) > 0
    assert not trainer([], tmp_path / "n").optimizer.state
    assert with_opt.run().final_loss is not None
    hf_opt = load(TrainConfig, base, [f"--model.init_from={tmp_path / 'hf'}", "--model.load_optimizer=true"])
    with pytest.raises(artifacts.ArtifactError, match="trainer state"):
        pretraining(hf_opt, tmp_path / "x", World(0, 1, 0, torch.device("cpu"), "none"), "never")


def test_a_callback_adds_row_fields_and_checkpoint_state(tokens: Path, tmp_path: Path) -> None:
    from glasslm.config import load
    from glasslm.train import checkpoint as ckpt
    from glasslm.train.callbacks import Callback
    from glasslm.train.config import TrainConfig
    from glasslm.train.distributed import World
    from glasslm.train.pretrain import pretraining
    from glasslm.train.trainer import Trainer

    class ParamNorm(Callback):
        """The weights' norm in the logged rows; how often it was measured in the checkpoints."""

        def __init__(self) -> None:
            self.measured = 0

        def measure(self, trainer: Trainer, step: int) -> dict[str, float]:
            self.measured += 1
            return {
                "param_norm": float(
                    torch.cat([p.detach().flatten() for p in trainer.model.module.parameters()]).norm()
                )
            }

        def state(self) -> dict[str, int]:
            return {"param_norm_rows": self.measured}

    config = load(
        TrainConfig,
        write_config(
            tmp_path / "c.yaml", tokens, trainer={"max_steps": 4, "checkpoint_every": 2, "log_every": 2}
        ),
    )
    plain = pretraining(config, tmp_path / "plain", World(0, 1, 0, torch.device("cpu"), "none"), "never")
    plain.run()
    probed = pretraining(config, tmp_path / "probed", World(0, 1, 0, torch.device("cpu"), "none"), "never")
    probed.callbacks.insert(0, ParamNorm())
    probed.run()
    rows = read_metrics(tmp_path / "probed" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4] and rows[0]["param_norm"] != rows[1]["param_norm"] > 0
    assert [r["loss"] for r in rows] == [
        r["loss"] for r in read_metrics(tmp_path / "plain" / "metrics.jsonl")
    ]
    states = [ckpt.read_trainer_state(tmp_path / "probed" / "checkpoints" / f"step00000{s}") for s in (2, 4)]
    assert [s["param_norm_rows"] for s in states] == [1, 2]


# ---------------------------------------------------------------- errors


def test_config_typos_name_the_key(tokens: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "c.yaml", tokens)
    assert main(["train", str(cfg), "--out", str(tmp_path / "a"), "--trainer.max_stpes=3"]) == 2
    err = capsys.readouterr().err
    assert "trainer.max_stpes" in err and "trainer.max_steps" in err
    bad = write_config(tmp_path / "bad.yaml", tokens, optim={"weight_decya": 0.0})
    assert main(["train", str(bad), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "optim.weight_decya" in err and "optim.weight_decay" in err
    assert main(["train", str(cfg), "--out", str(tmp_path / "c"), "--model.n_head=4"]) == 2
    assert "model.n_heads" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_divergence_stops_and_keeps_last_good_checkpoint(
    tokens: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # lr 1e30 without warm-up or clipping blows the weights up after the first update.
    cfg = write_config(
        tmp_path / "c.yaml",
        tokens,
        optim={"lr": 1e30},
        schedule={"warmup": 0, "kind": "constant"},
        trainer={"max_steps": 6, "checkpoint_every": 1, "grad_clip": 1e30, "skip_step": {"enabled": False}},
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 3
    err = capsys.readouterr().err
    assert "not finite" in err and "step000001" in err
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoints/step000001"


# ---------------------------------------------------------------- pure pieces


@pytest.mark.parametrize("name", ["tiny", "small", "olmo2-1b", "olmo2-7b"])
def test_shipped_configs_resolve(name: str) -> None:
    from glasslm.config import load
    from glasslm.train.config import TrainConfig

    config = load(
        TrainConfig, Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml", run_section="train"
    )
    assert config.model.preset == name and config.model.build(tokens_vocab=None).n_layers > 0
    if name.startswith("olmo2"):  # OLMo-2's released optimizer settings
        assert (config.optim.betas, config.optim.eps, config.optim.weight_decay) == ((0.9, 0.95), 1e-8, 0.1)
        assert config.trainer.z_loss == 1e-5 and config.schedule.warmup == 2000


def test_schedules() -> None:
    cos = build_schedule(
        ScheduleConfig(kind="cosine", warmup=10), peak=1.0, total_steps=110, tokens_per_step=1
    )
    assert cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(1.0)
    assert cos(60) == pytest.approx(0.55) and cos(110) == pytest.approx(0.1)
    lin = build_schedule(
        ScheduleConfig(kind="linear", warmup=0), peak=2.0, total_steps=100, tokens_per_step=1
    )
    assert lin(50) == pytest.approx(1.1) and lin(100) == pytest.approx(0.2)
    wsd = build_schedule(
        ScheduleConfig(kind="wsd", warmup=10, decay=20), peak=1.0, total_steps=100, tokens_per_step=1
    )
    assert wsd(80) == 1.0 and wsd(90) == pytest.approx(0.55) and wsd(100) == pytest.approx(0.1)
    in_tokens = build_schedule(
        ScheduleConfig(kind="cosine", unit="tokens", warmup=4096),
        peak=1.0,
        total_steps=100,
        tokens_per_step=1024,
    )
    assert in_tokens.warmup_steps == 4 and in_tokens(2) == pytest.approx(0.5)


def test_weight_decay_follows_olmo2() -> None:
    model = OLMo2(ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, mlp_hidden=32))
    decay, no_decay = param_groups(model, OptimConfig())
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in no_decay["params"]] == ["embed.weight"]
    assert "norm.weight" in [names[id(p)] for p in decay["params"]]  # norms are decayed, as in OLMo-2
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    custom = param_groups(model, OptimConfig(no_decay=["embed.weight", "*norm.weight"]))
    assert len(custom[1]["params"]) == 1 + 1 + 4  # embedding, final norm, 4 norms in the block


def test_skip_step_guard_skips_spikes_and_round_trips() -> None:
    guard = SkipStepGuard(SkipStepConfig(window=50, sigma=6.0, min_history=10))
    rng = random.Random(0)
    history = [(3.0 + rng.gauss(0, 0.01), 1.0 + rng.gauss(0, 0.05)) for _ in range(30)]
    assert not any(guard.should_skip(loss, gn) for loss, gn in history)
    assert guard.should_skip(3.0, 50.0)  # gradient-norm spike
    assert guard.should_skip(9.0, 1.0)  # loss spike
    clone = SkipStepGuard(SkipStepConfig(window=50, sigma=6.0, min_history=10))
    clone.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert [clone.should_skip(v, 1.0) for v in (3.0, 4.0, 20.0)] == [
        guard.should_skip(v, 1.0) for v in (3.0, 4.0, 20.0)
    ]
    off = SkipStepGuard(SkipStepConfig(enabled=False, min_history=0))
    assert not off.should_skip(1e9, 1e9)

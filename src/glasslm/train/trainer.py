"""The pretraining loop: one process or many (torchrun), exact resume, metrics per step.

Step ``s`` (1-based, as in ``metrics.jsonl``) is the s-th optimizer update; it consumes the loader's
global batch ``s - 1`` (``TokenLoader.batch(s - 1)``), split over ranks and then into micro-batches.
The loss of a step is the mean over all label tokens of the global batch: each micro-batch adds its
summed cross-entropy divided by the global token count, so gradient accumulation and any number of
ranks give the same objective (as OLMo-core normalises).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import yaml
from torch import nn

from glasslm import artifacts
from glasslm.config import ConfigError, from_dict, to_dict
from glasslm.data.loader import TokenLoader
from glasslm.model import checkpoint as model_ckpt
from glasslm.model import onednn
from glasslm.model.loss import head_objective, lm_objective
from glasslm.model.olmo2 import ModelConfig, OLMo2, flops_per_token
from glasslm.train import checkpoint as ckpt
from glasslm.train import distributed
from glasslm.train.config import RESUMABLE_CHANGES, TrainConfig, config_differences
from glasslm.train.metrics import (
    HeldoutEval,
    MetricsLog,
    PowerMeter,
    TensorBoardLog,
    WandbLog,
    device_name,
    device_peak_flops,
    memory_gb,
    truncate_metrics,
)
from glasslm.train.optim import SkipStepGuard, build_optimizer, set_lr
from glasslm.train.schedule import build_schedule

TRAIN_RUN = "train_run"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf; the run stopped without writing a checkpoint."""


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    tokens: int
    final_loss: float | None
    wall_s: float
    energy_j: float | None
    is_main: bool = True  # rank 0 (the one that reports)


def train(config: TrainConfig, out: Path, resume: str = "never") -> RunResult:
    """Train (or resume) the run at ``out``. ``resume``: "never", "auto", or a checkpoint path."""
    world = distributed.init(config.distributed, config.trainer.device)
    try:
        return Trainer(config, Path(out), world, resume).run()
    finally:
        distributed.shutdown(world)


def _log(world: distributed.World, message: str) -> None:
    if world.is_main:
        print(message, file=sys.stderr, flush=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def tokenizer_of_tokens(tokens_dir: Path) -> Path | None:
    """The tokenizer.json the tokens were made with, if the tokens manifest names it."""
    tokenizer = artifacts.input_of_kind(tokens_dir, "tokenizer")
    if tokenizer is not None and (tokenizer / model_ckpt.TOKENIZER).is_file():
        return tokenizer / model_ckpt.TOKENIZER
    return None


def check_fresh_out(out: Path) -> None:
    """Refuse to start a new run on top of an existing one."""
    if (out / CONFIG).exists() or (out / ckpt.CHECKPOINTS).exists():
        raise ConfigError(
            f"{out}: a training run is already there; continue it with --resume auto, or choose another --out"
        )


class Trainer:
    def __init__(self, config: TrainConfig, out: Path, world: distributed.World, resume: str):
        self.world, self.out = world, out
        tc = config.trainer
        if tc.threads is not None:
            torch.set_num_threads(tc.threads)
        self._setup_data(config)
        lc = config.data.loader
        if lc.global_batch_size % world.world_size:
            raise ConfigError(
                f"data.loader.global_batch_size ({lc.global_batch_size}) must be divisible by the "
                f"number of processes ({world.world_size})"
            )
        self.local_batch = lc.global_batch_size // world.world_size
        self.micro_batch = tc.micro_batch_size or self.local_batch
        if self.local_batch % self.micro_batch:
            raise ConfigError(
                f"trainer.micro_batch_size ({self.micro_batch}) must divide the per-process batch "
                f"({self.local_batch} = global_batch_size / processes)"
            )
        self.tokens_per_step = lc.global_batch_size * lc.seq_len
        self.total_steps = tc.max_steps or math.ceil((tc.max_tokens or 0) / self.tokens_per_step)

        if tc.wandb:  # before anything is written: a missing package must not leave a half-made run
            WandbLog.require()
        self.resume_from = self._resume_checkpoint(resume)
        self.init_dir: Path | None = None
        _seed_everything(tc.seed)
        model, self.model_config = self._build_model(config)
        self.config = self._resolve(config)
        if self.resume_from is not None:
            self._check_resumable(self.resume_from)

        self.bf16 = world.device.type == "cuda" if tc.precision == "auto" else tc.precision == "bf16"
        if tc.activation_checkpointing:
            distributed.apply_ac(model)  # from outside the model, as FSDP below
        model.to(world.device)
        # CPU fp32 linears through MKL (aten::mm) or oneDNN, whichever is faster on this CPU: timed once
        # on this model's shapes at one micro-batch's rows (model/onednn.py: MKL wins on Intel Xeon,
        # oneDNN on the AMD EPYC box, issue #23); true/false force either. A resumed run keeps the
        # library it started with (bit-exact resume). Recorded in the run manifest (linear_backend).
        self.linear_choice = onednn.LinearChoice("mkl", "n/a")
        if world.device.type == "cpu" and not self.bf16 and world.strategy != "fsdp" and not tc.compile:
            started = self._resumed_linear_backend()  # FSDP2/inductor (above) bring their own kernels
            choice = (
                onednn.LinearChoice(started, "resumed")
                if started is not None
                else onednn.choose_backend(model, self.micro_batch * lc.seq_len, tc.onednn_linear)
            )
            self.linear_choice = cast(
                onednn.LinearChoice, distributed.broadcast_object(choice, world)
            )  # rank 0's
        self.onednn = onednn.apply_choice(model, self.linear_choice)
        # The chunked head + loss (model/loss.py: head_objective) applies the head weight outside the
        # model's forward: the step's forward is then ``model.hidden`` (distributed.HiddenStates, which
        # DDP and torch.compile wrap in the model's place). Fine in one process and under DDP (the
        # weight's gradient hook fires when its gradient arrives), not under FSDP2, whose root
        # parameters are sharded DTensors outside forward. Subclasses that override _loss
        # (adaptation: SFT, DPO, GRPO) get logits, as their losses expect.
        self.chunked_head = (
            tc.loss_chunk_tokens > 0 and world.strategy != "fsdp" and type(self)._loss is Trainer._loss
        )
        self.plain_model = model
        forward = distributed.HiddenStates(model) if self.chunked_head else model
        step_forward = distributed.wrap(forward, world, config.distributed, self.bf16)
        # What state dicts are taken from: DDP/FSDP/plain, before torch.compile (the model itself
        # when the step's forward is HiddenStates: same names and tensors as DDP's).
        self.wrapped = model if self.chunked_head else step_forward
        self.optimizer = build_optimizer(self.wrapped, config.optim, world.device)
        self.model: nn.Module = cast(nn.Module, torch.compile(step_forward)) if tc.compile else step_forward
        self.schedule = build_schedule(
            config.schedule, config.optim.lr, self.total_steps, self.tokens_per_step
        )
        self.guard = SkipStepGuard(tc.skip_step)
        self.step, self.skipped_total, self.wall_before, self.energy_before = 0, 0, 0.0, 0.0
        self.last_loss: float | None = None

        if self.resume_from is not None:
            state = ckpt.load(self.resume_from, self.wrapped, self.optimizer, world=world)
            self._restore(state)
            _log(world, f"resumed from {self.resume_from} at step {self.step}")
        elif config.model.init_from is not None and config.model.load_optimizer:
            assert self.init_dir is not None
            ckpt.load(
                self.init_dir, self.wrapped, self.optimizer, world=world, load_model=False, restore_rng=False
            )
            self._reapply_hyperparameters()
        self.inputs = list(self.data_inputs)
        if self.init_dir is not None and (self.init_dir / artifacts.MANIFEST).is_file():
            self.inputs.append(artifacts.input_ref(self.init_dir))
        elif self.init_dir is not None:
            self.inputs.append({"path": str(self.init_dir.resolve()), "kind": "hf_model", "sha256": None})
        self.heldout_eval: HeldoutEval | None = None
        if tc.eval_every > 0:
            tokens_dir = getattr(self, "tokens_dir", None)  # adaptation trainers read no tokens artifact
            if tokens_dir is None:
                raise ConfigError(
                    "trainer.eval_every: in-loop held-out evaluation needs a tokens artifact; set it to 0"
                )
            self.heldout_eval = HeldoutEval(
                tokens_dir, self.tokenizer, tc.eval_max_docs, tc.eval_batch_tokens
            )

    # ------------------------------------------------------------ what is trained on (overridable)
    # Pretraining reads a tokens artifact and minimises next-token cross-entropy. Adaptation
    # (glasslm.adapt: SFT, DPO, GRPO) subclasses Trainer and overrides these five methods; the loop,
    # optimizer, schedule, checkpoints, resume, metrics and distribution stay this class's.
    stage = "pretrain"  # the checkpoints' manifest ``stage``

    def _setup_data(self, config: TrainConfig) -> None:
        """Set ``loader`` (with ``vocab_size``), ``tokenizer`` and ``data_inputs`` (manifest refs)."""
        self.tokens_dir = artifacts.find_artifact(config.data.tokens, "tokens")
        self.loader = TokenLoader(
            self.tokens_dir, config.data.loader, rank=self.world.rank, world_size=self.world.world_size
        )
        self.tokenizer: Path | None = tokenizer_of_tokens(self.tokens_dir)
        self.data_inputs: list[dict[str, Any]] = [artifacts.input_ref(self.tokens_dir)]

    def _batch(self, step: int) -> dict[str, Any]:
        """This rank's share of the global batch of step ``step`` (1-based)."""
        return self.loader.batch(step - 1)

    def _count(self, micro: dict[str, torch.Tensor]) -> int:
        """What the step's loss is averaged over (here: label tokens), for one micro-batch."""
        return int((micro["labels"] != -100).sum())

    def _loss(
        self, logits: torch.Tensor, micro: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(objective summed over the micro-batch, named sums to report); the step divides both by
        the global ``_count``. The names must include "loss"."""
        return lm_objective(logits, micro["labels"], self.config.trainer.z_loss)

    def _forward_loss(self, micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward one micro-batch and return ``_loss``'s (objective, named sums); with the chunked
        head, the same values from the hidden states without materialising the logits."""
        with self._autocast():
            out = self.model(
                micro["input_ids"], position_ids=micro.get("position_ids"), doc_ids=micro.get("doc_ids")
            )
        if not self.chunked_head:
            return self._loss(out, micro)
        return head_objective(
            out,
            self.plain_model.lm_head.weight,
            micro["labels"],
            self.config.trainer.z_loss,
            self.config.trainer.loss_chunk_tokens,
            torch.bfloat16 if self.bf16 else None,
            self.onednn,
        )

    def _data_state(self) -> dict[str, Any]:
        """The data position and settings saved with each checkpoint."""
        lc = self.config.data.loader
        return {
            "next_batch": self.step,
            "seq_len": lc.seq_len,
            "global_batch_size": lc.global_batch_size,
            "seed": lc.seed,
            "tokens_manifest_sha256": self.loader.tokens_manifest_sha256,
        }

    # ------------------------------------------------------------ set-up helpers

    def _resumed_linear_backend(self) -> onednn.Backend | None:
        """The CPU linear library the resumed run recorded (None: a new run, or none recorded)."""
        if self.resume_from is None or self.config.trainer.onednn_linear != "auto":
            return None
        state_file = self.resume_from / ckpt.TRAINER_STATE / "trainer.json"
        backend = json.loads(state_file.read_text()).get("linear_backend") if state_file.is_file() else None
        return backend if backend in ("onednn", "mkl") else None

    def _resume_checkpoint(self, resume: str) -> Path | None:
        out = self.out
        if resume == "never":
            check_fresh_out(out)
            return None
        if resume == "auto":
            # Rank 0 decides, so every rank resumes from the same checkpoint.
            found = ckpt.find_resume_checkpoint(out) if out.is_dir() and self.world.is_main else None
            chosen = distributed.broadcast_object(None if found is None else str(found), self.world)
            return Path(str(chosen)) if chosen is not None else None
        path = Path(resume)
        if not ckpt.is_complete(path):
            raise ConfigError(f"--resume {path}: not a complete training checkpoint (no trainer_state)")
        return path

    def _build_model(self, config: TrainConfig) -> tuple[OLMo2, ModelConfig]:
        spec = config.model
        if self.resume_from is not None:
            model_config = model_ckpt.read_model_config(self.resume_from)
            model = OLMo2(model_config)
            if spec.init_from is not None:
                self.init_dir = model_ckpt.resolve_model_dir(spec.init_from)
        elif spec.init_from is not None:
            loaded = model_ckpt.load_model(spec.init_from)
            self.init_dir = loaded.path
            model, model_config = loaded.model, loaded.config
            model.train()
            self.tokenizer = loaded.tokenizer_path or self.tokenizer
        else:
            model_config = spec.build(self.loader.vocab_size)
            model = OLMo2(model_config)
        if self.loader.vocab_size > model_config.vocab_size:
            raise ConfigError(
                f"the tokens in {self.tokens_dir} use {self.loader.vocab_size} ids but the model has "
                f"vocab_size {model_config.vocab_size}: raise model.vocab_size (or leave it unset)"
            )
        seq = config.data.loader.seq_len
        if seq > model_config.max_seq_len:
            raise ConfigError(
                f"data.loader.seq_len {seq} exceeds model.max_seq_len {model_config.max_seq_len}"
            )
        model.train()
        return model, model_config

    def _resolve(self, config: TrainConfig) -> TrainConfig:
        """The config as run: model fields filled in from the model actually built, the tokens path made absolute."""
        data = to_dict(config)
        if config.model.init_from is None:
            # Fill in what the preset and the tokens decided; keys the user set stay as set, so a
            # resume with a different architecture is caught by _check_resumable.
            built = to_dict(self.model_config)
            data["model"].update({k: v for k, v in built.items() if data["model"].get(k) is None})
        data["data"]["tokens"] = str(self.tokens_dir.resolve())
        return from_dict(TrainConfig, data)

    def _check_resumable(self, path: Path) -> None:
        saved_file = self.out / CONFIG
        if not saved_file.is_file():
            return
        saved = from_dict(type(self.config), yaml.safe_load(saved_file.read_text()))
        changed = [k for k in config_differences(saved, self.config) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(
                f"cannot resume {self.out} from {path.name}: these keys differ from the run's config.yaml: "
                f"{', '.join(changed)} (only {', '.join(RESUMABLE_CHANGES)} may change on resume)"
            )

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("micro_step", 0) != 0:  # checkpoints are only taken between optimizer steps
            raise ConfigError(f"{self.resume_from}: checkpoint taken mid-accumulation, cannot resume exactly")
        self.step = int(state["step"])
        self.skipped_total = int(state["skipped_total"])
        self.guard.load_state_dict(state["skip_step"])
        self.wall_before = float(state.get("wall_s", 0.0))
        self.energy_before = float(state.get("energy_j", 0.0))
        self.last_loss = state.get("loss")

    def _reapply_hyperparameters(self) -> None:
        # A loaded optimizer state carries the old run's hyperparameters; this run's config wins.
        oc = self.config.optim
        groups = self.optimizer.param_groups
        for group, wd in zip(groups, [oc.weight_decay, 0.0], strict=False):
            group.update(betas=tuple(oc.betas), eps=oc.eps, weight_decay=wd)

    # ------------------------------------------------------------ the loop

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.world.device.type, dtype=torch.bfloat16)

    def _grad_sync(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        module = getattr(self.model, "_orig_mod", self.model)
        if self.world.strategy == "ddp" and not sync:
            return module.no_sync()  # type: ignore[operator]
        if self.world.strategy == "fsdp":
            module.set_requires_gradient_sync(sync)  # type: ignore[operator]
        return contextlib.nullcontext()

    def _micro_batches(self, batch: dict[str, Any]) -> Iterator[dict[str, torch.Tensor]]:
        dev = self.world.device
        tensors = {k: torch.as_tensor(np.asarray(v)).to(dev) for k, v in batch.items() if k != "instance_ids"}
        for start in range(0, self.local_batch, self.micro_batch):
            yield {k: v[start : start + self.micro_batch].long() for k, v in tensors.items()}

    def train_step(self, step: int) -> dict[str, Any]:
        tc = self.config.trainer
        lr = self.schedule(step)
        set_lr(self.optimizer, lr)
        micros = list(self._micro_batches(self._batch(step)))
        local_tokens = sum(self._count(m) for m in micros)
        n_tokens = distributed.all_reduce_sum(
            torch.tensor(float(local_tokens), device=self.world.device), self.world
        )
        # Gradients are averaged over ranks by DDP/FSDP; scaling by the world size makes the result
        # the gradient of the global mean loss.
        scale = self.world.world_size / n_tokens.clamp(min=1)
        sums: torch.Tensor | None = None
        names: list[str] = []
        for i, mb in enumerate(micros):
            with self._grad_sync(i == len(micros) - 1):
                objective, terms = self._forward_loss(mb)
                (objective * scale).backward()
            names = list(terms)
            values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
            sums = values if sums is None else sums + values
        assert sums is not None, "a step with no micro-batches"
        sums = distributed.all_reduce_sum(sums, self.world) / n_tokens.clamp(min=1)
        means = dict(zip(names, sums.tolist(), strict=True))
        loss = means["loss"]
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip, foreach=True)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        gn = float(grad_norm)
        if not (math.isfinite(loss) and math.isfinite(gn)):
            latest = ckpt.find_resume_checkpoint(self.out)
            raise TrainingDiverged(
                f"step {step}: loss is {loss} and gradient norm {gn} (not finite); training stopped. "
                f"The last good checkpoint is {latest or 'none (no checkpoint was written yet)'}. "
                "Lower optim.lr, lengthen schedule.warmup, or check the tokens, then resume from it."
            )
        skipped = self.guard.should_skip(loss, gn)
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_total += int(skipped)
        return {**means, "lr": lr, "grad_norm": gn, "skipped": skipped}

    def _evaluate_heldout(self) -> dict[str, float]:
        """Held-out bits per byte; every rank calls this, the row comes back on rank 0 ({} elsewhere)."""
        assert self.heldout_eval is not None
        row: dict[str, float] = {}
        # FSDP2 shards the weights, so every rank runs the same forwards (their all-gathers are
        # collectives); otherwise rank 0 alone evaluates its full copy while the others wait.
        if self.world.strategy == "fsdp" or self.world.is_main:
            with self._autocast():
                row = self.heldout_eval(distributed.unwrap(self.wrapped))
        distributed.barrier(self.world)
        return row if self.world.is_main else {}

    def _tensorboard(self) -> TensorBoardLog | None:
        if not (self.config.trainer.tensorboard and self.world.is_main):
            return None
        missing = TensorBoardLog.available()
        if missing is not None:
            _log(self.world, f"trainer.tensorboard: not writing RUN/tensorboard/: {missing}")
            return None
        return TensorBoardLog(self.out / "tensorboard")

    def _wandb(self) -> WandbLog | None:
        tc = self.config.trainer
        if not (tc.wandb and self.world.is_main):
            return None
        return WandbLog(
            self.out, tc.wandb_project, tc.wandb_mode, tc.wandb_name or self.out.name, to_dict(self.config)
        )

    def trainer_state(self, wall_s: float, energy_j: float) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.step * self.tokens_per_step,
            "loss": self.last_loss,
            "micro_step": 0,
            "skipped_total": self.skipped_total,
            "skip_step": self.guard.state_dict(),
            "data": self._data_state(),
            "world_size": self.world.world_size,
            "wall_s": wall_s,
            "energy_j": energy_j,
            "linear_backend": self.linear_choice.backend,
        }

    def save(self, wall_s: float, energy_j: float) -> Path:
        tc = self.config.trainer
        state = self.trainer_state(wall_s, energy_j)
        metrics = {"step": self.step, "tokens": state["tokens"], "loss": self.last_loss}
        return ckpt.save(
            self.out,
            self.step,
            self.wrapped,
            self.optimizer,
            world=self.world,
            model_config=self.model_config,
            trainer_state=state,
            config={"model": self.model_config, "train": self.config},
            inputs=self.inputs,
            metrics=metrics,
            tokenizer=self.tokenizer,
            keep_last=tc.keep_last,
            keep_every=tc.keep_every,
            stage=self.stage,
        )

    def _prepare_run_dir(self) -> None:
        if self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale(self.out)
            truncate_metrics(self.out / METRICS, self.step)
            (self.out / CONFIG).write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
        distributed.barrier(self.world)

    def run(self) -> RunResult:
        world, tc = self.world, self.config.trainer
        self._prepare_run_dir()
        log = MetricsLog(self.out / METRICS) if world.is_main else None
        # Optional metric sinks beside metrics.jsonl (rank 0 only), each with write(row) and close().
        sinks = [s for s in (self._tensorboard(), self._wandb()) if s is not None]
        power = PowerMeter(world.device) if world.is_main else None
        peak = device_peak_flops(world.device)
        flops_tok = flops_per_token(self.model_config, self.config.data.loader.seq_len)
        _log(
            world,
            f"training {self.total_steps} steps on {world.world_size} × {device_name(world.device)} "
            f"({world.strategy}), {self.tokens_per_step:,} tokens/step → {self.out}",
        )
        t_start = time.monotonic()
        t_last, step_last = t_start, self.step
        energy = self.energy_before

        def wall() -> float:
            return self.wall_before + time.monotonic() - t_start

        try:
            while self.step < self.total_steps:
                self.step += 1
                out = self.train_step(self.step)
                self.last_loss = out["loss"]
                last = self.step == self.total_steps
                eval_due = tc.eval_every > 0 and (self.step % tc.eval_every == 0 or last)
                if self.step % tc.log_every == 0 or last or eval_due:
                    now = time.monotonic()
                    tps = (self.step - step_last) * self.tokens_per_step / max(now - t_last, 1e-9)
                    t_last, step_last = now, self.step
                    evals = self._evaluate_heldout() if eval_due else {}
                    t_last = time.monotonic()  # tokens/s measures training, not evaluation
                    if log is not None and power is not None:
                        sample = power.sample()
                        energy = self.energy_before + sample.get("energy_j", 0.0)
                        row = {
                            "step": self.step,
                            "tokens": self.step * self.tokens_per_step,
                            **out,
                            "skipped_total": self.skipped_total,
                            "tokens_per_s": tps,
                            "mfu": tps * flops_tok / peak if peak else None,
                            "mem_gb": memory_gb(world.device),
                            "wall_s": wall(),
                            "time": time.time(),
                            **{k: v for k, v in sample.items() if k != "energy_j"},
                            "energy_j": energy if power.sources else None,
                            **evals,
                        }
                        log.write(row)
                        for sink in sinks:
                            sink.write(row)
                        eta = (self.total_steps - self.step) * self.tokens_per_step / max(tps, 1e-9)
                        _log(
                            world,
                            f"step {self.step}/{self.total_steps} loss {out['loss']:.4f} "
                            f"lr {out['lr']:.2e} gnorm {out['grad_norm']:.3f} {tps:,.0f} tok/s "
                            f"eta {eta:,.0f}s"
                            + (" [skipped]" if out["skipped"] else "")
                            + (f" held-out bpb {evals['eval/bpb_macro']:.4f}" if evals else ""),
                        )
                if self.step % tc.checkpoint_every == 0 or self.step == self.total_steps:
                    path = self.save(wall(), energy)
                    _log(world, f"checkpoint {path}")
                    t_last = time.monotonic()  # tokens/s measures training, not checkpoint writes
        finally:
            if log is not None:
                log.close()
            for sink in sinks:
                sink.close()
        result = RunResult(
            self.out,
            self.step,
            self.step * self.tokens_per_step,
            self.last_loss,
            wall(),
            energy if power is not None and power.sources else None,
            world.is_main,
        )
        if world.is_main:
            self._write_manifest(result)
        distributed.barrier(world)
        return result

    def _write_manifest(self, result: RunResult) -> None:
        artifacts.write_manifest(
            self.out,
            TRAIN_RUN,
            config=self.config,
            inputs=self.inputs,
            metrics={
                "final_loss": result.final_loss,
                "steps": result.steps,
                "tokens": result.tokens,
                "wall_s": round(result.wall_s, 3),
                "energy_j": result.energy_j,
                "device": device_name(self.world.device),
                "world_size": self.world.world_size,
                "skipped_steps": self.skipped_total,
                "params": sum(p.numel() for p in distributed.unwrap(self.model).parameters()),
                "linear_backend": self.linear_choice.as_dict(),
            },
        )

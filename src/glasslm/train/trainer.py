"""The training loop, composed of parts: ``Trainer(model, optimizer, schedule, objective, batches, callbacks)``.

Step ``s`` (1-based, as in ``metrics.jsonl``) is the s-th optimizer update (GRPO's PPO epochs: several
updates on one batch, reported as one step). Its batch is ``batches.batch(s)``, this rank's
micro-batches; each micro-batch adds its summed ``objective.loss`` divided by the step's global
``objective.count``, so gradient accumulation and any number of ranks give the same objective (as
OLMo-core normalises). Everything around the steps (metric sinks, energy, held-out evaluation,
checkpoints, before/after evaluation) is a callback (train/callbacks.py).

Pretraining is an ``LMObjective`` over ``TokenBatches`` (train/pretrain.py); SFT, DPO and GRPO are
their own objectives and batch sources (glasslm.adapt).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.distributed.tensor import DTensor

from glasslm import artifacts
from glasslm.config import ConfigError, to_dict
from glasslm.model.olmo2 import flops_per_token
from glasslm.train import checkpoint as ckpt
from glasslm.train import distributed
from glasslm.train.batches import BatchSource, StepBatch
from glasslm.train.callbacks import Callback, log
from glasslm.train.config import SkipStepConfig
from glasslm.train.metrics import device_name, device_peak_flops, memory_gb
from glasslm.train.objective import Objective
from glasslm.train.optim import SkipStepGuard, set_lr
from glasslm.train.train_model import Micro, TrainModel

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
    metrics: dict[str, Any] = field(default_factory=dict)  # as in the run's manifest


@dataclass
class RunSpec:
    """The run as a whole: where it is written, how long it is, what its manifest records."""

    out: Path
    config: Any  # the resolved config dataclass: RUN/config.yaml and the manifest's config
    inputs: list[dict[str, Any]]  # the manifest's inputs
    total_steps: int
    tokens_per_step: int  # global batch × sequence length (the loader's rows, or the stage's capacity)
    seq_len: int
    grad_clip: float
    log_every: int


@dataclass
class TrainState:
    """What a checkpoint restores besides weights, optimizer and RNG (exact resume)."""

    skip_step: SkipStepConfig
    step: int = 0
    skipped_total: int = 0
    wall_before: float = 0.0
    last_loss: float | None = None
    guard: SkipStepGuard = field(init=False)

    def __post_init__(self) -> None:
        self.guard = SkipStepGuard(self.skip_step)

    @classmethod
    def resumed(cls, skip_step: SkipStepConfig, saved: dict[str, Any], where: Path) -> TrainState:
        if saved.get("micro_step", 0) != 0:  # checkpoints are only taken between optimizer steps
            raise ConfigError(f"{where}: checkpoint taken mid-accumulation, cannot resume exactly")
        state = cls(
            skip_step, int(saved["step"]), int(saved["skipped_total"]), float(saved.get("wall_s", 0.0))
        )
        state.last_loss = saved.get("loss")
        state.guard.load_state_dict(saved["skip_step"])
        return state


class _Clock:
    """Wall time of the run (resumed runs add their earlier time) and training throughput, which
    leaves out the time callbacks take (evaluation, checkpoint writes)."""

    def __init__(self, wall_before: float, step: int):
        self.wall_before, self.start = wall_before, time.monotonic()
        self.last, self.last_step = self.start, step

    def wall(self) -> float:
        return self.wall_before + time.monotonic() - self.start

    def steps_per_s(self, step: int) -> float:
        now = time.monotonic()
        rate = (step - self.last_step) / max(now - self.last, 1e-9)
        self.last, self.last_step = now, step
        return rate

    @contextmanager
    def paused(self) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            self.last += time.monotonic() - began


class Trainer:
    def __init__(
        self,
        model: TrainModel,
        optimizer: torch.optim.Optimizer,
        schedule: Callable[[int], float],
        objective: Objective,
        batches: BatchSource,
        callbacks: Sequence[Callback],
        run: RunSpec,
        state: TrainState,
    ):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.objective, self.batches, self.callbacks = objective, batches, list(callbacks)
        self.run_spec, self.state = run, state
        self.clock = _Clock(state.wall_before, state.step)

    @property
    def out(self) -> Path:
        return self.run_spec.out

    @property
    def total_steps(self) -> int:
        return self.run_spec.total_steps

    # ------------------------------------------------------------ one step

    def train_step(self, step: int) -> dict[str, Any]:
        """The step's ``batch.updates`` optimizer updates; with several, the reported figures are their
        means (the learning rate is the step's; ``skipped``: any update skipped)."""
        batch = self.batches.batch(step)
        outs = [self._update(step, batch) for _ in range(batch.updates)]
        out = outs[0]
        if len(outs) > 1:
            out = dict(outs[-1])
            for key, value in out.items():
                if key not in ("lr", "skipped") and isinstance(value, float):
                    out[key] = sum(o[key] for o in outs) / len(outs)
            out["skipped"] = any(o["skipped"] for o in outs)
        return {**out, **batch.metrics}

    def _update(self, step: int, batch: StepBatch) -> dict[str, Any]:
        world = self.model.world
        lr = self.schedule(step)
        set_lr(self.optimizer, lr)
        micros: list[Micro] = batch.micros
        local = sum(self.objective.count(m) for m in micros)
        n_total = distributed.all_reduce_sum(torch.tensor(float(local), device=world.device), world)
        # Gradients are averaged over ranks by DDP/FSDP; scaling by the world size makes the result
        # the gradient of the global mean loss.
        scale = world.world_size / n_total.clamp(min=1)
        sums: torch.Tensor | None = None
        names: list[str] = []
        for i, micro in enumerate(micros):
            with self.model.grad_sync(i == len(micros) - 1):
                objective, terms = self.objective.loss(self.model, micro)
                (objective * scale).backward()
            names = list(terms)
            values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
            sums = values if sums is None else sums + values
        assert sums is not None, "a step with no micro-batches"
        sums = distributed.all_reduce_sum(sums, world) / n_total.clamp(min=1)
        means = dict(zip(names, sums.tolist(), strict=True))
        loss = means["loss"]
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.run_spec.grad_clip, foreach=True
        )
        if isinstance(grad_norm, DTensor):  # FSDP2
            grad_norm = grad_norm.full_tensor()
        gn = float(grad_norm)
        if not (math.isfinite(loss) and math.isfinite(gn)):
            latest = ckpt.find_resume_checkpoint(self.out)
            raise TrainingDiverged(
                f"step {step}: loss is {loss} and gradient norm {gn} (not finite); training stopped. "
                + (
                    f"The last good checkpoint is {latest}. Lower optim.lr, lengthen schedule.warmup, or "
                    "check the tokens, then resume from it."
                    if latest
                    else "No checkpoint was written yet. Lower optim.lr, lengthen schedule.warmup, or check "
                    "the tokens, then start again in a new --out (or remove this one)."
                )
            )
        skipped = self.state.guard.should_skip(loss, gn)
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.skipped_total += int(skipped)
        return {**means, "lr": lr, "grad_norm": gn, "skipped": skipped}

    def trainer_state(self) -> dict[str, Any]:
        """``trainer_state/trainer.json`` of a checkpoint taken now."""
        s, spec = self.state, self.run_spec
        extra: dict[str, Any] = {}
        for callback in self.callbacks:
            extra.update(callback.state())
        return {
            "step": s.step,
            "tokens": s.step * spec.tokens_per_step,
            "loss": s.last_loss,
            "micro_step": 0,
            "skipped_total": s.skipped_total,
            "skip_step": s.guard.state_dict(),
            "data": self.batches.position(s.step),
            "world_size": self.model.world.world_size,
            "wall_s": self.clock.wall(),
            **extra,
            "linear_backend": self.model.linear_choice.backend,
        }

    # ------------------------------------------------------------ the loop

    def run(self) -> RunResult:
        world, spec, state = self.model.world, self.run_spec, self.state
        if world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        try:
            for callback in self.callbacks:
                callback.on_start(self)
            if world.is_main:  # last: a run that failed to start is not one to resume
                (self.out / CONFIG).write_text(yaml.safe_dump(to_dict(spec.config), sort_keys=False))
            distributed.barrier(world)
            log(
                world,
                f"training {spec.total_steps} steps on {world.world_size} × {device_name(world.device)} "
                f"({world.strategy}), {spec.tokens_per_step:,} tokens/step → {self.out}",
            )
            self.clock = _Clock(state.wall_before, state.step)  # training time: from here to the last step
            while state.step < spec.total_steps:
                state.step += 1
                step, last = state.step, state.step == spec.total_steps
                out = self.train_step(step)
                state.last_loss = out["loss"]
                if step % spec.log_every == 0 or last or any(c.wants_row(step, last) for c in self.callbacks):
                    self._log_row(step, out)
                with self.clock.paused():
                    for callback in self.callbacks:
                        callback.on_step_end(self, step, last)
            wall = self.clock.wall()
            metrics = self._metrics(wall)
            for callback in self.callbacks:
                metrics.update(callback.on_end(self))
        finally:
            for callback in self.callbacks:
                callback.close()
        if world.is_main:
            artifacts.write_manifest(
                self.out, TRAIN_RUN, config=spec.config, inputs=spec.inputs, metrics=metrics
            )
        distributed.barrier(world)
        return RunResult(
            self.out, state.step, state.step * spec.tokens_per_step, state.last_loss, wall,
            metrics.get("energy_j"), world.is_main, metrics,
        )  # fmt: skip

    def _log_row(self, step: int, out: dict[str, Any]) -> None:
        world, spec = self.model.world, self.run_spec
        tps = self.clock.steps_per_s(step) * spec.tokens_per_step
        fields: dict[str, Any] = {}
        with self.clock.paused():  # tokens/s measures training, not evaluation
            for callback in self.callbacks:
                fields.update(callback.measure(self, step))
        if not world.is_main:
            return
        peak = device_peak_flops(world.device)
        row = {
            "step": step,
            "tokens": step * spec.tokens_per_step,
            **out,
            "skipped_total": self.state.skipped_total,
            "tokens_per_s": tps,
            "mfu": tps * flops_per_token(self.model.config, spec.seq_len) / peak if peak else None,
            "mem_gb": memory_gb(world.device),
            "wall_s": self.clock.wall(),
            "time": time.time(),
            **fields,
        }
        for callback in self.callbacks:
            callback.on_row(row)
        eta = (spec.total_steps - step) * spec.tokens_per_step / max(tps, 1e-9)
        log(
            world,
            f"step {step}/{spec.total_steps} loss {out['loss']:.4f} lr {out['lr']:.2e} "
            f"gnorm {out['grad_norm']:.3f} {tps:,.0f} tok/s eta {eta:,.0f}s"
            + (" [skipped]" if out["skipped"] else ""),
        )

    def _metrics(self, wall: float) -> dict[str, Any]:
        """The run's manifest metrics (callbacks add theirs: energy, before/after evaluation)."""
        state, world = self.state, self.model.world
        return {
            "final_loss": state.last_loss,
            "steps": state.step,
            "tokens": state.step * self.run_spec.tokens_per_step,
            "wall_s": round(wall, 3),
            "energy_j": None,
            "device": device_name(world.device),
            "world_size": world.world_size,
            "skipped_steps": state.skipped_total,
            "params": sum(p.numel() for p in self.model.module.parameters()),
            "linear_backend": self.model.linear_choice.as_dict(),
        }

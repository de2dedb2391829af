"""What happens around the training steps: metric sinks, energy, held-out evaluation, checkpoints.

A callback sees the run at a few points (OLMo-core's trainer callbacks are the model); each event has
a no-op default, so a callback implements only what it needs:

- ``on_start(trainer)``: the run directory is ready, no step has run yet (every rank).
- ``wants_row(step, last)``: ask for a metrics row at ``step`` even if ``trainer.log_every`` does not.
- ``measure(trainer, step)``: fields for the step's metrics row (every rank calls it, rank 0's are
  written; the time it takes does not count as training time in tokens/s).
- ``on_row(row)``: a complete metrics row (rank 0): sinks write it.
- ``on_step_end(trainer, step, last)``: after every step (checkpoints); not counted as training time.
- ``state()``: what it adds to ``trainer_state/trainer.json`` in each checkpoint (a resumed run's
  callback is built from that file's values).
- ``on_end(trainer)``: figures for the run's manifest metrics (every rank calls it).
- ``close()``: always, last, also when training failed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from glasslm.model.olmo2 import ModelConfig
from glasslm.train import checkpoint as ckpt
from glasslm.train import distributed
from glasslm.train.metrics import (
    HeldoutEval,
    MetricsLog,
    PowerMeter,
    TensorBoardLog,
    WandbLog,
    truncate_metrics,
)

if TYPE_CHECKING:
    from glasslm.train.trainer import Trainer


def log(world: distributed.World, message: str) -> None:
    if world.is_main:
        print(message, file=sys.stderr, flush=True)


class Callback:
    def on_start(self, trainer: Trainer) -> None:
        return None

    def wants_row(self, step: int, last: bool) -> bool:
        return False

    def measure(self, trainer: Trainer, step: int) -> dict[str, Any]:
        return {}

    def on_row(self, row: dict[str, Any]) -> None:
        return None

    def on_step_end(self, trainer: Trainer, step: int, last: bool) -> None:
        return None

    def state(self) -> dict[str, Any]:
        return {}

    def on_end(self, trainer: Trainer) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        return None


class MetricsFile(Callback):
    """``RUN/metrics.jsonl`` (rank 0): cut back to the resumed step at start (no ghost rows), one
    line per logged step."""

    def __init__(self, path: Path, world: distributed.World):
        self.path, self.world = path, world
        self.log: MetricsLog | None = None

    def on_start(self, trainer: Trainer) -> None:
        if self.world.is_main:
            truncate_metrics(self.path, trainer.state.step)
            self.log = MetricsLog(self.path)

    def on_row(self, row: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(row)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


class TensorBoardSink(Callback):
    """Each row's scalars into ``RUN/tensorboard/`` (rank 0; skipped with a note without the package)."""

    def __init__(self, directory: Path, world: distributed.World):
        self.directory, self.world = directory, world
        self.writer: TensorBoardLog | None = None

    def on_start(self, trainer: Trainer) -> None:
        if not self.world.is_main:
            return
        missing = TensorBoardLog.available()
        if missing is not None:
            log(self.world, f"trainer.tensorboard: not writing RUN/tensorboard/: {missing}")
            return
        self.writer = TensorBoardLog(self.directory)

    def on_row(self, row: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.write(row)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbSink(Callback):
    """Each row into a Weights & Biases run kept in ``RUN/wandb/`` (rank 0; metrics.WandbLog)."""

    def __init__(
        self,
        run_dir: Path,
        world: distributed.World,
        project: str,
        mode: Literal["offline", "online"],
        name: str,
        config: dict[str, Any],
    ):
        WandbLog.require()  # before anything is written: a missing package must not leave a half-made run
        self.args = (run_dir, project, mode, name, config)
        self.world = world
        self.run: WandbLog | None = None

    def on_start(self, trainer: Trainer) -> None:
        if self.world.is_main:
            self.run = WandbLog(*self.args)

    def on_row(self, row: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.write(row)

    def close(self) -> None:
        if self.run is not None:
            self.run.close()


class EnergyMeter(Callback):
    """Power and cumulative energy (RAPL, NVML; rank 0) in each row, the checkpoints and the manifest;
    a resumed run continues from the energy its checkpoint recorded (``energy_before``)."""

    def __init__(self, world: distributed.World, energy_before: float = 0.0):
        self.world, self.before = world, energy_before
        self.energy = energy_before
        self.power: PowerMeter | None = None

    def on_start(self, trainer: Trainer) -> None:
        if self.world.is_main:
            self.power = PowerMeter(self.world.device)

    def measure(self, trainer: Trainer, step: int) -> dict[str, Any]:
        if self.power is None:
            return {}
        sample = self.power.sample()
        self.energy = self.before + sample.get("energy_j", 0.0)
        return {**{k: v for k, v in sample.items() if k != "energy_j"}, "energy_j": self.measured()}

    def measured(self) -> float | None:
        """The energy so far, or None where nothing measures it (no RAPL or NVML): unknown, not 0 J."""
        return self.energy if self.power is not None and self.power.sources else None

    def state(self) -> dict[str, Any]:
        return {"energy_j": self.measured()}

    def on_end(self, trainer: Trainer) -> dict[str, Any]:
        return {"energy_j": self.measured()}


class HeldoutBpb(Callback):
    """In-loop held-out bits per byte every ``every`` steps and at the last (metrics.HeldoutEval)."""

    def __init__(self, evaluate: HeldoutEval, every: int):
        self.evaluate, self.every = evaluate, every

    def wants_row(self, step: int, last: bool) -> bool:
        return step % self.every == 0 or last

    def measure(self, trainer: Trainer, step: int) -> dict[str, Any]:
        if not self.wants_row(step, step == trainer.total_steps):
            return {}
        world = trainer.model.world
        row: dict[str, Any] = {}
        # FSDP2 shards the weights, so every rank runs the same forwards (their all-gathers are
        # collectives); otherwise rank 0 alone evaluates its full copy while the others wait.
        if world.strategy == "fsdp" or world.is_main:
            with trainer.model.autocast():
                row = self.evaluate(trainer.model.module)
        distributed.barrier(world)
        if world.is_main:
            log(world, f"step {step} held-out bpb {row['eval/bpb_macro']:.4f}")
        return row if world.is_main else {}


class Checkpointer(Callback):
    """A checkpoint every ``every`` steps and at the last (train/checkpoint.py: crash-safe, sharded
    state + consolidated weights, manifest ``stage``); stale temporary ones are removed at start."""

    def __init__(
        self,
        every: int,
        *,
        model_config: ModelConfig,
        config: Any,
        inputs: list[dict[str, Any]],
        tokenizer: Path | None,
        keep_last: int,
        keep_every: int | None,
        stage: str,
    ):
        self.every, self.model_config, self.config, self.inputs = every, model_config, config, inputs
        self.tokenizer, self.keep_last, self.keep_every, self.stage = tokenizer, keep_last, keep_every, stage

    def on_start(self, trainer: Trainer) -> None:
        if trainer.model.world.is_main:
            ckpt.remove_stale(trainer.out)

    def on_step_end(self, trainer: Trainer, step: int, last: bool) -> None:
        if step % self.every and not last:
            return
        state = trainer.trainer_state()
        path = ckpt.save(
            trainer.out,
            step,
            trainer.model.state_module,
            trainer.optimizer,
            world=trainer.model.world,
            model_config=self.model_config,
            trainer_state=state,
            config={"model": self.model_config, "train": self.config},
            inputs=self.inputs,
            metrics={"step": step, "tokens": state["tokens"], "loss": state["loss"]},
            tokenizer=self.tokenizer,
            keep_last=self.keep_last,
            keep_every=self.keep_every,
            stage=self.stage,
        )
        log(trainer.model.world, f"checkpoint {path}")

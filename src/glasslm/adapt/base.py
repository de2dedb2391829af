"""What SFT, DPO and GRPO share: their configs and a Trainer subclass that swaps data and loss.

Adaptation runs *are* training runs: ``glasslm.train.trainer.Trainer`` does the loop, optimizer,
schedule, gradient accumulation, DDP/FSDP, checkpoints (manifest ``stage`` "sft"/"dpo"/"rl"), exact
resume and ``metrics.jsonl``. A subclass here overrides only what is trained on (``_setup_data``,
``_batch``, ``_count``, ``_loss``, ``_data_state``) and adds before/after evaluations, which land in
the run's manifest metrics and in ``RUN/eval_before.json`` / ``RUN/eval_after.json``.

Every batch is a pure function of (data, seed, step): an epoch is a seeded permutation of the
training items, step s takes the s-th slice, and each rank its share; so resuming from any checkpoint
replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glasslm import artifacts
from glasslm.adapt.builders import find_data_file
from glasslm.config import ConfigError
from glasslm.model import checkpoint as model_ckpt
from glasslm.model.modes import eval_mode
from glasslm.tokenizer import Tokenizer
from glasslm.train import distributed
from glasslm.train.config import TrainConfig, TrainerConfig
from glasslm.train.trainer import RunResult, Trainer

EVAL_BEFORE, EVAL_AFTER = "eval_before.json", "eval_after.json"


@dataclass
class AdaptBatching:
    """Duck-types the pretraining loader settings the trainer reads (``data.loader``)."""

    seq_len: int = 512  # tokens per row (SFT: packed rows; DPO/RL: the longest allowed sequence)
    global_batch_size: int = 8  # per optimizer step: SFT packed rows, DPO pairs, RL completions
    seed: int = 0

    def validate(self) -> None:
        if self.seq_len < 2 or self.global_batch_size < 1:
            raise ConfigError("data.loader.seq_len must be >= 2 and data.loader.global_batch_size >= 1")


@dataclass
class AdaptDataSpec:
    path: str = ""  # an adapt_data artifact (or a run dir holding adapt/data), or a JSONL file
    heldout: str | None = None  # JSONL for the before/after evaluation; None: the artifact's held-out file
    eval_limit: int = 256  # held-out items evaluated (RL: pass@1 prompts, >= 200 for the headline)
    loader: AdaptBatching = field(default_factory=AdaptBatching)


def _adapt_trainer_defaults() -> TrainerConfig:
    # No z-loss: open-instruct's SFT/DPO/GRPO objectives have none. Short runs, frequent checkpoints.
    return TrainerConfig(max_steps=100, z_loss=0.0, checkpoint_every=50)


@dataclass
class AdaptConfig(TrainConfig):
    """A training config whose data section reads adaptation JSONL instead of a tokens artifact."""

    data: AdaptDataSpec = field(default_factory=AdaptDataSpec)  # type: ignore[assignment]
    trainer: TrainerConfig = field(default_factory=_adapt_trainer_defaults)

    def validate(self) -> None:
        if self.model.architecture_overrides():
            keys = ", ".join(f"model.{k}" for k in self.model.architecture_overrides())
            raise ConfigError(f"{keys}: the architecture comes from model.init_from; remove these keys")

    def require(self) -> None:
        """Keys every layer together must set (checked once, after file and overrides are merged)."""
        if not self.data.path:
            raise ConfigError(
                "data.path is not set: give an adapt_data artifact or a JSONL file (--data.path=PATH)"
            )
        if self.model.init_from is None:
            raise ConfigError(
                "model.init_from is not set: adaptation starts from a model (--model.init_from=MODEL)"
            )


@dataclass
class _Vocab:
    """What the trainer asks of its loader before building the model."""

    vocab_size: int


def data_ref(path: Path) -> dict[str, Any]:
    """How a manifest names a data input: the artifact holding it, or the file by content hash."""
    for candidate in (path, path.parent):
        if (candidate / artifacts.MANIFEST).is_file():
            return artifacts.input_ref(candidate)
    return {"path": str(path.resolve()), "kind": "jsonl", "sha256": artifacts.sha256_file(path)}


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of ``n`` items in ``epoch``: a permutation seeded by (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def step_items(n: int, seed: int, step: int, per_step: int) -> list[int]:
    """Indices of the items of (1-based) ``step`` when ``per_step`` items are taken per step, epoch after epoch."""
    out = []
    for k in range((step - 1) * per_step, step * per_step):
        epoch, pos = divmod(k, n)
        out.append(int(epoch_order(n, seed, epoch)[pos]))
    return out


class AdaptTrainer(Trainer):
    """Shared set-up: tokenizer from the init model, data files, a rank's slice, evaluations."""

    data_file = ""  # file name inside an adapt_data artifact (set by each subclass)
    heldout_file = ""
    config: AdaptConfig

    def _setup_data(self, config: TrainConfig) -> None:
        assert isinstance(config, AdaptConfig)
        config.require()
        self.config = config  # the trainer sets it only after the model is built; data set-up needs it now
        init_dir = model_ckpt.resolve_model_dir(config.model.init_from or "")
        tok_file = init_dir / model_ckpt.TOKENIZER
        if not tok_file.is_file():
            raise ConfigError(
                f"{init_dir}: the init model carries no tokenizer.json; adaptation needs its tokenizer"
            )
        self.tok = Tokenizer.from_file(tok_file)
        self.tokenizer = tok_file

        self.train_path = find_data_file(config.data.path, self.data_file)
        heldout = config.data.heldout
        self.heldout_path: Path | None = None
        if heldout is not None:
            self.heldout_path = Path(heldout)
        elif not Path(config.data.path).is_file():
            self.heldout_path = find_data_file(config.data.path, self.heldout_file)
        self.data_inputs = [data_ref(self.train_path)]
        self.data_sha256 = artifacts.sha256_file(self.train_path)
        self.loader = _Vocab(self.tok.vocab_size)  # type: ignore[assignment]
        self.load_items(config)

    def load_items(self, config: AdaptConfig) -> None:
        raise NotImplementedError

    @property
    def n_items(self) -> int:
        raise NotImplementedError

    @property
    def items_per_step(self) -> int:
        return self.config.data.loader.global_batch_size

    def local_items(self, step: int) -> list[int]:
        """This rank's contiguous share of the step's items."""
        items = step_items(self.n_items, self.config.data.loader.seed, step, self.items_per_step)
        share = len(items) // self.world.world_size
        return items[self.world.rank * share : (self.world.rank + 1) * share]

    def _micro_batches(self, batch: dict[str, Any]) -> Iterator[dict[str, torch.Tensor]]:
        for micro in batch["micros"]:
            yield {k: v.to(self.world.device) for k, v in micro.items()}

    def _data_state(self) -> dict[str, Any]:
        lc = self.config.data.loader
        return {"next_step": self.step + 1, "seq_len": lc.seq_len, "global_batch_size": lc.global_batch_size,
                "seed": lc.seed, "data_sha256": self.data_sha256}  # fmt: skip

    def _resolve(self, config: TrainConfig) -> TrainConfig:
        """Paths made absolute (the architecture stays the init model's), so a run resumes from anywhere."""
        assert isinstance(config, AdaptConfig)

        def absolute(value: str | None) -> str | None:
            return str(Path(value).resolve()) if value and Path(value).exists() else value

        config.model.init_from = absolute(config.model.init_from)
        config.data.path = absolute(config.data.path) or ""
        config.data.heldout = absolute(config.data.heldout)
        return config

    # ------------------------------------------------------------ evaluation before and after

    @property
    def policy(self) -> torch.nn.Module:
        """The plain model (no DDP/FSDP wrapper) for evaluation and sampling."""
        return distributed.unwrap(self.wrapped)

    def evaluate(self) -> dict[str, Any]:
        """Held-out metrics of the current model (same on every rank)."""
        raise NotImplementedError

    def compare(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """Paired before/after figures over the same held-out items (none by default)."""
        return {}

    def run(self) -> RunResult:
        self._check_distribution()
        quarantine = getattr(self, "quarantine", None)
        if quarantine is not None and quarantine.total and self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            quarantine.write(self.out / "quarantine.jsonl")
            _say(
                self,
                f"{quarantine.total} unusable lines quarantined ({dict(quarantine.counts)}): {self.out}/quarantine.jsonl",
            )
        before_file = self.out / EVAL_BEFORE
        if before_file.is_file() and self.resume_from is not None:
            before = json.loads(before_file.read_text())
        else:
            before = self.evaluate()
            if self.world.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                before_file.write_text(json.dumps(before, indent=1) + "\n")
        _say(self, "before: " + _fmt(before))
        result = super().run()
        after = self.evaluate()
        _say(self, "after:  " + _fmt(after))
        change = self.compare(before, after)
        if change:
            _say(self, "change: " + _fmt(change))
        # Per-item records (dicts) stay in eval_before/after.json; the manifest gets the figures.
        self.eval_metrics = {**{f"{k}_before": v for k, v in before.items() if not isinstance(v, dict)},
                             **{f"{k}_after": v for k, v in after.items() if not isinstance(v, dict)},
                             **change}  # fmt: skip
        if self.world.is_main:
            (self.out / EVAL_AFTER).write_text(json.dumps(after, indent=1) + "\n")
            self._write_manifest(result)
        distributed.barrier(self.world)
        return result

    def _check_distribution(self) -> None:
        lc = self.config.data.loader
        if self.items_per_step % self.world.world_size:
            raise ConfigError(
                f"data.loader.global_batch_size ({lc.global_batch_size}) must be divisible by "
                f"the number of processes ({self.world.world_size})"
            )

    def _write_manifest(self, result: RunResult) -> None:
        extra = getattr(self, "eval_metrics", None)
        if extra is None:
            return  # called from Trainer.run before the final evaluation: written once, below
        super()._write_manifest(result)
        if extra:  # fold the before/after figures into the run's manifest metrics
            manifest = artifacts.read_manifest(self.out)
            artifacts.write_manifest(self.out, manifest["kind"], config=self.config, inputs=self.inputs,
                                     metrics={**manifest["metrics"], **extra, "stage": self.stage})  # fmt: skip


def _fmt(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                     if not isinstance(v, dict))  # fmt: skip


def _say(trainer: Trainer, message: str) -> None:
    if trainer.world.is_main:
        import sys

        print(message, file=sys.stderr, flush=True)


def split_micro(n: int, micro: int) -> Sequence[range]:
    return [range(i, min(i + micro, n)) for i in range(0, n, micro)]


def generate(
    trainer: Trainer, prompts: Sequence[Sequence[int]], params: Any, max_batch: int = 32
) -> list[Any]:
    """Completions from the current policy with the generation engine (``model/generate.py``).

    The model is in eval mode while it generates; its training mode is restored afterwards.
    """
    from glasslm.model.generate import Engine

    model = trainer.policy  # type: ignore[attr-defined]
    tok = trainer.tok  # type: ignore[attr-defined]
    new = max(p.max_new_tokens for p in params) if isinstance(params, list) else params.max_new_tokens
    longest = max(len(p) for p in prompts) + new + 1
    with eval_mode(model):
        engine = Engine(
            model, tok, max_batch=min(max_batch, len(prompts)), max_len=min(longest, model.config.max_seq_len)
        )
        return engine.generate([list(p) for p in prompts], params)

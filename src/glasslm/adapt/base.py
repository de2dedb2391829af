"""What SFT, DPO and GRPO share: their configs, their data, and how a stage becomes a Trainer.

Adaptation runs *are* training runs: ``glasslm.train.trainer.Trainer`` does the loop, optimizer,
schedule, gradient accumulation, DDP/FSDP, checkpoints (manifest ``stage`` "sft"/"dpo"/"rl"), exact
resume and ``metrics.jsonl``. A stage brings what is trained on: its data (loaded before the model,
so unusable data fails fast), then, once the model exists, an objective, a batch source and a
held-out ``Evaluation``, which ``BeforeAfterEval`` runs before the first step and after the last;
its figures land in the run's manifest metrics and in ``RUN/eval_before.json`` / ``RUN/eval_after.json``.

Every batch is a pure function of (data, seed, step): an epoch is a seeded permutation of the
training items, step s takes the s-th slice, and each rank its share; so resuming from any checkpoint
replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from glasslm import artifacts
from glasslm.adapt.builders import CHAT_HELDOUT, find_data_file
from glasslm.config import ConfigError
from glasslm.data.documents import Quarantine
from glasslm.eval import chat_suite
from glasslm.eval.chat_suite import ChatSuiteConfig
from glasslm.model import checkpoint as model_ckpt
from glasslm.model.olmo2 import OLMo2
from glasslm.tokenizer import Tokenizer
from glasslm.train import distributed
from glasslm.train.batches import BatchSource
from glasslm.train.callbacks import Callback, log
from glasslm.train.config import (
    DistributedConfig,
    ModelSpec,
    OptimConfig,
    ScheduleConfig,
    TrainerConfig,
)
from glasslm.train.objective import Objective
from glasslm.train.setup import batching, build_parts, start_run
from glasslm.train.train_model import TrainModel
from glasslm.train.trainer import Trainer

if TYPE_CHECKING:
    pass

EVAL_BEFORE, EVAL_AFTER = "eval_before.json", "eval_after.json"


@dataclass
class AdaptBatching:
    """The loader settings of a stage (``data.loader``), named as pretraining's."""

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
class AdaptConfig:
    """A training config (train.config.TrainConfig's sections, in its order) whose data section reads
    adaptation JSONL instead of a tokens artifact."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: AdaptDataSpec = field(default_factory=AdaptDataSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=_adapt_trainer_defaults)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    chat_suite: ChatSuiteConfig = field(default_factory=ChatSuiteConfig)

    def validate(self) -> None:
        self.chat_suite.validate()
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


def data_ref(path: Path) -> dict[str, Any]:
    """How a manifest names a data input: the artifact holding it, or the file by content hash."""
    for candidate in (path, path.parent):
        if (candidate / artifacts.MANIFEST).is_file():
            return artifacts.input_ref(candidate)
    return {"path": str(path.resolve()), "kind": artifacts.FILE_INPUT, "sha256": artifacts.sha256_file(path)}


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


def split_micro(n: int, micro: int) -> Sequence[range]:
    return [range(i, min(i + micro, n)) for i in range(0, n, micro)]


# ------------------------------------------------------------ the stage's data


@dataclass
class AdaptData:
    """A stage's files and tokenizer (the init model's), read before the model is built."""

    tok: Tokenizer
    tokenizer_file: Path
    train_path: Path
    heldout_path: Path | None
    data_sha256: str
    inputs: list[dict[str, Any]]


def open_data(config: AdaptConfig, data_file: str, heldout_file: str) -> AdaptData:
    """``data_file``/``heldout_file``: the names inside an adapt_data artifact."""
    config.require()
    init_dir = model_ckpt.resolve_model_dir(config.model.init_from or "")
    tok_file = init_dir / model_ckpt.TOKENIZER
    if not tok_file.is_file():
        raise ConfigError(
            f"{init_dir}: the init model carries no tokenizer.json; adaptation needs its tokenizer"
        )
    train_path = find_data_file(config.data.path, data_file)
    heldout: Path | None = None
    if config.data.heldout is not None:
        heldout = Path(config.data.heldout)
    elif not Path(config.data.path).is_file():
        heldout = find_data_file(config.data.path, heldout_file)
    inputs = [data_ref(train_path)]
    # files given beside the data are inputs too: editing one must show in the lineage
    for extra in (config.data.heldout, config.chat_suite.conversations):
        if extra:
            add_input(inputs, data_ref(Path(extra)))
    return AdaptData(Tokenizer.from_file(tok_file), tok_file, train_path, heldout,
                     artifacts.sha256_file(train_path), inputs)  # fmt: skip


def add_input(inputs: list[dict[str, Any]], ref: dict[str, Any]) -> None:
    """Append ``ref`` unless the same artifact or file is there already (RL's chat mix usually comes
    from the adapt_data artifact its prompts come from)."""
    if all(Path(str(r.get("path"))).resolve() != Path(str(ref.get("path"))).resolve() for r in inputs):
        inputs.append(ref)


@dataclass
class StepItems:
    """Which training items (packed rows, pairs, prompts) step ``s`` takes on this rank, and what a
    checkpoint records of the data position."""

    n_items: int
    per_step: int
    loader: AdaptBatching
    world: distributed.World
    data_sha256: str

    def local(self, step: int) -> list[int]:
        """This rank's contiguous share of the step's items."""
        items = step_items(self.n_items, self.loader.seed, step, self.per_step)
        share = len(items) // self.world.world_size
        return items[self.world.rank * share : (self.world.rank + 1) * share]

    def position(self, step: int) -> dict[str, Any]:
        lc = self.loader
        return {"next_step": step + 1, "seq_len": lc.seq_len, "global_batch_size": lc.global_batch_size,
                "seed": lc.seed, "data_sha256": self.data_sha256}  # fmt: skip


# ------------------------------------------------------------ evaluation before and after


class Evaluation(Protocol):
    """Held-out figures of a policy, measured before the first step and after the last.

    ``evaluate`` gets the plain model (no DDP/FSDP wrapper; evaluation mode is the callee's to set
    and restore) and the tokenizer, on every rank, and returns the same dict on every rank: numbers
    go to the manifest as ``<key>_before`` / ``<key>_after``; dict values (per-item records) stay in
    the JSON files. ``compare`` turns the two into paired figures for the manifest (or {}).
    """

    def evaluate(self, model: OLMo2, tokenizer: Tokenizer) -> dict[str, Any]: ...

    def compare(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]: ...


class BeforeAfterEval(Callback):
    """Runs an ``Evaluation`` on the policy at start and at end: ``RUN/<name>_before.json`` and
    ``RUN/<name>_after.json``, and the figures in the run's manifest metrics (with the ``stage``).
    A resumed run reads its before-figures back instead of measuring a trained model as "before"."""

    def __init__(self, evaluation: Evaluation, tokenizer: Tokenizer, stage: str, name: str = "eval"):
        self.evaluation, self.tokenizer, self.stage = evaluation, tokenizer, stage
        self.before_file, self.after_file = f"{name}_before.json", f"{name}_after.json"
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}

    def on_start(self, trainer: Trainer) -> None:
        world, file = trainer.model.world, trainer.out / self.before_file
        if file.is_file() and trainer.state.step > 0:
            self.before = json.loads(file.read_text())
        else:
            self.before = self.evaluation.evaluate(trainer.model.module, self.tokenizer)
            if world.is_main:
                file.write_text(json.dumps(self.before, indent=1) + "\n")
        log(world, "before: " + _fmt(self.before))

    def on_end(self, trainer: Trainer) -> dict[str, Any]:
        world = trainer.model.world
        after = self.after = self.evaluation.evaluate(trainer.model.module, self.tokenizer)
        log(world, "after:  " + _fmt(after))
        change = self.evaluation.compare(self.before, after)
        if change:
            log(world, "change: " + _fmt(change))
        if world.is_main:
            (trainer.out / self.after_file).write_text(json.dumps(after, indent=1) + "\n")
        # Per-item records (dicts) stay in the JSON files; the manifest gets the figures.
        figures = {**{f"{k}_before": v for k, v in self.before.items() if not isinstance(v, dict)},
                   **{f"{k}_after": v for k, v in after.items() if not isinstance(v, dict)},
                   **change}  # fmt: skip
        return {**figures, "stage": self.stage} if figures else {}


def _fmt(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                     if not isinstance(v, dict))  # fmt: skip


class ChatSuiteEval(Callback):
    """The chat suite (``eval/chat_suite.py``) before the first step and after the last, on the held-out
    conversations; the stage's own headline figures (``own``, read from its ``BeforeAfterEval``) ride
    along. A stage with ``check`` compares its after-figures with its before-figures, which are the
    stage before's after-figures (the same model, the same greedy suite): a regression beyond
    ``chat_suite.tolerances`` is recorded, and the command fails once the manifest is written
    (``train_cli``), unless ``chat_suite.tolerances.accept`` lists the metric. Manifest: ``chat_suite``;
    replies in ``RUN/chat_before.json`` / ``RUN/chat_after.json``."""

    def __init__(self, config: ChatSuiteConfig, conversations: list[Any], tokenizer: Tokenizer, stage: str,
                 check: bool, own: BeforeAfterEval, own_keys: Sequence[str]):  # fmt: skip
        self.config, self.conversations, self.tokenizer = config, conversations, tokenizer
        self.stage, self.check, self.own, self.own_keys = stage, check, own, own_keys
        self.before: chat_suite.ChatResult | None = None

    def _own(self, figures: dict[str, Any]) -> dict[str, float]:
        return {k: figures[k] for k in self.own_keys if isinstance(figures.get(k), int | float)}

    def _measure(self, trainer: Trainer, own: dict[str, Any]) -> chat_suite.ChatResult:
        return chat_suite.run_chat_suite(trainer.model.module, self.tokenizer, self.conversations, self.config,
                                         stage_metrics=lambda: self._own(own))  # fmt: skip

    def on_start(self, trainer: Trainer) -> None:
        world, file = trainer.model.world, trainer.out / "chat_before.json"
        if file.is_file() and trainer.state.step > 0:
            saved = json.loads(file.read_text())
            self.before = chat_suite.ChatResult(saved["metrics"], [], saved.get("stage_metrics", {}))
        else:
            self.before = self._measure(trainer, self.own.before)
            if world.is_main:
                file.write_text(json.dumps(self.before.to_json(), indent=1) + "\n")
        log(world, f"chat suite before ({len(self.conversations)} conversations): "
                   + chat_suite.format_figures(self.before.metrics))  # fmt: skip

    def on_end(self, trainer: Trainer) -> dict[str, Any]:
        world = trainer.model.world
        after = self._measure(trainer, self.own.after)
        log(world, "chat suite after:  " + chat_suite.format_figures(after.metrics))
        tolerances = self.config.tolerances
        regressions = (chat_suite.check_regressions(self.before.metrics, after.metrics, tolerances)
                       if self.check and self.before else None)  # fmt: skip
        record = chat_suite.stage_record(
            self.before, after, regressions, tolerances, self.config.max_new_tokens
        )
        for r in regressions or []:
            log(world, f"chat suite {'accepted' if r.accepted else 'REGRESSION'}: {r.describe()}")
        if regressions is not None and record["passed"]:
            log(world, f"chat suite check: passed (tolerances {record['tolerances']})")
        if world.is_main:
            (trainer.out / "chat_after.json").write_text(json.dumps(after.to_json(), indent=1) + "\n")
        return {chat_suite.CHAT_SUITE: record}


def chat_callback(
    config: AdaptConfig, stage: str, tokenizer: Tokenizer, own: BeforeAfterEval, own_keys: Sequence[str]
) -> ChatSuiteEval | None:
    """The stage's chat-suite callback, on ``chat_suite.conversations`` or the adapt_data artifact's
    held-out conversations; None (said on stderr) when disabled or when the data is a bare JSONL file
    with no conversations named. Every stage but SFT, the first, is checked."""
    cc = config.chat_suite
    if not cc.enabled:
        return None
    path: Path | None = Path(cc.conversations) if cc.conversations else None
    if path is None and not Path(config.data.path).is_file():
        try:
            path = find_data_file(config.data.path, CHAT_HELDOUT)
        except artifacts.ArtifactError as err:
            raise ConfigError(
                f"{err}: rebuild it with `glasslm adapt data`, or set chat_suite.conversations"
            ) from err
    if path is None:
        print(f"chat suite skipped: data.path {config.data.path} is a file; set chat_suite.conversations "
              "to measure held-out conversations", file=sys.stderr)  # fmt: skip
        return None
    conversations = chat_suite.load_conversations(path, cc.limit)
    return ChatSuiteEval(cc, conversations, tokenizer, stage, cc.check if cc.check is not None else stage != "sft",
                         own, own_keys)  # fmt: skip


# ------------------------------------------------------------ a stage as a Trainer


@dataclass
class StageParts:
    objective: Objective
    batches: BatchSource
    evaluation: Evaluation


@dataclass
class StageContext:
    """What a stage's parts are built from, once the model exists."""

    model: TrainModel
    out: Path
    resumed: bool
    micro_batch: int
    data: AdaptData


class StageData(Protocol):
    """A stage's training and held-out items, loaded before the model is built."""

    quarantine: Quarantine

    @property
    def items(self) -> StepItems: ...

    def parts(self, ctx: StageContext) -> StageParts: ...


C = TypeVar("C", bound=AdaptConfig)


@dataclass(frozen=True)
class Stage:
    name: str  # the checkpoints' manifest ``stage``
    data_file: str  # file names inside an adapt_data artifact
    heldout_file: str
    headline: tuple[str, ...] = ()  # the stage's own figures shown beside the chat suite's


def adapt_trainer(
    stage: Stage,
    config: C,
    out: Path,
    world: distributed.World,
    resume: str,
    load: Callable[[C, AdaptData, distributed.World], StageData],
    callbacks: Sequence[Callback] = (),
) -> Trainer:
    """The Trainer of an adaptation stage: ``load`` reads its items; their ``parts`` (objective,
    batch source, evaluation) are built once the model is ready. ``callbacks`` run after the stage's
    evaluation and before the standard ones (metrics, energy, checkpoints)."""
    data = open_data(config, stage.data_file, stage.heldout_file)
    loaded = load(config, data, world)
    lc = config.data.loader
    batch = batching(lc, config.trainer, world)
    start = start_run(config, out, world, resume, data.tok.vocab_size, f"the tokens of {data.tokenizer_file}",
                      lc.seq_len)  # fmt: skip
    _resolve(config)
    parts = build_parts(
        config, start, out, world, batch=batch, seq_len=lc.seq_len, hidden_states=False,
        data_inputs=data.inputs, tokenizer=start.init_tokenizer or data.tokenizer_file, heldout_tokens=None,
        stage=stage.name,
    )  # fmt: skip
    if loaded.items.per_step % world.world_size:
        raise ConfigError(
            f"{loaded.items.per_step} items per step do not split over {world.world_size} processes"
        )
    quarantine = loaded.quarantine
    if quarantine.total and world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        quarantine.write(out / "quarantine.jsonl")
        log(
            world,
            f"{quarantine.total} unusable lines quarantined ({dict(quarantine.counts)}): {out}/quarantine.jsonl",
        )
    ctx = StageContext(parts.model, out, start.resume_from is not None, batch.micro_batch, data)
    stage_parts = loaded.parts(ctx)
    evaluation = BeforeAfterEval(stage_parts.evaluation, data.tok, stage.name)
    chat = chat_callback(config, stage.name, data.tok, evaluation, stage.headline)
    own = [evaluation, chat] if chat else [evaluation]
    return Trainer(parts.model, parts.optimizer, parts.schedule, stage_parts.objective, stage_parts.batches,
                   [*own, *callbacks, *parts.callbacks], parts.run, parts.state)  # fmt: skip


def _resolve(config: AdaptConfig) -> None:
    """Paths made absolute (the architecture stays the init model's), so a run resumes from anywhere."""

    def absolute(value: str | None) -> str | None:
        return str(Path(value).resolve()) if value and Path(value).exists() else value

    config.model.init_from = absolute(config.model.init_from)
    config.data.path = absolute(config.data.path) or ""
    config.data.heldout = absolute(config.data.heldout)

"""The training config: model, data, optimizer, schedule, trainer, distributed — one typed dataclass each.

A YAML file (``configs/tiny.yaml``) fills these in; ``--section.key=value`` overrides any key; a typo
anywhere names the key and the closest valid one (``glasslm.config``). The resolved config, with the
model's every field filled in, is saved as ``RUN/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast, get_type_hints

from glasslm.config import ConfigError, from_dict, to_dict
from glasslm.data.loader import LoaderConfig
from glasslm.model.olmo2 import ModelConfig
from glasslm.model.presets import preset

S = TypeVar("S")

SPEC_OWN_FIELDS = ("preset", "init_from", "load_optimizer")


def overrides_of(config_cls: type[Any], own: tuple[str, ...]) -> Callable[[type[S]], type[S]]:
    """Class decorator: check, when the class is defined, that its fields besides ``own`` are exactly
    ``config_cls``'s, each ``<its type> | None`` defaulting to None (keep the preset's value). The
    override fields stay written out (typed, documented, seen by mypy and ``--help``), but cannot
    drift from the config they override: a field added to ``ModelConfig`` and not here, a renamed
    one or a changed type stops the import."""

    def check(cls: type[S]) -> type[S]:
        target = get_type_hints(config_cls)
        hints = get_type_hints(cls)
        mine = {f.name: f for f in dataclasses.fields(cast(Any, cls)) if f.name not in own}
        wanted = [f.name for f in dataclasses.fields(config_cls)]
        if set(mine) != set(wanted):
            raise TypeError(
                f"{cls.__name__}: override fields {sorted(mine)} differ from {config_cls.__name__}'s {sorted(wanted)}"
            )
        for name, f in mine.items():
            if hints[name] != target[name] | None or f.default is not None:
                raise TypeError(
                    f"{cls.__name__}.{name}: expected `{name}: {target[name]} | None = None` "
                    f"(as {config_cls.__name__}.{name}: {target[name]})"
                )
        return cls

    return check


@overrides_of(ModelConfig, SPEC_OWN_FIELDS)
@dataclass
class ModelSpec:
    """A preset plus per-field overrides, or a model to start from (``init_from``).

    Every architecture field is optional: None keeps the preset's value. ``vocab_size`` left at None
    is sized from the tokens artifact (padded to a multiple of 128). The override fields are
    ``ModelConfig``'s; ``overrides_of`` checks that when this module is imported.
    """

    preset: str = "tiny"
    init_from: str | None = None  # checkpoint, training run, run directory or HF Olmo2/Llama folder
    load_optimizer: bool = False  # with init_from: also restore its AdamW moments (continued pretraining)
    architecture: str | None = None  # "olmo2" (the presets) or "llama" (model.olmo2.ARCHITECTURES)
    vocab_size: int | None = None
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    mlp_hidden: int | None = None
    max_seq_len: int | None = None
    rope_theta: float | None = None
    norm_eps: float | None = None
    tie_embeddings: bool | None = None
    init_std: float | None = None
    init_cutoff: float | None = None

    def architecture_overrides(self) -> dict[str, object]:
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        return {k: v for k, v in to_dict(self).items() if k in names and v is not None}

    def build(self, tokens_vocab: int | None = None) -> ModelConfig:
        """The model config of a fresh model (not used with ``init_from``)."""
        from glasslm.model.presets import pad_vocab

        data = to_dict(preset(self.preset))
        if self.vocab_size is None and tokens_vocab is not None:
            data["vocab_size"] = pad_vocab(tokens_vocab)
        data.update(self.architecture_overrides())
        config = from_dict(ModelConfig, data, prefix="model.")
        config.validate()
        return config


@dataclass
class DataSpec:
    tokens: str = ""  # a tokens artifact, or a run directory holding one in tokens/
    loader: LoaderConfig = field(default_factory=LoaderConfig)


@dataclass
class OptimConfig:
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    # fnmatch patterns over parameter names that get no weight decay. OLMo-2's released configs decay
    # norms and biases and exclude only the embeddings (decay_norm_and_bias: true, decay_embeddings: false).
    no_decay: list[str] = field(default_factory=lambda: ["embed.weight"])
    fused: bool | None = None  # None: fused AdamW where this torch supports it for the device

    def validate(self) -> None:
        if not 0 < self.lr < math.inf:  # inf trained one step, then every loss was nan
            raise ConfigError(f"optim.lr must be positive and finite, got {self.lr}")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas takes two values (beta1, beta2), got {list(self.betas)}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")


@dataclass
class ScheduleConfig:
    kind: Literal["cosine", "linear", "wsd", "constant"] = "cosine"
    unit: Literal["steps", "tokens"] = "steps"  # what warmup and decay are counted in
    warmup: float = 0  # linear warm-up from 0 to optim.lr
    decay: float = 0  # wsd only: length of the final decay phase (0: 20% of the run)
    final_lr_ratio: float = 0.1  # the floor, as a fraction of optim.lr

    def validate(self) -> None:
        if self.warmup < 0 or self.decay < 0:
            raise ConfigError("schedule.warmup and schedule.decay must be >= 0")
        if not 0 <= self.final_lr_ratio <= 1:
            raise ConfigError(f"schedule.final_lr_ratio must lie in [0, 1], got {self.final_lr_ratio}")


@dataclass
class SkipStepConfig:
    """Loss-spike guard after OLMo-core's SkipStepOptimizer: skip the update when the loss or the
    gradient norm exceeds mean + sigma·std of the last ``window`` steps."""

    enabled: bool = True
    window: int = 128
    sigma: float = 6.0
    min_history: int = 20  # no skipping until this many steps are in the window


@dataclass
class TrainerConfig:
    max_steps: int | None = None
    max_tokens: int | None = None  # alternative to max_steps: rounded up to whole steps
    micro_batch_size: int | None = None  # instances per forward pass per rank; None: the rank's whole share
    grad_clip: float = 1.0
    z_loss: float = 1e-5  # OLMo-2's z-loss coefficient
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False
    activation_checkpointing: bool = False
    checkpoint_every: int = 1000
    keep_last: int = 2  # checkpoints kept besides every keep_every-th one
    keep_every: int | None = None
    log_every: int = 1
    seed: int = 0
    threads: int | None = None  # CPU threads per process (None: torch's default)
    skip_step: SkipStepConfig = field(default_factory=SkipStepConfig)
    # In-loop evaluation: bits per byte per domain of the tokens' heldout/ shards every N steps (and at
    # the last step); 0 = off. Needs the tokenizer the tokens name. Uses no RNG and no loader state.
    eval_every: int = 0
    eval_max_docs: int | None = 200  # per held-out domain (None: all)
    eval_batch_tokens: int = 8192  # tokens per evaluation forward pass
    # LM head + loss a chunk of this many tokens at a time (model.olmo2.linear_lm_loss: the full
    # (tokens × vocab) logits are never materialised); 0 = the plain path (logits, then lm_loss).
    # Same loss and gradients either way. 128–1024 measured within noise of each other on CPU
    # (benchmarks/RESULTS.md, train_cpu); 256 tokens × an 8k vocabulary is 8 MB of fp32 logits a chunk.
    loss_chunk_tokens: int = 256
    # CPU, fp32: every linear layer's matmuls (and the chunked head's) through oneDNN or through
    # aten::mm's MKL sgemm. "auto": time both once at start-up on this model's shapes and keep the
    # faster (oneDNN ~2x on the AMD dev box, MKL faster on Intel Xeon: model/onednn.py, issue #23);
    # true / false force oneDNN / MKL. Ignored on GPU, under bf16, with FSDP2 and with compile.
    onednn_linear: bool | Literal["auto"] = "auto"
    tensorboard: bool = False  # also write RUN/tensorboard/ (needs the `tensorboard` package)
    # Weights & Biases (needs the `wandb` extra): the run's files go to RUN/wandb/, part of the artifact.
    # "offline" (the default) needs no network or account; `wandb sync RUN/wandb/offline-run-*` uploads later.
    wandb: bool = False
    wandb_project: str = "glasslm"
    wandb_mode: Literal["offline", "online"] = "offline"
    wandb_name: str | None = None  # the run's display name (default: the run directory's name)

    def validate(self) -> None:
        if self.loss_chunk_tokens < 0:
            raise ConfigError(
                f"trainer.loss_chunk_tokens must be >= 0 (0 = no chunking), got {self.loss_chunk_tokens}"
            )
        if self.eval_every < 0:
            raise ConfigError(f"trainer.eval_every must be >= 0 (0 = off), got {self.eval_every}")
        if self.max_steps is None and self.max_tokens is None:
            raise ConfigError("the run has no length: set trainer.max_steps or trainer.max_tokens")
        if self.max_steps is not None and self.max_tokens is not None:
            raise ConfigError(
                "set only one of trainer.max_steps and trainer.max_tokens (unset the other with =null)"
            )
        for name in ("max_steps", "max_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class DistributedConfig:
    strategy: Literal["none", "ddp", "fsdp"] = "none"
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on GPU, gloo on CPU
    reshard_after_forward: bool = True  # FSDP2: free gathered weights after forward (ZeRO-3 style)


@dataclass
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def validate(self) -> None:
        if not self.data.tokens:
            raise ConfigError("data.tokens is not set: give the tokens artifact (--data.tokens=PATH)")
        if self.model.init_from is not None and self.model.architecture_overrides():
            keys = ", ".join(f"model.{k}" for k in self.model.architecture_overrides())
            raise ConfigError(f"{keys}: the architecture comes from model.init_from; remove these keys")
        if self.model.load_optimizer and self.model.init_from is None:
            raise ConfigError("model.load_optimizer needs model.init_from (the checkpoint to take it from)")


# Keys that may differ between a run's saved config and the config it is resumed with.
RESUMABLE_CHANGES = (
    "trainer.max_steps",
    "trainer.max_tokens",
    "trainer.checkpoint_every",
    "trainer.keep_last",
    "trainer.keep_every",
    "trainer.log_every",
    "trainer.micro_batch_size",
    "trainer.threads",
    "trainer.compile",
    "trainer.activation_checkpointing",
    "trainer.eval_every",
    "trainer.eval_max_docs",
    "trainer.eval_batch_tokens",
    "trainer.tensorboard",
    "trainer.loss_chunk_tokens",
    "trainer.onednn_linear",
    "trainer.wandb",
    "trainer.wandb_project",
    "trainer.wandb_mode",
    "trainer.wandb_name",
    "distributed.strategy",
    "distributed.backend",
    "distributed.reshard_after_forward",
)


def config_differences(a: object, b: object) -> list[str]:
    """Dotted keys whose values differ between two configs."""

    def flat(d: object, prefix: str = "") -> dict[str, object]:
        if isinstance(d, dict) and d and all(isinstance(k, str) for k in d) and prefix.count(".") < 3:
            out: dict[str, object] = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix.rstrip("."): d}

    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))

"""Setting up a run, shared by pretraining (train/pretrain.py) and adaptation (glasslm.adapt).

In order: ``start_run`` (where the run resumes from, the seed, the model built or loaded), then the
caller resolves its config, then ``build_parts`` (the model prepared for training, optimizer, schedule,
restored state, the standard callbacks). The caller adds its objective and batch source and makes the
``Trainer``.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml

from glasslm import artifacts
from glasslm.config import ConfigError, from_dict, to_dict
from glasslm.model import checkpoint as model_ckpt
from glasslm.model import onednn
from glasslm.model.olmo2 import ModelConfig, OLMo2
from glasslm.train import checkpoint as ckpt
from glasslm.train import distributed
from glasslm.train.callbacks import (
    Callback,
    Checkpointer,
    EnergyMeter,
    HeldoutBpb,
    MetricsFile,
    TensorBoardSink,
    WandbSink,
    log,
)
from glasslm.train.config import (
    RESUMABLE_CHANGES,
    DistributedConfig,
    ModelSpec,
    OptimConfig,
    ScheduleConfig,
    TrainerConfig,
    config_differences,
)
from glasslm.train.metrics import HeldoutEval, WandbLog
from glasslm.train.optim import build_optimizer
from glasslm.train.schedule import Schedule, build_schedule
from glasslm.train.train_model import TrainModel, prepare_model
from glasslm.train.trainer import CONFIG, METRICS, RunSpec, TrainState


class LoaderSettings(Protocol):
    seq_len: int
    global_batch_size: int
    seed: int


class RunConfig(Protocol):
    """What the set-up reads of a run's config (train.config.TrainConfig, adapt's stage configs)."""

    model: ModelSpec
    optim: OptimConfig
    schedule: ScheduleConfig
    trainer: TrainerConfig
    distributed: DistributedConfig


def check_fresh_out(out: Path) -> None:
    """Refuse to start a new run on top of an existing one."""
    if (out / CONFIG).exists() or (out / ckpt.CHECKPOINTS).exists():
        raise ConfigError(
            f"{out}: a training run is already there; continue it with --resume auto, or choose another --out"
        )


@dataclass(frozen=True)
class Batching:
    local_batch: int  # rows (items) per rank per step
    micro_batch: int  # rows per forward pass
    tokens_per_step: int
    total_steps: int


def batching(loader: LoaderSettings, tc: TrainerConfig, world: distributed.World) -> Batching:
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    if loader.global_batch_size % world.world_size:
        raise ConfigError(
            f"data.loader.global_batch_size ({loader.global_batch_size}) must be divisible by the "
            f"number of processes ({world.world_size})"
        )
    local = loader.global_batch_size // world.world_size
    micro = tc.micro_batch_size or local
    if local % micro:
        raise ConfigError(
            f"trainer.micro_batch_size ({micro}) must divide the per-process batch "
            f"({local} = global_batch_size / processes)"
        )
    tokens_per_step = loader.global_batch_size * loader.seq_len
    total = tc.max_steps or math.ceil((tc.max_tokens or 0) / tokens_per_step)
    return Batching(local, micro, tokens_per_step, total)


@dataclass
class Start:
    """Where a run starts: the checkpoint it resumes (None: a new run) and its model, built or loaded."""

    resume_from: Path | None
    model: OLMo2
    model_config: ModelConfig
    init_dir: Path | None  # model.init_from, resolved
    init_tokenizer: Path | None  # the tokenizer.json the loaded model carries


def start_run(
    config: RunConfig,
    out: Path,
    world: distributed.World,
    resume: str,
    vocab_size: int,
    data: str,
    seq_len: int,
) -> Start:
    """``vocab_size``: ids the data uses; ``data``: where they come from (for errors)."""
    if config.trainer.wandb:  # before anything is written: a missing package must not leave a half-made run
        WandbLog.require()
    resume_from = _resume_checkpoint(out, resume, world)
    seed = config.trainer.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    spec = config.model
    init_dir, init_tokenizer = None, None
    if resume_from is not None:
        model_config = model_ckpt.read_model_config(resume_from)
        model = OLMo2(model_config)
        if spec.init_from is not None:
            init_dir = model_ckpt.resolve_model_dir(spec.init_from)
    elif spec.init_from is not None:
        loaded = model_ckpt.load_model(spec.init_from)
        init_dir, init_tokenizer = loaded.path, loaded.tokenizer_path
        model, model_config = loaded.model, loaded.config
    else:
        model_config = spec.build(vocab_size)
        model = OLMo2(model_config)
    if vocab_size > model_config.vocab_size:
        raise ConfigError(
            f"{data} uses {vocab_size} ids but the model has vocab_size {model_config.vocab_size}: "
            "raise model.vocab_size (or leave it unset)"
        )
    if seq_len > model_config.max_seq_len:
        raise ConfigError(
            f"data.loader.seq_len {seq_len} exceeds model.max_seq_len {model_config.max_seq_len}"
        )
    model.train()
    return Start(resume_from, model, model_config, init_dir, init_tokenizer)


def _resume_checkpoint(out: Path, resume: str, world: distributed.World) -> Path | None:
    if resume == "never":
        check_fresh_out(out)
        return None
    if resume == "auto":
        # Rank 0 decides, so every rank resumes from the same checkpoint.
        found = ckpt.find_resume_checkpoint(out) if out.is_dir() and world.is_main else None
        chosen = distributed.broadcast_object(None if found is None else str(found), world)
        return Path(str(chosen)) if chosen is not None else None
    path = Path(resume)
    if not ckpt.is_complete(path):
        raise ConfigError(f"--resume {path}: not a complete training checkpoint (no trainer_state)")
    return path


@dataclass
class Parts:
    """Everything a Trainer needs besides its objective and batch source."""

    model: TrainModel
    optimizer: torch.optim.AdamW
    schedule: Schedule
    callbacks: list[Callback]
    run: RunSpec
    state: TrainState


def build_parts(
    config: RunConfig,
    start: Start,
    out: Path,
    world: distributed.World,
    *,
    batch: Batching,
    seq_len: int,
    hidden_states: bool,
    data_inputs: list[dict[str, Any]],
    tokenizer: Path | None,
    heldout_tokens: Path | None,
    stage: str,
) -> Parts:
    """``config``: resolved. ``hidden_states``: the objective can read the final hidden states (the
    chunked LM head). ``heldout_tokens``: the tokens artifact of in-loop held-out evaluation, if any."""
    tc = config.trainer
    if start.resume_from is not None:
        _check_resumable(out, config, start.resume_from)
    model = prepare_model(
        start.model, start.model_config, tc, config.distributed, world,
        hidden_states=hidden_states, rows=batch.micro_batch * seq_len,
        resumed_backend=_resumed_linear_backend(start.resume_from, tc),
    )  # fmt: skip
    optimizer = build_optimizer(model.state_module, config.optim, world.device)
    schedule = build_schedule(config.schedule, config.optim.lr, batch.total_steps, batch.tokens_per_step)
    state = TrainState(tc.skip_step)
    saved: dict[str, Any] = {}
    if start.resume_from is not None:
        saved = ckpt.load(start.resume_from, model.state_module, optimizer, world=world)
        state = TrainState.resumed(tc.skip_step, saved, start.resume_from)
        log(world, f"resumed from {start.resume_from} at step {state.step}")
    elif start.init_dir is not None and config.model.load_optimizer:
        ckpt.load(
            start.init_dir, model.state_module, optimizer, world=world, load_model=False, restore_rng=False
        )
        _reapply_hyperparameters(optimizer, config.optim)
    inputs = list(data_inputs)
    if start.init_dir is not None and (start.init_dir / artifacts.MANIFEST).is_file():
        inputs.append(artifacts.input_ref(start.init_dir))
    elif start.init_dir is not None:
        inputs.append({"path": str(start.init_dir.resolve()), "kind": "hf_model", "sha256": None})
    callbacks: list[Callback] = [MetricsFile(out / METRICS, world)]
    if tc.tensorboard:
        callbacks.append(TensorBoardSink(out / "tensorboard", world))
    if tc.wandb:
        name = tc.wandb_name or out.name
        callbacks.append(WandbSink(out, world, tc.wandb_project, tc.wandb_mode, name, to_dict(config)))
    if tc.eval_every > 0:
        if heldout_tokens is None:  # adaptation reads no tokens artifact
            raise ConfigError(
                "trainer.eval_every: in-loop held-out evaluation needs a tokens artifact; set it to 0"
            )
        evaluate = HeldoutEval(heldout_tokens, tokenizer, tc.eval_max_docs, tc.eval_batch_tokens)
        callbacks.append(HeldoutBpb(evaluate, tc.eval_every))
    callbacks.append(EnergyMeter(world, float(saved.get("energy_j") or 0.0)))  # None: not measured
    callbacks.append(
        Checkpointer(
            tc.checkpoint_every, model_config=start.model_config, config=config, inputs=inputs,
            tokenizer=tokenizer, keep_last=tc.keep_last, keep_every=tc.keep_every, stage=stage,
        )
    )  # fmt: skip
    run = RunSpec(
        out, config, inputs, batch.total_steps, batch.tokens_per_step, seq_len, tc.grad_clip, tc.log_every
    )
    return Parts(model, optimizer, schedule, callbacks, run, state)


def _resumed_linear_backend(resume_from: Path | None, tc: TrainerConfig) -> onednn.Backend | None:
    """The CPU linear library the resumed run recorded (None: a new run, or none recorded)."""
    if resume_from is None or tc.onednn_linear != "auto":
        return None
    state_file = resume_from / ckpt.TRAINER_STATE / "trainer.json"
    backend = json.loads(state_file.read_text()).get("linear_backend") if state_file.is_file() else None
    if backend == "onednn":
        return "onednn"
    return "mkl" if backend == "mkl" else None


def _check_resumable(out: Path, config: RunConfig, path: Path) -> None:
    saved_file = out / CONFIG
    if not saved_file.is_file():
        return
    saved = from_dict(type(config), yaml.safe_load(saved_file.read_text()))
    changed = [k for k in config_differences(saved, config) if k not in RESUMABLE_CHANGES]
    if changed:
        raise ConfigError(
            f"cannot resume {out} from {path.name}: these keys differ from the run's config.yaml: "
            f"{', '.join(changed)} (only {', '.join(RESUMABLE_CHANGES)} may change on resume)"
        )


def _reapply_hyperparameters(optimizer: torch.optim.Optimizer, oc: OptimConfig) -> None:
    # A loaded optimizer state carries the old run's hyperparameters; this run's config wins.
    for group, wd in zip(optimizer.param_groups, [oc.weight_decay, 0.0], strict=False):
        group.update(betas=tuple(oc.betas), eps=oc.eps, weight_decay=wd)

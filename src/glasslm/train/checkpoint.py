"""Training checkpoints: a complete ``checkpoint`` artifact plus the trainer state beside the weights.

``RUN/checkpoints/stepNNNNNN/``
    model.safetensors, config.yaml, tokenizer.json   consolidated weights: eval/serve/convert read these
    manifest.json                                    kind "checkpoint", stage "pretrain", step
    trainer_state/dcp/                               torch.distributed.checkpoint shards of model and
                                                     optimizer (reshard to any world size on load)
    trainer_state/rng/rankNNNNN.json                 Python, NumPy, torch CPU/CUDA RNG states per rank
    trainer_state/trainer.json                       step, tokens, skip-step window, data position, …

Written crash-safe: everything goes into ``checkpoints/.stepNNNNNN.tmp``, is fsynced, then renamed to
its final name; only after that is ``RUN/latest`` replaced (write ``latest.tmp``, fsync, rename). A
SIGKILL at any instant leaves either the previous state or the new one — never a ``latest`` that
points at a partial directory. Old checkpoints are renamed away before deletion for the same reason.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from glasslm import artifacts
from glasslm.model import checkpoint as model_ckpt
from glasslm.model.olmo2 import ModelConfig
from glasslm.train.distributed import World, barrier

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state"
LATEST = model_ckpt.LATEST
_STEP_DIR = re.compile(r"^step(\d+)$")


def step_name(step: int) -> str:
    return f"step{step:06d}"


# ---------------------------------------------------------------- RNG state (JSON, readable, exact)


def rng_state(device: torch.device) -> dict[str, Any]:
    py = random.getstate()
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if device.type == "cuda":
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state(device).numpy().tobytes()).decode()
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), npy[2], npy[3], npy[4]))

    def tensor(b64: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(b64)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(tensor(state["cuda"]), device)


# ---------------------------------------------------------------- finding checkpoints


def is_complete(path: Path) -> bool:
    return (
        (path / artifacts.MANIFEST).is_file()
        and (path / TRAINER_STATE / "trainer.json").is_file()
        and (path / TRAINER_STATE / "dcp" / ".metadata").is_file()
    )


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = run_dir / CHECKPOINTS
    found = []
    for path in root.iterdir() if root.is_dir() else []:
        m = _STEP_DIR.match(path.name)
        if m and path.is_dir() and is_complete(path):
            found.append((int(m.group(1)), path))
    return sorted(found)


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (also one a kill left published but not yet named in ``latest``)."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def remove_stale(run_dir: Path) -> list[Path]:
    """Delete half-written (``.stepN.tmp``) and half-deleted (``.stepN.deleting``) directories."""
    root = run_dir / CHECKPOINTS
    stale = [p for p in root.glob(".step*") if p.is_dir()] if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (run_dir / (LATEST + ".tmp")).unlink()
    return stale


# ---------------------------------------------------------------- saving


def _write_latest(run_dir: Path, target: Path) -> None:
    tmp = run_dir / (LATEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(target.relative_to(run_dir).as_posix() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / LATEST)
    artifacts.fsync_dir(run_dir)


def _retain(run_dir: Path, keep_last: int, keep_every: int | None, newest: int) -> None:
    found = list_checkpoints(run_dir)
    recent = {s for s, _ in found[-keep_last:]}
    for step, path in found:
        if step == newest or step in recent or (keep_every and step % keep_every == 0):
            continue
        doomed = path.parent / f".{path.name}.deleting"
        os.replace(path, doomed)  # atomic: the directory stops looking like a checkpoint at once
        shutil.rmtree(doomed, ignore_errors=True)


def save(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    world: World,
    model_config: ModelConfig,
    trainer_state: Mapping[str, Any],
    config: Any,
    inputs: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    tokenizer: Path | None,
    keep_last: int,
    keep_every: int | None,
    stage: str = "pretrain",
) -> Path:
    """Write checkpoint ``step`` (a collective: every rank calls it) and point ``latest`` at it."""
    root = run_dir / CHECKPOINTS
    final = root / step_name(step)
    tmp = root / f".{step_name(step)}.tmp"
    if world.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / TRAINER_STATE / "rng").mkdir(parents=True)
    barrier(world)

    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    with warnings.catch_warnings():  # one process without a process group is a supported DCP mode
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, storage_writer=ReproducibleWriter(tmp / TRAINER_STATE / "dcp"))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rng_file = tmp / TRAINER_STATE / "rng" / f"rank{world.rank:05d}.json"
    rng_file.write_text(json.dumps(rng_state(world.device)))
    barrier(world)

    if world.is_main:
        weights = {k: v.contiguous() for k, v in full.items() if isinstance(v, torch.Tensor)}
        if model_config.tie_embeddings:
            weights.pop("lm_head.weight", None)
        model_ckpt.write_checkpoint_files(tmp, weights, model_config, tokenizer)
        (tmp / TRAINER_STATE / "trainer.json").write_text(json.dumps(dict(trainer_state), indent=1) + "\n")
        artifacts.write_manifest(
            tmp,
            model_ckpt.CHECKPOINT,
            config=config,
            inputs=inputs,
            metrics=metrics,
            extra={"stage": stage, "step": step},
        )
        artifacts.fsync_tree(tmp)
        artifacts.publish(tmp, final)
        _write_latest(run_dir, final)
        _retain(run_dir, keep_last, keep_every, newest=step)
    barrier(world)
    return final


class ReproducibleWriter(FileSystemWriter):
    """DCP's file writer without the storage metadata it pickles into ``.metadata`` (a random save id and
    the temporary directory's absolute path; torch's ``Metadata.storage_meta`` is optional and loading
    does not need it), so the same training run writes byte-identical checkpoints (``glasslm reproduce``)."""

    def storage_meta(self) -> StorageMeta | None:
        return None


# ---------------------------------------------------------------- loading


def read_trainer_state(path: Path) -> dict[str, Any]:
    return json.loads((path / TRAINER_STATE / "trainer.json").read_text())


def load(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    world: World,
    load_model: bool = True,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore model and/or optimizer from the DCP shards (any world size), and this rank's RNGs."""
    if not (path / TRAINER_STATE / "dcp" / ".metadata").is_file():
        raise artifacts.ArtifactError(
            f"{path}: no trainer state ({TRAINER_STATE}/dcp); it holds weights only — "
            "start from it with model.load_optimizer=false"
        )
    state: dict[str, Any] = {}
    if load_model:
        state["model"] = get_model_state_dict(model)
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path / TRAINER_STATE / "dcp")
    if load_model:
        set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])
    if restore_rng:
        rng_dir = path / TRAINER_STATE / "rng"
        mine = rng_dir / f"rank{world.rank:05d}.json"
        # A rank that did not exist when the checkpoint was written takes rank 0's streams.
        source = mine if mine.is_file() else rng_dir / "rank00000.json"
        set_rng_state(json.loads(source.read_text()), world.device)
    return read_trainer_state(path)

"""Which documents were in a training step, and in which steps a document was seen.

Both questions are answered by recomputing the loader's data order (``glasslm.data.loader``) from
a tokens artifact and the loader settings; a training run records those settings in its
``config.yaml`` (``data.tokens`` and ``data.loader``), so a run directory is enough. No model, no
replay of batches: ``doc_steps`` inverts each epoch's permutation once.

Steps are numbered as the trainer logs them (``metrics.jsonl``) and as ``trace span`` reports them:
step ``s`` (from 1) trained on the loader's global batch ``s - 1`` (``TokenLoader.batch(s - 1)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from glasslm import artifacts
from glasslm.artifacts import ArtifactError
from glasslm.config import from_dict
from glasslm.data.loader import LoaderConfig, TokenLoader
from glasslm.trace.index import tokens_of_run


@dataclass
class TraceSource:
    tokens: Path
    run: Path | None
    loader: LoaderConfig
    run_steps: int | None  # steps the run took (else was configured for), when known


def _run_dir(path: Path) -> Path | None:
    for candidate in (path, path / "train"):
        if (candidate / artifacts.MANIFEST).is_file() and artifacts.read_manifest(candidate).get(
            "kind"
        ) == "train_run":
            return candidate
    return None


def resolve(path: str | Path, overrides: dict[str, Any] | None = None) -> TraceSource:
    """A tokens artifact, a training run, or a run directory → tokens + loader settings (+ flags)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(
            f"{path}: no such directory (expected a tokens artifact, a training run or a run directory)"
        )
    run = _run_dir(path)
    loader, steps = LoaderConfig(), None
    if run is None:
        tokens = artifacts.find_artifact(path, "tokens")
    else:
        tokens = tokens_of_run(run)
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
        data = config.get("data") or {}
        loader = from_dict(LoaderConfig, data.get("loader") or {}, prefix="data.loader.")
        steps = _steps_taken(run) or _configured_steps(config.get("trainer") or {}, loader)
    loader = replace(loader, **{k: v for k, v in (overrides or {}).items() if v is not None})
    loader.validate()
    return TraceSource(tokens, run, loader, steps)


def _steps_taken(run: Path) -> int | None:
    from glasslm.trace.steps import steps_taken  # the run's manifest, else its metrics.jsonl

    return steps_taken(run) or None


def _configured_steps(trainer: dict[str, Any], loader: LoaderConfig) -> int | None:
    if trainer.get("max_steps"):
        return int(trainer["max_steps"])
    if trainer.get("max_tokens"):
        return math.ceil(int(trainer["max_tokens"]) / (loader.seq_len * loader.global_batch_size))
    return None


def open_loader(source: TraceSource) -> TokenLoader:
    return TokenLoader(source.tokens, source.loader)


def batch_docs(loader: TokenLoader, step: int) -> dict[str, Any]:
    """Every instance of training step ``step`` (1-based) and the documents in it."""
    if step < 1:
        raise ValueError(f"training steps count from 1 (as in metrics.jsonl), got {step}")
    instances = loader.global_instances(step - 1)
    rows = []
    for slot, inst in enumerate(instances.tolist()):
        for doc in loader.instance_docs(inst):
            rows.append({"slot": slot, "instance": inst, **doc})
    return {
        "step": step,
        "batch_index": step - 1,
        "epoch": (step - 1) // loader.steps_per_epoch,
        "steps_per_epoch": loader.steps_per_epoch,
        "instances": instances.tolist(),
        "documents": rows,
    }


def doc_steps(loader: TokenLoader, doc_id: str, max_steps: int) -> dict[str, Any]:
    """Every training step in 1..``max_steps`` holding tokens of ``doc_id``, with the span seen."""
    pieces = loader.doc_instances(doc_id)
    by_instance = {p["instance"]: p for p in pieces}
    ids = np.asarray(sorted(by_instance), dtype=np.int64)
    seen: list[dict[str, Any]] = []
    epochs = math.ceil(max_steps / loader.steps_per_epoch) if max_steps > 0 else 0
    for epoch in range(epochs if len(ids) else 0):
        for index in sorted(set(loader.steps_of(ids, epoch).tolist())):
            if index >= max_steps:
                break
            for slot, inst in enumerate(loader.global_instances(index).tolist()):
                if inst in by_instance:
                    piece = by_instance[inst]
                    seen.append(
                        {
                            "step": index + 1,
                            "epoch": epoch,
                            "slot": slot,
                            "instance": inst,
                            "doc_start": piece["doc_start"],
                            "doc_end": piece["doc_end"],
                        }
                    )
    return {
        **loader.doc_info(doc_id),
        "max_steps": max_steps,
        "global_batch_size": loader.config.global_batch_size,
        "instances": pieces,
        "tokens_in_instances": sum(p["doc_end"] - p["doc_start"] for p in pieces),
        "seen": seen,
    }

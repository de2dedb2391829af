"""Which training steps saw a stream offset, recomputed from the run's data order.

The index's stream is the train documents in (part, start) order, which is also the loader's stream
when the run has no mixture; with a mixture the loader keeps one stream per source. Either way a
position maps to (document, offset inside it), then to the loader's window (instance) holding it, then
to the steps whose global batch holds that instance (``TokenLoader.steps_of``, the data order in
``src/glasslm/data/loader.py``). Steps are numbered as the trainer logs them: step ``s`` trains on
the loader's global batch ``s - 1``. Only steps the run actually took are listed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from glasslm import artifacts
from glasslm.config import from_dict
from glasslm.trace.index import SuffixIndex
from glasslm.trace.span import StepsLookup


def steps_taken(run: Path) -> int:
    """Steps the run completed: its manifest when finished, else the last row of metrics.jsonl."""
    if (run / artifacts.MANIFEST).is_file():
        steps = (artifacts.read_manifest(run).get("metrics") or {}).get("steps")
        if isinstance(steps, int):
            return steps
    last = 0
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                last = max(last, row["step"])
    return last


def steps_lookup(index: SuffixIndex) -> tuple[StepsLookup | None, str]:
    """A function from stream offsets to the training steps that saw them, or None and the reason."""
    if not index.manifest.get("config", {}).get("train_run"):
        return (
            None,
            "index built from a tokens artifact, not a run: build it from the run directory to see steps",
        )
    # Inputs are found relative to the index (a moved run still works); the config's absolute paths are
    # the fallback for indexes built before.
    run = artifacts.input_of_kind(index.path, "train_run") or Path(index.manifest["config"]["train_run"])
    config_file = run / "config.yaml"
    if not config_file.is_file():
        return None, f"the training run {run} (or its config.yaml) is gone"
    try:
        from glasslm.data.loader import LoaderConfig, TokenLoader
    except ImportError as e:  # pragma: no cover - the loader ships with glasslm
        return None, f"the data loader is not importable ({e})"
    loader_cfg = (yaml.safe_load(config_file.read_text()) or {}).get("data", {}).get("loader", {})
    tokens_dir = artifacts.input_of_kind(index.path, "tokens") or Path(index.manifest["config"]["tokens"])
    loader = TokenLoader(tokens_dir, from_dict(LoaderConfig, loader_cfg, prefix="data.loader."))
    if loader.tokens_manifest_sha256 != index.manifest.get("tokens_manifest_sha256"):
        return None, f"the run {run} trained on other tokens than the index holds"
    taken = steps_taken(run)
    doc_stream = _doc_stream_positions(loader, index)

    def lookup(matches: list[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
        return {m: _steps_of_match(loader, index, doc_stream, *m, taken) for m in matches}

    return (
        lookup,
        f"training steps (1-based, as logged) among the {taken} the run took; loader seed {loader.config.seed}",
    )


def _doc_stream_positions(loader: Any, index: SuffixIndex) -> dict[str, tuple[int, int]]:
    """doc_id -> (loader stream number, where the document starts in that stream)."""
    ids = loader.doc_ids()
    where: dict[str, tuple[int, int]] = {}
    for k, stream in enumerate(loader.streams):
        for d, row in enumerate(stream.rows.tolist()):
            where[str(ids[row])] = (k, int(stream.cum[d]))
    return where


def _steps_of_match(
    loader: Any,
    index: SuffixIndex,
    doc_stream: dict[str, tuple[int, int]],
    offset: int,
    length: int,
    taken: int,
) -> list[int]:
    """The steps whose batches held any token of the match at ``offset`` (``length`` tokens, inside one
    document): a match across an instance boundary was trained on, in parts, at each instance's steps."""
    row = index.doc_of(offset)
    found = doc_stream.get(index.doc_id[row])
    if found is None:
        return []
    k, doc_start = found
    stream = loader.streams[k]
    seq_len = loader.config.seq_len
    start = doc_start + offset - int(index.doc_offset[row])
    first, last = start // seq_len, (start + max(length, 1) - 1) // seq_len
    last = min(last, stream.windows(seq_len) - 1)  # the stream's tail: no instance holds it
    if first > last:
        return []
    instances = stream.first_instance + np.arange(first, last + 1)
    steps: set[int] = set()
    for epoch in range((taken + loader.steps_per_epoch - 1) // loader.steps_per_epoch):
        steps.update(int(s) + 1 for s in loader.steps_of(instances, epoch) if s < taken)
    return sorted(steps)

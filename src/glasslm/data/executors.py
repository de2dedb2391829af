"""Run a function over shards: in-process, with a local process pool, or on a Ray cluster.

Every data stage is shard-parallel: ``fn(task)`` processes one shard and returns a small summary
(counts), writing its output files itself. Results come back in task order whatever the executor,
so outputs and ledgers do not depend on scheduling.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")

ExecutorName = Literal["local", "process", "ray"]


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def map_shards(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    *,
    workers: int | None = None,
    executor: ExecutorName = "process",
    desc: str = "shards",
    progress: bool = True,
    on_result: Callable[[R], None] | None = None,
) -> list[R]:
    """``[fn(t) for t in tasks]``, in parallel; ``fn`` must be a module-level (picklable) function.

    ``on_result`` is called in this process with each result as it arrives, in task order (for
    progress reports such as docs/s and MB/s).
    """
    workers = workers or default_workers()
    bar = tqdm(total=len(tasks), desc=desc, unit="shard", disable=not progress, leave=False)
    results: list[R] = []
    try:
        for result in _run(fn, tasks, workers, executor, bar):
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        bar.close()
    return results


def _run(fn: Callable[[T], R], tasks: Sequence[T], workers: int, executor: str, bar: tqdm) -> Iterator[R]:
    if executor == "ray":
        yield from _run_ray(fn, tasks, workers, bar)
    elif executor == "local" or workers == 1 or len(tasks) <= 1:
        for t in tasks:
            yield fn(t)
            bar.update(1)
    elif executor == "process":
        # fork is fast and safe here: workers only read files and run numpy/regex code.
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
            futures = [pool.submit(fn, t) for t in tasks]
            for f in futures:
                yield f.result()
                bar.update(1)
    else:
        raise ValueError(f"unknown executor '{executor}' (choose local, process or ray)")


def _run_ray(fn: Callable[[T], R], tasks: Sequence[T], workers: int, bar: tqdm) -> Iterator[R]:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        # An existing cluster (RAY_ADDRESS) is joined; otherwise a local one with `workers` CPUs.
        if os.environ.get("RAY_ADDRESS"):
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(fn)
        refs = [remote.remote(t) for t in tasks]
        for ref in refs:
            yield ray.get(ref)
            bar.update(1)
    finally:
        if started_here:
            ray.shutdown()


def work_dir(out: str | os.PathLike[str], fingerprint: str) -> Path:
    """A scratch directory beside ``out`` for per-shard results, named by the job's fingerprint.

    A rerun of the same job (same config, same inputs) finds the shards an interrupted run finished
    and skips them; the stage deletes the directory once its artifact is published.
    """
    out = Path(out)
    path = out.parent / f".{out.name}.work-{fingerprint[:16]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def resumable(path: str | os.PathLike[str], compute: Callable[[], R]) -> R:
    """The result pickled at ``path`` by an earlier run, or ``compute()`` saved there atomically."""
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f)  # our own scratch file, written below by this same code
    result = compute()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return result


def fingerprint(*parts: object) -> str:
    """A stable hash of JSON-able job parts (resolved config, input manifest hashes)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def executor_name(name: str) -> ExecutorName:
    """Check an executor name from a config or the command line."""
    if name not in ("local", "process", "ray"):
        from glasslm.config import ConfigError

        raise ConfigError(f"config key 'executor': expected local, process or ray, got {name!r}")
    return name  # type: ignore[return-value]

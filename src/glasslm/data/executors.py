"""Run a function over shards: in-process, with a local process pool, or on a Ray cluster.

Every data stage is shard-parallel: ``fn(task)`` processes one shard and returns a small summary
(counts), writing its output files itself. Results come back in task order whatever the executor,
so outputs and ledgers do not depend on scheduling.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
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
) -> list[R]:
    """``[fn(t) for t in tasks]``, in parallel; ``fn`` must be a module-level (picklable) function."""
    workers = workers or default_workers()
    bar = tqdm(total=len(tasks), desc=desc, unit="shard", disable=not progress, leave=False)
    try:
        results = list(_run(fn, tasks, workers, executor, bar))
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

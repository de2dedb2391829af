"""Run a function over shards: in-process, with a local process pool, or on a Ray cluster.

Every data stage is shard-parallel: ``fn(task)`` processes one shard and returns a small summary
(counts), writing its output files itself. Results come back in task order whatever the executor,
so outputs and ledgers do not depend on scheduling.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from glasslm.artifacts import code_version
from glasslm.config import ConfigError
from glasslm.data import storage
from glasslm.data.documents import Location, dumps_bytes, is_url, loads
from glasslm.data.progress import StageProgress

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
    sizes: Sequence[int] | None = None,
    quarantined: Callable[[R], Mapping[str, int]] | None = None,
    unit: str = "shards",
) -> list[R]:
    """``[fn(t) for t in tasks]``, in parallel; ``fn`` must be a module-level (picklable) function.

    ``on_result`` is called in this process with each result as it arrives, in task order. With
    ``progress``, the driver reports shards done / total, MB/s and ETA to stderr (data/progress.py):
    ``sizes`` are the tasks' input bytes, ``quarantined`` reads a result's quarantined records per reason.
    """
    workers = workers or default_workers()
    sizes = list(sizes) if sizes is not None else [0] * len(tasks)
    report = StageProgress(desc, len(tasks), sum(sizes), enabled=progress, unit=unit)
    results: list[R] = []
    # An object-store --out: every task writes in a temp directory of its own machine and uploads what
    # it wrote; the driver records where (storage.run_staged). No file system is shared.
    staged = storage.stage_tasks(fn, tasks, desc)
    outcomes: Iterator[Any] = (
        _run(fn, tasks, workers, executor)
        if staged is None
        else _run(storage.run_staged, staged, workers, executor)
    )
    for outcome in outcomes:
        if staged is None:
            result = outcome
        else:
            result, files = outcome
            storage.register(files)
        report.update(sizes[len(results)], quarantined(result) if quarantined is not None else None)
        results.append(result)
        if on_result is not None:
            on_result(result)
    report.close()
    return results


def _run(fn: Callable[[T], R], tasks: Sequence[T], workers: int, executor: str) -> Iterator[R]:
    if executor == "ray":
        yield from _run_ray(fn, tasks, workers)
    elif executor == "local" or workers == 1 or len(tasks) <= 1:
        for t in tasks:
            yield fn(t)
    elif executor == "process":
        # fork is fast and safe here: workers only read files and run numpy/regex code.
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        pool_size = min(workers, len(tasks))
        with ProcessPoolExecutor(pool_size, ctx, initializer=_exit_with, initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(fn, t) for t in tasks]
            for f in futures:
                yield f.result()
    else:
        raise ValueError(f"unknown executor '{executor}' (choose local, process or ray)")


def _exit_with(driver: int) -> None:
    """In each pool worker: end when the driver is gone. A driver killed with SIGKILL runs no cleanup,
    and its idle workers lived on, holding their memory (they are re-parented, so ``getppid`` changes)."""

    def watch() -> None:
        while os.getppid() == driver:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="glasslm-exit-with-driver", daemon=True).start()


def _run_ray(fn: Callable[[T], R], tasks: Sequence[T], workers: int) -> Iterator[R]:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        # An existing cluster (RAY_ADDRESS) is joined; otherwise a local one with `workers` CPUs.
        if os.environ.get("RAY_ADDRESS"):
            try:
                ray.init(include_dashboard=False, log_to_driver=False)
            except ConnectionError as e:  # its log says why (often InvalidAuthToken) only in passing
                raise ConfigError(
                    f"cannot join the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']} ({e}). A cluster "
                    "made with `ray start` has token authentication on (Ray >= 2.5x): set RAY_AUTH_MODE=token "
                    "and the cluster's token here (docs/scaling.md)"
                ) from None
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        # A task whose worker dies (killed, out of memory, node lost) runs again elsewhere: every task
        # writes its outputs atomically and resumably, so a retry gives the same bytes.
        remote: Any = ray.remote(max_retries=3, retry_exceptions=False)(_in_directory)
        cwd = os.getcwd()
        named = remote.options(name=getattr(fn, "__name__", "task"))  # `ray::tag_shard` in ps and Ray's tools
        refs = [named.remote(cwd, fn, t) for t in tasks]
        for ref in refs:
            yield ray.get(ref)
    finally:
        if started_here:
            ray.shutdown()


def _in_directory(cwd: str, fn: Callable[[T], R], task: T) -> R:
    """``fn(task)`` in the driver's working directory, as the local and process executors run it.

    A Ray worker starts where ``ray start`` was run, so a relative path in a task (``--out
    runs/x/tags``, an input, a work directory beside it) would name another place, or nothing, there:
    tasks failed, and wrote stray files below the raylet's directory. Where the driver's directory is
    not on the worker's machine (no shared file system), the object-store paths still work: a local
    path cannot, and fails as it would have."""
    if os.path.isdir(cwd):
        os.chdir(cwd)  # a Ray worker runs one task at a time, so this is the task's own
    return fn(task)


def work_dir(out: str | os.PathLike[str] | Location, fingerprint: str) -> Path:
    """A scratch directory beside ``out`` for per-shard results, named by the job's fingerprint.

    A rerun of the same job (same config, same inputs, same code) finds the shards an interrupted
    run finished and skips them; the stage deletes the directory once its artifact is published.
    """
    if is_url(out):  # an object-store --out: staged locally and on the store (glasslm.data.storage)
        path = storage.staging_dir(str(out)) / f"work-{fingerprint[:16]}"
        path.mkdir(parents=True, exist_ok=True)
        return path
    out = Path(str(out))
    path = out.parent / f".{out.name}.work-{fingerprint[:16]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_work(work: Path) -> None:
    """Delete a finished job's scratch directory; for an object-store --out also the artifact's local
    staging directory when nothing else is left in it (one empty directory per URL ever written
    piled up below ``GLASSLM_STAGING``)."""
    shutil.rmtree(work, ignore_errors=True)
    if storage.is_staging_dir(work.parent):
        with contextlib.suppress(OSError):  # not empty: another job's work or an artifact being built
            work.parent.rmdir()


# --- resumable scratch state: data only ----------------------------------------------------------
#
# The work directory sits beside the output, where anyone who can write there can plant files, and
# a rerun reads what it finds. So scratch state is never pickled (unpickling runs code): it is one
# ``.npz`` file per result, read with ``allow_pickle=False``, holding numeric or fixed-width string
# arrays plus one JSON document (the ``_JSON_KEY`` member). A file that is not such state (damaged,
# planted, an older format) is ignored and the result computed again.

State = dict[str, Any]
STATE_SUFFIX = ".state.npz"
_JSON_KEY = "__json__"
_SAFE_KINDS = frozenset("biufcSU")  # bool, integers, floats, complex, fixed-width bytes and str: no objects


def save_state(path: str | os.PathLike[str], state: State) -> None:
    """Write ``state`` atomically: its numpy arrays as they are, everything else as one JSON document.

    Values must be arrays of a plain dtype or JSON values (dict with str keys, list, str, int, float,
    bool, None); tuples come back as lists.
    """
    path = Path(path)
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    for key, array in arrays.items():
        if array.dtype.kind not in _SAFE_KINDS or key == _JSON_KEY:
            raise TypeError(f"scratch state '{key}': {array.dtype} arrays cannot be stored as data")
    document = dumps_bytes({k: v for k, v in state.items() if k not in arrays})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            arrays[_JSON_KEY] = np.frombuffer(document, dtype=np.uint8)
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_state(path: str | os.PathLike[str]) -> State | None:
    """The state :func:`save_state` wrote at ``path``, or None when there is none or it is not valid state."""
    path = Path(path)
    storage.fetch(path)  # below an object-store artifact's staging directory: from the store
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile) or _JSON_KEY not in archive.files:
                return None
            state = loads(archive[_JSON_KEY].tobytes())
            if not isinstance(state, dict):
                return None
            for key in archive.files:
                if key != _JSON_KEY:
                    state[key] = archive[key]
            return state
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError):
        # ValueError covers pickled data refused by allow_pickle=False and malformed JSON
        return None


def load_array(path: str | os.PathLike[str]) -> np.ndarray | None:
    """A ``.npy`` array saved in a work directory, or None when there is none or it is not plain data."""
    storage.fetch(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return array if isinstance(array, np.ndarray) and array.dtype.kind in _SAFE_KINDS else None


def resumable(path: str | os.PathLike[str], compute: Callable[[], State]) -> State:
    """The state an earlier run of the same job saved at ``path``, or ``compute()`` saved there.

    ``path`` should end in ``STATE_SUFFIX``. Callers must accept the state either way: a resumed one
    has lists where the computed one had tuples.
    """
    state = load_state(path)
    if state is None:
        state = compute()
        save_state(path, state)
    return state


def fingerprint(*parts: object, code: Mapping[str, Any] | None = None) -> str:
    """A stable hash of JSON-able job parts (resolved config, input manifest hashes) and the code.

    ``code`` defaults to :func:`glasslm.artifacts.code_version` (package version, git commit, dirty
    flag): a rerun after an upgrade or a new commit must not resume the old code's partial results.
    """
    code = dict(code) if code is not None else code_version()
    return hashlib.sha256(json.dumps([parts, code], sort_keys=True, default=str).encode()).hexdigest()


def executor_name(name: str) -> ExecutorName:
    """Check an executor name from a config or the command line."""
    if name not in ("local", "process", "ray"):
        raise ConfigError(f"config key 'executor': expected local, process or ray, got {name!r}")
    return name  # type: ignore[return-value]

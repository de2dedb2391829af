"""Documents → token shards: ``glasslm data tokenize``.

Layout of the ``tokens`` artifact (the trainer, the loader and evaluation read exactly this)::

    train/part-NNNNN.npy        1-D np.save arrays, uint16 if the vocabulary has ≤ 65,536 ids else
                                uint32; every document is followed by <|endoftext|>
    train/index.parquet         doc_id (string), source (string), part (int32), start, end (int64):
                                token offsets within that part, end exclusive, EOS included
    heldout/<source>/…          the same, one directory per held-out source
    quarantine.jsonl            unusable input lines (file, line, reason)

One task per input shard (``data/executors.py``): a worker reads the shard, encodes it in large
batches with its own copy of the tokenizer and writes one part per split it meets into a scratch
directory beside ``--out``. A rerun with the same inputs and config finds the finished parts there
and does not redo them; the artifact links them in, in task order, so part numbers do not depend on
scheduling. Held-out documents are tokenized first; a training document whose id or text equals a
held-out one is dropped (and counted), so no held-out document reaches the training shards even
when the held-out files were given by hand.

Why processes and not ``encode_batch`` threads: the issue measured ``encode_batch`` with two threads
at ~1.0 MB/s per core on the 2-core box, below dolma's one process per core. We run one process per
core, each calling ``encode_batch_fast`` (no character offsets: about 1.2-1.6x less CPU time per
byte than ``encode_batch`` in our measurement with the GPT-NeoX/OLMo tokenizer) on batches of
~8 MB, and write with numpy. Enlarging the BPE word cache (``bpe_cache``) showed no measurable gain
there, so it is off by default. Numbers: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from glasslm import artifacts
from glasslm.artifacts import ArtifactError
from glasslm.config import ConfigError
from glasslm.data import executors, storage
from glasslm.data.documents import (
    QUARANTINE_FILE,
    Location,
    Quarantine,
    is_url,
    iter_documents,
    list_shards,
    location,
)
from glasslm.data.progress import stored_bytes
from glasslm.tokenizer import Tokenizer, find_tokenizer_file

UINT16_VOCAB = 65_536
INDEX = "index.parquet"
TRAIN = "train"


@dataclass
class TokenizeConfig:
    workers: int | None = None  # processes (None: every core this process may use)
    executor: str = "process"  # local | process | ray
    batch_bytes: int = 8_000_000  # text handed to one encode call; big calls amortise the Python side
    bpe_cache: int = 0  # BPE word-cache entries per worker; 0 keeps tokenizers' default (10,000)
    progress: bool = True

    def validate(self) -> None:
        executors.executor_name(self.executor)
        if self.batch_bytes < 1:
            raise ConfigError(f"batch_bytes must be >= 1, got {self.batch_bytes}")


@dataclass
class Task:
    index: int
    shard: Location
    heldout: bool
    split: str | None  # fixed split, or None: heldout/<document source>
    tokenizer: Path
    work: Path
    config: TokenizeConfig
    exclude_ids: frozenset[str] = frozenset()
    exclude_texts: frozenset[bytes] = frozenset()
    rust_threads: bool = False  # let encode use tokenizers' own thread pool (when processes < cores)


@dataclass
class Output:
    """One part written by a task: its scratch file and the index rows of its documents."""

    split: str
    path: Path
    doc_id: list[str]
    source: list[str]
    start: np.ndarray
    end: np.ndarray
    bytes: int


@dataclass
class TaskResult:
    outputs: list[Output] = field(default_factory=list)
    quarantine: Quarantine = field(default_factory=Quarantine)
    ids: set[str] = field(default_factory=set)
    text_hashes: set[bytes] = field(default_factory=set)
    dropped_heldout_overlap: int = 0

    def to_state(self) -> executors.State:
        """Data only (executors.save_state): JSON fields plus numpy arrays; parts by file name."""
        state: executors.State = {
            "outputs": [
                {
                    "split": o.split,
                    "file": o.path.name,
                    "doc_id": o.doc_id,
                    "source": o.source,
                    "bytes": o.bytes,
                }
                for o in self.outputs
            ],
            "quarantine": self.quarantine.records,
            "ids": sorted(self.ids),
            "dropped_heldout_overlap": self.dropped_heldout_overlap,
            "text_hashes": np.array(sorted(self.text_hashes), dtype=f"S{_TEXT_HASH_BYTES}"),
        }
        for k, o in enumerate(self.outputs):
            state[f"start_{k}"], state[f"end_{k}"] = o.start, o.end
        return state

    @classmethod
    def from_state(cls, state: executors.State, work: Path) -> TaskResult:
        """The result of :meth:`to_state`; part files are looked up in ``work`` by name only, so a
        state file cannot point the artifact at a file elsewhere."""
        outputs = [
            Output(
                o["split"],
                work / Path(o["file"]).name,
                o["doc_id"],
                o["source"],
                state[f"start_{k}"],
                state[f"end_{k}"],
                o["bytes"],
            )
            for k, o in enumerate(state["outputs"])
        ]
        # fixed-width bytes drop trailing zero bytes; hashes are padded back to their length
        hashes = {bytes(h).ljust(_TEXT_HASH_BYTES, b"\0") for h in state["text_hashes"]}
        return cls(
            outputs,
            Quarantine.of(state["quarantine"]),
            set(state["ids"]),
            hashes,
            state["dropped_heldout_overlap"],
        )


# ---- inputs ------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """Local paths, or object-store locations (UPath) for an artifact at a URL: read the same way."""

    root: Location  # the artifact or directory given
    artifact: Location | None  # the mix/documents artifact, if it is one
    train: list[Location]
    heldout: list[tuple[Location, str | None]]  # (shard, split or None = by document source)
    heldout_root: Location | None = None


def find_inputs(path: str | Path | Location, heldout: str | Path | Location | None = None) -> Inputs:
    """Train shards and held-out shards of a mix or documents artifact, or of a plain directory."""
    path = location(path)
    try:
        artifact: Location | None = artifacts.find_artifact(
            path, ["mix", "documents"], subdirs=["mix", "corpus"]
        )
    except ArtifactError:
        if not path.exists():
            raise
        artifact = None
    root = artifact or path
    if (root / "documents").is_dir():
        train = list_shards(root / "documents")
    else:
        train = [p for p in list_shards(root) if "heldout" not in p.relative_to(root).parts[:1]]  # type: ignore[arg-type]  # both Path or both UPath
    if not train:
        raise ArtifactError(
            f"{root}: no document shards (*.jsonl, *.jsonl.gz, *.jsonl.zst) for the train split"
        )
    held_root = (
        location(heldout)
        if heldout is not None
        else (root / "heldout" if (root / "heldout").is_dir() else None)
    )
    held: list[tuple[Location, str | None]] = []
    if held_root is not None:
        if not held_root.exists():
            raise ArtifactError(f"--heldout {held_root}: no such file or directory")
        if (held_root / "heldout").is_dir():  # a mix artifact given as --heldout
            held_root = held_root / "heldout"
        for shard in list_shards(held_root):
            rel = shard.relative_to(held_root).parts if held_root.is_dir() else (shard.name,)  # type: ignore[arg-type]  # both Path or both UPath
            held.append((shard, f"heldout/{rel[0]}" if len(rel) > 1 else None))
    return Inputs(path, artifact, train, held, held_root)


# ---- one task ----------------------------------------------------------------------------------
_TOKENIZERS: dict[tuple[str, int], Tokenizer] = {}


def _worker_tokenizer(path: Path, cache: int) -> Tokenizer:
    """One tokenizer per worker process, with a large BPE word cache (hits skip the merge loop)."""
    key = (artifacts.sha256_file(path), cache)  # by content: a staged task's copy has a path of its own
    if key not in _TOKENIZERS:
        tok = Tokenizer.from_file(path)
        resize = getattr(tok.hf.model, "_resize_cache", None)
        if cache and callable(resize):
            resize(cache)
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


_TEXT_HASH_BYTES = 12


def _text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=_TEXT_HASH_BYTES).digest()


def _batches(task: Task, result: TaskResult) -> Iterator[list[tuple[str, str, str, str, int]]]:
    """(split, doc id, source, text, bytes) in batches of about ``batch_bytes`` of text."""
    batch: list[tuple[str, str, str, str, int]] = []
    size = 0
    fallback_source = (
        task.split.split("/", 1)[1] if task.split and task.split.startswith("heldout/") else "unknown"
    )
    for _, doc in iter_documents(task.shard, result.quarantine, seen_ids=set()):
        text, doc_id = doc["text"], doc["id"]
        if task.heldout:
            result.ids.add(doc_id)
            result.text_hashes.add(_text_hash(text))
        elif doc_id in task.exclude_ids or (task.exclude_texts and _text_hash(text) in task.exclude_texts):
            result.dropped_heldout_overlap += 1
            continue
        source = doc.get("source") or fallback_source
        n = len(text.encode("utf-8"))
        batch.append((task.split or f"heldout/{source}", doc_id, source, text, n))
        size += n
        if size >= task.config.batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@dataclass
class _SplitBuffer:
    chunks: list[np.ndarray] = field(default_factory=list)
    doc_id: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    bytes: int = 0


def run_task(task: Task) -> TaskResult:
    """Tokenize one shard into one part per split; write the parts atomically into ``task.work``."""
    # Read by tokenizers at every call: one process per core must not also start a thread per core.
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if task.rust_threads else "false"
    tok = _worker_tokenizer(task.tokenizer, task.config.bpe_cache)
    dtype = np.uint16 if tok.vocab_size <= UINT16_VOCAB else np.uint32
    result = TaskResult()
    buffers: dict[str, _SplitBuffer] = {}
    for batch in _batches(task, result):
        encodings = tok.hf.encode_batch_fast([b[3] for b in batch], add_special_tokens=False)
        for (split, doc_id, source, _, nbytes), enc in zip(batch, encodings, strict=True):
            buf = buffers.setdefault(split, _SplitBuffer())
            arr = np.empty(len(enc.ids) + 1, dtype=dtype)
            arr[:-1] = enc.ids
            arr[-1] = tok.eos_id
            buf.chunks.append(arr)
            buf.doc_id.append(doc_id)
            buf.source.append(source)
            buf.lengths.append(len(arr))
            buf.bytes += nbytes
    for split in sorted(buffers):
        buf = buffers[split]
        end = np.cumsum(np.asarray(buf.lengths, dtype=np.int64))
        start = end - np.asarray(buf.lengths, dtype=np.int64)
        path = task.work / f"task-{task.index:05d}.{split.replace('/', '__')}.npy"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, np.concatenate(buf.chunks))
        os.replace(tmp, path)
        result.outputs.append(Output(split, path, buf.doc_id, buf.source, start, end, buf.bytes))
    return result


def run_task_resumable(task: Task) -> TaskResult:
    """``run_task``, or its result from an earlier, interrupted run of the same job."""
    kind = "heldout" if task.heldout else "train"
    state = executors.resumable(
        task.work / f"task-{task.index:05d}.{kind}{executors.STATE_SUFFIX}", lambda: run_task(task).to_state()
    )
    return TaskResult.from_state(state, task.work)


# ---- the whole job -----------------------------------------------------------------------------
def tokenizer_input(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(tokenizer.json, how the manifest names it): the tokenizer artifact, else the file by hash."""
    file = find_tokenizer_file(path).resolve()
    for candidate in (Path(path), file.parent):
        if (candidate / artifacts.MANIFEST).is_file() and artifacts.read_manifest(candidate).get(
            "kind"
        ) == "tokenizer":
            return file, artifacts.input_ref(candidate)
    return file, {"path": str(file), "kind": "tokenizer_file", "sha256": artifacts.sha256_file(file)}


def _plan(
    inputs: Inputs, tokenizer: Path, work: Path, config: TokenizeConfig, workers: int
) -> tuple[list[Task], list[Task]]:
    def tasks(shards: list[tuple[Location, str | None]], heldout: bool) -> list[Task]:
        parallel = min(workers, len(shards)) < workers
        return [
            Task(i, shard, heldout, split, tokenizer, work, config, rust_threads=parallel)
            for i, (shard, split) in enumerate(shards)
        ]

    return tasks(inputs.heldout, True), tasks([(p, TRAIN) for p in inputs.train], False)


def _where(path: Location) -> str:
    return str(path) if is_url(path) else str(path.resolve())


def plan(
    docs: str | Path,
    tokenizer: str | Path,
    out: str | Path,
    config: TokenizeConfig,
    heldout: str | Path | None = None,
) -> tuple[list[Task], list[Task], Path]:
    """(held-out tasks, train tasks, scratch directory) of a job; the same job gets the same scratch."""
    inputs = find_inputs(docs, heldout)
    file, ref = tokenizer_input(tokenizer)
    shards = [_where(p) for p in inputs.train] + [f"{_where(p)}|{s}" for p, s in inputs.heldout]
    stats = [
        (p.stat().st_size, p.stat().st_mtime_ns) for p in [*inputs.train, *(h for h, _ in inputs.heldout)]
    ]
    key = executors.fingerprint(shards, stats, ref.get("sha256"), config.batch_bytes)
    work = executors.work_dir(out, key)
    if is_url(out):
        # Tasks may run on machines that have no copy of the driver's tokenizer: for an object-store
        # --out the work directory is staged, so a copy there reaches every task (storage.stage_tasks).
        file = work / "tokenizer.json"
        shutil.copyfile(tokenizer_input(tokenizer)[0], file)
    held, train = _plan(inputs, file, work, config, config.workers or executors.default_workers())
    return held, train, work


def tokenize(
    docs: str | Path,
    tokenizer: str | Path,
    out: str | Path,
    config: TokenizeConfig,
    heldout: str | Path | None = None,
) -> dict[str, Any]:
    """Write the ``tokens`` artifact at ``out``; returns its manifest metrics."""
    config.validate()
    started = time.perf_counter()
    inputs = find_inputs(docs, heldout)
    file, tok_ref = tokenizer_input(tokenizer)
    tok = Tokenizer.from_file(file)
    held_tasks, train_tasks, work = plan(docs, tokenizer, out, config, heldout)
    workers = config.workers or executors.default_workers()
    executor = executors.executor_name(config.executor)

    def run(tasks: list[Task], desc: str) -> list[TaskResult]:
        return executors.map_shards(
            run_task_resumable,
            tasks,
            workers=workers,
            executor=executor,
            desc=desc,
            progress=config.progress,
            sizes=[stored_bytes(t.shard) for t in tasks],
            quarantined=lambda r: r.quarantine.counts,
        )

    held_results = run(held_tasks, "tokenize held-out")
    exclude_ids = frozenset().union(*(r.ids for r in held_results))
    exclude_texts = frozenset().union(*(r.text_hashes for r in held_results))
    for t in train_tasks:
        t.exclude_ids, t.exclude_texts = exclude_ids, exclude_texts
    train_results = run(train_tasks, "tokenize train")

    refs: list[str | Path | Location | dict[str, Any]] = (
        [inputs.artifact] if inputs.artifact is not None else []
    )
    refs.append(tok_ref)
    with artifacts.create_artifact(out, "tokens", config={"tokenize": config}, inputs=refs) as art:
        # The config is exactly what `--config` takes (glasslm reproduce re-runs with it); the sources are
        # in `inputs`, and here too when the documents were a plain folder.
        art.extra["read_from"] = {
            "docs": _where(inputs.root),
            "tokenizer": str(file),
            "heldout": str(inputs.heldout_root) if inputs.heldout_root else None,
        }
        splits = _assemble(art.path, [*held_results, *train_results])
        quarantine = Quarantine()
        for r in [*held_results, *train_results]:
            quarantine.merge(r.quarantine)
        quarantine.write(art.path / QUARANTINE_FILE)
        seconds = time.perf_counter() - started
        total_bytes = sum(s["bytes"] for s in splits.values())
        art.metrics.update(
            {
                "vocab_size": tok.vocab_size,
                "eos_id": tok.eos_id,
                "pad_id": tok.pad_id,
                "dtype": "uint16" if tok.vocab_size <= UINT16_VOCAB else "uint32",
                "splits": splits,
                "tokenizer": {"path": str(file), "sha256": artifacts.sha256_file(file)},
                "quarantined": quarantine.total,
                "quarantined_by_reason": dict(sorted(quarantine.counts.items())),
                "dropped_heldout_overlap": sum(r.dropped_heldout_overlap for r in train_results),
                "workers": workers,
                "seconds": round(seconds, 3),
                "mb_per_s": round(total_bytes / 1e6 / seconds, 3) if seconds > 0 else None,
            }
        )
        metrics = dict(art.metrics)
    executors.remove_work(work)
    return metrics


def _link(src: Path, dst: Path) -> None:
    """Hard-link a finished scratch part into the artifact (same file system: no copy, no rewrite); for
    an object-store --out, the object its task uploaded (glasslm.data.storage)."""
    storage.place(src, dst)


def _assemble(root: Path, results: list[TaskResult]) -> dict[str, dict[str, int]]:
    """Number each split's parts in task order, link them in and write the split's index."""
    by_split: dict[str, list[Output]] = {}
    for r in results:
        for o in r.outputs:
            by_split.setdefault(o.split, []).append(o)
    splits: dict[str, dict[str, int]] = {}
    for split, outputs in sorted(by_split.items()):
        directory = root / split
        directory.mkdir(parents=True, exist_ok=True)
        columns: dict[str, list[Any]] = {"doc_id": [], "source": [], "part": [], "start": [], "end": []}
        for number, o in enumerate(outputs):
            _link(o.path, directory / f"part-{number:05d}.npy")
            columns["doc_id"].extend(o.doc_id)
            columns["source"].extend(o.source)
            columns["part"].append(np.full(len(o.doc_id), number, dtype=np.int32))
            columns["start"].append(o.start)
            columns["end"].append(o.end)
        table = pa.table(
            {
                "doc_id": pa.array(columns["doc_id"], pa.string()),
                "source": pa.array(columns["source"], pa.string()),
                "part": pa.array(np.concatenate(columns["part"]), pa.int32()),
                "start": pa.array(np.concatenate(columns["start"]), pa.int64()),
                "end": pa.array(np.concatenate(columns["end"]), pa.int64()),
            }
        )
        pq.write_table(table, directory / INDEX)
        splits[split] = {
            "docs": len(columns["doc_id"]),
            "tokens": sum(int(o.end[-1]) if len(o.end) else 0 for o in outputs),
            "bytes": int(sum(o.bytes for o in outputs)),
            "parts": len(outputs),
        }
    if TRAIN not in splits:
        raise ArtifactError("no training document survived (all quarantined or held out); nothing to write")
    return splits

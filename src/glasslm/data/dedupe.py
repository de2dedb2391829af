"""Deduplication: exact documents, exact paragraphs, and near duplicates (MinHash LSH).

Output is an ``attributes`` artifact (Dolma layout, one line per usable document line) with

- ``<exp>__dedupe__exact_doc``: ``[[0, len, 1.0]]`` when the text equals an earlier document's;
- ``<exp>__dedupe__near_doc``: ``[[0, len, 1.0]]`` when the document is in an LSH cluster whose
  survivor is an earlier document;
- ``<exp>__dedupe__paragraphs``: ``[[start, end, 1.0], …]`` for every paragraph (a ``\\n``-separated
  line, span including its newline) seen earlier, in this or an earlier document;

plus ``duplicates.parquet`` (shard, line, id, kind, duplicate_of, cluster, cluster_size, start,
end): Dolma attribute scores are numbers, so the surviving id of every duplicate lives here, and
the mixer copies it into the ledger's ``duplicate_of``.

"First" means the defined order: shards sorted by name, lines in file order. The first occurrence
survives. Hashing and MinHash run shard-parallel; the index step (which occurrence came first, and
the connected components of LSH buckets) is one sequential, vectorised pass in the driver because
"first in order" is a global property. It holds 8 bytes per document and per paragraph plus 8 bytes
per band per document. An exact sorted index was chosen over a Bloom filter because a Bloom filter
cannot say *which* document a duplicate repeats (the ledger needs ``duplicate_of``) and has false
positives; at 190 MB of text the whole index is a few tens of MB (reported as ``index_bytes``).
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from glasslm.config import ConfigError
from glasslm.data.dedupe_partitions import (
    PartitionTask,
    cluster_numbers,
    first_occurrence,
    index_partition,
    merge_decisions,
    write_key_files,
)
from glasslm.data.documents import (
    QUARANTINE_FILE,
    Location,
    Quarantine,
    attributes_path,
    iter_documents,
    shard_names,
    write_jsonl,
)
from glasslm.data.executors import STATE_SUFFIX, executor_name, load_state, map_shards, resumable
from glasslm.data.minhash import MinHasher, lsh_clusters
from glasslm.data.progress import reasons, stored_bytes

DUPLICATES_FILE = "duplicates.parquet"


@dataclass
class DedupeConfig:
    exact_docs: bool = True
    paragraphs: bool = True
    min_paragraph_chars: int = 1  # lines shorter than this (after stripping) are never duplicates
    near: bool = True
    ngram: int = 5  # FineWeb / datatrove defaults: word 5-grams, 14 bands x 8 rows
    bands: int = 14
    rows: int = 8
    seed: int = 1
    backend: str = "rensa"  # MinHash backend: rensa (fastest measured) or numpy
    batch_docs: int = 256  # documents per MinHash batch (bounds scratch memory)
    # 0: the index step in the driver (decide); N >= 1: N hash-range partitions, one task each
    # (dedupe_partitions.py): the same output bytes, ~1/N of the index per task.
    partitions: int = 0

    def validate(self) -> None:
        if self.backend not in ("rensa", "numpy"):
            raise ConfigError(f"config key 'dedupe.backend': '{self.backend}' is not one of rensa, numpy")
        for key in ("ngram", "bands", "rows", "batch_docs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'dedupe.{key}' must be >= 1, got {getattr(self, key)}")
        if self.partitions < 0:
            raise ConfigError(f"config key 'dedupe.partitions' must be >= 0, got {self.partitions}")


@dataclass
class DedupeJob:
    experiment: str = "dedupe"
    workers: int = 0  # 0: one per CPU
    executor: str = "process"
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)


@dataclass
class ShardTask:
    name: str
    path: Location
    config: DedupeConfig
    scratch: Path | None


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def paragraph_spans(text: str, min_chars: int = 1) -> list[tuple[int, int, str]]:
    """(start, end, content) of each ``\\n``-separated line; ``end`` includes the newline."""
    spans = []
    pos = 0
    for line in text.split("\n"):
        end = pos + len(line)
        stop = min(end + 1, len(text))
        if len(line.strip()) >= max(1, min_chars):
            spans.append((pos, stop, line))
        pos = end + 1
    return spans


def hash_shard(task: ShardTask) -> dict[str, Any]:
    """Per-shard hashes: whole texts, paragraphs, MinHash band keys (resumable via ``scratch``)."""
    if task.scratch is None:
        return _hash_shard(task)
    return resumable(task.scratch / f"hash-{_safe(task.name)}{STATE_SUFFIX}", lambda: _hash_shard(task))


def _safe(name: str) -> str:
    return name.replace("/", "__")


def _hash_shard(task: ShardTask) -> dict[str, Any]:
    cfg = task.config
    quarantine = Quarantine()
    ids: list[str] = []
    lines: list[int] = []
    lengths: list[int] = []
    nbytes: list[int] = []
    doc_hash: list[int] = []
    para_hash: list[int] = []
    para_doc: list[int] = []
    para_start: list[int] = []
    para_end: list[int] = []
    texts: list[str] = []
    keys: list[np.ndarray] = []
    hasher = MinHasher(ngram=cfg.ngram, bands=cfg.bands, rows=cfg.rows, seed=cfg.seed, backend=cfg.backend)

    def flush() -> None:
        if texts and cfg.near:
            keys.append(hasher.band_keys(texts))
        texts.clear()

    for line, doc in iter_documents(task.path, quarantine, seen_ids=set()):
        text: str = doc["text"]
        raw = text.encode("utf-8", "surrogatepass")
        i = len(ids)
        ids.append(doc["id"])
        lines.append(line)
        lengths.append(len(text))
        nbytes.append(len(raw))
        doc_hash.append(_hash64(raw))
        if cfg.paragraphs:
            for start, end, content in paragraph_spans(text, cfg.min_paragraph_chars):
                para_hash.append(_hash64(content.encode("utf-8", "surrogatepass")))
                para_doc.append(i)
                para_start.append(start)
                para_end.append(end)
        if cfg.near:
            texts.append(text)
            if len(texts) >= cfg.batch_docs:
                flush()
    flush()
    return {
        "name": task.name,
        "ids": ids,
        "lines": np.asarray(lines, dtype=np.int64),
        "lengths": np.asarray(lengths, dtype=np.int64),
        "bytes": np.asarray(nbytes, dtype=np.int64),
        "doc_hash": np.asarray(doc_hash, dtype=np.uint64),
        "para_hash": np.asarray(para_hash, dtype=np.uint64),
        "para_doc": np.asarray(para_doc, dtype=np.int64),
        "para_start": np.asarray(para_start, dtype=np.int64),
        "para_end": np.asarray(para_end, dtype=np.int64),
        "keys": np.concatenate(keys) if keys else np.zeros((0, cfg.bands), dtype=np.uint64),
        "quarantine": quarantine.records,
    }


@dataclass
class DedupeResult:
    """Global decisions, indexed by the global document number (shard order, then line order)."""

    exact_of: np.ndarray  # int64: index of the earlier identical document, or -1
    near_of: np.ndarray  # int64: index of the cluster survivor when it is another document, or -1
    cluster_size: np.ndarray  # int64: documents in this document's LSH cluster
    para_of: np.ndarray  # int64 per paragraph: document holding its first occurrence, or -1
    index_bytes: int


def decide(parts: list[dict[str, Any]], config: DedupeConfig) -> DedupeResult:
    """The sequential index step over all shards' hashes (see module docstring for why)."""
    doc_hash = np.concatenate([p["doc_hash"] for p in parts]) if parts else np.zeros(0, np.uint64)
    n = len(doc_hash)
    index = np.arange(n)
    exact_of = np.full(n, -1, dtype=np.int64)
    if config.exact_docs:
        first = first_occurrence(doc_hash)
        exact_of = np.where(first != index, first, -1)
    near_of = np.full(n, -1, dtype=np.int64)
    cluster_size = np.ones(n, dtype=np.int64)
    keys = (
        np.concatenate([p["keys"] for p in parts]) if config.near and parts else np.zeros((0, 0), np.uint64)
    )
    if config.near and n:
        roots = lsh_clusters(keys)
        near_of = np.where(roots != index, roots, -1)
        cluster_size = np.bincount(roots, minlength=n)[roots]
    para_of = np.zeros(0, dtype=np.int64)
    para_bytes = 0
    if config.paragraphs and parts:
        offsets = np.cumsum([0] + [len(p["ids"]) for p in parts[:-1]])
        para_hash = np.concatenate([p["para_hash"] for p in parts])
        para_doc = np.concatenate([p["para_doc"] + off for p, off in zip(parts, offsets, strict=True)])
        first = first_occurrence(para_hash)
        para_of = np.where(first != np.arange(len(para_hash)), para_doc[first], -1)
        para_bytes = para_hash.nbytes + para_doc.nbytes
    return DedupeResult(
        exact_of=exact_of,
        near_of=near_of,
        cluster_size=cluster_size,
        para_of=para_of,
        index_bytes=int(doc_hash.nbytes + keys.nbytes + para_bytes),
    )


@dataclass
class ShardDecisions:
    """One shard's duplicates, sparse: local positions and the global number of what they repeat.

    Both index paths (single driver and partitioned) produce these, and :func:`write_shard` turns
    them into bytes, so the two paths share every line of output code.
    """

    exact: tuple[np.ndarray, np.ndarray]  # (local doc, global doc it repeats)
    near: tuple[
        np.ndarray, np.ndarray, np.ndarray, np.ndarray
    ]  # (local doc, survivor, cluster size, cluster number)
    para: tuple[np.ndarray, np.ndarray]  # (local paragraph, global doc holding the first occurrence)
    ids: dict[int, str]  # id of every global doc named above


def split_decisions(parts: list[dict[str, Any]], result: DedupeResult) -> list[ShardDecisions]:
    """Per-shard sparse decisions from the single driver's dense arrays."""
    all_ids = [i for p in parts for i in p["ids"]]
    near_docs = np.flatnonzero(result.near_of >= 0)
    numbers = np.full(len(result.near_of), -1, dtype=np.int64)
    numbers[near_docs] = cluster_numbers(result.near_of[near_docs])
    out = []
    g = p_global = 0
    for part in parts:
        n, m = len(part["ids"]), len(part["para_doc"])
        exact_of = result.exact_of[g : g + n] if len(result.exact_of) else np.full(n, -1, np.int64)
        near_of = result.near_of[g : g + n] if len(result.near_of) else np.full(n, -1, np.int64)
        para_of = result.para_of[p_global : p_global + m] if len(result.para_of) else np.full(m, -1, np.int64)
        e, k, q = np.flatnonzero(exact_of >= 0), np.flatnonzero(near_of >= 0), np.flatnonzero(para_of >= 0)
        named = np.concatenate([exact_of[e], near_of[k], para_of[q]])
        out.append(
            ShardDecisions(
                exact=(e, exact_of[e]),
                near=(k, near_of[k], result.cluster_size[g : g + n][k], numbers[g : g + n][k]),
                para=(q, para_of[q]),
                ids={int(i): all_ids[int(i)] for i in np.unique(named)},
            )
        )
        g += n
        p_global += m
    return out


DUPLICATE_COLUMNS = ("shard", "line", "id", "kind", "duplicate_of", "cluster", "cluster_size", "start", "end")
COUNT_KEYS = ("exact_doc", "near_doc", "paragraphs", "exact_doc_bytes", "paragraph_chars")


def write_shard(
    root: Path, part: dict[str, Any], dec: ShardDecisions, job: DedupeJob
) -> tuple[dict[str, list[Any]], dict[str, int]]:
    """Write one shard's attribute file; returns its ``duplicates.parquet`` rows and counts."""
    exp = job.experiment
    cfg = job.dedupe
    n, m = len(part["ids"]), len(part["para_doc"])

    def dense(index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
        array = np.full(size, -1, dtype=np.int64)
        array[np.asarray(index, dtype=np.int64)] = values
        return array

    exact_of, para_of = dense(*dec.exact, n), dense(*dec.para, m)
    near_of, cluster_size, cluster_no = (dense(dec.near[0], v, n) for v in dec.near[1:])
    rows: dict[str, list[Any]] = {k: [] for k in DUPLICATE_COLUMNS}
    counts = dict.fromkeys(COUNT_KEYS, 0)

    def add(
        line: int,
        doc_id: str,
        kind: str,
        of: int,
        cluster: int | None,
        size: int | None,
        start: int | None,
        end: int | None,
    ) -> None:
        values = (part["name"], line, doc_id, kind, dec.ids[of], cluster, size, start, end)
        for key, value in zip(rows, values, strict=True):
            rows[key].append(value)

    records = []
    para_cursor = 0
    for i, doc_id in enumerate(part["ids"]):
        length = int(part["lengths"][i])
        line = int(part["lines"][i])
        attrs: dict[str, list[list[float]]] = {}
        if cfg.exact_docs:
            of = int(exact_of[i])
            attrs[f"{exp}__dedupe__exact_doc"] = [[0, length, 1.0]] if of >= 0 else []
            if of >= 0:
                counts["exact_doc"] += 1
                counts["exact_doc_bytes"] += int(part["bytes"][i])
                add(line, doc_id, "exact_doc", of, None, None, None, None)
        if cfg.near:
            of = int(near_of[i])
            attrs[f"{exp}__dedupe__near_doc"] = [[0, length, 1.0]] if of >= 0 else []
            if of >= 0:
                counts["near_doc"] += 1
                add(line, doc_id, "near_doc", of, int(cluster_no[i]), int(cluster_size[i]), None, None)
        if cfg.paragraphs:
            spans = []
            while para_cursor < m and part["para_doc"][para_cursor] == i:
                of = int(para_of[para_cursor])
                if of >= 0:
                    start, end = int(part["para_start"][para_cursor]), int(part["para_end"][para_cursor])
                    spans.append([start, end, 1.0])
                    counts["paragraphs"] += 1
                    counts["paragraph_chars"] += end - start
                    add(line, doc_id, "paragraph", of, None, None, start, end)
                para_cursor += 1
            attrs[f"{exp}__dedupe__paragraphs"] = spans
        records.append({"id": doc_id, "attributes": attrs})
    write_jsonl(attributes_path(root, part["name"]), records)
    return rows, counts


def write_duplicates(root: Path, pieces: list[tuple[dict[str, list[Any]], dict[str, int]]]) -> dict[str, int]:
    """``duplicates.parquet`` from the shards' rows, in shard order; returns the summed counts."""
    rows = {k: [v for piece, _ in pieces for v in piece[k]] for k in DUPLICATE_COLUMNS}
    schema = pa.schema(
        [
            ("shard", pa.string()),
            ("line", pa.int64()),
            ("id", pa.string()),
            ("kind", pa.string()),
            ("duplicate_of", pa.string()),
            ("cluster", pa.int64()),
            ("cluster_size", pa.int64()),
            ("start", pa.int64()),
            ("end", pa.int64()),
        ]
    )
    pq.write_table(pa.table(rows, schema=schema), root / DUPLICATES_FILE)
    return {k: sum(c[k] for _, c in pieces) for k in COUNT_KEYS}


def write_outputs(
    root: Path, parts: list[dict[str, Any]], result: DedupeResult, job: DedupeJob
) -> dict[str, int]:
    """Attribute files (one per shard) and ``duplicates.parquet``; returns counts for the manifest."""
    decisions = split_decisions(parts, result)
    return write_duplicates(
        root, [write_shard(root, p, d, job) for p, d in zip(parts, decisions, strict=True)]
    )


def run(documents: Path, root: Path, job: DedupeJob, scratch: Path | None = None) -> dict[str, Any]:
    """Deduplicate the ``documents`` artifact into the attributes directory ``root``; returns metrics."""
    started = time.perf_counter()
    if job.dedupe.partitions < 0:
        raise ValueError(
            f"dedupe: partitions must be 0 (index in the driver) or more, got {job.dedupe.partitions}"
        )
    if job.dedupe.partitions == 0:
        summary, index = _run_single(documents, root, job, scratch)
    else:
        with contextlib.ExitStack() as stack:
            if scratch is None:  # the partitioned path passes keys through files
                scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="glasslm-dedupe-")))
            summary, index = _run_partitioned(documents, root, job, scratch)
    counts, shards, quarantine = summary
    elapsed = time.perf_counter() - started
    total_bytes = int(sum(s["bytes"] for s in shards))
    quarantine.write(root / QUARANTINE_FILE)
    return {
        "shards": len(shards),
        "documents": int(sum(s["documents"] for s in shards)),
        "bytes": total_bytes,
        "quarantined_lines": quarantine.total,
        "quarantined_by_reason": dict(sorted(quarantine.counts.items())),
        "exact_duplicate_docs": counts["exact_doc"],
        "exact_duplicate_bytes": counts["exact_doc_bytes"],
        "near_duplicate_docs": counts["near_doc"],
        "duplicate_paragraphs": counts["paragraphs"],
        "duplicate_paragraph_chars": counts["paragraph_chars"],
        **index,
        "seconds_total": round(elapsed, 3),
        "mb_per_s": round(total_bytes / 1e6 / elapsed, 3) if elapsed > 0 else None,
    }


_Summary = tuple[dict[str, int], list[dict[str, Any]], Quarantine]


def _size(part: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": part["name"],
        "documents": len(part["ids"]),
        "paragraphs": len(part["para_doc"]),
        "bytes": int(np.asarray(part["bytes"]).sum()),
        "quarantine": part["quarantine"],
    }


def _summary(counts: dict[str, int], shards: list[dict[str, Any]]) -> _Summary:
    return counts, shards, Quarantine.of(r for s in shards for r in s["quarantine"])


def _run_single(
    documents: Path, root: Path, job: DedupeJob, scratch: Path | None
) -> tuple[_Summary, dict[str, Any]]:
    started = time.perf_counter()
    tasks = [ShardTask(name, path, job.dedupe, scratch) for name, path in shard_names(documents)]
    parts = map_shards(
        hash_shard,
        tasks,
        workers=job.workers or None,
        executor=executor_name(job.executor),
        desc="dedupe: hash",
        sizes=[stored_bytes(t.path) for t in tasks],
        quarantined=lambda part: reasons(part["quarantine"]),
    )
    hashed = time.perf_counter()
    result = decide(parts, job.dedupe)
    counts = write_outputs(root, parts, result, job)
    return _summary(counts, [_size(p) for p in parts]), {
        "index_bytes": result.index_bytes,
        "seconds_hash": round(hashed - started, 3),
    }


# --- the partitioned path: shard tasks, partition tasks, shard tasks (see dedupe_partitions.py) ---


@dataclass
class PartitionedShardTask:
    shard: ShardTask
    partitions: int


def hash_and_partition(task: PartitionedShardTask) -> dict[str, Any]:
    """Hash one shard (resumable), write its keys split by partition; return only its sizes."""
    part = hash_shard(task.shard)
    assert task.shard.scratch is not None
    write_key_files(part, task.shard.scratch, task.partitions)
    return _size(part)


def _state(scratch: Path, name: str) -> dict[str, Any]:
    part = load_state(scratch / f"hash-{_safe(name)}{STATE_SUFFIX}")  # what hash_shard saved
    if part is None:
        raise FileNotFoundError(f"dedupe: the hashed state of shard {name} is missing from {scratch}; rerun")
    return part


@dataclass
class IdsTask:
    name: str
    scratch: Path
    positions: np.ndarray  # local document positions whose ids are wanted


def shard_ids(task: IdsTask) -> list[str]:
    ids = _state(task.scratch, task.name)["ids"]
    return [str(ids[int(i)]) for i in task.positions]


@dataclass
class WriteTask:
    root: Path
    name: str
    scratch: Path
    decisions: ShardDecisions
    job: DedupeJob


def write_partitioned_shard(task: WriteTask) -> tuple[dict[str, list[Any]], dict[str, int]]:
    return write_shard(task.root, _state(task.scratch, task.name), task.decisions, task.job)


def _run_partitioned(
    documents: Path, root: Path, job: DedupeJob, scratch: Path
) -> tuple[_Summary, dict[str, Any]]:
    started = time.perf_counter()
    cfg, p = job.dedupe, job.dedupe.partitions
    run_on: dict[str, Any] = {"workers": job.workers or None, "executor": executor_name(job.executor)}
    names = shard_names(documents)
    sizes = map_shards(
        hash_and_partition,
        [PartitionedShardTask(ShardTask(n, path, cfg, scratch), p) for n, path in names],
        desc="dedupe: hash",
        sizes=[stored_bytes(path) for _, path in names],
        quarantined=lambda size: reasons(size["quarantine"]),
        **run_on,
    )
    hashed = time.perf_counter()
    doc_offsets = np.cumsum([0] + [s["documents"] for s in sizes])
    para_offsets = np.cumsum([0] + [s["paragraphs"] for s in sizes])
    shard_list = [s["name"] for s in sizes]
    indexed = map_shards(
        index_partition,
        [
            PartitionTask(
                k,
                p,
                scratch,
                shard_list,
                doc_offsets[:-1].tolist(),
                para_offsets[:-1].tolist(),
                exact_docs=cfg.exact_docs,
                paragraphs=cfg.paragraphs,
                near=cfg.near,
            )
            for k in range(p)
        ],
        desc="dedupe: index",
        unit="partitions",
        **run_on,
    )
    per_shard, named = merge_decisions(indexed, doc_offsets, para_offsets)
    owner = np.searchsorted(doc_offsets, named, side="right") - 1
    id_lists = map_shards(
        shard_ids,
        [IdsTask(n, scratch, named[owner == s] - doc_offsets[s]) for s, n in enumerate(shard_list)],
        desc="dedupe: ids",
        **run_on,
    )
    ids = dict(zip(named.tolist(), (i for chunk in id_lists for i in chunk), strict=True))
    writes = []
    for name, d in zip(shard_list, per_shard, strict=True):
        wanted = np.concatenate([d["exact_of"], d["root"], d["para_of"]])
        decisions = ShardDecisions(
            exact=(d["exact"], d["exact_of"]),
            near=(d["near"], d["root"], d["size"], d["number"]),
            para=(d["para"], d["para_of"]),
            ids={int(i): ids[int(i)] for i in np.unique(wanted)},
        )
        writes.append(WriteTask(root, name, scratch, decisions, job))
    counts = write_duplicates(
        root, map_shards(write_partitioned_shard, writes, desc="dedupe: write", **run_on)
    )
    return _summary(counts, sizes), {
        "index_bytes": int(max((r["index_bytes"] for r in indexed), default=0)),
        "index_bytes_total": int(sum(r["index_bytes"] for r in indexed)),
        "partitions": p,
        "peak_rss_per_partition_task": int(max((r["peak_rss"] for r in indexed), default=0)),
        "seconds_hash": round(hashed - started, 3),
    }

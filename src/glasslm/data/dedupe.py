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

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from glasslm.data.documents import (
    QUARANTINE_FILE,
    Quarantine,
    attributes_path,
    iter_documents,
    shard_names,
    write_jsonl,
)
from glasslm.data.executors import STATE_SUFFIX, executor_name, map_shards, resumable
from glasslm.data.minhash import MinHasher, lsh_clusters

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


@dataclass
class DedupeJob:
    experiment: str = "dedupe"
    workers: int = 0  # 0: one per CPU
    executor: str = "process"
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)


@dataclass
class ShardTask:
    name: str
    path: Path
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


def first_occurrence(hashes: np.ndarray) -> np.ndarray:
    """For each item, the position of the first item with the same hash (itself if it is first)."""
    if len(hashes) == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)].astype(np.int64)


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
    keys = np.concatenate([p["keys"] for p in parts]) if config.near and parts else np.zeros((0, 0), np.uint64)
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


def write_outputs(root: Path, parts: list[dict[str, Any]], result: DedupeResult, job: DedupeJob) -> dict[str, int]:
    """Attribute files (one per shard) and ``duplicates.parquet``; returns counts for the manifest."""
    exp = job.experiment
    cfg = job.dedupe
    all_ids = [i for p in parts for i in p["ids"]]
    rows: dict[str, list[Any]] = {k: [] for k in ("shard", "line", "id", "kind", "duplicate_of", "cluster",
                                                   "cluster_size", "start", "end")}
    counts = {"exact_doc": 0, "near_doc": 0, "paragraphs": 0, "exact_doc_bytes": 0, "paragraph_chars": 0}
    clusters: dict[int, int] = {}

    def add(shard: str, line: int, doc_id: str, kind: str, of: int, cluster: int | None, size: int | None,
            start: int | None, end: int | None) -> None:
        for key, value in zip(rows, (shard, line, doc_id, kind, all_ids[of], cluster, size, start, end), strict=True):
            rows[key].append(value)

    g = 0
    p_global = 0
    for part in parts:
        records = []
        para_cursor = 0
        for i, doc_id in enumerate(part["ids"]):
            length = int(part["lengths"][i])
            line = int(part["lines"][i])
            attrs: dict[str, list[list[float]]] = {}
            if cfg.exact_docs:
                of = int(result.exact_of[g])
                attrs[f"{exp}__dedupe__exact_doc"] = [[0, length, 1.0]] if of >= 0 else []
                if of >= 0:
                    counts["exact_doc"] += 1
                    counts["exact_doc_bytes"] += int(part["bytes"][i])
                    add(part["name"], line, doc_id, "exact_doc", of, None, None, None, None)
            if cfg.near:
                of = int(result.near_of[g])
                attrs[f"{exp}__dedupe__near_doc"] = [[0, length, 1.0]] if of >= 0 else []
                if of >= 0:
                    counts["near_doc"] += 1
                    cluster = clusters.setdefault(of, len(clusters))
                    add(part["name"], line, doc_id, "near_doc", of, cluster, int(result.cluster_size[g]), None, None)
            if cfg.paragraphs:
                spans = []
                while para_cursor < len(part["para_doc"]) and part["para_doc"][para_cursor] == i:
                    of = int(result.para_of[p_global + para_cursor])
                    if of >= 0:
                        start, end = int(part["para_start"][para_cursor]), int(part["para_end"][para_cursor])
                        spans.append([start, end, 1.0])
                        counts["paragraphs"] += 1
                        counts["paragraph_chars"] += end - start
                        add(part["name"], line, doc_id, "paragraph", of, None, None, start, end)
                    para_cursor += 1
                attrs[f"{exp}__dedupe__paragraphs"] = spans
            records.append({"id": doc_id, "attributes": attrs})
            g += 1
        p_global += len(part["para_doc"])
        write_jsonl(attributes_path(root, part["name"]), records)
    schema = pa.schema([
        ("shard", pa.string()), ("line", pa.int64()), ("id", pa.string()), ("kind", pa.string()),
        ("duplicate_of", pa.string()), ("cluster", pa.int64()), ("cluster_size", pa.int64()),
        ("start", pa.int64()), ("end", pa.int64()),
    ])
    pq.write_table(pa.table(rows, schema=schema), root / DUPLICATES_FILE)
    return counts


def run(documents: Path, root: Path, job: DedupeJob, scratch: Path | None = None) -> dict[str, Any]:
    """Deduplicate the ``documents`` artifact into the attributes directory ``root``; returns metrics."""
    started = time.perf_counter()
    tasks = [ShardTask(name, path, job.dedupe, scratch) for name, path in shard_names(documents)]
    parts = map_shards(hash_shard, tasks, workers=job.workers or None, executor=executor_name(job.executor),
                       desc="dedupe: hash")
    hashed = time.perf_counter()
    result = decide(parts, job.dedupe)
    counts = write_outputs(root, parts, result, job)
    elapsed = time.perf_counter() - started
    total_bytes = int(sum(int(p["bytes"].sum()) for p in parts))
    quarantine = Quarantine.of(r for p in parts for r in p["quarantine"])
    quarantine.write(root / QUARANTINE_FILE)
    return {
        "shards": len(parts),
        "documents": int(sum(len(p["ids"]) for p in parts)),
        "bytes": total_bytes,
        "quarantined_lines": quarantine.total,
        "quarantined_by_reason": dict(sorted(quarantine.counts.items())),
        "exact_duplicate_docs": counts["exact_doc"],
        "exact_duplicate_bytes": counts["exact_doc_bytes"],
        "near_duplicate_docs": counts["near_doc"],
        "duplicate_paragraphs": counts["paragraphs"],
        "duplicate_paragraph_chars": counts["paragraph_chars"],
        "index_bytes": result.index_bytes,
        "seconds_hash": round(hashed - started, 3),
        "seconds_total": round(elapsed, 3),
        "mb_per_s": round(total_bytes / 1e6 / elapsed, 3) if elapsed > 0 else None,
    }


"""The dedupe index step scaled out: hash-range partitions, one task each, no global gather.

The single-driver index (:func:`glasslm.data.dedupe.decide`) holds 8 bytes per document, per
paragraph and per band per document in one process. Here every key goes to the partition that owns
its hash range (the top 32 bits, scaled to ``partitions``), so one task holds only its share:

1. each shard task hashes its shard (as before) and writes one key file per partition into the work
   directory: document hashes, paragraph hashes and LSH band keys, each with its position in the
   shard;
2. each partition task reads its key file from every shard, numbers the keys globally (shard
   offsets come from the driver: shards sorted by name, lines in file order) and decides locally,
   because equal keys always share a partition: the first occurrence of a hash is the smallest
   global number among equal hashes, exactly as in the single pass. For LSH it emits the edges
   "document → first document with the same (band, key)", only for keys seen more than once;
3. the driver joins those edges into connected components by iterated min-label propagation with
   pointer jumping. It holds only documents that collide in some band (the candidate near
   duplicates), never all keys; the label of a component is its smallest global number, the
   survivor, as in :func:`glasslm.data.minhash.lsh_clusters`;
4. shard tasks write the attribute files from their sparse decisions with the same
   :func:`glasslm.data.dedupe.write_shard` as the single path, so the output is the same bytes.

The work directory must be visible to every worker (one machine, or a shared file system for a Ray
cluster across machines).
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glasslm.data.executors import STATE_SUFFIX, load_state, resumable, save_state

_EMPTY = np.zeros(0, dtype=np.int64)


def first_occurrence(hashes: np.ndarray) -> np.ndarray:
    """For each item, the position of the first item with the same hash (itself if it is first)."""
    if len(hashes) == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)].astype(np.int64)


def cluster_numbers(roots: np.ndarray) -> np.ndarray:
    """Number clusters by first appearance of their survivor in ``roots`` (near duplicates in global order)."""
    if len(roots) == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def partition_of(hashes: np.ndarray, partitions: int) -> np.ndarray:
    """The partition owning each uint64 hash: contiguous ranges of the top 32 bits."""
    top = np.asarray(hashes, dtype=np.uint64) >> np.uint64(32)
    return ((top * np.uint64(partitions)) >> np.uint64(32)).astype(np.int64)


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    Linux: ``VmHWM`` of this address space, because ``ru_maxrss`` survives ``exec`` and would report
    the parent's peak in a freshly spawned worker. Elsewhere ``ru_maxrss`` (macOS bytes, BSD KiB).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def key_file(scratch: Path, name: str, partition: int, partitions: int) -> Path:
    return scratch / f"keys-{name.replace('/', '__')}-{partition}of{partitions}{STATE_SUFFIX}"


def write_key_files(part: dict[str, Any], scratch: Path, partitions: int) -> None:
    """Split one hashed shard's keys by partition, one file each (kept when a rerun finds them)."""
    band_doc, band_no = np.nonzero(part["keys"] != 0)  # a key of 0 means "no words": never a match
    band_key = part["keys"][band_doc, band_no]
    owner = {
        "doc": partition_of(part["doc_hash"], partitions),
        "para": partition_of(part["para_hash"], partitions),
        "band": partition_of(band_key, partitions),
    }
    for k in range(partitions):
        path = key_file(scratch, part["name"], k, partitions)
        if load_state(path) is not None:
            continue  # written by an interrupted run of the same job
        d, q, b = (np.flatnonzero(owner[x] == k) for x in ("doc", "para", "band"))
        save_state(
            path,
            {
                "doc_hash": part["doc_hash"][d],
                "doc": d,
                "para_hash": part["para_hash"][q],
                "para": q,
                "para_doc": part["para_doc"][q],
                "band_key": band_key[b],
                "band_no": band_no[b].astype(np.int64),
                "band_doc": band_doc[b].astype(np.int64),
            },
        )


@dataclass
class PartitionTask:
    partition: int
    partitions: int
    scratch: Path
    names: list[str]
    doc_offsets: list[int]  # global number of each shard's first document
    para_offsets: list[int]  # global number of each shard's first paragraph
    exact_docs: bool = True
    paragraphs: bool = True
    near: bool = True


def index_partition(task: PartitionTask) -> dict[str, Any]:
    """Decide one partition (resumable); returns sparse duplicate pairs, LSH edges and memory used."""
    path = task.scratch / f"index-{task.partition}of{task.partitions}{STATE_SUFFIX}"
    return resumable(path, lambda: _index_partition(task))


def _gather(task: PartitionTask) -> dict[str, np.ndarray]:
    pieces: dict[str, list[np.ndarray]] = {
        k: [] for k in ("doc_hash", "doc", "para_hash", "para", "para_doc", "band_key", "band_no", "band_doc")
    }
    for name, doc_off, para_off in zip(task.names, task.doc_offsets, task.para_offsets, strict=True):
        state = load_state(key_file(task.scratch, name, task.partition, task.partitions))
        if state is None:
            raise FileNotFoundError(
                f"dedupe: key file of shard {name}, partition {task.partition} is missing"
            )
        for key, shift in (
            ("doc", doc_off),
            ("para", para_off),
            ("para_doc", doc_off),
            ("band_doc", doc_off),
        ):
            state[key] = state[key] + shift  # local positions → global numbers
        for key in pieces:
            pieces[key].append(state[key])
    return {k: np.concatenate(v) if v else _EMPTY for k, v in pieces.items()}


def _index_partition(task: PartitionTask) -> dict[str, Any]:
    keys = _gather(task)  # shards in order and positions ascending: global numbers ascend
    out: dict[str, Any] = {"index_bytes": int(sum(v.nbytes for v in keys.values()))}
    first = first_occurrence(keys["doc_hash"])
    dup = np.flatnonzero(first != np.arange(len(first))) if task.exact_docs else _EMPTY
    out["exact_doc"], out["exact_of"] = keys["doc"][dup], keys["doc"][first[dup]]
    first = first_occurrence(keys["para_hash"])
    dup = np.flatnonzero(first != np.arange(len(first))) if task.paragraphs else _EMPTY
    out["para"], out["para_of"] = keys["para"][dup], keys["para_doc"][first[dup]]
    out["edge_from"], out["edge_to"] = _band_edges(keys) if task.near else (_EMPTY, _EMPTY)
    out["peak_rss"] = peak_rss_bytes()
    return out


def _band_edges(keys: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(document, first document with the same band key) for every later document in a bucket."""
    order = np.lexsort((keys["band_doc"], keys["band_key"], keys["band_no"]))
    key, band, doc = keys["band_key"][order], keys["band_no"][order], keys["band_doc"][order]
    if len(doc) < 2:
        return _EMPTY, _EMPTY
    same = np.concatenate([[False], (key[1:] == key[:-1]) & (band[1:] == band[:-1])])
    run_start = np.maximum.accumulate(np.where(same, 0, np.arange(len(doc))))
    later = np.flatnonzero(same)
    pairs = np.unique(np.stack([doc[later], doc[run_start[later]]], axis=1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def components(edge_from: np.ndarray, edge_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(node, smallest node of its component) for every node on an edge, by min-label propagation."""
    nodes, inverse = np.unique(np.concatenate([edge_from, edge_to]), return_inverse=True)
    u, v = inverse[: len(edge_from)], inverse[len(edge_from) :]
    label = np.arange(len(nodes))  # nodes are sorted, so the smallest label is the smallest number
    while True:
        new = label.copy()
        np.minimum.at(new, u, label[v])
        np.minimum.at(new, v, label[u])
        while True:  # pointer jumping: follow labels to their fixed point
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            return nodes, nodes[label]
        label = new


def merge_decisions(
    indexed: list[dict[str, Any]],
    doc_offsets: np.ndarray,
    para_offsets: np.ndarray,
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """The partitions' sparse results split per shard (local positions), and every global doc they name."""

    def cat(key: str) -> np.ndarray:
        return np.concatenate([r[key] for r in indexed]).astype(np.int64) if indexed else _EMPTY

    exact_doc, exact_of, para, para_of = cat("exact_doc"), cat("exact_of"), cat("para"), cat("para_of")
    near_doc, root = components(cat("edge_from"), cat("edge_to"))
    sizes = np.unique(root, return_counts=True)
    size = sizes[1][np.searchsorted(sizes[0], root)]
    keep = near_doc != root
    near_doc, root, size = near_doc[keep], root[keep], size[keep]  # sorted by global number already
    number = cluster_numbers(root)
    shards: list[dict[str, np.ndarray]] = []
    n_shards = len(doc_offsets) - 1

    def split(index: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
        order = np.argsort(index, kind="stable")
        cuts = np.searchsorted(index[order], offsets)
        return [order[cuts[s] : cuts[s + 1]] for s in range(n_shards)]

    exact_rows, near_rows, para_rows = (
        split(exact_doc, doc_offsets),
        split(near_doc, doc_offsets),
        split(para, para_offsets),
    )
    for s in range(n_shards):
        e, k, q = exact_rows[s], near_rows[s], para_rows[s]
        shards.append(
            {
                "exact": exact_doc[e] - doc_offsets[s],
                "exact_of": exact_of[e],
                "near": near_doc[k] - doc_offsets[s],
                "root": root[k],
                "size": size[k],
                "number": number[k],
                "para": para[q] - para_offsets[s],
                "para_of": para_of[q],
            }
        )
    named = np.unique(np.concatenate([exact_of, root, para_of]))
    return shards, named

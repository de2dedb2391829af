"""Partitioned dedupe (issue #19): the same bytes as the single-driver index, and its parts exactly."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from glasslm.data import dedupe
from glasslm.data.dedupe_partitions import components, partition_of
from glasslm.data.documents import write_jsonl
from glasslm.data.executors import work_dir
from glasslm.data.minhash import lsh_clusters


def corpus(root: Path, shards: int = 5, docs: int = 40, seed: int = 0) -> Path:
    """Shards with exact, near and paragraph duplicates, across and within shards."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(300)]
    pool: list[str] = []
    paragraphs = [" ".join(rng.choices(vocab, k=12)) for _ in range(30)]
    for s in range(shards):
        rows = []
        for i in range(docs):
            roll = rng.random()
            if pool and roll < 0.15:
                text = rng.choice(pool)  # exact repeat
            elif pool and roll < 0.3:
                words = rng.choice(pool).split(" ")
                words[rng.randrange(len(words))] = "changed"  # near repeat
                text = " ".join(words)
            else:
                text = "\n".join(
                    rng.choice(paragraphs) if rng.random() < 0.3 else " ".join(rng.choices(vocab, k=60))
                    for _ in range(rng.randint(1, 4))
                )
            pool.append(text)
            rows.append({"id": f"s{s}-d{i}", "text": text})
        rows.insert(3, {"id": f"bad-{s}"})  # quarantined: no text
        write_jsonl(root / "documents" / f"shard-{s:02d}.jsonl", rows)
    return root


def outputs(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes], dict]:
    base = tmp_path_factory.mktemp("dd")
    docs = corpus(base / "docs")
    out = base / "single"
    metrics = dedupe.run(docs, out, dedupe.DedupeJob(workers=1, executor="local"))
    return docs, outputs(out), metrics


@pytest.mark.parametrize("partitions", [1, 16])
def test_partitioned_output_is_byte_identical(
    single: tuple[Path, dict[str, bytes], dict], tmp_path: Path, partitions: int
) -> None:
    docs, expected, metrics = single
    assert metrics["exact_duplicate_docs"] > 5 and metrics["near_duplicate_docs"] > 5
    assert metrics["duplicate_paragraphs"] > 5 and metrics["quarantined_lines"] == 5
    job = dedupe.DedupeJob(workers=2, executor="process", dedupe=dedupe.DedupeConfig(partitions=partitions))
    scratch = work_dir(tmp_path / "out", "fp")
    got = dedupe.run(docs, tmp_path / "out", job, scratch=scratch)
    assert outputs(tmp_path / "out") == expected
    for key in (
        "exact_duplicate_docs",
        "near_duplicate_docs",
        "duplicate_paragraphs",
        "quarantined_by_reason",
    ):
        assert got[key] == metrics[key]
    # each task holds its share of the keys (with positions: ~2.5x the driver's 8 bytes per key)
    assert got["partitions"] == partitions and got["index_bytes_total"] < 3 * metrics["index_bytes"]
    assert got["index_bytes"] < 2 * got["index_bytes_total"] / partitions
    # a rerun resumes from the scratch files and still writes the same bytes
    again = dedupe.run(docs, tmp_path / "again", job, scratch=scratch)
    assert outputs(tmp_path / "again") == expected and again["documents"] == metrics["documents"]


def test_partitions_split_the_hash_range_evenly() -> None:
    hashes = np.random.default_rng(0).integers(0, 2**64 - 1, size=40_000, dtype=np.uint64)
    counts = np.bincount(partition_of(hashes, 16), minlength=16)
    assert counts.sum() == 40_000 and counts.min() > 2_000 and counts.max() < 3_000
    assert partition_of(np.array([0, 2**64 - 1], dtype=np.uint64), 16).tolist() == [0, 15]


def test_components_match_union_find() -> None:
    rng = np.random.default_rng(1)
    keys = rng.integers(1, 40, size=(300, 3)).astype(np.uint64)  # many collisions, long chains
    roots = lsh_clusters(keys)
    edges = [(i, j) for b in range(3) for i in range(300) for j in range(i) if keys[i, b] == keys[j, b]]
    src, dst = np.array([e[0] for e in edges]), np.array([e[1] for e in edges])
    nodes, root = components(src, dst)
    assert np.array_equal(root, roots[nodes])

"""Deduplication: exact documents, exact paragraphs, MinHash near duplicates, survivors first in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from glasslm.artifacts import create_artifact, read_manifest
from glasslm.cli import main
from glasslm.data.documents import read_jsonl, write_jsonl
from glasslm.data.minhash import MinHasher, lsh_clusters, words

BASE = " ".join(f"w{i}" for i in range(400))


def make_docs(root: Path, shards: dict[str, list[dict]]) -> Path:
    with create_artifact(root, "documents") as w:
        for name, docs in shards.items():
            write_jsonl(w.path / "documents" / name, docs)
    return root


def test_words_normalise_case_and_punctuation() -> None:
    w = words(["Hello, WORLD!", "hello world", "héllo"])
    assert w.counts.tolist() == [2, 2, 1]
    assert w.hashes[0] == w.hashes[2] and w.hashes[1] == w.hashes[3]
    assert (w.start.tolist(), w.end.tolist()) == ([0, 7, 0, 6, 0], [5, 12, 5, 11, 6])  # byte offsets


@pytest.mark.parametrize("backend", ["rensa", "numpy"])
def test_minhash_finds_near_duplicates_only(backend: str) -> None:
    near = BASE.replace("w17 ", "changed ").replace("w301 ", "")
    other = " ".join(f"t{i}" for i in range(400))
    keys = MinHasher(backend=backend).band_keys([BASE, other, near, "", "two words"])
    roots = lsh_clusters(keys)
    assert roots.tolist() == [0, 1, 0, 3, 4]


def test_lsh_union_is_transitive_and_keeps_first() -> None:
    # doc 2 shares a band with doc 1 only, doc 1 with doc 0 only: one component rooted at 0.
    keys = np.array([[5, 0], [5, 7], [9, 7], [3, 4]], dtype=np.uint64)
    assert lsh_clusters(keys).tolist() == [0, 0, 0, 3]


def test_dedupe_cli_attributes_and_sidecar(tmp_path: Path) -> None:
    para = "A shared paragraph that appears twice."
    docs = make_docs(
        tmp_path / "docs",
        {
            "a.jsonl.gz": [
                {"id": "a1", "text": f"{BASE}\n{para}\n", "source": "web"},
                {"id": "a2", "text": "something else entirely\n" + para, "source": "web"},
                "broken line",  # quarantined: no attribute line for it
            ],
            "b.jsonl.gz": [
                {"id": "b1", "text": f"{BASE}\n{para}\n", "source": "web"},  # exact copy of a1
                {"id": "b2", "text": BASE.replace("w5 ", "five ") + "\n", "source": "web"},  # near copy of a1
            ],
        },
    )
    out = tmp_path / "dd"
    assert main(["data", "dedupe", str(docs), "--experiment", "x", "--out", str(out), "--workers", "2"]) == 0
    a = list(read_jsonl(out / "a.jsonl.gz"))
    b = list(read_jsonl(out / "b.jsonl.gz"))
    assert [r["id"] for r in a] == ["a1", "a2"] and [r["id"] for r in b] == ["b1", "b2"]
    assert a[0]["attributes"] == {
        "x__dedupe__exact_doc": [],
        "x__dedupe__near_doc": [],
        "x__dedupe__paragraphs": [],
    }
    text_a2 = "something else entirely\n" + para
    assert a[1]["attributes"]["x__dedupe__paragraphs"] == [[24, len(text_a2), 1.0]]
    assert b[0]["attributes"]["x__dedupe__exact_doc"] == [[0, len(BASE) + len(para) + 2, 1.0]]
    assert b[1]["attributes"]["x__dedupe__near_doc"] and not b[1]["attributes"]["x__dedupe__exact_doc"]
    sidecar = pq.read_table(out / "duplicates.parquet").to_pylist()
    by_kind = {(r["id"], r["kind"]): r for r in sidecar}
    assert by_kind[("b1", "exact_doc")]["duplicate_of"] == "a1"
    assert by_kind[("b2", "near_doc")]["duplicate_of"] == "a1"
    assert by_kind[("a2", "paragraph")]["duplicate_of"] == "a1"
    assert by_kind[("b1", "near_doc")]["cluster"] == by_kind[("b2", "near_doc")]["cluster"]
    m = read_manifest(out)
    assert m["kind"] == "attributes" and m["metrics"]["exact_duplicate_docs"] == 1
    assert m["metrics"]["quarantined_lines"] == 1 and m["config"]["dedupe"]["bands"] == 14
    assert not list(tmp_path.glob(".dd.work-*")), "the work directory is removed after success"


def test_dedupe_resumes_from_finished_shards(tmp_path: Path) -> None:
    docs = make_docs(
        tmp_path / "docs",
        {"a.jsonl.gz": [{"id": "a", "text": "one two"}], "b.jsonl.gz": [{"id": "b", "text": "one two"}]},
    )
    from glasslm.data import dedupe
    from glasslm.data.executors import work_dir

    job = dedupe.DedupeJob(workers=1, executor="local")
    scratch = work_dir(tmp_path / "dd", "fp")
    dedupe.run(docs, tmp_path, job, scratch=scratch)
    cached = sorted(p.name for p in scratch.iterdir())
    assert cached == ["hash-a.jsonl.gz.state.npz", "hash-b.jsonl.gz.state.npz"]
    # Corrupting the input does not matter on resume: the finished shards are not re-read.
    (docs / "documents" / "a.jsonl.gz").write_bytes(b"garbage")
    metrics = dedupe.run(docs, tmp_path, job, scratch=scratch)
    assert metrics["exact_duplicate_docs"] == 1
    assert next(read_jsonl(tmp_path / "b.jsonl.gz"))["attributes"]["dedupe__dedupe__exact_doc"] == [
        [0, 7, 1.0]
    ]

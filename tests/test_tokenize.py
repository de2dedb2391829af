"""Token shards: exact layout, exact round trip, held-out separation, resume, quarantine, dtype."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tokens_support import make_docs, make_tokenizer, make_tokens

from glasslm import artifacts
from glasslm.cli import main
from glasslm.data.documents import iter_documents, list_shards, write_jsonl
from glasslm.data.tokenize import TokenizeConfig, plan, run_task_resumable
from glasslm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_tokens(tmp_path_factory.mktemp("tokenize"))


def _docs(paths: list[Path]) -> dict[str, dict]:
    return {d["id"]: d for p in paths for _, d in iter_documents(p)}


def test_layout_index_and_exact_round_trip(built: tuple[Path, Path, Path]) -> None:
    docs, tok_dir, tokens = built
    tok = Tokenizer.from_file(tok_dir)
    source_docs = _docs(list_shards(docs / "documents")) | _docs(list_shards(docs / "heldout"))
    for split in ("train", "heldout/web", "heldout/code"):
        table = pq.read_table(tokens / split / "index.parquet")
        assert [(f.name, str(f.type)) for f in table.schema] == [
            ("doc_id", "string"),
            ("source", "string"),
            ("part", "int32"),
            ("start", "int64"),
            ("end", "int64"),
        ]
        index = table.to_pydict()
        parts = {int(p.stem[5:]): np.load(p, mmap_mode="r") for p in (tokens / split).glob("part-*.npy")}
        assert all(isinstance(a, np.memmap) and a.dtype == np.uint16 and a.ndim == 1 for a in parts.values())
        ends: dict[int, int] = {}
        for doc_id, source, part, start, end in zip(*index.values(), strict=True):
            assert start == ends.get(part, 0)  # documents tile each part with no gap
            ends[part] = end
            ids = parts[part][start:end]
            assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
            assert tok.decode(ids[:-1].tolist()) == source_docs[doc_id]["text"]  # every byte comes back
            assert source == source_docs[doc_id]["source"]
        assert ends == {p: len(a) for p, a in parts.items()}
        if split.startswith("heldout/"):
            assert set(index["source"]) == {split.split("/")[1]}


def test_manifest_metrics_and_inputs(built: tuple[Path, Path, Path]) -> None:
    docs, tok_dir, tokens = built
    manifest = artifacts.read_manifest(tokens)
    m = manifest["metrics"]
    tok = Tokenizer.from_file(tok_dir)
    assert (m["vocab_size"], m["eos_id"], m["pad_id"], m["dtype"]) == (
        tok.vocab_size,
        tok.eos_id,
        tok.pad_id,
        "uint16",
    )
    assert {i["kind"] for i in manifest["inputs"]} == {"mix", "tokenizer"}
    assert m["tokenizer"]["sha256"] == artifacts.sha256_file(tok_dir / "tokenizer.json")
    assert not (tokens / "tokenizer.json").exists()  # referenced, not copied
    assert m["splits"]["train"]["docs"] == 180 and m["splits"]["heldout/web"]["docs"] == 12
    total = sum(len(np.load(p, mmap_mode="r")) for p in (tokens / "train").glob("part-*.npy"))
    assert m["splits"]["train"]["tokens"] == total
    text_bytes = sum(len(d["text"].encode()) for d in _docs(list_shards(docs / "documents")).values())
    assert m["splits"]["train"]["bytes"] == text_bytes
    assert artifacts.verify(tokens).ok
    assert not list(tokens.parent.glob(".tokens.work-*"))  # the scratch directory is gone


def test_no_heldout_document_reaches_train_even_when_given_by_hand(tmp_path: Path) -> None:
    docs = make_docs(tmp_path / "mix", shards=2, per_shard=20, heldout=3)
    tok = make_tokenizer(docs, tmp_path / "tok", vocab=300)
    train = _docs(list_shards(docs / "documents"))
    leak_id, leak_text = sorted(train)[:2]
    hand = tmp_path / "hand"
    write_jsonl(
        hand / "web" / "0.jsonl.gz",
        [
            {"id": leak_id, "text": "a different text under a training id", "source": "web"},
            {"id": "other-id", "text": train[leak_text]["text"], "source": "web"},
            {"id": "fresh", "text": "only held out", "source": "web"},
        ],
    )
    out = tmp_path / "tokens"
    assert (
        main(
            [
                "data",
                "tokenize",
                str(docs),
                "--tokenizer",
                str(tok),
                "--out",
                str(out),
                "--heldout",
                str(hand),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    m = artifacts.read_manifest(out)["metrics"]
    assert set(m["splits"]) == {"train", "heldout/web"}  # the mix's own held-out files were replaced
    assert m["dropped_heldout_overlap"] == 2
    train_ids = set(pq.read_table(out / "train" / "index.parquet").column("doc_id").to_pylist())
    held_ids = set(pq.read_table(out / "heldout" / "web" / "index.parquet").column("doc_id").to_pylist())
    assert held_ids == {leak_id, "other-id", "fresh"} and not train_ids & held_ids
    assert leak_text not in train_ids and len(train_ids) == len(train) - 2
    # No held-out text is anywhere in the training stream either.
    t = Tokenizer.from_file(tok)
    stream = np.concatenate([np.load(p) for p in sorted((out / "train").glob("part-*.npy"))])
    decoded = t.decode(stream.tolist())
    assert train[leak_text]["text"] not in decoded and "only held out" not in decoded


def test_resume_reuses_finished_parts(tmp_path: Path) -> None:
    docs = make_docs(tmp_path / "mix", shards=3, per_shard=10, heldout=2)
    tok = make_tokenizer(docs, tmp_path / "tok", vocab=300)
    out = tmp_path / "tokens"
    config = TokenizeConfig(workers=1, progress=False)
    # An "interrupted" run: only the second training shard finished before the kill.
    _, train_tasks, work = plan(docs, tok, out, config)
    run_task_resumable(train_tasks[1])
    finished = next(work.glob("task-00001.train.npy")).stat().st_ino
    assert (
        main(["data", "tokenize", str(docs), "--tokenizer", str(tok), "--out", str(out), "--workers", "1"])
        == 0
    )
    assert (out / "train" / "part-00001.npy").stat().st_ino == finished  # linked in, not recomputed
    assert (out / "train" / "part-00000.npy").stat().st_ino != finished
    assert not work.exists()


def test_quarantine_and_plain_directory_input(tmp_path: Path) -> None:
    docs = make_docs(tmp_path / "plain", kind=None, shards=1, per_shard=10, heldout=2)
    with open(docs / "documents" / "bad.jsonl", "w") as f:
        f.write('{"id": "ok-1", "text": "fine text", "source": "web"}\nnot json\n{"id": "x", "text": ""}\n')
    tok = make_tokenizer(docs, tmp_path / "tok", vocab=300)
    out = tmp_path / "tokens"
    assert (
        main(["data", "tokenize", str(docs), "--tokenizer", str(tok / "tokenizer.json"), "--out", str(out)])
        == 0
    )
    m = artifacts.read_manifest(out)
    assert m["metrics"]["splits"]["train"]["docs"] == 11
    assert m["metrics"]["quarantined"] == 2 == sum(m["metrics"]["quarantined_by_reason"].values())
    assert len((out / "quarantine.jsonl").read_text().splitlines()) == 2
    assert [i["kind"] for i in m["inputs"]] == ["tokenizer"]  # a plain directory is not an artifact


def test_uint32_when_the_vocabulary_exceeds_65536(tmp_path: Path) -> None:
    docs = make_docs(tmp_path / "mix", shards=1, per_shard=8, heldout=1)
    big = Tokenizer.from_file(make_tokenizer(docs, tmp_path / "tok", vocab=300))
    big.hf.add_tokens([f"<extra_{i}>" for i in range(65_600 - big.vocab_size)])
    big.hf.save(str(tmp_path / "big.json"))
    out = tmp_path / "tokens"
    assert (
        main(["data", "tokenize", str(docs), "--tokenizer", str(tmp_path / "big.json"), "--out", str(out)])
        == 0
    )
    assert artifacts.read_manifest(out)["metrics"]["dtype"] == "uint32"
    assert np.load(out / "train" / "part-00000.npy", mmap_mode="r").dtype == np.uint32


def test_flat_heldout_files_are_split_by_document_source(tmp_path: Path) -> None:
    docs = make_docs(tmp_path / "mix", shards=1, per_shard=10, heldout=1)
    tok = make_tokenizer(docs, tmp_path / "tok", vocab=300)
    flat = tmp_path / "flat"
    write_jsonl(
        flat / "held.jsonl",
        [
            {"id": f"h{i}", "text": f"held out {i}", "source": s}
            for i, s in enumerate(["wiki", "books", "wiki"])
        ],
    )
    out = tmp_path / "tokens"
    assert (
        main(
            [
                "data",
                "tokenize",
                str(docs),
                "--tokenizer",
                str(tok),
                "--out",
                str(out),
                "--heldout",
                str(flat),
            ]
        )
        == 0
    )
    splits = artifacts.read_manifest(out)["metrics"]["splits"]
    assert (splits["heldout/wiki"]["docs"], splits["heldout/books"]["docs"]) == (2, 1)
    assert pq.read_table(out / "heldout" / "wiki" / "index.parquet").column("doc_id").to_pylist() == [
        "h0",
        "h2",
    ]

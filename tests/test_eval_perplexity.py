"""Perplexity: per-document scoring without crossing boundaries, sliding windows, bits per byte."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from eval_support import build_model, build_tokenizer, documents, write_jsonl

from glasslm.artifacts import create_artifact
from glasslm.eval import perplexity as ppl
from glasslm.model.checkpoint import load_model
from glasslm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("ppl")
    tok = build_tokenizer(d / "tok" / "tokenizer.json")
    loaded = load_model(build_model(d / "ckpt", tok, max_seq_len=32))
    return loaded.model, Tokenizer.from_file(tok), d


def reference_nats(model, eos: int, ids: list[int], window: int, stride: int) -> float:
    """Independent loop: each target t (1-based in EOS+doc) predicted from the tokens of its chunk."""
    seq = [eos, *ids]
    total, start = 0.0, 1
    while start <= len(ids):
        end = min(start + stride, len(ids) + 1)
        lo = max(0, end - 1 - window)
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([seq[lo : end - 1]]))[0].double(), -1)
        total -= sum(float(logp[t - 1 - lo, seq[t]]) for t in range(start, end))
        start = end
    return total


@pytest.mark.parametrize("window,stride", [(32, 32), (32, 8), (16, 16)])
def test_nats_equal_independent_computation(tiny, window, stride):
    model, tok, _ = tiny
    docs = [ppl.Doc("web", d["id"], tok.encode(d["text"]), len(d["text"].encode())) for d in documents()]
    assert max(len(d.ids) for d in docs) > 2 * window  # one document needs several windows
    res = ppl.score_documents(model, docs, tok.eos_id, window=window, stride=stride, batch_tokens=100)
    per_doc = {r["doc_id"]: r["nats"] for r in res["web"].per_doc}
    for d in docs:
        assert per_doc[d.doc_id] == pytest.approx(
            reference_nats(model, tok.eos_id, list(d.ids), window, stride), rel=1e-5
        )
    r = res["web"].to_json()
    total_nats, total_bytes = sum(per_doc.values()), sum(d.n_bytes for d in docs)
    # bits per byte is exactly total nats / total UTF-8 bytes / ln 2; loss is per token
    assert r["bits_per_byte"] == pytest.approx(total_nats / total_bytes / math.log(2), rel=1e-12)
    assert r["loss"] == pytest.approx(total_nats / sum(len(d.ids) for d in docs), rel=1e-12)
    assert r["bytes"] == sum(len(d["text"].encode("utf-8")) for d in documents())


def test_documents_do_not_see_each_other(tiny):
    model, tok, _ = tiny
    a, b = documents()[:2]
    doc_a = ppl.Doc("x", "a", tok.encode(a["text"]), 1)
    doc_b = ppl.Doc("x", "b", tok.encode(b["text"]), 1)
    alone = ppl.score_documents(model, [doc_b], tok.eos_id)["x"].nats
    together = ppl.score_documents(model, [doc_a, doc_b], tok.eos_id)["x"].per_doc[1]["nats"]
    assert together == pytest.approx(alone, rel=1e-6)


def test_bytes_are_text_bytes_under_any_tokenizer(tiny, tmp_path):
    """Two tokenizers (BPE with merges and one token per byte) count different tokens but the same
    bytes; bits per byte divides by the bytes, so a uniform-per-byte cost gives the same figure."""
    model, tok, _ = tiny
    bytes_tok = Tokenizer.from_file(build_tokenizer(tmp_path / "bytes" / "tokenizer.json", byte_merges=False))
    path = write_jsonl(tmp_path / "docs.jsonl", documents())
    a = list(ppl.jsonl_docs([path], tok))
    b = list(ppl.jsonl_docs([path], bytes_tok))
    assert [d.n_bytes for d in a] == [d.n_bytes for d in b]
    assert sum(len(d.ids) for d in a) < sum(len(d.ids) for d in b) == sum(d.n_bytes for d in b)
    # An ideal byte model paying 8 bits per byte: its nats are the same under both segmentations.
    for docs in (a, b):
        nats = sum(d.n_bytes * 8 * math.log(2) for d in docs)
        assert nats / sum(d.n_bytes for d in docs) / math.log(2) == pytest.approx(8.0)


def _tokens_artifact(out, tok, docs, with_bytes: bool):
    with create_artifact(out, "tokens", config={}) as art:
        for source in sorted({d["source"] for d in docs}):
            rows, stream = [], []
            for d in (d for d in docs if d["source"] == source):
                ids = tok.encode(d["text"]) + [tok.eos_id]
                row = {
                    "doc_id": d["id"],
                    "source": source,
                    "part": 0,
                    "start": len(stream),
                    "end": len(stream) + len(ids),
                }
                if with_bytes:
                    row["bytes"] = len(d["text"].encode())
                rows.append(row)
                stream += ids
            folder = art.path / "heldout" / source
            folder.mkdir(parents=True)
            np.save(folder / "part-00000.npy", np.array(stream, dtype=np.uint16))
            pq.write_table(pa.Table.from_pylist(rows), folder / "index.parquet")
        art.metrics.update({"vocab_size": tok.vocab_size, "eos_id": tok.eos_id})
    return out


@pytest.mark.parametrize("with_bytes", [True, False])
def test_token_shards_give_the_same_numbers_as_jsonl(tiny, tmp_path, with_bytes):
    model, tok, _ = tiny
    tokens = _tokens_artifact(tmp_path / "tokens", tok, documents(), with_bytes)
    from_shards = ppl.summarize(ppl.score_documents(model, ppl.token_shard_docs(tokens, tok), tok.eos_id))
    path = write_jsonl(tmp_path / "docs.jsonl", documents())
    from_jsonl = ppl.summarize(ppl.score_documents(model, ppl.jsonl_docs([path], tok), tok.eos_id))
    assert json.dumps(from_shards, sort_keys=True) == json.dumps(from_jsonl, sort_keys=True)
    assert [d["domain"] for d in from_shards["domains"]] == ["books", "web"]
    macro = from_shards["macro"]["bits_per_byte"]
    assert macro == pytest.approx(np.mean([d["bits_per_byte"] for d in from_shards["domains"]]))


def test_eos_mismatch_is_an_error(tiny, tmp_path):
    model, tok, _ = tiny
    tokens = _tokens_artifact(tmp_path / "tokens", tok, documents()[:2], True)
    manifest = json.loads((tokens / "manifest.json").read_text())
    manifest["metrics"]["eos_id"] = tok.eos_id + 1
    (tokens / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="EOS id"):
        list(ppl.token_shard_docs(tokens, tok))

"""The data loader contract: rank independence, exact document boundaries, determinism, mixtures."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tokens_support import make_tokens

from glasslm.config import ConfigError
from glasslm.data.loader import LoaderConfig, TokenLoader, largest_remainder


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokens(tmp_path_factory.mktemp("loader"), shards=3, per_shard=80)[2]


def stream(tokens: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The train stream as the docstring defines it, rebuilt independently from the files."""
    parts = [np.load(p) for p in sorted((tokens / "train").glob("part-*.npy"))]
    offsets = np.cumsum([0] + [len(p) for p in parts])
    index = pq.read_table(tokens / "train" / "index.parquet").to_pydict()
    glob = {
        "start": np.array([offsets[p] + s for p, s in zip(index["part"], index["start"], strict=True)]),
        "end": np.array([offsets[p] + e for p, e in zip(index["part"], index["end"], strict=True)]),
        "source": np.array(index["source"]),
        "doc_id": np.array(index["doc_id"]),
    }
    return np.concatenate(parts).astype(np.int64), glob


def test_ranks_split_the_same_global_batch(tokens: Path) -> None:
    config = LoaderConfig(seq_len=32, global_batch_size=8, seed=3)
    one = TokenLoader(tokens, config)
    two = [TokenLoader(tokens, config, rank=r, world_size=2) for r in range(2)]
    four = [TokenLoader(tokens, config, rank=r, world_size=4) for r in range(4)]
    for step in (0, 1, 7, one.steps_per_epoch, one.steps_per_epoch + 5):
        full = one.batch(step)
        assert full["input_ids"].shape == (8, 32)
        for ranks in (two, four):
            parts = [r.batch(step) for r in ranks]
            assert set(parts[0]) == set(full)
            for key, value in full.items():
                assert torch.equal(torch.cat([p[key] for p in parts]), value), key
            assert np.array_equal(ranks[1].global_instances(step), one.global_instances(step))


def test_instances_are_windows_of_the_stream_with_exact_document_masks(tokens: Path) -> None:
    L = 48
    loader = TokenLoader(tokens, LoaderConfig(seq_len=L, global_batch_size=4, seed=0))
    flat, docs = stream(tokens)
    assert loader.n_instances == len(flat) // L
    eos = loader.eos_id
    for step in range(3):
        b = loader.batch(step)
        for row, inst in enumerate(b["instance_ids"].tolist()):
            a = inst * L
            assert b["input_ids"][row].tolist() == flat[a : a + L].tolist()
            # which document each stream position belongs to, from the index alone
            owner = np.searchsorted(docs["end"], np.arange(a, a + L), side="right")
            seg = np.concatenate([[0], np.cumsum(owner[1:] != owner[:-1])])
            assert b["doc_ids"][row].tolist() == seg.tolist()
            first = np.maximum(docs["start"][owner], a)
            assert b["position_ids"][row].tolist() == (np.arange(a, a + L) - first).tolist()
            want = np.where(np.r_[owner[1:] == owner[:-1], False], np.r_[flat[a + 1 : a + L], 0], -100)
            assert b["labels"][row].tolist() == want.tolist()
            # a document ends exactly where its EOS is, and EOS is predicted within the document
            ends = np.flatnonzero(np.r_[owner[1:] != owner[:-1], False])
            assert all(b["input_ids"][row, e] == eos for e in ends)
            spans = loader.instance_docs(inst)
            assert [s["doc_id"] for s in spans] == docs["doc_id"][np.unique(owner)].tolist()
            assert sum(s["doc_end"] - s["doc_start"] for s in spans) == L
            s0 = spans[0]
            assert s0["doc_start"] == a - docs["start"][owner[0]]


def test_without_document_mask(tokens: Path) -> None:
    b = TokenLoader(tokens, LoaderConfig(seq_len=16, global_batch_size=2, document_mask=False)).batch(0)
    assert "doc_ids" not in b
    assert torch.equal(b["position_ids"], torch.arange(16).expand(2, 16))
    assert torch.equal(b["labels"][:, :-1], b["input_ids"][:, 1:]) and (b["labels"][:, -1] == -100).all()


def test_determinism_resume_and_epochs(tokens: Path) -> None:
    config = LoaderConfig(seq_len=32, global_batch_size=8, seed=11)
    a, b = TokenLoader(tokens, config), TokenLoader(tokens, config)
    walked = [a.batch(s) for s in range(6)]
    resumed = b.batch(5)  # a fresh loader jumps straight to step 5, no replay
    assert all(torch.equal(walked[5][k], resumed[k]) for k in resumed)
    assert a.tokens_manifest_sha256 == b.tokens_manifest_sha256 and len(a.tokens_manifest_sha256) == 64
    spe = a.steps_per_epoch
    epoch0 = np.concatenate([a.global_instances(s) for s in range(spe)])
    epoch1 = np.concatenate([a.global_instances(s) for s in range(spe, 2 * spe)])
    assert len(set(epoch0.tolist())) == len(epoch0) == spe * 8  # each instance at most once per epoch
    assert not np.array_equal(epoch0, epoch1)  # training past an epoch gets a new permutation
    other = TokenLoader(tokens, LoaderConfig(seq_len=32, global_batch_size=8, seed=12))
    assert not np.array_equal(other.global_instances(0), a.global_instances(0))
    # The order does not depend on the batch size: only how it is cut into steps.
    wide = TokenLoader(tokens, LoaderConfig(seq_len=32, global_batch_size=16, seed=11))
    assert np.array_equal(
        wide.global_instances(0), np.concatenate([a.global_instances(0), a.global_instances(1)])
    )


def test_mixture_weights_apply_at_token_level(tokens: Path, caplog: pytest.LogCaptureFixture) -> None:
    L = 32
    natural = TokenLoader(tokens, LoaderConfig(seq_len=L, global_batch_size=4))
    mixed = TokenLoader(
        tokens, LoaderConfig(seq_len=L, global_batch_size=4, seed=5, mixture={"web": 3, "code": 1})
    )
    assert [s.name for s in mixed.streams] == ["code", "web"]
    counts = Counter()
    for step in range(mixed.steps_per_epoch):
        for inst in mixed.global_instances(step).tolist():
            sources = {d["source"] for d in mixed.instance_docs(inst)}
            assert len(sources) == 1  # per-source streams: an instance never mixes sources
            counts[sources.pop()] += 1
    n = counts["web"] + counts["code"]
    assert n == mixed.steps_per_epoch * 4 and mixed.n_instances == sum(s.windows(L) for s in mixed.streams)
    assert counts["web"] / n == pytest.approx(0.75, abs=4 / n)
    # The same weights again give the same epoch; epochs resample a down-weighted source.
    again = TokenLoader(
        tokens, LoaderConfig(seq_len=L, global_batch_size=4, seed=5, mixture={"web": 3, "code": 1})
    )
    assert np.array_equal(again.order(0), mixed.order(0)) and not np.array_equal(
        mixed.order(0), mixed.order(1)
    )
    with caplog.at_level(logging.WARNING, logger="glasslm.data.loader"):
        only = TokenLoader(tokens, LoaderConfig(seq_len=L, global_batch_size=4, mixture={"web": 1}))
    assert {d["source"] for i in only.order(0)[:50].tolist() for d in only.instance_docs(i)} == {"web"}
    # a source the mixture leaves out gets weight 0: said, in case it was an oversight; an explicit 0 is not
    assert "does not name source(s) ['code']" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="glasslm.data.loader"):
        TokenLoader(tokens, LoaderConfig(seq_len=L, global_batch_size=4, mixture={"web": 1, "code": 0}))
    assert not caplog.text
    assert natural.n_instances >= mixed.n_instances - 1  # per-source tails cost at most one window each


def test_errors(tokens: Path) -> None:
    with pytest.raises(ConfigError, match="divisible"):
        TokenLoader(tokens, LoaderConfig(global_batch_size=6), rank=0, world_size=4)
    with pytest.raises(ConfigError, match="not in"):
        TokenLoader(tokens, LoaderConfig(seq_len=16, mixture={"books": 1.0}))
    with pytest.raises(ConfigError, match="fewer than one"):
        TokenLoader(tokens, LoaderConfig(seq_len=4096, global_batch_size=64))
    held = TokenLoader(tokens, LoaderConfig(seq_len=16, global_batch_size=2), split="heldout/web")
    assert {d["source"] for d in held.instance_docs(0)} == {"web"}


def test_largest_remainder_sums_exactly() -> None:
    assert largest_remainder(10, np.array([1.0, 1.0, 1.0])).tolist() == [4, 3, 3]
    assert largest_remainder(7, np.array([3.0, 0.0, 1.0])).tolist() == [5, 0, 2]

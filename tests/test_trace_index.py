"""Suffix-array index, counts and maximal spans, checked exactly against brute-force scans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from glasslm import artifacts
from glasslm.cli import main
from glasslm.tokenizer import Tokenizer
from glasslm.trace import span as span_mod
from glasslm.trace.index import StaleIndexError, build_index, load_index, suffix_array

DOCS = [
    ("web", "the quick brown fox jumps over the lazy dog near the river bank"),
    ("web", "a lazy dog sleeps all day while the quick brown fox hunts at night"),
    ("code", "def add(a, b): return a + b  # the quick brown fox"),
    ("books", "it was the best of times it was the worst of times it was the age of wisdom"),
    ("books", "the river bank was quiet and the water was cold and the night was long"),
    ("web", "over the lazy dog the fox jumps again and again and again"),
]


def make_tokenizer(root: Path) -> Path:
    """A tiny BPE with an unknown token: characters absent from its training text map to [UNK]."""
    tok = HFTokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<|endoftext|>", "<|pad|>", "[UNK]"])
    tok.train_from_iterator([text for _, text in DOCS] * 3, trainer)
    with artifacts.create_artifact(root / "tokenizer", "tokenizer") as art:
        tok.save(str(art.path / "tokenizer.json"))
    return root / "tokenizer"


def make_tokens(root: Path, n_parts: int = 2, dtype: type = np.uint16) -> Path:
    """A tokens artifact laid out like ``glasslm data tokenize`` writes it, split over ``n_parts``."""
    tok_dir = make_tokenizer(root)
    tok = Tokenizer.from_file(tok_dir)
    per_part = [DOCS[i::n_parts] for i in range(n_parts)]
    with artifacts.create_artifact(root / "tokens", "tokens", inputs=[tok_dir]) as art:
        (art.path / "train").mkdir()
        rows: dict[str, list] = {"doc_id": [], "source": [], "part": [], "start": [], "end": []}
        for p, docs in enumerate(per_part):
            ids: list[int] = []
            for j, (source, text) in enumerate(docs):
                start = len(ids)
                ids += tok.encode(text) + [tok.eos_id]
                rows["doc_id"].append(f"{source}-{p}-{j}")
                rows["source"].append(source)
                rows["part"].append(p)
                rows["start"].append(start)
                rows["end"].append(len(ids))
            np.save(art.path / "train" / f"part-{p:05d}.npy", np.array(ids, dtype=dtype))
        pq.write_table(pa.table(rows), art.path / "train" / "index.parquet")
        art.metrics.update(vocab_size=tok.vocab_size, eos_id=tok.eos_id)
    return root / "tokens"


def stream_of(tokens_dir: Path) -> np.ndarray:
    return np.concatenate([np.load(p) for p in sorted((tokens_dir / "train").glob("part-*.npy"))]).astype(
        np.int64
    )


def brute_count(stream: np.ndarray, query: list[int]) -> int:
    m = len(query)
    if m > len(stream):
        return 0
    windows = np.lib.stride_tricks.sliding_window_view(stream, m)
    return int((windows == np.asarray(query)).all(axis=1).sum())


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path]:
    tokens = make_tokens(tmp_path)
    build_index(tokens, tmp_path / "index")
    return tokens, tmp_path / "index"


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_suffix_array_equals_sorted_suffixes(dtype: type) -> None:
    rng = np.random.default_rng(1)
    for high in (3, 300, 70_000 if dtype is np.uint32 else 65_000):
        tokens = rng.integers(0, high, size=500).astype(dtype)
        expected = sorted(range(len(tokens)), key=lambda i: tokens[i:].tolist())
        assert suffix_array(tokens).tolist() == expected


def test_counts_match_brute_force(built: tuple[Path, Path]) -> None:
    tokens, index_dir = built
    stream = stream_of(tokens)
    index = load_index(index_dir)
    assert index.n_tokens == len(stream)
    rng = np.random.default_rng(0)
    queries = [
        stream[s : s + m].tolist() for m in (1, 2, 3, 5, 9) for s in rng.integers(0, len(stream) - m, 25)
    ]
    queries += [[int(stream.max()) + 1], [int(t) for t in stream[:3][::-1]] + [7, 7, 7], stream.tolist()]
    for q in queries:
        assert index.count(q) == brute_count(stream, q), q
        positions = index.positions(index.find(q)).tolist()
        assert positions == [
            i for i in range(len(stream) - len(q) + 1) if stream[i : i + len(q)].tolist() == q
        ]
    index.close()


def test_count_cli_tokenizes_like_the_training_data(
    built: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    tokens, index_dir = built
    stream = stream_of(tokens)
    tok = Tokenizer.from_file(index_dir / "tokenizer.json")
    for text in ("the quick brown fox", "lazy dog", "it was the", "zebra"):
        assert main(["trace", "count", str(index_dir), text, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["tokens"] == tok.encode(text)
        assert data["count"] == brute_count(stream, tok.encode(text))
    assert data["count"] == 0  # "zebra" is not in the corpus
    # A run directory holding trace_index/ works as well
    (index_dir.parent / "run").mkdir()
    build_index(tokens, index_dir.parent / "run" / "trace_index")
    assert main(["trace", "count", str(index_dir.parent / "run"), "quick brown", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == brute_count(stream, tok.encode("quick brown"))


def brute_maximal_spans(stream: np.ndarray, ids: list[int], min_len: int, eos: int) -> list[tuple[int, int]]:
    def occurs(q: list[int]) -> bool:
        return eos not in q and brute_count(stream, q) > 0

    spans = []
    for s in range(len(ids)):
        for e in range(len(ids), s, -1):
            if e - s >= min_len and occurs(ids[s:e]):
                inside = any(a <= s and e <= b for a, b in spans)
                if not inside:
                    spans.append((s, e))
                break
    return spans


def test_maximal_spans_match_brute_force(built: tuple[Path, Path]) -> None:
    tokens, index_dir = built
    stream = stream_of(tokens)
    index = load_index(index_dir)
    tok = Tokenizer.from_file(index_dir / "tokenizer.json")
    text = "yesterday the quick brown fox jumps over the lazy dog and it was the worst of times for the fox"
    ids = tok.encode(text)
    for min_len in (1, 3, 5):
        got = span_mod.maximal_spans(index, ids, min_len)
        assert got == brute_maximal_spans(stream, ids, min_len, tok.eos_id)
        for s, e in got:  # maximal: found, and neither extension is
            assert brute_count(stream, ids[s:e]) > 0
            assert s == 0 or brute_count(stream, ids[s - 1 : e]) == 0
            assert e == len(ids) or brute_count(stream, ids[s : e + 1]) == 0
    # An EOS in the output splits it: no span may contain it
    with_eos = ids[:6] + [tok.eos_id] + ids[6:]
    assert all(tok.eos_id not in with_eos[s:e] for s, e in span_mod.maximal_spans(index, with_eos, 1))
    index.close()


def test_span_cli_lists_documents_and_snippets(
    built: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    tokens, index_dir = built
    stream = stream_of(tokens)
    output = "i think the quick brown fox jumps over the lazy dog near the sea"
    assert main(["trace", "span", str(index_dir), output, "--min-len", "6", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["spans"], data
    tok = Tokenizer.from_file(index_dir / "tokenizer.json")
    ids = tok.encode(output)
    top = max(data["spans"], key=lambda s: s["length"])
    assert "quick brown fox jumps over the lazy dog" in top["text"]
    assert top["count"] == brute_count(stream, ids[top["start"] : top["end"]])
    doc_ids = {d["doc_id"] for d in top["docs"]}
    assert doc_ids == {"web-0-0"}  # the first document, in part 0
    hit = top["docs"][0]
    assert hit["source"] == "web" and hit["match"].strip() == top["text"].strip()
    assert "[[" in hit["snippet"] and hit["match"] in hit["snippet"]
    # every listed document really holds the span at the reported offset
    for s in data["spans"]:
        for d in s["docs"]:
            assert stream[d["offset"] : d["offset"] + s["length"]].tolist() == ids[s["start"] : s["end"]]
    # human-readable output too
    assert main(["trace", "span", str(index_dir), output, "--min-len", "6"]) == 0
    assert "web-0-0" in capsys.readouterr().out


def test_bad_queries_get_clear_messages(built: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    tokens, index_dir = built
    # characters the tokenizer has never seen map to [UNK]: refused, not counted as something else
    assert main(["trace", "count", str(index_dir), "the quick 狐狸"]) == 2
    assert "unknown token" in capsys.readouterr().err
    index = load_index(index_dir)
    with pytest.raises(span_mod.QueryError, match="whole index has only"):
        span_mod.count(index, [5] * (index.n_tokens + 1))
    with pytest.raises(span_mod.QueryError, match="empty query"):
        span_mod.count(index, [])
    index.close()
    assert main(["trace", "span", str(index_dir), ""]) == 2
    assert "empty query" in capsys.readouterr().err
    assert main(["trace", "span", str(index_dir), "the", "--max-docs", "0"]) == 2
    assert "--max-docs must be >= 1" in capsys.readouterr().err


def test_stale_index_is_refused(built: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    tokens, index_dir = built
    manifest = json.loads((tokens / "manifest.json").read_text())
    manifest["metrics"]["note"] = "tokens rebuilt"
    (tokens / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StaleIndexError, match="stale index"):
        load_index(index_dir)
    assert main(["trace", "count", str(index_dir), "quick brown"]) == 2
    assert "stale index" in capsys.readouterr().err


def test_index_artifact_records_its_inputs(built: tuple[Path, Path]) -> None:
    tokens, index_dir = built
    manifest = artifacts.read_manifest(index_dir)
    assert manifest["kind"] == "trace_index"
    assert manifest["tokens_manifest_sha256"] == artifacts.manifest_hash(tokens)
    kinds = {ref["kind"] for ref in manifest["inputs"]}
    assert kinds == {"tokens", "tokenizer"}
    assert manifest["metrics"]["n_docs"] == len(DOCS)
    assert artifacts.verify(index_dir).ok


def test_index_cli_from_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    make_tokens(run, n_parts=1, dtype=np.uint32)
    assert main(["trace", "index", str(run)]) == 0
    index = load_index(run / "trace_index")
    assert index.width == 4 and index.n_tokens == len(stream_of(run / "tokens"))
    index.close()


def test_span_steps_follow_the_runs_data_order(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from glasslm.data.loader import LoaderConfig, TokenLoader

    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    tokens = make_tokens(run)
    loader_cfg = {"seq_len": 8, "global_batch_size": 2, "seed": 3}
    with artifacts.create_artifact(run / "train", "train_run", inputs=[tokens]) as art:
        config = {"data": {"tokens": str(tokens), "loader": loader_cfg}}
        (art.path / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
        art.metrics["steps"] = 7  # more than one epoch: steps repeat with a new permutation
    assert main(["trace", "index", str(run)]) == 0
    capsys.readouterr()
    output = "the quick brown fox jumps over the lazy dog near the river"
    assert main(["trace", "span", str(run), output, "--min-len", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["steps_available"] and data["spans"]
    loader = TokenLoader(tokens, LoaderConfig(**loader_cfg))
    assert loader.steps_per_epoch < 7
    hits = [(d, s["length"]) for s in data["spans"] for d in s["docs"]]
    crossing = 0
    for hit, length in hits:  # no mixture: the index's stream is the loader's stream
        # every step whose batch held any token of the match: one that crosses an instance boundary was
        # trained on at the steps of both instances (it listed only the first token's)
        expected = {
            step
            for step in range(1, 8)
            for inst in loader.global_instances(step - 1).tolist()
            if inst * 8 < hit["offset"] + length and hit["offset"] < (inst + 1) * 8
        }
        assert hit["steps"] == sorted(expected)
        crossing += hit["offset"] // 8 != (hit["offset"] + length - 1) // 8
    assert any(hit["steps"] for hit, _ in hits) and crossing


def test_index_reproduces_identically(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    make_tokens(run)
    assert main(["trace", "index", str(run)]) == 0  # default output: RUN/trace_index
    capsys.readouterr()
    assert main(["reproduce", str(run / "trace_index"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["identical"] and {f["path"] for f in data["files"]} >= {
        "sa.npy",
        "stream.bin",
        "docs.parquet",
    }


@pytest.mark.slow
def test_benchmark_runs_small(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks/trace_index.py"),
            "--tokens",
            "100000",
            "--numpy-max-tokens",
            "20000",
            "--count-queries",
            "50",
            "--span-queries",
            "10",
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    result = json.loads(out[out.index("{") :])
    assert result["glasslm"]["count"]["p50_ms"] > 0 and result["numpy_doubling"]["seconds"] > 0
    if "error" not in result["infinigram"]:
        assert result["counts_agree"] and result["span_boundaries_agree"]


def test_index_over_tokens_made_by_the_real_tokenize_verb(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tokens_support import make_tokens as make_real_tokens

    _, _, tokens = make_real_tokens(tmp_path, shards=2, per_shard=20, heldout=4)
    assert main(["trace", "index", str(tokens), "--out", str(tmp_path / "index")]) == 0
    stream = stream_of(tokens)
    tok = Tokenizer.from_file(tmp_path / "index" / "tokenizer.json")
    capsys.readouterr()
    for text in ("the", "def return", "東京 ✓", "web 3."):
        assert main(["trace", "count", str(tmp_path / "index"), text, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["count"] == brute_count(stream, tok.encode(text)), text

"""Trace index: suffix-array build time and memory per million tokens, count and span query latency.

Compares, on one token stream made by tokenizing the Python standard library (repeated until it is
long enough, which also gives the long duplicated passages real corpora have):

- glasslm's index (pydivsufsort build; Python binary search over big-endian bytes for queries);
- a numpy prefix-doubling suffix sort (the "write it yourself" alternative), build only;
- infini-gram 2.6's Rust builder and C++ engine (``count``, ``attribute`` = OLMoTrace spans) on the
  same token ids, run from its own virtualenv (``benchmarks/setup_infinigram.sh``); its tokenizer step
  is skipped by writing its ``tokenized.0``/``offset.0`` files ourselves, so nothing is fetched.

    .venv/bin/python benchmarks/trace_index.py --tokens 20000000

Prints one JSON document; the ratios are glasslm / peer (>1 means glasslm is slower).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench import report

HERE = Path(__file__).resolve().parent
PEER_PYTHON = HERE / ".venv-infinigram" / "bin" / "python"
DOC_SEP = 0xFFFF  # infini-gram's u16 document separator


# ---------------------------------------------------------------------------------------- the stream
def make_stream(n_tokens: int, work: Path) -> Path:
    """A tokens artifact of ~n_tokens from stdlib sources (one document per file), BPE 8k vocab."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from glasslm import artifacts

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    texts, size = [], 0
    for f in files:  # ~4 bytes of source per token: read no more than the stream needs
        if (t := f.read_text(errors="replace")).strip():
            texts.append(t)
            size += len(t)
        if size > 4 * n_tokens:
            break
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8192,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts[:200], trainer)
    with artifacts.create_artifact(work / "tokenizer", "tokenizer") as art:
        tok.save(str(art.path / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    encoded = [np.array(e.ids + [eos], dtype=np.uint16) for e in tok.encode_batch(texts)]
    docs, total, passes = [], 0, 0
    while total < n_tokens:
        for arr in encoded:
            docs.append(arr)
            total += len(arr)
            if total >= n_tokens:
                break
        passes += 1
    import pyarrow as pa
    import pyarrow.parquet as pq

    stream = np.concatenate(docs)
    ends = np.cumsum([len(d) for d in docs])
    with artifacts.create_artifact(work / "tokens", "tokens", inputs=[work / "tokenizer"]) as art:
        (art.path / "train").mkdir()
        np.save(art.path / "train" / "part-00000.npy", stream)
        pq.write_table(
            pa.table(
                {
                    "doc_id": [f"doc{i}" for i in range(len(docs))],
                    "source": ["stdlib"] * len(docs),
                    "part": [0] * len(docs),
                    "start": ends - [len(d) for d in docs],
                    "end": ends,
                }
            ),
            art.path / "train" / "index.parquet",
        )
        art.metrics.update(vocab_size=8192, eos_id=eos, passes=passes)
    return work / "tokens"


# ---------------------------------------------------------------------------------------- builders
def numpy_prefix_doubling(tokens: np.ndarray) -> np.ndarray:
    """Manber-Myers prefix doubling with numpy sorts: O(n log n) sorts of n keys."""
    n = len(tokens)
    rank = tokens.astype(np.int64)
    k = 1
    while True:
        second = np.full(n, -1, dtype=np.int64)
        second[: n - k] = rank[k:]
        sa = np.lexsort((second, rank))
        r, s = rank[sa], second[sa]
        new = np.empty(n, dtype=np.int64)
        new[sa] = np.concatenate([[0], np.cumsum((r[1:] != r[:-1]) | (s[1:] != s[:-1]))])
        rank = new
        if rank.max() == n - 1 or k >= n:
            return sa
        k *= 2


def child_build(which: str, stream_npy: str) -> None:
    tokens = np.load(stream_npy)
    t0 = time.perf_counter()
    if which == "pydivsufsort":
        from glasslm.trace.index import suffix_array

        sa = suffix_array(tokens)
    else:
        sa = numpy_prefix_doubling(tokens)
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "seconds": seconds,
                "maxrss_mb": peak_rss_mb(),
                "checksum": int(sa[:: max(1, len(sa) // 1000)].astype(np.int64).sum()),
            }
        )
    )


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM restarts at exec, unlike ru_maxrss, which a child inherits)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(args: list[str], python: str = sys.executable, timeout: float = 3600) -> dict:
    out = subprocess.run([python, __file__, *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- queries
def make_queries(stream: np.ndarray, eos: int, n_count: int, n_span: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    counts = []
    while len(counts) < n_count:  # infini-gram separates documents by 0xFFFF, not EOS: leave EOS out
        m = int(rng.integers(4, 21))
        s = int(rng.integers(0, len(stream) - m))
        if eos not in stream[s : s + m]:
            counts.append(stream[s : s + m].astype(int).tolist())
    spans = []
    vocab = int(stream.max())
    for _ in range(n_span):  # "model outputs": stream passages with a token changed every ~16
        s = int(rng.integers(0, len(stream) - 64))
        out = stream[s : s + 64].astype(int)
        for j in range(8, 64, 16):
            out[j + int(rng.integers(0, 8))] = int(rng.integers(1, vocab))
        spans.append([t for t in out.tolist() if t != eos])
    return {"count": counts, "span": spans}


def pct(values: list[float]) -> dict:
    a = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}


def ours_queries(index_dir: Path, queries: dict, min_len: int) -> dict:
    from glasslm.trace import span as span_mod
    from glasslm.trace.index import load_index

    index = load_index(index_dir)
    tok = span_mod.load_tokenizer(index)
    count_t, counts = [], []
    for q in queries["count"]:
        t0 = time.perf_counter()
        counts.append(index.count(q))
        count_t.append(time.perf_counter() - t0)
    span_t, span_docs_t, spans = [], [], []
    for q in queries["span"]:
        t0 = time.perf_counter()
        found = span_mod.maximal_spans(index, q, min_len)
        matches = [index.find(q[s:e]) for s, e in found]
        span_t.append(time.perf_counter() - t0)
        for (s, e), m in zip(found, matches, strict=True):
            span_mod.doc_hits(index, tok, m, e - s, max_docs=10)
        span_docs_t.append(time.perf_counter() - t0)
        spans.append([[s, e, m.count] for (s, e), m in zip(found, matches, strict=True)])
    index.close()
    return {
        "count": pct(count_t),
        "span": pct(span_t),
        "span_with_docs": pct(span_docs_t),
        "counts": counts,
        "spans": spans,
    }


# ---------------------------------------------------------------------------------------- infini-gram
def peer_worker(
    stream_npy: str, doc_ends_npy: str, queries_json: str, index_dir: str, eos: int, min_len: int
) -> None:
    """Runs in infini-gram's virtualenv: write its input files, build with its Rust tool, query its engine."""
    stream = np.load(stream_npy)
    ends = np.load(doc_ends_npy)
    out = Path(index_dir)
    out.mkdir(parents=True, exist_ok=True)
    starts = np.concatenate([[0], ends[:-1]])
    # infini-gram's layout: each document = separator + its tokens (our EOS dropped), little-endian u16.
    pieces, offsets, pos = [], [], 0
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        doc = np.concatenate([[DOC_SEP], stream[s : e - 1]]).astype("<u2")
        pieces.append(doc)
        offsets.append(pos)
        pos += 2 * len(doc)
    np.concatenate(pieces).tofile(out / "tokenized.0")
    np.asarray(offsets, dtype=np.uint64).tofile(out / "offset.0")
    data_dir = out / "empty-data"
    data_dir.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "infini_gram.indexing",
            "--data_dir",
            str(data_dir),
            "--save_dir",
            str(out),
            "--token_dtype",
            "u16",
            "--cpus",
            str(os.cpu_count()),
            "--mem",
            "8",
            "--ulimit",
            str(resource.getrlimit(resource.RLIMIT_NOFILE)[1]),
        ],
        capture_output=True,
        text=True,
    )
    build_s = time.perf_counter() - t0
    if build.returncode != 0:
        raise SystemExit(build.stdout[-2000:] + build.stderr[-2000:])
    # The Rust builder runs as children of the indexing process; RUSAGE_CHILDREN is their largest peak.
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    from infini_gram.engine import InfiniGramEngine

    engine = InfiniGramEngine(index_dir=str(out), eos_token_id=eos, vocab_size=65535, token_dtype="u16")
    queries = json.loads(Path(queries_json).read_text())
    count_t, counts = [], []
    for q in queries["count"]:
        t0 = time.perf_counter()
        counts.append(engine.count(input_ids=q)["count"])
        count_t.append(time.perf_counter() - t0)
    span_t, spans = [], []
    for q in queries["span"]:
        t0 = time.perf_counter()
        r = engine.attribute(input_ids=q, delim_ids=[], min_len=min_len, max_cnt=1_000_000, enforce_bow=False)
        span_t.append(time.perf_counter() - t0)
        spans.append([[s["l"], s["r"], s.get("count", len(s.get("docs", [])))] for s in r.get("spans", [])])
    print(
        json.dumps(
            {
                "build": {"seconds": build_s, "maxrss_mb": maxrss},
                "count": pct(count_t),
                "span": pct(span_t),
                "counts": counts,
                "spans": spans,
            }
        )
    )


# ---------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=20_000_000)
    parser.add_argument(
        "--numpy-max-tokens",
        type=int,
        default=5_000_000,
        help="run the numpy builder on the first N tokens only (it is far slower)",
    )
    parser.add_argument("--count-queries", type=int, default=1000)
    parser.add_argument("--span-queries", type=int, default=100)
    parser.add_argument("--min-len", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2, help="build + queries per side, interleaved (ABAB)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--worker", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.worker[0] == "peer":
            peer_worker(*args.worker[1:5], int(args.worker[5]), int(args.worker[6]))
        else:
            child_build(args.worker[0], args.worker[1])
        return

    from glasslm.trace.index import build_index

    work = args.work or Path(tempfile.mkdtemp(prefix="trace-bench-"))
    t0 = time.perf_counter()
    tokens = make_stream(args.tokens, work)
    stream = np.load(tokens / "train" / "part-00000.npy")
    n = len(stream)
    result: dict = {"tokens": n, "prepare_s": round(time.perf_counter() - t0, 1), "cpus": os.cpu_count()}
    np.save(work / "stream.npy", stream)
    np.save(work / "stream_small.npy", stream[: args.numpy_max_tokens])
    import pyarrow.parquet as pq

    np.save(work / "ends.npy", np.asarray(pq.read_table(tokens / "train" / "index.parquet")["end"]))

    builds = {"pydivsufsort": run_child(["--worker", "pydivsufsort", str(work / "stream.npy")])}
    small = min(n, args.numpy_max_tokens)
    builds["pydivsufsort_small"] = run_child(["--worker", "pydivsufsort", str(work / "stream_small.npy")])
    builds["numpy_doubling_small"] = run_child(["--worker", "numpy", str(work / "stream_small.npy")])
    for b in builds.values():
        if "seconds" in b:
            size = small if b is not builds["pydivsufsort"] else n
            b["seconds_per_mtok"] = round(b["seconds"] / (size / 1e6), 3)
            b["mb_per_mtok"] = round(b["maxrss_mb"] / (size / 1e6), 1)
    result["numpy_tokens"] = small

    t0 = time.perf_counter()
    build_index(tokens, work / "index")
    result["glasslm_build_index_s"] = round(time.perf_counter() - t0, 2)
    result["glasslm_index_bytes_per_token"] = round(
        sum(f.stat().st_size for f in (work / "index").iterdir()) / n, 2
    )

    eos = json.loads((tokens / "manifest.json").read_text())["metrics"]["eos_id"]
    queries = make_queries(stream, eos, args.count_queries, args.span_queries)
    (work / "queries.json").write_text(json.dumps(queries))
    ours = ours_queries(work / "index", queries, args.min_len)
    result["glasslm"] = {
        "build": builds["pydivsufsort"],
        "count": ours["count"],
        "span": ours["span"],
        "span_with_docs": ours["span_with_docs"],
    }
    result["numpy_doubling"] = builds["numpy_doubling_small"]
    result["pydivsufsort_same_size_as_numpy"] = builds["pydivsufsort_small"]

    if PEER_PYTHON.is_file():
        per: dict[str, list[float]] = {"build": [], "count p50": [], "span p50": []}
        for r in range(
            args.repeat
        ):  # ABAB: ours (build + queries), then infini-gram, reversed every other repeat

            def ours_run() -> dict:
                b = run_child(["--worker", "pydivsufsort", str(work / "stream.npy")])
                return {"build": b, **ours_queries(work / "index", queries, args.min_len)}

            def peer_run() -> dict:
                shutil.rmtree(work / "infinigram", ignore_errors=True)
                return run_child(
                    [
                        "--worker",
                        "peer",
                        str(work / "stream.npy"),
                        str(work / "ends.npy"),
                        str(work / "queries.json"),
                        str(work / "infinigram"),
                        str(eos),
                        str(args.min_len),
                    ],
                    python=str(PEER_PYTHON),
                )

            if r % 2 == 0:
                mine, peer = ours_run(), peer_run()
            else:
                peer, mine = peer_run(), ours_run()
            if "error" in peer:
                break
            per["build"].append(peer["build"]["seconds"] / mine["build"]["seconds"])
            per["count p50"].append(peer["count"]["p50_ms"] / mine["count"]["p50_ms"])
            per["span p50"].append(peer["span"]["p50_ms"] / mine["span"]["p50_ms"])
        if "error" not in peer:
            peer["build"]["seconds_per_mtok"] = round(peer["build"]["seconds"] / (n / 1e6), 3)
            peer["build"]["mb_per_mtok"] = round(peer["build"]["maxrss_mb"] / (n / 1e6), 1)
            result["counts_agree"] = peer.pop("counts") == ours["counts"]
            peer_spans = peer.pop("spans")
            result["span_boundaries_agree"] = [[s[:2] for s in x] for x in peer_spans] == [
                [s[:2] for s in x] for x in ours["spans"]
            ]
            result["ratio_build"] = round(builds["pydivsufsort"]["seconds"] / peer["build"]["seconds"], 2)
            result["ratio_count_p50"] = round(ours["count"]["p50_ms"] / peer["count"]["p50_ms"], 2)
            result["ratio_span_p50"] = round(ours["span"]["p50_ms"] / peer["span"]["p50_ms"], 2)
            result["times_faster_per_repeat"] = {k: [round(x, 2) for x in v] for k, v in per.items()}
            agree = f"counts agree: {result['counts_agree']}, span boundaries agree: {result['span_boundaries_agree']}"
            for k, v in per.items():
                report(
                    "trace_index.py",
                    f"suffix-array {k}, {n / 1e6:.1f}M tokens" + (" (time)" if k == "build" else ""),
                    "infini-gram 2.6.0 (setup_infinigram.sh)",
                    v,
                    note=agree,
                )
        result["infinigram"] = peer
    else:
        result["infinigram"] = {"error": f"{PEER_PYTHON} missing: run benchmarks/setup_infinigram.sh"}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

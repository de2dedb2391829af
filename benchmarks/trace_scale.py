"""Span search at scale: a 100M-token index built with `glasslm trace index`, query latency p50/p99.

The issue's goal: span search over a 100M-token index in under 50 ms p50 on 2 cores. A 100M-token
stream is made from an existing tokens artifact (e.g. runs/tiny/tokens) by tiling its train stream;
each copy maps token ids through a different seeded permutation of the vocabulary, so copies share
no text with each other (a realistic amount of repetition, not 60 identical copies). Queries are
windows of real training text (64 tokens, so spans are found) and random token sequences (none are).

    .venv/bin/python benchmarks/trace_scale.py --tokens-from runs/tiny/tokens --tokens 100000000

The peer comparison at 20M tokens (infini-gram) is benchmarks/trace_index.py; this script measures
our own engine at the size the issue names.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from glasslm import artifacts
from glasslm.trace import index as trace_index
from glasslm.trace import span as trace_span


def make_tokens(source: Path, n_tokens: int, out: Path) -> Path:
    manifest = artifacts.read_manifest(source)
    vocab, eos = int(manifest["metrics"]["vocab_size"]), int(manifest["metrics"]["eos_id"])
    parts = sorted((source / "train").glob("part-*.npy"))
    base = np.concatenate([np.load(p) for p in parts]).astype(np.uint32)
    docs = pq.read_table(source / "train" / "index.parquet").to_pydict()
    copies = -(-n_tokens // len(base))
    rng = np.random.default_rng(0)
    with artifacts.create_artifact(out, "tokens", inputs=[dict(i) for i in manifest["inputs"]]) as art:
        (art.path / "train").mkdir()
        stream = np.empty(copies * len(base), dtype=np.uint16 if vocab <= 65536 else np.uint32)
        rows = []
        for c in range(copies):
            perm = np.arange(vocab) if c == 0 else rng.permutation(vocab)
            perm[eos] = eos  # documents still end with EOS
            stream[c * len(base) : (c + 1) * len(base)] = perm[base]
        offset = 0
        for c in range(copies):
            for part_index, part in enumerate(parts):
                length = len(np.load(part, mmap_mode="r"))
                for d, k, s, e in zip(docs["doc_id"], docs["part"], docs["start"], docs["end"], strict=True):
                    if k == part_index:
                        rows.append((f"{d}~{c}", "tiled", 0, offset + int(s), offset + int(e)))
                offset += length
        np.save(art.path / "train" / "part-00000.npy", stream)
        table = pa.table(
            {
                "doc_id": [r[0] for r in rows],
                "source": [r[1] for r in rows],
                "part": pa.array([r[2] for r in rows], pa.int32()),
                "start": pa.array([r[3] for r in rows], pa.int64()),
                "end": pa.array([r[4] for r in rows], pa.int64()),
            }
        )
        pq.write_table(table, art.path / "train" / "index.parquet")
        art.metrics.update(
            {**manifest["metrics"], "splits": {"train": {"tokens": int(len(stream)), "docs": len(rows)}}}
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens-from", type=Path, required=True, help="a tokens artifact to tile")
    p.add_argument("--tokens", type=int, default=100_000_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--min-len", type=int, default=8)
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="trace_scale_"))
    t0 = time.perf_counter()
    tokens = make_tokens(args.tokens_from, args.tokens, work / "tokens")
    t1 = time.perf_counter()
    trace_index.build_index(tokens, work / "index")
    t2 = time.perf_counter()
    idx = trace_index.load_index(work / "index")
    n = int(np.load(tokens / "train" / "part-00000.npy", mmap_mode="r").shape[0])
    stream = np.load(tokens / "train" / "part-00000.npy", mmap_mode="r")
    rng = np.random.default_rng(1)
    latencies: dict[str, list[float]] = {"training text": [], "random tokens": []}
    found = 0
    for _ in range(args.queries):
        start = int(rng.integers(0, n - 64))
        real = [int(t) for t in stream[start : start + 64]]
        rand = [int(t) for t in rng.integers(5, int(stream.max()), 64)]
        for kind, ids in (("training text", real), ("random tokens", rand)):
            s = time.perf_counter()
            spans = trace_span.maximal_spans(idx, ids, args.min_len)
            latencies[kind].append(1000 * (time.perf_counter() - s))
            found += bool(spans) and kind == "training text"
    result = {
        "tokens": n,
        "prepare_s": round(t1 - t0, 1),
        "index_build_s": round(t2 - t1, 1),
        "index_bytes_per_token": round(
            sum(f.stat().st_size for f in (work / "index").rglob("*") if f.is_file()) / n, 2
        ),
        "queries_per_kind": args.queries,
        "training_text_queries_with_spans": found,
        **{
            f"span_ms_{k.replace(' ', '_')}": {
                "p50": round(float(np.percentile(v, 50)), 3),
                "p99": round(float(np.percentile(v, 99)), 3),
            }
            for k, v in latencies.items()
        },
    }
    print(json.dumps(result, indent=2))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

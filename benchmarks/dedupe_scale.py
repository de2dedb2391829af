"""Partitioned dedupe (issue #19): peak RSS per index task at 1, 4 and 16 partitions, same duplicates.

One synthetic corpus (exact, near and paragraph repeats across shards) is deduplicated with the
single-driver index and with 1, 4 and 16 hash-range partitions; every run's attribute files and
``duplicates.parquet`` must be the same bytes. Then each partition's index task is run again alone
in a fresh (spawned) process, so its peak RSS is that task's own; we report the largest per P, the
RSS of an idle worker (interpreter + numpy + glasslm imports, a floor the index adds to) and the
peak bytes the task allocated (tracemalloc, which numpy reports to), which should fall as ~1/P.

    .venv/bin/python benchmarks/dedupe_scale.py --docs 200000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

from glasslm.data import dedupe
from glasslm.data.dedupe_partitions import PartitionTask, index_partition, peak_rss_bytes
from glasslm.data.documents import write_jsonl
from glasslm.data.executors import load_state, work_dir

MB = 1 << 20


def make_corpus(root: Path, docs: int, shards: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    paragraphs = [" ".join(rng.choices(vocab, k=15)) for _ in range(2000)]
    recent: list[str] = []
    per_shard = docs // shards
    for s in range(shards):
        rows = []
        for i in range(per_shard):
            roll = rng.random()
            if recent and roll < 0.1:
                text = rng.choice(recent)
            elif recent and roll < 0.2:
                words = rng.choice(recent).split(" ")
                words[rng.randrange(len(words))] = "edited"
                text = " ".join(words)
            else:
                text = "\n".join(
                    rng.choice(paragraphs) if rng.random() < 0.2 else " ".join(rng.choices(vocab, k=30))
                    for _ in range(rng.randint(1, 3))
                )
            recent = (recent + [text])[-1000:]
            rows.append({"id": f"s{s}-{i}", "text": text})
        write_jsonl(root / "documents" / f"shard-{s:03d}.jsonl", rows)
    return root


def outputs(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def idle(_: int) -> int:
    return peak_rss_bytes()


def task_rss(task: PartitionTask) -> tuple[int, int, int]:
    """(peak RSS, peak bytes allocated during the task, index arrays) of one partition task."""
    tracemalloc.start()  # numpy reports its buffers to tracemalloc: the task's own peak, imports aside
    result = index_partition(task)
    allocated = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return int(result["peak_rss"]), allocated, int(result["index_bytes"])


def driver_rss(scratch: Path, names: list[str]) -> tuple[int, int, int]:
    """The same figures for the single-driver index step (decide) over the same hashed shards."""
    parts = []
    for name in names:
        state = load_state(scratch / f"hash-{name.replace('/', '__')}.state.npz")
        assert state is not None
        parts.append(state)
    tracemalloc.start()
    result = dedupe.decide(parts, dedupe.DedupeConfig())
    allocated = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak_rss_bytes(), allocated, result.index_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partitions", type=int, nargs="+", default=[1, 4, 16])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dedupe-scale-"))
    docs = make_corpus(tmp / "docs", args.docs, args.shards)
    size = sum(p.stat().st_size for p in (docs / "documents").iterdir())
    print(f"corpus: {args.docs:,} documents, {args.shards} shards, {size / MB:.1f} MiB")
    started = time.perf_counter()
    single = dedupe.run(docs, tmp / "single", dedupe.DedupeJob(workers=args.workers))
    reference = outputs(tmp / "single")
    print(
        f"single driver: index {single['index_bytes'] / MB:.1f} MiB in one process, "
        f"{single['exact_duplicate_docs']:,} exact, {single['near_duplicate_docs']:,} near, "
        f"{single['duplicate_paragraphs']:,} paragraph duplicates ({time.perf_counter() - started:.1f} s)"
    )
    spawn = mp.get_context("spawn")  # a fresh process per task: its peak RSS is that task's alone
    with spawn.Pool(1, maxtasksperchild=1) as pool:
        baseline = pool.map(idle, [0])[0]
    rows = []
    for p in args.partitions:
        out, scratch = tmp / f"p{p}", work_dir(tmp / f"p{p}", f"p{p}")
        started = time.perf_counter()
        metrics = dedupe.run(
            docs,
            out,
            dedupe.DedupeJob(workers=args.workers, dedupe=dedupe.DedupeConfig(partitions=p)),
            scratch=scratch,
        )
        seconds = time.perf_counter() - started
        same = outputs(out) == reference
        names = [n for n, _ in dedupe.shard_names(docs)]
        offsets = _offsets(scratch, names)
        tasks = [PartitionTask(k, p, scratch, names, offsets["doc"], offsets["para"]) for k in range(p)]
        for f in scratch.glob("index-*"):
            f.unlink()  # recompute, alone, in a fresh process
        with spawn.Pool(1, maxtasksperchild=1) as pool:
            measured = pool.map(task_rss, tasks, chunksize=1)
            if p == args.partitions[0]:
                driver = pool.apply(driver_rss, (scratch, names))
                print(
                    f"single driver's decide(): peak RSS {driver[0] / MB:.1f} MiB, allocated {driver[1] / MB:.1f} MiB"
                )
        peak, allocated, index = (max(m[i] for m in measured) for i in range(3))
        rows.append(
            {
                "partitions": p,
                "peak_rss_mib": round(peak / MB, 1),
                "idle_rss_mib": round(baseline / MB, 1),
                "allocated_mib": round(allocated / MB, 2),
                "index_bytes_mib": round(index / MB, 2),
                "same_bytes_as_single": same,
                "exact": metrics["exact_duplicate_docs"],
                "near": metrics["near_duplicate_docs"],
                "paragraphs": metrics["duplicate_paragraphs"],
                "seconds": round(seconds, 1),
            }
        )
        print(json.dumps(rows[-1]))
    print(f"\nidle worker (interpreter, numpy, glasslm): {baseline / MB:.1f} MiB peak RSS")
    print(
        "| partitions | peak RSS per index task | peak allocated per task | index arrays per task | same bytes | "
        "exact / near / paragraph dups |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['partitions']} | {r['peak_rss_mib']} MiB | {r['allocated_mib']} MiB | {r['index_bytes_mib']} MiB | "
            f"{r['same_bytes_as_single']} | {r['exact']:,} / {r['near']:,} / {r['paragraphs']:,} |"
        )
    assert all(r["same_bytes_as_single"] for r in rows), "a partitioned run differs from the single driver"


def _offsets(scratch: Path, names: list[str]) -> dict[str, list[int]]:
    """Global offsets of each shard's documents and paragraphs, from the hashed shard states."""
    doc, para = [0], [0]
    for name in names:
        state = load_state(scratch / f"hash-{name.replace('/', '__')}.state.npz")
        assert state is not None, f"no hashed state for {name}"
        doc.append(doc[-1] + len(state["ids"]))
        para.append(para[-1] + len(state["para_doc"]))
    return {"doc": doc[:-1], "para": para[:-1]}


if __name__ == "__main__":
    main()

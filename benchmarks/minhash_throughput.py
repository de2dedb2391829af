"""MinHash near-duplicate removal end to end (MB/s per core): glasslm vs datatrove.

Same Dolma JSONL input for both (stdlib + /usr/share/doc text, see dedupe_mix_throughput.py), same
parameters (word 5-grams, 14 bands x 8 rows, seed 1), same number of processes.
End to end = signatures, buckets, clusters, and writing the documents that survive:
  datatrove: MinhashDedupSignature -> MinhashDedupBuckets -> MinhashDedupCluster -> MinhashDedupFilter
             + JsonlWriter (LocalPipelineExecutor, its own venv);
  glasslm:   `glasslm data dedupe --dedupe.exact_docs=false --dedupe.paragraphs=false` then
             `glasslm data mix` dropping near duplicates (which also writes the ledger).

    bash benchmarks/setup_datatrove.sh      # once: datatrove in benchmarks/.venv-datatrove
    .venv/bin/python benchmarks/minhash_throughput.py --mb 30 --workers 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from pathlib import Path

import yaml
from _bench import interleave, ratios, report, spread

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedupe_mix_throughput import GLASSLM, ROOT, build_corpus, count_docs, timed  # noqa: E402

DATATROVE_PY = ROOT / "benchmarks" / ".venv-datatrove" / "bin" / "python"

DATATROVE_SCRIPT = textwrap.dedent("""
    import sys
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                          MinhashDedupSignature)
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    docs, work, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1)
    read = lambda: JsonlReader(docs, glob_pattern="*.jsonl.gz")
    LocalPipelineExecutor([read(), MinhashDedupSignature(f"{work}/sigs", config=cfg)], tasks=workers,
                          workers=workers, logging_dir=f"{work}/logs1").run()
    LocalPipelineExecutor([MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=cfg)],
                          tasks=cfg.num_buckets, workers=workers, logging_dir=f"{work}/logs2").run()
    LocalPipelineExecutor([MinhashDedupCluster(f"{work}/buckets", f"{work}/remove_ids", config=cfg)],
                          tasks=1, logging_dir=f"{work}/logs3").run()
    LocalPipelineExecutor([read(), MinhashDedupFilter(f"{work}/remove_ids"), JsonlWriter(f"{work}/out")],
                          tasks=workers, workers=workers, logging_dir=f"{work}/logs4").run()
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/glasslm-bench-minhash"))
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per tool, interleaved (ABAB)")
    args = ap.parse_args()
    if not DATATROVE_PY.exists():
        raise SystemExit(f"{DATATROVE_PY} missing: run bash benchmarks/setup_datatrove.sh first")
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    corpus = work / "corpus"
    n_docs, n_bytes = build_corpus(corpus, args.mb, shards=max(2, args.workers))
    mb = n_bytes / 1e6
    print(f"input: {n_docs:,} documents, {mb:.1f} MB of text, {args.workers} processes")

    attrs = work / "g_near"
    recipe = work / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "decon_heldout": False,
                "sources": [
                    {
                        "name": "all",
                        "match": ["*"],
                        "rules": [{"attribute": "dedupe__near_doc", "op": "exists"}],
                    }
                ],
            }
        )
    )
    script = work / "datatrove_minhash.py"
    script.write_text(DATATROVE_SCRIPT)
    parts: list[tuple[float, float]] = []

    def run_ours() -> float:
        shutil.rmtree(attrs, ignore_errors=True)
        shutil.rmtree(work / "g_mix", ignore_errors=True)
        t_dedupe = timed(
            [
                str(GLASSLM),
                "data",
                "dedupe",
                str(corpus),
                "--out",
                str(attrs),
                "--workers",
                str(args.workers),
                "--dedupe.exact_docs=false",
                "--dedupe.paragraphs=false",
            ]
        )
        t_mix = timed(
            [
                str(GLASSLM),
                "data",
                "mix",
                str(recipe),
                "--documents",
                str(corpus),
                "--attributes",
                str(attrs),
                "--out",
                str(work / "g_mix"),
                "--workers",
                str(args.workers),
            ]
        )
        parts.append((t_dedupe, t_mix))
        return t_dedupe + t_mix

    def run_peer() -> float:
        shutil.rmtree(work / "dt", ignore_errors=True)
        return timed(
            [str(DATATROVE_PY), str(script), str(corpus / "documents"), str(work / "dt"), str(args.workers)]
        )

    runs = interleave({"glasslm": run_ours, "datatrove": run_peer}, args.repeat)
    g_kept = count_docs(sorted((work / "g_mix" / "documents").glob("*.gz")))
    d_kept = count_docs(sorted((work / "dt" / "out").rglob("*.gz")))
    per_repeat = ratios(runs["glasslm"], runs["datatrove"], higher_is_better=False)
    ours_s, peer_s = spread(runs["glasslm"])["median"], spread(runs["datatrove"])["median"]
    ours, peer = mb / ours_s / args.workers, mb / peer_s / args.workers
    print(f"kept documents: glasslm {g_kept:,}, datatrove {d_kept:,}")
    print(
        f"runs (s): glasslm {', '.join(f'{d:.1f}+{m:.1f}' for d, m in parts)} (dedupe+mix); datatrove "
        + ", ".join(f"{t:.1f}" for t in runs["datatrove"])
    )
    print(
        f"minhash end to end: glasslm {ours:.2f} MB/s per core (median {ours_s:.1f} s), datatrove {peer:.2f} "
        f"MB/s per core ({peer_s:.1f} s), ratio glasslm / datatrove {spread(per_repeat)['median']:.2f}"
    )
    report(
        "minhash_throughput.py",
        f"MinHash dedupe end to end, {mb:.0f} MB, {args.workers} process(es)",
        "datatrove 0.10.1 (xxhash<4, setup_datatrove.sh)",
        per_repeat,
        goal=3.0,
        ours=round(ours, 2),
        theirs=round(peer, 2),
        kept=[g_kept, d_kept],
    )


if __name__ == "__main__":
    main()

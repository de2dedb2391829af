"""Document-level exact dedupe and mix throughput (MB/s per core): glasslm vs dolma 1.2.1.

Both tools get the same Dolma JSONL shards, built here from the Python standard library and
/usr/share/doc (changelogs, licences, READMEs: many exact duplicates), and the same number of
processes. dedupe: whole-document exact duplicates on the text (dolma: Bloom filter; glasslm: exact
sorted index, which also names the surviving id). mix: read the documents and each tool's own
dedupe attributes, drop duplicates, write the kept documents (glasslm also writes its ledger).
Each stage is timed ``--repeat`` times, the two tools alternating (ABAB: benchmarks/_bench.py); the
ratio reported is the median of the per-repeat ratios, with their min–max.

dolma's Bloom filter is sized as its maintainers size it: for the stated false-positive rate (1e-6)
and document count, the smallest filter that dolma's own formulas say reaches that rate
(``bloom_size``: a port of ``compute_bloom_size_binsearch`` in dolma's src/bloom_filter.rs, which
replaced the ``suggest_size_in_bytes`` that dolma 1.2.1 applies when ``size_in_bytes`` is 0). 1.2.1's
search starts at 1 MiB and doubles, so for ~10k documents it gave a 1 MiB filter and, by
``optimal_number_of_hashers`` (ceil(m/n · ln 2)), 546 hash functions a document — issue #23 found
our earlier 9.69× dedupe ratio rested on that. Passing ``size_in_bytes`` explicitly gives dolma
the same fp rate with ~20 hashers (−log2(1e-6) ≈ 20, the textbook optimum).

    bash benchmarks/setup_dolma.sh          # once: dolma 1.2.1 in benchmarks/.venv-dolma
    .venv/bin/python benchmarks/dedupe_mix_throughput.py --mb 150 --workers 2 --repeat 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _bench import interleave, ratios, report, spread

ROOT = Path(__file__).resolve().parents[1]
DOLMA = ROOT / "benchmarks" / ".venv-dolma" / "bin" / "dolma"
GLASSLM = Path(sys.executable).parent / "glasslm"


def source_files() -> list[tuple[str, Path]]:
    files = [("code", p) for p in sorted(Path(sys.base_prefix).glob("lib/python3*/**/*.py"))]
    files += [
        ("web", p) for p in sorted(Path("/usr/share/doc").rglob("*")) if p.is_file() and not p.is_symlink()
    ]
    return files


def read_text(path: Path) -> str | None:
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None
    return text if text.strip() else None


def build_corpus(out: Path, megabytes: float, shards: int) -> tuple[int, int]:
    """Dolma JSONL shards of at most ``megabytes`` of text, cycling over the files until full."""
    docs, total, budget = [], 0, int(megabytes * 1e6)
    files = source_files()
    rounds = 0
    while total < budget and rounds < 50:
        for source, path in files:
            text = read_text(path)
            if text is None:
                continue
            docs.append(
                {
                    "id": f"{rounds}:{path}",
                    "text": text,
                    "source": source,
                    "added": "2026-11-23",
                    "created": "2026-11-23",
                    "metadata": {"path": str(path)},
                }
            )
            total += len(text.encode())
            if total >= budget:
                break
        rounds += 1  # a second round repeats every file: exact duplicates by construction
    (out / "documents").mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        with gzip.open(
            out / "documents" / f"part-{i:04d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1
        ) as f:
            for d in docs[i::shards]:
                f.write(json.dumps(d) + "\n")
    manifest = {"kind": "documents", "inputs": [], "config": {}, "files": {}, "metrics": {}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return len(docs), total


def dolma_hashers(size_in_bytes: int, n: int) -> int:
    """dolma's ``BloomFilter::optimal_number_of_hashers`` (src/bloom_filter.rs): ceil(m/n · ln 2)."""
    return math.ceil(size_in_bytes * 8 / n * math.log(2))


def dolma_fp_rate(size_in_bytes: int, n: int, k: int) -> float:
    """dolma's ``BloomFilter::prob_of_false_positive``: (1 − (1 − 1/m)^(k·n))^k."""
    m = size_in_bytes * 8
    return float((1.0 - (1.0 - 1.0 / m) ** (k * n)) ** k)


def bloom_size(n: int, fp_rate: float) -> int:
    """The smallest filter (bytes, a multiple of 4: dolma stores u32 words) that dolma's own formulas
    say reaches ``fp_rate`` for ``n`` documents with its optimal hasher count — what dolma's later
    ``compute_bloom_size_binsearch`` (src/bloom_filter.rs, allenai/dolma main) computes."""
    lo, hi = 1, 1 << 40
    while lo < hi:
        mid = (lo + hi) // 2
        if dolma_fp_rate(mid * 4, n, dolma_hashers(mid * 4, n)) > fp_rate:
            lo = mid + 1
        else:
            hi = mid
    return lo * 4


def count_docs(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        with gzip.open(p) as f:
            total += sum(1 for _ in f)
    return total


def timed(cmd: list[str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=50.0, help="megabytes of text")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each stage per tool, interleaved")
    ap.add_argument("--work", type=Path, default=Path("/tmp/glasslm-bench-dedupe-mix"))
    args = ap.parse_args()
    if not DOLMA.exists():
        raise SystemExit(f"{DOLMA} missing: run bash benchmarks/setup_dolma.sh first")
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    corpus = work / "corpus"
    n_docs, n_bytes = build_corpus(corpus, args.mb, shards=max(2, 2 * args.workers))
    mb = n_bytes / 1e6
    print(f"input: {n_docs:,} documents, {mb:.1f} MB of text, {args.workers} processes")
    fp_rate = 1e-6
    size = bloom_size(n_docs, fp_rate)
    hashers = dolma_hashers(size, n_docs)
    print(
        f"dolma Bloom filter: {size:,} bytes, {hashers} hashers, fp rate {dolma_fp_rate(size, n_docs, hashers):.2e} "
        f"(1.2.1's own size for the same settings: 1 MiB and {dolma_hashers(1 << 20, n_docs)} hashers)"
    )

    g_attr = work / "g_dedupe"
    g_dedupe = [
        str(GLASSLM),
        "data",
        "dedupe",
        str(corpus),
        "--out",
        str(g_attr),
        "--workers",
        str(args.workers),
        "--dedupe.paragraphs=false",
        "--dedupe.near=false",
    ]
    recipe = work / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "decon_heldout": False,
                "sources": [
                    {
                        "name": "all",
                        "match": ["*"],
                        "rules": [{"attribute": "dedupe__exact_doc", "op": "exists"}],
                    }
                ],
            }
        )
    )
    g_mix = [
        str(GLASSLM),
        "data",
        "mix",
        str(recipe),
        "--documents",
        str(corpus),
        "--attributes",
        str(g_attr),
        "--out",
        str(work / "g_mix"),
        "--workers",
        str(args.workers),
    ]

    # dolma dedupe (Bloom filter, documents only) and mix, in its own virtualenv
    d_root = work / "dolma"
    shutil.copytree(corpus / "documents", d_root / "documents")
    dd = {
        "documents": [str(d_root / "documents" / "*.jsonl.gz")],
        "dedupe": {
            "name": "dups",
            "documents": {"attribute_name": "bff_duplicate_text", "key": "$.text"},
            "skip_empty": True,
        },
        "bloom_filter": {
            "file": str(work / "bloom.bin"),
            "read_only": False,
            "estimated_doc_count": n_docs,
            "desired_false_positive_rate": fp_rate,
            "size_in_bytes": size,
        },
        "processes": args.workers,
    }
    (work / "dolma_dedupe.yaml").write_text(yaml.safe_dump(dd))
    dm = {
        "streams": [
            {
                "name": "mix",
                "documents": [str(d_root / "documents" / "*.jsonl.gz")],
                "attributes": ["dups"],
                "output": {"path": str(work / "d_mix"), "max_size_in_bytes": 10**10},
                # dolma 1.2.1 kept every document with the "@.x && @.x[0] && …" form from its docs
                "filter": {"exclude": ["$.attributes[?(@.bff_duplicate_text[0][2] >= 1)]"]},
            }
        ],
        "processes": args.workers,
    }
    (work / "dolma_mix.yaml").write_text(yaml.safe_dump(dm))

    def run_g_dedupe() -> float:
        shutil.rmtree(g_attr, ignore_errors=True)
        return timed(g_dedupe)

    def run_d_dedupe() -> float:
        # A fresh filter and fresh attributes every time (dolma would otherwise load the saved filter
        # and find every document a duplicate of itself).
        (work / "bloom.bin").unlink(missing_ok=True)
        shutil.rmtree(d_root / "attributes", ignore_errors=True)
        return timed([str(DOLMA), "-c", str(work / "dolma_dedupe.yaml"), "dedupe"])

    def run_g_mix() -> float:
        shutil.rmtree(work / "g_mix", ignore_errors=True)
        return timed(g_mix)

    def run_d_mix() -> float:
        shutil.rmtree(work / "d_mix", ignore_errors=True)
        return timed([str(DOLMA), "-c", str(work / "dolma_mix.yaml"), "mix"])

    runs = interleave({"glasslm dedupe": run_g_dedupe, "dolma dedupe": run_d_dedupe}, args.repeat)
    runs |= interleave({"glasslm mix": run_g_mix, "dolma mix": run_d_mix}, args.repeat)
    for name, times in runs.items():
        print(f"{name}: runs {', '.join(f'{t:.2f}' for t in times)} s")
    g_files = sorted((work / "g_mix" / "documents").glob("*.gz"))
    d_files = sorted((work / "d_mix").glob("*.gz"))
    g_kept, d_kept = count_docs(g_files), count_docs(d_files)
    print(
        f"kept documents: glasslm {g_kept:,}, dolma {d_kept:,}; gzip output: glasslm "
        f"{sum(p.stat().st_size for p in g_files) / 1e6:.1f} MB, dolma {sum(p.stat().st_size for p in d_files) / 1e6:.1f} MB"
    )
    for stage in ("dedupe", "mix"):
        ours_s, peer_s = runs[f"glasslm {stage}"], runs[f"dolma {stage}"]
        per_repeat = ratios(ours_s, peer_s, higher_is_better=False)
        ours, peer = (
            mb / spread(ours_s)["median"] / args.workers,
            mb / spread(peer_s)["median"] / args.workers,
        )
        print(
            f"{stage}: glasslm {ours:.2f} MB/s per core (median {spread(ours_s)['median']:.1f} s), "
            f"dolma {peer:.2f} MB/s per core ({spread(peer_s)['median']:.1f} s), ratio glasslm / dolma "
            f"{spread(per_repeat)['median']:.2f} (per repeat {', '.join(f'{r:.2f}' for r in per_repeat)})"
        )
        report(
            "dedupe_mix_throughput.py",
            f"{stage}, {mb:.0f} MB, {args.workers} processes, MB/s per core",
            "dolma 1.2.1 "
            + (
                f"`dedupe` (Bloom filter fp 1e-6: {size / 1e3:.0f} kB, {hashers} hashers)"
                if stage == "dedupe"
                else "`mix`"
            ),
            per_repeat,
            goal=1.0 if stage == "mix" else None,
            ours=round(ours, 2),
            theirs=round(peer, 2),
            kept=[g_kept, d_kept],
        )


if __name__ == "__main__":
    main()

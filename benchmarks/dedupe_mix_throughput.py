"""Document-level exact dedupe and mix throughput (MB/s per core): glasslm vs dolma 1.2.1.

Both tools get the same Dolma JSONL shards, built here from the Python standard library and
/usr/share/doc (changelogs, licences, READMEs: many exact duplicates), and the same number of
processes. dedupe: whole-document exact duplicates on the text (dolma: Bloom filter; glasslm: exact
sorted index, which also names the surviving id). mix: read the documents and each tool's own
dedupe attributes, drop duplicates, write the kept documents (glasslm also writes its ledger).
Each mix is timed ``--repeat`` times, the two tools alternating, and the best time of each is
compared (the dev box is shared: the best run is the one least disturbed by other jobs).

    bash benchmarks/setup_dolma.sh          # once: dolma 1.2.1 in benchmarks/.venv-dolma
    .venv/bin/python benchmarks/dedupe_mix_throughput.py --mb 150 --workers 2 --repeat 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOLMA = ROOT / "benchmarks" / ".venv-dolma" / "bin" / "dolma"
GLASSLM = Path(sys.executable).parent / "glasslm"


def source_files() -> list[tuple[str, Path]]:
    files = [("code", p) for p in sorted(Path(sys.base_prefix).glob("lib/python3*/**/*.py"))]
    files += [("web", p) for p in sorted(Path("/usr/share/doc").rglob("*")) if p.is_file() and not p.is_symlink()]
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
            docs.append({"id": f"{rounds}:{path}", "text": text, "source": source, "added": "2026-11-23",
                         "created": "2026-11-23", "metadata": {"path": str(path)}})
            total += len(text.encode())
            if total >= budget:
                break
        rounds += 1  # a second round repeats every file: exact duplicates by construction
    (out / "documents").mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        with gzip.open(out / "documents" / f"part-{i:04d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) as f:
            for d in docs[i::shards]:
                f.write(json.dumps(d) + "\n")
    manifest = {"kind": "documents", "inputs": [], "config": {}, "files": {}, "metrics": {}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return len(docs), total


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
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each mix (best counts)")
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
    results: dict[str, float] = {}
    runs: dict[str, list[float]] = {"glasslm mix": [], "dolma mix": []}

    # --- glasslm dedupe (documents only) and mix
    g_attr = work / "g_dedupe"
    results["glasslm dedupe"] = timed([str(GLASSLM), "data", "dedupe", str(corpus), "--out", str(g_attr),
                                       "--workers", str(args.workers), "--dedupe.paragraphs=false",
                                       "--dedupe.near=false"])
    recipe = work / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"decon_heldout": False, "sources": [
        {"name": "all", "match": ["*"], "rules": [{"attribute": "dedupe__exact_doc", "op": "exists"}]}]}))
    g_mix = [str(GLASSLM), "data", "mix", str(recipe), "--documents", str(corpus), "--attributes", str(g_attr),
             "--out", str(work / "g_mix"), "--workers", str(args.workers)]

    # --- dolma dedupe (Bloom filter, documents only) and mix, in its own virtualenv
    d_root = work / "dolma"
    shutil.copytree(corpus / "documents", d_root / "documents")
    dd = {"documents": [str(d_root / "documents" / "*.jsonl.gz")],
          "dedupe": {"name": "dups", "documents": {"attribute_name": "bff_duplicate_text", "key": "$.text"},
                     "skip_empty": True},
          "bloom_filter": {"file": str(work / "bloom.bin"), "read_only": False, "estimated_doc_count": n_docs,
                           "desired_false_positive_rate": 1e-6},
          "processes": args.workers}
    (work / "dolma_dedupe.yaml").write_text(yaml.safe_dump(dd))
    results["dolma dedupe"] = timed([str(DOLMA), "-c", str(work / "dolma_dedupe.yaml"), "dedupe"])
    dm = {"streams": [{"name": "mix", "documents": [str(d_root / "documents" / "*.jsonl.gz")],
                       "attributes": ["dups"], "output": {"path": str(work / "d_mix"), "max_size_in_bytes": 10**10},
                       # dolma 1.2.1 kept every document with the "@.x && @.x[0] && …" form from its docs
                       "filter": {"exclude": ["$.attributes[?(@.bff_duplicate_text[0][2] >= 1)]"]}}],
          "processes": args.workers}
    (work / "dolma_mix.yaml").write_text(yaml.safe_dump(dm))
    for _ in range(args.repeat):
        shutil.rmtree(work / "g_mix", ignore_errors=True)
        runs["glasslm mix"].append(timed(g_mix))
        shutil.rmtree(work / "d_mix", ignore_errors=True)
        runs["dolma mix"].append(timed([str(DOLMA), "-c", str(work / "dolma_mix.yaml"), "mix"]))
    for name, times in runs.items():
        results[name] = min(times)
        print(f"{name}: runs {', '.join(f'{t:.2f}' for t in times)} s; best {min(times):.2f} s")
    g_files = sorted((work / "g_mix" / "documents").glob("*.gz"))
    d_files = sorted((work / "d_mix").glob("*.gz"))
    g_kept, d_kept = count_docs(g_files), count_docs(d_files)
    print(f"kept documents: glasslm {g_kept:,}, dolma {d_kept:,}; gzip output: glasslm "
          f"{sum(p.stat().st_size for p in g_files) / 1e6:.1f} MB, dolma {sum(p.stat().st_size for p in d_files) / 1e6:.1f} MB")
    for stage in ("dedupe", "mix"):
        ours = mb / results[f"glasslm {stage}"] / args.workers
        peer = mb / results[f"dolma {stage}"] / args.workers
        print(f"{stage}: glasslm {ours:.2f} MB/s per core ({results[f'glasslm {stage}']:.1f} s), "
              f"dolma {peer:.2f} MB/s per core ({results[f'dolma {stage}']:.1f} s), ratio glasslm / dolma {ours / peer:.2f}")


if __name__ == "__main__":
    main()

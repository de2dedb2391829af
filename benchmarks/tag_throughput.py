"""Tagging throughput: ``glasslm data tag`` vs ``dolma tag`` (1.2.1), same input, same rules, same run.

Taggers: ours ``gopher,c4,pii,char_length`` against dolma's ``gopher_v1 c4_v1 pii_regex_v1
char_length_v1`` on the embedded corpus. Both run as command-line programs with the same number of
worker processes; the figure is MB of document text per second of wall time per worker (start-up
included for both). Afterwards the attribute values are compared document by document, so the
speed-up is for the same answers, not for different work.

Setup: ``bash benchmarks/setup_dolma.sh`` (dolma in benchmarks/.venv-dolma).
Run:   ``.venv/bin/python benchmarks/tag_throughput.py [--docs DIR] [--workers 2] [--mb-per-source 4]``
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import fmt_spread, interleave, ratios, report

HERE = Path(__file__).resolve().parent
DOLMA = HERE / ".venv-dolma" / "bin" / "dolma"
GLASSLM = Path(sys.executable).with_name("glasslm")
OURS = "gopher,c4,pii,char_length"
THEIRS = ["gopher_v1", "c4_v1", "pii_regex_v1", "char_length_v1"]
# our tagger/attribute -> dolma's; PII spans differ on purpose (ours cover the address only), so
# PII is compared by the number of matches per type and the doc score.
TAGGER_MAP = {"gopher": "gopher_v1", "c4": "c4_v1", "pii": "pii_regex_v1", "char_length": "char_length_v1"}


def build_corpus(out: Path, mb: float) -> None:
    cap = str(int(mb * 1e6))
    subprocess.run(
        [
            str(GLASSLM),
            "data",
            "corpus",
            "--out",
            str(out),
            f"--corpus.max_bytes_code={cap}",
            f"--corpus.max_bytes_docs={cap}",
            f"--corpus.max_bytes_web={cap}",
        ],
        check=True,
    )


def text_bytes(docs: Path) -> tuple[int, int]:
    n = total = 0
    for shard in sorted((docs / "documents").glob("*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            for line in f:
                total += len(json.loads(line)["text"].encode("utf-8"))
                n += 1
    return n, total


# Our defaults depart from dolma in two measured places (docs/data-tagging.md): duplicate lines are
# non-empty lines, phone numbers use our pattern. The comparison asks for dolma's definitions.
DOLMA_OPTIONS = ["--tag.options.gopher.duplicate_lines=dolma", "--tag.options.pii.phone_pattern=dolma"]


def run_ours(docs: Path, out: Path, workers: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            str(GLASSLM),
            "data",
            "tag",
            str(docs),
            "--taggers",
            OURS,
            "--experiment",
            "bench",
            *DOLMA_OPTIONS,
            "--workers",
            str(workers),
            "--out",
            str(out),
            "--no-progress",
        ],
        check=True,
    )
    return time.perf_counter() - start


def run_dolma(docs: Path, work: Path, workers: int) -> float:
    # dolma derives the output path from the input path (.../documents/ -> .../attributes/<exp>/)
    (work / "documents").mkdir(parents=True)
    for shard in sorted((docs / "documents").glob("*.jsonl.gz")):
        os.symlink(shard, work / "documents" / shard.name)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    subprocess.run(
        [
            str(DOLMA),
            "tag",
            "--documents",
            str(work / "documents" / "*.jsonl.gz"),
            "--experiment",
            "bench",
            "--taggers",
            *THEIRS,
            "--processes",
            str(workers),
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def _read(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _close(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    return all(
        s1[0] == s2[0] and s1[1] == s2[1] and math.isclose(s1[2], s2[2], abs_tol=2e-5)
        for s1, s2 in zip(a, b, strict=True)
    )


def compare(ours: Path, theirs: Path) -> dict[str, int]:
    """Documents whose attributes differ from dolma's, per tagger (0 everywhere = same answers)."""
    diffs = {t: 0 for t in TAGGER_MAP}
    examples: list[str] = []
    docs = 0
    for shard in sorted(theirs.glob("*.jsonl.gz")):
        for mine, dolma in zip(_read(ours / shard.name), _read(shard), strict=True):
            docs += 1
            assert mine["id"] == dolma["id"]
            for tagger, dtagger in TAGGER_MAP.items():
                a = {
                    k.split("__", 2)[2]: v
                    for k, v in mine["attributes"].items()
                    if k.split("__")[1] == tagger
                }
                b = {
                    k.split("__", 2)[2]: v
                    for k, v in dolma["attributes"].items()
                    if k.split("__")[1] == dtagger
                }
                if tagger == "pii":
                    same = all(
                        len(a.get(t, [])) == len(b.get(t, []))
                        for t in ("EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS")
                    )
                    same = same and _close(a["doc"], b["doc"])
                else:
                    same = set(a) == set(b) and all(_close(a[k], b[k]) for k in a)
                if not same:
                    diffs[tagger] += 1
                    if len(examples) < 5:
                        keys = sorted(k for k in set(a) | set(b) if not _close(a.get(k, []), b.get(k, [])))
                        examples.append(f"{mine['id']} {tagger}: {keys[:4]}")
    for e in examples:
        print("  differs:", e)
    return {"docs": docs, **diffs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, default=None, help="a documents artifact (default: build one)")
    ap.add_argument("--mb-per-source", type=float, default=4.0, help="corpus size when building one")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per tool, interleaved (ABAB)")
    args = ap.parse_args()
    if not DOLMA.exists():
        sys.exit(f"dolma is not installed: run bash {HERE / 'setup_dolma.sh'}")
    tmp = Path(tempfile.mkdtemp(prefix="tagbench-"))
    try:
        docs = args.docs
        if docs is None:
            docs = tmp / "corpus"
            build_corpus(docs, args.mb_per_source)
        n_docs, n_bytes = text_bytes(docs)
        mb = n_bytes / 1e6

        def fresh(name: str) -> Path:
            shutil.rmtree(tmp / name, ignore_errors=True)
            return tmp / name

        runs = interleave(
            {  # ABAB, fresh output directories each time
                "glasslm": lambda: run_ours(docs, fresh("ours"), args.workers),
                "dolma": lambda: run_dolma(docs, fresh("dolma"), args.workers),
            },
            args.repeat,
        )
        ours_s, dolma_s = min(runs["glasslm"]), min(runs["dolma"])
        agreement = compare(tmp / "ours", tmp / "dolma" / "attributes" / "bench")
        ours_rate = mb / ours_s / args.workers
        dolma_rate = mb / dolma_s / args.workers
        print(f"input: {n_docs:,} documents, {mb:.2f} MB of text; {args.workers} workers")
        print(f"glasslm tag ({OURS}): {ours_s:.1f} s, {ours_rate:.3f} MB/s per core")
        print(f"dolma 1.2.1 tag ({' '.join(THEIRS)}): {dolma_s:.1f} s, {dolma_rate:.3f} MB/s per core")
        per_repeat = ratios(runs["glasslm"], runs["dolma"], higher_is_better=False)
        print(
            f"ratio glasslm/dolma: {ours_rate / dolma_rate:.2f}x (best runs); per repeat {fmt_spread(per_repeat)}"
        )
        print("documents whose attributes differ from dolma's:", json.dumps(agreement))
        report(
            "tag_throughput.py",
            f"Gopher + C4 + PII + length, {mb:.1f} MB, {args.workers} workers, MB/s per core",
            "dolma 1.2.1 `tag`",
            per_repeat,
            note=f"documents differing: {json.dumps(agreement)}",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

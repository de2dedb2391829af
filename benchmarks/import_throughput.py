"""`glasslm data import` against datatrove's readers on the same inputs, one process each (per core).

Inputs, made here: Dolma JSONL (gzip shards) and Parquet holding the same documents, and a WARC of
real HTML pages (the documentation sites html_extraction.py uses). Each side reads and writes gzip
JSONL documents: ours `run_import` (quarantine, totals, lineage hashing included); datatrove
JsonlReader / ParquetReader / WarcReader + its Trafilatura extractor → JsonlWriter, in its own venv
(benchmarks/setup_datatrove.sh). WARC is compared with the same extractor (ours with trafilatura put
in place of resiliparse) and shown with our default (resiliparse) too. Peak RSS of our import is
measured at 1x and 10x the JSONL input in fresh processes: it must not grow with corpus size.

Usage: .venv/bin/python benchmarks/import_throughput.py [--docs 10000] [--pages 120]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DATATROVE = HERE / ".venv-datatrove" / "bin" / "python"

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "which",
    "an",
    "be",
    "this",
    "are",
    "have",
    "had",
    "not",
    "river",
    "stone",
    "garden",
    "window",
    "letter",
    "morning",
    "market",
    "bridge",
    "lantern",
    "harbor",
    "meadow",
    "candle",
    "orchard",
    "village",
    "story",
    "bread",
    "evening",
    "winter",
    "summer",
    "forest",
    "mountain",
    "valley",
    "teacher",
    "student",
    "music",
    "paper",
]


def make_inputs(root: Path, docs: int, pages: int) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from glasslm.data.documents import write_jsonl

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(200, 500))) + "." for _ in range(docs)]
    jdir = root / "jsonl"
    per = max(1, docs // 4)
    for k in range(0, docs, per):
        write_jsonl(
            jdir / f"{k // per:03d}.jsonl.gz",
            ({"id": f"d{i}", "text": texts[i], "source": "bench"} for i in range(k, min(docs, k + per))),
            isal_level=1,
        )
    (root / "parquet").mkdir(parents=True)
    pq.write_table(
        pa.table({"id": [f"d{i}" for i in range(docs)], "text": texts}),
        root / "parquet" / "docs.parquet",
        row_group_size=2048,
    )
    from html_extraction import SETS

    bodies = [
        p.read_bytes()
        for _, folder, pattern, _ in SETS
        if folder.is_dir()
        for p in sorted(folder.glob(pattern))
    ][:pages]
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    (root / "warc").mkdir()
    with open(root / "warc" / "pages.warc.gz", "wb") as f:
        w = WARCWriter(f, gzip=True)
        for i, body in enumerate(bodies):
            headers = StatusAndHeaders(
                "200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1"
            )
            w.write_record(
                w.create_warc_record(
                    f"https://docs.example/{i}", "response", payload=io.BytesIO(body), http_headers=headers
                )
            )
    return {
        "jsonl": jdir,
        "parquet": root / "parquet" / "docs.parquet",
        "warc": root / "warc" / "pages.warc.gz",
    }


def ours(path: Path, fmt: str, out: Path, extractor: str = "resiliparse") -> dict[str, float]:
    from glasslm.data.importers import ImportInput, run_import

    if extractor == "trafilatura":  # the same extractor as datatrove's (its Trafilatura() settings)
        import trafilatura

        from glasslm.data.importers import html

        html.extract_main_text = lambda body, charset=None: (
            trafilatura.extract(  # type: ignore[assignment]
                html.decode_html(body, charset),
                favor_precision=True,
                include_comments=False,
                deduplicate=True,
            )
            or ""
        )
    start = time.perf_counter()
    result = run_import([ImportInput(path=str(path), source="bench", format=fmt)], out)
    return {"seconds": time.perf_counter() - start, "docs": result.totals.imported}


DT_SCRIPT = """
import json, sys, time
from datatrove.pipeline.writers import JsonlWriter
fmt, path, out = sys.argv[1:4]
if fmt == "jsonl":
    from datatrove.pipeline.readers import JsonlReader
    steps = [JsonlReader(path, glob_pattern="*.jsonl.gz")]
elif fmt == "parquet":
    from datatrove.pipeline.readers import ParquetReader
    steps = [ParquetReader(path)]
else:
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.extractors import Trafilatura
    steps = [WarcReader(path), Trafilatura()]
start = time.perf_counter()
data = None
for step in steps:
    data = step.run(data) if data is not None else step.run()
n = 0
with JsonlWriter(out) as w:
    for doc in data:
        w.write(doc)
        n += 1
print(json.dumps({"seconds": time.perf_counter() - start, "docs": n}))
"""


def datatrove(path: Path, fmt: str, out: Path) -> dict[str, float] | None:
    if not DATATROVE.exists():
        return None
    target = str(path.parent if path.is_file() else path)  # each input has its own folder
    done = subprocess.run(
        [str(DATATROVE), "-c", DT_SCRIPT, fmt, target, str(out)], capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def peak_rss(path: Path, out: Path) -> float:
    """Peak RSS (MB) of a fresh process importing ``path``."""
    code = (
        "from pathlib import Path; from glasslm.data.importers import ImportInput, run_import;"
        f"run_import([ImportInput(path={str(path)!r}, source='bench')], Path({str(out)!r}));"
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork+exec, so a child would report the
        # parent's peak (this script's, after building the inputs); VmHWM belongs to the new image.
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--pages", type=int, default=120)
    ap.add_argument("--skip-rss", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = make_inputs(root / "in", args.docs, args.pages)
        rows = []
        for fmt in ("jsonl", "parquet", "warc"):
            path = inputs[fmt]
            mb = sum(p.stat().st_size for p in ([path] if path.is_file() else path.iterdir())) / 1e6
            extractor = "trafilatura" if fmt == "warc" else "resiliparse"
            code = (
                f"import json, sys; sys.path.insert(0, {str(HERE)!r}); from pathlib import Path; "
                "from import_throughput import ours; "
                f"print(json.dumps(ours(Path({str(path)!r}), {fmt!r}, Path({str(root / ('o-' + fmt))!r}), "
                f"{extractor!r})))"
            )
            mine = json.loads(
                subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            peer = datatrove(path, fmt, root / f"dt-{fmt}")
            label = f"{fmt} ({'same extractor: trafilatura' if fmt == 'warc' else 'read + write gzip JSONL'})"
            rows.append((label, mb, mine, peer))
        warc_default = ours(inputs["warc"], "warc", root / "o-warc-resiliparse")
        print(
            f"inputs: {args.docs:,} documents (JSONL, Parquet), {args.pages} real HTML pages (WARC); one process each"
        )
        print(
            f"{'input':<46} {'MB in':>7} {'ours s':>8} {'docs':>7} {'datatrove s':>12} {'docs':>7} {'ours/dt':>8}"
        )
        for label, mb, mine, peer in rows:
            ratio = f"{peer['seconds'] / mine['seconds']:.2f}x" if peer else "n/a"
            print(
                f"{label:<46} {mb:7.1f} {mine['seconds']:8.2f} {mine['docs']:7,} "
                f"{(peer or {}).get('seconds', float('nan')):12.2f} {int((peer or {}).get('docs', 0)):7,} {ratio:>8}"
            )
        print(
            f"warc with our default extractor (resiliparse): {warc_default['seconds']:.2f} s, "
            f"{warc_default['docs']} docs"
        )
        if not args.skip_rss:
            big = root / "big"
            big.mkdir()
            for k in range(10):
                for shard in inputs["jsonl"].iterdir():
                    (big / f"{k}-{shard.name}").symlink_to(shard)
            one = peak_rss(inputs["jsonl"], root / "rss1")
            ten = peak_rss(big, root / "rss10")
            print(f"peak RSS of our JSONL import: 1x input {one:.0f} MB, 10x input {ten:.0f} MB")


if __name__ == "__main__":
    main()

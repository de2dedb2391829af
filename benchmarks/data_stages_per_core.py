"""Per-core throughput and peak memory of every data stage (issue #19, docs/scaling.md).

Each stage runs by its CLI verb in a fresh process with one worker in-process (``--workers 1
--executor local``), so its wall time is one core's and its peak RSS (``ru_maxrss``) is one worker's.
The input is one corpus of real text (this Python installation's sources and /usr/share/doc, the
corpus of ``dedupe_mix_throughput.py``) as Dolma JSONL.gz; every rate is MB of document text per
second per core. The chain is the pipeline's: import → tag (default taggers) → dedupe → decon (a task
file of sentences from the corpus) → mix (the default recipe) → tokenize (a 16k BPE trained here,
not timed).

    .venv/bin/python benchmarks/data_stages_per_core.py --mb 10
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import MARK
from dedupe_mix_throughput import read_text, source_files

ROOT = Path(__file__).resolve().parents[1]
RUNNER = (
    "import resource, sys\n"
    "from glasslm.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def stage(name: str, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, *argv], env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    peak_kb = int(proc.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    return {"stage": name, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_kb / 1024, 1)}


def rate(result: dict[str, Any], text_bytes: int, startup: float) -> dict[str, Any]:
    """MB/s per core over the stage's work: its wall time less the start of a process that imports
    the CLI and reads a manifest (``startup``), which a long-running stage pays once per worker."""
    per_s = text_bytes / max(result["seconds"] - startup, 1e-3)
    return {
        **result,
        "text_mb": round(text_bytes / 1e6, 2),
        "mb_per_s_per_core": round(per_s / 1e6, 3),
        "core_hours_per_tb": round(1e12 / per_s / 3600, 1),
    }


def build_corpus(out: Path, megabytes: float, shards: int) -> tuple[int, int]:
    """Dolma JSONL.gz shards of ``megabytes`` of text taking code and web (/usr/share/doc) files in
    turn, so both domains of the default recipe (and their rules) are exercised."""
    files = source_files()
    by_source = [[f for f in files if f[0] == "code"], [f for f in files if f[0] == "web"]]
    docs: list[dict[str, Any]] = []
    total, budget = 0, int(megabytes * 1e6)
    for k in range(max(len(s) for s in by_source)):
        for group in by_source:
            if k >= len(group) or total >= budget:
                continue
            source, path = group[k]
            text = read_text(path)
            if text is None:
                continue
            docs.append({"id": f"{source}:{path}", "text": text, "source": source, "added": "2026-12-05"})
            total += len(text.encode())
    (out / "documents").mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        with gzip.open(out / "documents" / f"part-{i:04d}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs[i::shards])
    return len(docs), total


def task_file(corpus: Path, out: Path, n: int = 2000, real: int = 20) -> None:
    """Evaluation-like questions: ``n`` sentences of corpus words in a random order (the index decon
    builds and queries at a benchmark's size) of which ``real`` are corpus sentences, so a few
    documents are contaminated, as in a real corpus, and the mix keeps most of the rest."""
    rng = random.Random(0)
    sentences: list[str] = []
    for shard in sorted((corpus / "documents").glob("*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"]
                sentences += [s.strip() for s in text.split(".") if len(s.split()) >= 15]
    rng.shuffle(sentences)
    vocabulary = [w for s in sentences[:5000] for w in s.split()]
    questions = sentences[:real] + [" ".join(rng.choices(vocabulary, k=20)) for _ in range(n - real)]
    out.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=10.0, help="MB of document text")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="glasslm-stages-"))
    raw = work / "raw"
    n_docs, text_bytes = build_corpus(raw, args.mb, shards=8)
    env = {**os.environ, "GLASSLM_PROGRESS_SECONDS": "3600"}
    one = ["--workers", "1", "--executor", "local"]
    run = work / "run"
    task_file(raw, work / "tasks.jsonl")
    (work / "tok.yaml").write_text("tokenizer: {vocab_size: 16384, max_train_bytes: 20000000}\n")
    load = os.getloadavg()
    plan: list[tuple[str, list[str]]] = [
        ("import", ["data", "import", str(raw / "documents"), "--out", str(run / "corpus")]),
        ("tag", ["data", "tag", str(run / "corpus"), "--no-progress", *one, "--out", str(run / "tags")]),
        ("dedupe", ["data", "dedupe", str(run / "corpus"), *one, "--out", str(run / "dedupe")]),
        (
            "decon",
            ["data", "decon", str(run / "corpus"), "--tasks", str(work / "tasks.jsonl"), *one]
            + ["--out", str(run / "decon")],
        ),
        (
            "mix",
            ["data", "mix", str(ROOT / "configs" / "recipes" / "default.yaml"), "--documents"]
            + [
                str(run / "corpus"),
                "--attributes",
                str(run / "tags"),
                str(run / "dedupe"),
                str(run / "decon"),
            ]
            + [*one, "--out", str(run / "mix")],
        ),
    ]
    first = stage(*plan[0], env)  # import: the corpus the others read
    startup = min(
        stage("startup", ["manifest", "show", str(run / "corpus")], env)["seconds"] for _ in range(3)
    )
    results = [rate(first, text_bytes, startup)]
    results += [rate(stage(name, argv, env), text_bytes, startup) for name, argv in plan[1:]]
    subprocess.run(
        [sys.executable, "-m", "glasslm", "tokenizer", "train", str(run / "mix"), "--out", str(run / "tok")]
        + ["--config", str(work / "tok.yaml")],
        env=env,
        check=True,
        capture_output=True,
    )
    tokenize = ["data", "tokenize", str(run / "mix"), "--tokenizer", str(run / "tok"), "--out"]
    tokenize += [str(run / "tokens"), "--tokenize.workers=1", "--tokenize.executor=local"]
    tokenized = stage("tokenize", tokenize, env)
    splits = json.loads((run / "tokens" / "manifest.json").read_text())["metrics"]["splits"]
    mix_bytes = sum(s["bytes"] for s in splits.values())  # tokenize reads the mix's output, not the corpus
    results.append(rate(tokenized, mix_bytes, startup))
    info = {
        "cpu": f"{_cpu_model()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "text_mb": round(text_bytes / 1e6, 1),
        "docs": n_docs,
        "mix_output_mb": round(mix_bytes / 1e6, 1),
        "load_average": [round(x, 2) for x in (load[0], os.getloadavg()[0])],
        "startup_seconds": startup,
    }
    print(json.dumps(info))
    print(f"{'stage':<10}{'s':>8}{'MB/s/core':>11}{'core-h/TB':>11}{'peak RSS MB':>13}")
    for r in results:
        print(
            f"{r['stage']:<10}{r['seconds']:>8}{r['mb_per_s_per_core']:>11}{r['core_hours_per_tb']:>11}"
            f"{r['peak_rss_mb']:>13}"
        )
        print(MARK + json.dumps({"benchmark": "data_stages_per_core", **info, **r}))
    total = sum(r["core_hours_per_tb"] for r in results)
    print(f"total core-hours per TB of text: {total:,.0f}")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()

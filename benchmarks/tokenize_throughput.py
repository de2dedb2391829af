"""Tokenization throughput: ``glasslm data tokenize`` end to end vs ``dolma tokens`` and raw ``encode_batch``;
BPE training time: ``glasslm tokenizer train`` vs ``tokenizers``' own trainer called directly.

Same documents (man pages, Python source and /usr/share/doc text found on this machine, as Dolma
JSONL shards), same tokenizer (the GPT-NeoX/OLMo ``tokenizer.json`` shipped in ``ai2-olmo-eval`` when
installed, else one we train), same number of processes, in the same run. dolma runs from its own
virtualenv (``benchmarks/setup_dolma.sh``). Prints MB/s (UTF-8 text bytes / wall seconds) and ratios.

    .venv/bin/python benchmarks/tokenize_throughput.py --mb 40 --workers 2
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import fmt_spread, interleave, ratios, report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GLASSLM = [sys.executable, "-m", "glasslm"]
DOLMA = HERE / ".venv-dolma" / "bin" / "dolma"


def _read(path: Path) -> str | None:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError):
        return None
    return text if text.strip() else None


def collect(mb: float, seed: int = 0) -> list[dict[str, str]]:
    """Up to ``mb`` MB of mixed text, a third each of man pages, code and documentation if available."""
    pools = {
        "man": sorted(Path("/usr/share/man").glob("man*/*.gz")),
        "code": sorted(Path(sys.prefix, "lib").rglob("*.py")),
        "docs": sorted(
            p
            for p in Path("/usr/share/doc").rglob("*")
            if p.is_file() and p.suffix in ("", ".gz", ".txt", ".md")
        ),
    }
    rng = random.Random(seed)
    budget = mb * 1e6 / len(pools)
    docs = []
    for source, files in pools.items():
        rng.shuffle(files)
        size = 0
        for path in files:
            if size >= budget:
                break
            text = _read(path) if path.stat().st_size < 1_000_000 else None  # a few huge files would dominate
            if text is None:
                continue
            docs.append({"id": f"{source}:{path}", "text": text, "source": source})
            size += len(text.encode("utf-8"))
    rng.shuffle(docs)
    return docs


def write_shards(docs: list[dict[str, str]], directory: Path, shards: int) -> None:
    directory.mkdir(parents=True)
    for k in range(shards):
        with gzip.open(directory / f"shard-{k:03d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) as f:
            for doc in docs[k::shards]:
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")


def olmo_tokenizer() -> Path | None:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    hits = sorted(Path(next(iter(spec.submodule_search_locations)), "tokenizers").glob("*olmo-dolma*.json"))
    return hits[0] if hits else None


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def raw_encode_batch(texts: list[str], tokenizer: Path, threads: int) -> float:
    """Seconds for ``Tokenizer.encode_batch`` alone over preloaded texts, with ``threads`` Rust threads."""
    code = (
        "import sys,json,time; from tokenizers import Tokenizer\n"
        "t=Tokenizer.from_file(sys.argv[1]); texts=json.load(open(sys.argv[2]))\n"
        "s=time.perf_counter(); t.encode_batch(texts, add_special_tokens=False); print(time.perf_counter()-s)"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(texts, f)
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true"}
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, str(tokenizer), f.name],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
    finally:
        os.unlink(f.name)
    return float(out.stdout.strip())


def train_direct(texts: list[str], vocab: int) -> float:
    from glasslm.tokenizer import BPEConfig, new_bpe
    from glasslm.tokenizer_train import bpe_trainer

    tok = new_bpe()
    started = time.perf_counter()
    tok.train_from_iterator(
        (texts[i : i + 1000] for i in range(0, len(texts), 1000)),
        trainer=bpe_trainer(BPEConfig(vocab_size=vocab)),
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=40.0, help="MB of text to tokenize")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument(
        "--train-mb", type=float, default=10.0, help="MB of text for the BPE training comparison"
    )
    parser.add_argument("--vocab", type=int, default=16_384)
    parser.add_argument("--repeats", type=int, default=2, help="runs per tool, interleaved (ABAB)")
    parser.add_argument("--skip-dolma", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tokbench-"))
    try:
        docs = collect(args.mb)
        total = sum(len(d["text"].encode("utf-8")) for d in docs)
        write_shards(docs, work / "docs" / "documents", args.shards)
        print(
            f"{len(docs)} documents, {total / 1e6:.1f} MB in {args.shards} shards; {args.workers} processes"
        )
        tokenizer = olmo_tokenizer()
        if tokenizer is None:
            print("ai2-olmo-eval not installed: training a tokenizer on the same documents instead")
            subprocess.run(
                [
                    *GLASSLM,
                    "tokenizer",
                    "train",
                    str(work / "docs"),
                    "--out",
                    str(work / "tok"),
                    "--tokenizer.vocab_size=50000",
                ],
                check=True,
            )
            tokenizer = work / "tok" / "tokenizer.json"
        print(f"tokenizer: {tokenizer}")
        from glasslm.tokenizer import Tokenizer

        tok = Tokenizer.from_file(tokenizer)
        results: dict[str, float] = {}
        counts: dict[str, int] = {}

        def run_ours() -> float:
            out = work / "tokens"
            shutil.rmtree(out, ignore_errors=True)
            s = timed(
                [
                    *GLASSLM,
                    "data",
                    "tokenize",
                    str(work / "docs"),
                    "--tokenizer",
                    str(tokenizer),
                    "--out",
                    str(out),
                    "--workers",
                    str(args.workers),
                    "--tokenize.progress=false",
                ]
            )
            counts["glasslm"] = json.loads((out / "manifest.json").read_text())["metrics"]["splits"]["train"][
                "tokens"
            ]
            return s

        def run_dolma() -> float:
            out = work / "dolma"
            shutil.rmtree(out, ignore_errors=True)
            s = timed(
                [
                    str(DOLMA),
                    "tokens",
                    "--documents",
                    str(work / "docs" / "documents" / "*.jsonl.gz"),
                    "--destination",
                    str(out),
                    "--tokenizer.name_or_path",
                    str(tokenizer),
                    "--tokenizer.eos_token_id",
                    str(tok.eos_id),
                    "--tokenizer.pad_token_id",
                    str(tok.pad_id),
                    "--processes",
                    str(args.workers),
                    "--dtype",
                    "uint16" if tok.vocab_size <= 65536 else "uint32",
                ]
            )
            # dolma writes headerless memmaps named *.npy: same documents, same EOS, so same count
            counts["dolma"] = sum(p.stat().st_size for p in out.rglob("*.npy")) // (
                2 if tok.vocab_size <= 65536 else 4
            )
            return s

        runners = {"glasslm": run_ours}
        if not args.skip_dolma:
            if not DOLMA.exists():
                subprocess.run(["bash", str(HERE / "setup_dolma.sh")], check=True)
            runners["dolma"] = run_dolma
        runs = interleave(runners, args.repeats)  # ABAB: both sides see the same load drift
        results = {k: min(v) for k, v in runs.items()}
        if "dolma" in runs:
            # dolma strips leading/trailing whitespace from every text (we keep texts byte-exact), so its
            # count is a little lower; on a 254-document sample all differences vanished after .strip().
            print(
                f"tokens written: glasslm {counts['glasslm']:,}, dolma {counts['dolma']:,} (dolma strips each text first)"
            )
            per_repeat = ratios(runs["glasslm"], runs["dolma"], higher_is_better=False)
            print(f"glasslm / dolma per repeat: {fmt_spread(per_repeat)}")
            report(
                "tokenize_throughput.py",
                f"tokenize end to end, {total / 1e6:.0f} MB, {args.workers} processes",
                "dolma 1.2.1 `tokens`",
                per_repeat,
                goal=2.0,
            )
        texts = [d["text"] for d in docs]
        results["encode_batch"] = min(
            raw_encode_batch(texts, tokenizer, args.workers) for _ in range(args.repeats)
        )

        rows = {k: total / 1e6 / v for k, v in results.items()}
        print(f"\n{'tokenize':<34}{'seconds':>9}{'MB/s':>9}{'MB/s/core':>11}{'glasslm ×':>11}")
        label = {
            "glasslm": "glasslm data tokenize (end to end)",
            "dolma": "dolma tokens 1.2.1 (end to end)",
            "encode_batch": "tokenizers encode_batch (only)",
        }
        for k, v in results.items():
            print(
                f"{label[k]:<34}{v:>9.2f}{rows[k]:>9.2f}{rows[k] / args.workers:>11.2f}{rows['glasslm'] / rows[k]:>11.2f}"
            )

        # BPE training on the same text: our verb (its own timer and end to end) vs the trainer directly.
        budget, train_docs = args.train_mb * 1e6, []
        for d in docs:
            if budget <= 0:
                break
            train_docs.append(d)
            budget -= len(d["text"].encode("utf-8"))
        write_shards(train_docs, work / "train" / "documents", 4)
        train_mb = sum(len(d["text"].encode("utf-8")) for d in train_docs) / 1e6
        started = time.perf_counter()
        subprocess.run(
            [
                *GLASSLM,
                "tokenizer",
                "train",
                str(work / "train"),
                "--out",
                str(work / "trained"),
                f"--tokenizer.vocab_size={args.vocab}",
            ],
            check=True,
            capture_output=True,
        )
        verb_total = time.perf_counter() - started
        verb_bpe = json.loads((work / "trained" / "manifest.json").read_text())["metrics"][
            "bpe_train_seconds"
        ]
        direct = train_direct([d["text"] for d in train_docs], args.vocab)
        print(f"\nBPE training, {train_mb:.1f} MB, vocab {args.vocab}:")
        print(
            f"  glasslm tokenizer train: {verb_bpe:.2f} s training (reading included), {verb_total:.2f} s end to end"
        )
        print(
            f"  tokenizers trainer directly (texts in memory): {direct:.2f} s; ratio {verb_bpe / direct:.2f}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

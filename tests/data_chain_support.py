"""The data stages end to end (import → tag → dedupe → decon → mix → tokenize) by their CLI verbs, with
outputs under a local directory or an object-store URL, and the byte-level comparison of two runs.
Shared by tests/test_s3.py (outputs on S3) and tests/test_ray_cluster.py (Ray across two nodes)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from glasslm.cli import main

STAGES = ("corpus", "attributes/tags", "attributes/dedupe", "attributes/decon", "mix", "tokens")
WORDS = [
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
]
TASK = "the lighthouse keeper counted seven ships passing the northern rocks before the winter storm arrived"

RECIPE = """
seed: 0
sources:
  - name: web
    match: [web]
    weight: 1.0
    heldout: {count: 2}
    dedupe: true
    decon: true
"""


def raw_inputs(root: Path, shards: int = 4, docs: int = 12) -> Path:
    """JSONL shards with exact duplicates, a document that contains an evaluation question, and one
    malformed line (quarantined by import with its file and line)."""
    rng = random.Random(0)
    src = root / "raw"
    src.mkdir(parents=True)
    for s in range(shards):
        lines = []
        for i in range(docs):
            text = " ".join(rng.choice(WORDS) for _ in range(60 + 7 * i)).capitalize() + "."
            if i == 3:
                text = "A copy every shard has. " * 20  # exact duplicate across shards
            if s == 1 and i == 5:
                text = f"Quiz night: {TASK}. Then the answers."
            lines.append(json.dumps({"id": f"d{s}-{i}", "text": text, "source": "web"}))
        if s == 2:
            lines.insert(4, '{"id": "broken", "text": ')
        (src / f"part-{s}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "tasks.jsonl").write_text(json.dumps({"question": TASK}) + "\n")
    (root / "recipe.yaml").write_text(RECIPE)
    (root / "tok.yaml").write_text("tokenizer: {vocab_size: 300}\n")
    return src


def join(base: str, rel: str) -> str:
    return f"{base.rstrip('/')}/{rel}"


def run_chain(
    inputs: Path | str, out: str, tokenizer: Path, executor: str = "process", workers: int = 2
) -> None:
    """Every data stage by its CLI verb, each reading the one before from ``out`` (a path or URL). The
    tokenizer is trained on the first (local) run's mix when ``tokenizer`` does not exist yet; the
    recipe and task file are those ``raw_inputs`` wrote beside the tokenizer."""
    corpus = join(out, "corpus")
    root = tokenizer.parent
    attrs = [join(out, a) for a in ("attributes/tags", "attributes/dedupe", "attributes/decon")]
    run = ["--executor", executor, "--workers", str(workers)]
    steps: list[list[str]] = [
        ["data", "import", str(inputs), "--out", corpus],
        ["data", "tag", corpus, "--taggers", "gopher,stats", "--no-progress", *run, "--out", attrs[0]],
        ["data", "dedupe", corpus, *run, "--out", attrs[1]],
        ["data", "decon", corpus, "--tasks", str(root / "tasks.jsonl"), *run, "--out", attrs[2]],
        ["data", "mix", str(root / "recipe.yaml"), "--documents", corpus, "--attributes", *attrs, *run]
        + ["--out", join(out, "mix")],
        ["data", "tokenize", join(out, "mix"), "--tokenizer", str(tokenizer), "--out", join(out, "tokens")]
        + [f"--tokenize.executor={executor}", f"--tokenize.workers={workers}", "--tokenize.progress=false"],
    ]
    for argv in steps:
        if argv[1] == "tokenize" and not tokenizer.exists():
            train = ["tokenizer", "train", join(out, "mix"), "--out", str(tokenizer)]
            assert main([*train, "--config", str(root / "tok.yaml")]) == 0
        assert main(argv) == 0, argv


def tree(files: dict[str, bytes]) -> dict[str, Any]:
    """File bytes of an artifact tree without its manifests, and each manifest's file hashes: what must
    be equal between two runs (manifests also hold times, commands and paths)."""
    out: dict[str, Any] = {}
    for rel, data in files.items():
        if rel.endswith("manifest.json"):
            out[rel] = json.loads(data)["files"]
        else:
            out[rel] = data
    return out


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def remote_files(fs: Any, url: str) -> dict[str, bytes]:
    base = url.split("://", 1)[1].rstrip("/") + "/"
    fs.invalidate_cache()
    return {name[len(base) :]: fs.cat_file(name) for name in sorted(fs.find(base))}

"""Builders shared by the tokenizer, tokenize, loader and trace-order tests: tiny Dolma corpora made
in the test's own directory, and a tiny tokenizer + tokens artifact built by the real CLI."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from glasslm import artifacts
from glasslm.cli import main
from glasslm.data.documents import write_jsonl

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
    "it",
    "an",
    "be",
    "this",
    "which",
    "or",
    "are",
    "def",
    "return",
    "import",
    "class",
    "self",
    "print",
    "value",
    "list",
    "data",
    "model",
    "token",
    "order",
    "seed",
    "batch",
    "step",
]


def doc(i: int, source: str, rng: random.Random) -> dict[str, Any]:
    n = rng.randint(3, 120)
    text = " ".join(rng.choice(WORDS) for _ in range(n)) + f" {source} {i}."
    if i % 7 == 0:
        text += " ünïcödé — 東京 ✓\n\tindented"  # multi-byte UTF-8 and whitespace must round-trip
    return {"id": f"{source}-{i}", "text": text, "source": source}


def make_docs(
    root: Path,
    shards: int = 3,
    per_shard: int = 60,
    heldout: int = 12,
    sources: tuple[str, ...] = ("web", "code"),
    seed: int = 0,
    kind: str | None = "mix",
) -> Path:
    """DIR/documents/shard-K.jsonl.gz (train) and DIR/heldout/<source>/0.jsonl.gz; an artifact if ``kind``."""
    rng = random.Random(seed)

    def fill(path: Path) -> None:
        for s in range(shards):
            docs = [doc(s * 1000 + i, sources[i % len(sources)], rng) for i in range(per_shard)]
            write_jsonl(path / "documents" / f"shard-{s}.jsonl.gz", docs)
        for src in sources:
            write_jsonl(
                path / "heldout" / src / "0.jsonl.gz", [doc(90_000 + i, src, rng) for i in range(heldout)]
            )

    if kind is None:
        fill(root)
        return root
    with artifacts.create_artifact(root, kind) as art:
        fill(art.path)
    return root


def make_tokenizer(docs: Path, out: Path, vocab: int = 320) -> Path:
    assert main(["tokenizer", "train", str(docs), "--out", str(out), f"--tokenizer.vocab_size={vocab}"]) == 0
    return out


def make_tokens(root: Path, **docs_kwargs: Any) -> tuple[Path, Path, Path]:
    """(docs, tokenizer, tokens) built with the real verbs."""
    docs = make_docs(root / "mix", **docs_kwargs)
    tok = make_tokenizer(docs, root / "tokenizer")
    tokens = root / "tokens"
    assert (
        main(["data", "tokenize", str(docs), "--tokenizer", str(tok), "--out", str(tokens), "--workers", "2"])
        == 0
    )
    return docs, tok, tokens

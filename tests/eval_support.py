"""Builders shared by the eval tests: a tiny byte-level BPE tokenizer, a tiny OLMo-2, task JSONL."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from glasslm.model.checkpoint import save_checkpoint
from glasslm.model.olmo2 import ModelConfig, OLMo2
from glasslm.tokenizer import SPECIAL_TOKENS

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "dogs",
    "ran",
    "far",
    "away",
    "from",
    "home",
    "because",
    "rain",
    "fell",
    "all",
    "day",
    "long",
    "and",
    "birds",
    "sang",
    "in",
    "green",
    "trees",
    "near",
    "old",
    "stone",
    "walls",
    "where",
    "children",
    "played",
    "games",
    "with",
    "bright",
    "red",
    "balls",
    "question",
    "answer",
    "science",
    "water",
    "ice",
    "heat",
    "light",
    "energy",
    "plant",
    "animal",
]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "." for _ in range(n)
    ]


def build_tokenizer(path: Path, vocab_size: int = 400, byte_merges: bool = True) -> Path:
    """Byte-level BPE (GPT-2 style pre-tokenizer, so every string round-trips)."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size if byte_merges else 256 + len(SPECIAL_TOKENS),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences(400) + ["Question: Answer: Goal: Fill in the blank"], trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def build_model(
    out: Path, tokenizer: Path, vocab_size: int = 512, seed: int = 0, max_seq_len: int = 512
) -> Path:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_seq_len=max_seq_len
    )
    model = OLMo2(config)
    # A larger init spread than OLMo-2's 0.02 makes the log-likelihoods differ clearly between choices.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return save_checkpoint(model, out, tokenizer=tokenizer, stage="init")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def arc_rows(n: int = 12) -> list[dict]:
    rng = random.Random(1)
    rows = []
    for i in range(n):
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(4)]
        rows.append(
            {
                "id": f"q{i}",
                "question": sentences(1, seed=100 + i)[0].rstrip(".") + "?",
                "choices": {"text": texts, "label": list("ABCD")},
                "answerKey": "ABCD"[i % 4],
            }
        )
    return rows


def winogrande_rows(n: int = 8) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = WORDS[i], WORDS[i + 10]
        rows.append(
            {
                "sentence": f"The {a} was bigger than the {b} so _ sat on the mat.",
                "option1": a,
                "option2": b,
                "answer": "1" if i % 2 else "2",
            }
        )
    return rows


def documents(n: int = 6) -> list[dict]:
    docs = []
    for i in range(n):
        source = "web" if i % 2 else "books"
        text = " ".join(sentences(3 + 20 * (i == 5), seed=200 + i)) + " café ☕"  # multi-byte characters
        docs.append({"id": f"d{i}", "text": text, "source": source})
    return docs

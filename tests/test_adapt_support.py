"""Shared pieces of the adaptation tests: a tiny BPE tokenizer and a tiny model, built in tmp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from glasslm.tokenizer import CHAT_TEMPLATE, CHAT_TEMPLATE_FILE, SPECIAL_TOKENS, Tokenizer


def build_tokenizer(directory: Path, vocab_size: int = 512) -> Path:
    """A byte-level BPE trained on the adaptation data's own text (help topics, tasks)."""
    from glasslm.adapt.builders import AdaptDataConfig, build

    data = build(AdaptDataConfig(rl_train=300, rl_heldout=50, sft_verifiable=300, dpo_verifiable=50))
    texts = [m["content"] for conv in data.sft for m in conv]
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / CHAT_TEMPLATE_FILE).write_text(CHAT_TEMPLATE)
    return directory / "tokenizer.json"


@pytest.fixture(scope="session")
def tiny_tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_file: Path) -> Tokenizer:
    return Tokenizer.from_file(tiny_tokenizer_file)


def test_tiny_tokenizer_knows_the_chat_tokens(tiny_tokenizer: Tokenizer) -> None:
    ids = tiny_tokenizer.encode("<|user|>\nhi\n<|assistant|>\n")
    assert tiny_tokenizer.hf.token_to_id("<|user|>") in ids
    assert tiny_tokenizer.decode(ids) == "<|user|>\nhi\n<|assistant|>\n"

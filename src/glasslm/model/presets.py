"""Named model sizes. The OLMo-2 presets follow the released OLMo-2 configurations."""

from __future__ import annotations

import dataclasses

from glasslm.config import ConfigError, did_you_mean
from glasslm.model.olmo2 import ModelConfig

OLMO2_VOCAB = 100_352  # the OLMo-2 tokenizer's 100,278 tokens padded to a multiple of 128

PRESETS: dict[str, ModelConfig] = {
    # Trains in minutes on two CPU cores; grouped-query attention on so GQA is always exercised.
    "tiny": ModelConfig(
        vocab_size=4096, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, mlp_hidden=384, max_seq_len=1024
    ),
    # One GPU, hours: about GPT-2 small.
    "small": ModelConfig(
        vocab_size=50_304, d_model=768, n_layers=12, n_heads=12, mlp_hidden=3072, max_seq_len=2048
    ),
    # OLMo-core's olmo2_190M (190M non-embedding parameters with the head; 267M in all): the small
    # shape of the GPU training benchmark.
    "olmo2-190m": ModelConfig(vocab_size=OLMO2_VOCAB, d_model=768, n_layers=12, n_heads=12, mlp_hidden=3072),
    "olmo2-1b": ModelConfig(vocab_size=OLMO2_VOCAB, d_model=2048, n_layers=16, n_heads=16, mlp_hidden=8192),
    "olmo2-7b": ModelConfig(vocab_size=OLMO2_VOCAB, d_model=4096, n_layers=32, n_heads=32, mlp_hidden=11_008),
    "olmo2-13b": ModelConfig(
        vocab_size=OLMO2_VOCAB, d_model=5120, n_layers=40, n_heads=40, mlp_hidden=13_824
    ),
    "olmo2-32b": ModelConfig(
        vocab_size=OLMO2_VOCAB, d_model=5120, n_layers=64, n_heads=40, n_kv_heads=8, mlp_hidden=27_648
    ),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        hint = did_you_mean(name, PRESETS)
        raise ConfigError(f"unknown model preset '{name}'{hint}; choose from {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


def pad_vocab(size: int, multiple: int = 128) -> int:
    """Embedding rows for a tokenizer of ``size`` tokens, rounded up for efficient matmuls."""
    return -(-size // multiple) * multiple

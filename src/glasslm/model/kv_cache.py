"""The key/value cache protocol the model's attention uses, and the plain pre-allocated cache.

``KVCache`` is what ``OLMo2.hidden``/``forward`` ask of a cache; the implementations are
``StaticKVCache`` (here), the generation engine's ``model/generate.py: SlotCache`` and the eval
scorer's ``eval/scoring.py: _PrefixCache``.
"""

from __future__ import annotations

from typing import Protocol

import torch

from glasslm.model.olmo2 import ModelConfig


class KVCache(Protocol):
    """What the model asks of a key/value cache, in one forward: ``length`` (only where the caller gave
    no positions or no mask), ``update`` once per layer, ``advance`` once at the end. Implemented by
    ``StaticKVCache`` (below), the generation engine's ``SlotCache`` and the scorer's ``_PrefixCache``."""

    @property
    def length(self) -> int:
        """Positions filled before this forward, the same for every row: the new tokens' default
        positions start there, and the default mask lets them see those cached keys."""
        ...

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' keys and values (batch, kv heads, new, head dim) of ``layer``; return
        the keys and values their attention runs over."""
        ...

    def advance(self, tokens: int) -> None:
        """The forward of ``tokens`` new tokens is done (every layer updated)."""
        ...


class StaticKVCache:
    """Pre-allocated keys and values for all layers; ``length`` tokens are filled (a ``KVCache``)."""

    def __init__(
        self, config: ModelConfig, batch: int, max_len: int, device: torch.device | str, dtype: torch.dtype
    ):
        shape = (config.n_layers, batch, config.kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} tokens > {self.max_len}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, tokens: int) -> None:
        self.length += tokens

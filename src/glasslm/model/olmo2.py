"""The OLMo-2 transformer, top to bottom.

OLMo-2 (OLMo et al., 2024, "2 OLMo 2 Furious") differs from Llama in three places, all for training
stability: RMSNorm on the full query and key projections before RoPE (QK-norm); the *reordered* norm,
which normalises the output of attention and of the MLP before it is added to the residual stream
(instead of normalising the input); and RoPE with θ = 500,000. No biases anywhere.

``architecture: llama`` switches those two back (pre-norm, no QK-norm), so the same code also reads and
evaluates small Hugging Face Llama folders; everything else (SwiGLU, RoPE, GQA, no biases) is shared.

This file knows nothing of sharding, checkpoints, losses or tokenizers, nor of speed tricks for one
caller: parallelism and activation checkpointing are applied from outside (``train/distributed.py``),
the CPU linear library too (``model/onednn.py``), the losses live in ``model/loss.py``, the KV-cache
protocol in ``model/kv_cache.py`` and loading in ``model/checkpoint.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # model/kv_cache.py builds its caches from ModelConfig
    from glasslm.model.kv_cache import KVCache

ARCHITECTURES = ("olmo2", "llama")


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: as many as query heads (no grouped-query attention)
    mlp_hidden: int = 512
    max_seq_len: int = 4096
    rope_theta: float = 500_000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    init_std: float = 0.02
    init_cutoff: float = 3.0  # truncate the normal initialisation at ±cutoff·std
    architecture: str = "olmo2"  # or "llama": pre-norm blocks, no QK-norm (for Hugging Face Llama folders)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def validate(self) -> None:
        from glasslm.config import ConfigError

        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"model.n_heads ({self.n_heads}) must be a multiple of model.n_kv_heads ({self.kv_heads})"
            )
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"model.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.head_dim % 2:
            raise ConfigError(f"head dimension d_model/n_heads = {self.head_dim} must be even for RoPE")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_hidden", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise and scale in fp32, then cast back (as OLMo-2 does; casting before the scale,
        # as Llama does, changes bf16 results).
        # torch's fused rms_norm computes weight · x · rsqrt(mean(x²) + eps), the same expression in one
        # kernel instead of five (measured faster on CPU, identical output in fp32).
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Pre-computed RoPE tables, half-split (``rotate_half``) layout as in Hugging Face."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        # Plain attributes, not buffers: the tables stay fp32 when the model is cast to bf16, and
        # are moved to the positions' device on first use.
        self.cos, self.sin = emb.cos(), emb.sin()

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (batch, seq, head_dim) for the given positions (fp32)."""
        self._to(position_ids.device)
        return self.cos[position_ids], self.sin[position_ids]

    def span(self, start: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (1, length, head_dim) for positions start..start+length-1: the same rows
        for every sequence, as views (no per-step gather)."""
        if start + length > self.cos.shape[0]:
            raise ValueError(
                f"positions up to {start + length} exceed the model's max_seq_len {self.cos.shape[0]}"
            )
        self._to(device)
        return self.cos[None, start : start + length], self.sin[None, start : start + length]

    def _to(self, device: torch.device) -> None:
        if self.cos.device != device:
            self.cos, self.sin = self.cos.to(device), self.sin.to(device)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (batch, heads, seq, head_dim); cos/sin: (batch or 1, seq, head_dim). Computed in fp32."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(config.d_model, q_dim, bias=False)
        self.k_proj = nn.Linear(config.d_model, kv_dim, bias=False)
        self.v_proj = nn.Linear(config.d_model, kv_dim, bias=False)
        self.o_proj = nn.Linear(q_dim, config.d_model, bias=False)
        # QK-norm over the whole projection (all heads together), before RoPE; Llama has none.
        qk_norm = config.architecture == "olmo2"
        self.q_norm: nn.Module = RMSNorm(q_dim, config.norm_eps) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = RMSNorm(kv_dim, config.norm_eps) if qk_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x)).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_norm(self.k_proj(x)).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        gqa = self.n_kv_heads != self.n_heads
        # mask None means plain causal attention over a fresh sequence (the fast, fused path).
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(config.mlp_hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Reordered norm: h = x + norm(attn(x)); out = h + norm(mlp(h)). Llama: h = x + attn(norm(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn = Attention(config)
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MLP(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.pre_norm = config.architecture == "llama"

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        if self.pre_norm:
            h = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, layer)
            return h + self.mlp(self.mlp_norm(h))
        h = x + self.attn_norm(self.attn(x, cos, sin, mask, cache, layer))
        return h + self.mlp_norm(self.mlp(h))


class OLMo2(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rope = RotaryEmbedding(config.head_dim, config.max_seq_len, config.rope_theta)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """OLMo-2 initialisation: every matrix ~ N(0, 0.02²) truncated at ±3σ; norms start at one."""
        std, cut = self.config.init_std, self.config.init_cutoff * self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-cut, b=cut)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits of shape (batch, seq, vocab): the LM head over ``hidden``'s output."""
        return self.lm_head(self.hidden(input_ids, position_ids, doc_ids, attn_mask, cache))

    def hidden(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """The final-norm hidden states (batch, seq, d_model): what the LM head reads.

        - ``doc_ids`` (batch, seq): intra-document attention; a token attends only to earlier tokens
          of its own document. Pair it with ``position_ids`` that restart at each document.
        - ``attn_mask``: an explicit boolean mask (batch, 1, seq, keys), True = may attend; used by the
          generation engine for left-padded batches.
        - ``cache``: a ``KVCache``; the new tokens come after ``cache.length`` filled positions.
        """
        T = input_ids.shape[1]
        if position_ids is None and doc_ids is not None:
            position_ids = positions_from_doc_ids(doc_ids)
        mask = attn_mask
        if mask is None and doc_ids is not None:
            mask = document_mask(doc_ids)
        needs_past = cache is not None and (mask is None or position_ids is None)
        past = cache.length if cache is not None and needs_past else 0
        if mask is None and past > 0:
            # New tokens attend to every cached token and causally among themselves.
            mask = torch.ones(T, past + T, dtype=torch.bool, device=input_ids.device).tril(past)[None, None]
        if position_ids is None:  # every row at positions past..past+T-1
            cos, sin = self.rope.span(past, T, input_ids.device)
        else:
            cos, sin = self.rope(position_ids)
        x = self.embed(input_ids)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.advance(T)
        return self.norm(x)


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (batch, 1, seq, seq) mask: causal and within the same document."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (causal & same_doc)[:, None]


def positions_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position ids that restart at 0 at every document boundary."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start_pos = torch.where(starts, idx, torch.zeros_like(idx))
    return idx - torch.cummax(start_pos, dim=1).values


def matmul_params(config: ModelConfig) -> int:
    """Parameters that take part in matrix multiplies per token (attention at its GQA sizes, MLP, head)."""
    d, hd = config.d_model, config.head_dim
    attn = d * config.n_heads * hd * 2 + d * config.kv_heads * hd * 2
    mlp = 3 * d * config.mlp_hidden
    return config.n_layers * (attn + mlp) + d * config.vocab_size


def param_counts(config: ModelConfig) -> dict[str, int]:
    d, hd = config.d_model, config.head_dim
    qk_norm = (config.n_heads + config.kv_heads) * hd if config.architecture == "olmo2" else 0
    per_layer = (
        d * config.n_heads * hd * 2
        + d * config.kv_heads * hd * 2
        + 3 * d * config.mlp_hidden
        + qk_norm
        + 2 * d
    )
    embed = config.vocab_size * d
    head = 0 if config.tie_embeddings else config.vocab_size * d
    total = embed + config.n_layers * per_layer + d + head
    return {"total": total, "non_embedding": total - embed, "embedding": embed}


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6·N (N = matmul parameters) + 6·L·d·s for causal attention.

    The attention term is half of the usual 12·L·d·s because a causal mask skips half the scores.
    """
    return 6.0 * matmul_params(config) + 6.0 * config.n_layers * config.d_model * seq_len


def describe(config: ModelConfig, seq_len: int | None = None) -> dict[str, float | int]:
    seq = seq_len or config.max_seq_len
    counts = param_counts(config)
    return {
        **{f"params_{k}": v for k, v in counts.items()},
        "matmul_params": matmul_params(config),
        "seq_len": seq,
        "train_flops_per_token": flops_per_token(config, seq),
        "log10_train_flops_per_token": round(math.log10(flops_per_token(config, seq)), 3),
    }

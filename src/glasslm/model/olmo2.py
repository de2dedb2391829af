"""The OLMo-2 transformer, top to bottom.

OLMo-2 (OLMo et al., 2024, "2 OLMo 2 Furious") differs from Llama in three places, all for training
stability: RMSNorm on the full query and key projections before RoPE (QK-norm); the *reordered* norm,
which normalises the output of attention and of the MLP before it is added to the residual stream
(instead of normalising the input); and RoPE with θ = 500,000. No biases anywhere.

``architecture: llama`` switches those two back (pre-norm, no QK-norm), so the same code also reads and
evaluates small Hugging Face Llama folders; everything else (SwiGLU, RoPE, GQA, no biases) is shared.

This file knows nothing of sharding, checkpoints or tokenizers: parallelism is applied from outside
(``train/distributed.py``), loading lives in ``model/checkpoint.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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
            raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"model.n_heads ({self.n_heads}) must be a multiple of model.n_kv_heads ({self.kv_heads})")
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
            raise ValueError(f"positions up to {start + length} exceed the model's max_seq_len {self.cos.shape[0]}")
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


class KVCache:
    """Pre-allocated keys and values for all layers; ``length`` tokens are filled."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device: torch.device | str, dtype: torch.dtype):
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

    def forward(self, x, cos, sin, mask, cache=None, layer=0):  # type: ignore[no-untyped-def]
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
        self.activation_checkpointing = False
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
        logits_index: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits of shape (batch, seq, vocab).

        - ``doc_ids`` (batch, seq): intra-document attention; a token attends only to earlier tokens
          of its own document. Pair it with ``position_ids`` that restart at each document.
        - ``attn_mask``: an explicit boolean mask (batch, 1, seq, keys), True = may attend; used by the
          generation engine for left-padded batches.
        - ``cache``: a KVCache; the new tokens are appended after ``cache.length`` filled positions.
        - ``logits_index`` (batch,): compute logits only at this position of each row, giving
          (batch, 1, vocab); the generation engine's prefill needs only the last prompt position, and
          the LM head over every prompt position would cost seq·d·vocab for nothing.
        - ``return_hidden``: return the final-norm hidden states (batch, seq, d_model) instead of the
          logits, for ``linear_lm_loss`` (the trainer's chunked head + loss).
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if position_ids is None and doc_ids is not None:
            position_ids = positions_from_doc_ids(doc_ids)
        mask = attn_mask
        if mask is None and doc_ids is not None:
            mask = document_mask(doc_ids)
        if mask is None and past > 0:
            # New tokens attend to every cached token and causally among themselves.
            mask = torch.ones(T, past + T, dtype=torch.bool, device=input_ids.device).tril(past)[None, None]
        if position_ids is None:  # every row at positions past..past+T-1
            cos, sin = self.rope.span(past, T, input_ids.device)
        else:
            cos, sin = self.rope(position_ids)
        x = self.embed(input_ids)
        for i, block in enumerate(self.blocks):
            if self.activation_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.length += T
        if logits_index is not None:
            x = x[torch.arange(B, device=x.device), logits_index][:, None]
        x = self.norm(x)
        return x if return_hidden else self.lm_head(x)


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


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class _CrossEntropyZLoss(torch.autograd.Function):
    """Summed cross-entropy and summed logsumexp² (the caller applies the z-loss coefficient) over the
    rows of ``logits`` whose label is not ignored.

    One logsumexp serves both terms, and the backward writes the gradient in one buffer,
    ``softmax · (g_ce + 2·g_z·lse) - g_ce·onehot``, instead of autograd's separate log-softmax,
    masked-copy (``logits[valid]``), logsumexp and index-put passes over the (tokens × vocab) logits.
    Measured with benchmarks/train_cpu.py (see benchmarks/RESULTS.md). Inputs of any float dtype;
    the arithmetic is fp32 and bf16 logits are upcast again in backward rather than kept as an fp32 copy.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        logits: torch.Tensor,
        labels: torch.Tensor,
        ignore_index: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        valid = labels != ignore_index
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        lf = _at_least_fp32(logits)
        lse = torch.logsumexp(lf, dim=-1)
        target = lf.gather(1, safe[:, None]).squeeze(1)
        weight = valid.to(lf.dtype)
        ctx.save_for_backward(logits, safe, lse, weight)
        return ((lse - target) * weight).sum(), (lse * lse * weight).sum()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, g_ce: torch.Tensor, g_z: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        logits, safe, lse, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        row = (g_ce + 2.0 * g_z * lse) * weight  # d(loss)/d(lse) per row
        grad = _logits_grad_(torch.sub(_at_least_fp32(logits), lse[:, None]), row, safe, g_ce * weight)
        return grad.to(logits.dtype), None, None


def _logits_grad_(shifted: torch.Tensor, row: torch.Tensor, safe: torch.Tensor, g_target: torch.Tensor) -> torch.Tensor:
    """d(loss)/d(logits) = softmax · row − onehot(target) · g_target, written into ``shifted``
    (fp32 logits − logsumexp, per row): one (tokens × vocab) buffer, no temporaries of that size."""
    grad = shifted.exp_().mul_(row[:, None])
    grad.scatter_add_(1, safe[:, None], -g_target[:, None])
    return grad


def lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    z_loss: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy (fp32) and the z-loss term ``z_loss * logsumexp(logits)²`` over unmasked tokens.

    Returns (ce, z); the training objective is ce + z. ``reduction`` is "mean" over unmasked tokens or
    "sum" (for open-instruct's sum-of-tokens normalisation and for gradient accumulation).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"lm_loss: reduction must be 'mean' or 'sum', got {reduction!r}")
    flat = logits.reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    ce, lse_sq = _CrossEntropyZLoss.apply(flat, labels, ignore_index)
    z = z_loss * lse_sq if z_loss > 0 else torch.zeros((), device=logits.device)
    if reduction == "mean":
        n = (labels != ignore_index).sum().clamp(min=1)
        ce = ce / n
        z = z / n
    return ce, z


class _LinearCrossEntropyZLoss(torch.autograd.Function):
    """LM head + cross-entropy + z-loss, a chunk of tokens at a time, with the gradients computed in
    the forward pass (as Liger-Kernel's fused linear cross-entropy does).

    The (tokens × vocab) fp32 logits are never held for the whole batch: each chunk's logits are made,
    reduced to their loss, turned in place into their gradient and multiplied into the gradients of
    the hidden states and of the head weight, then dropped. The matmuls are the plain path's three
    (logits, d hidden, d weight); what goes is the full-size logits buffer, its gradient buffer and
    the passes over them, and with them most of the head's memory. Rows whose label is ignored are
    dropped before the head, so they cost no matmul at all.

    Outputs (objective = ce + z_loss·Σlse², ce, Σlse²); only the objective carries a gradient, which
    is why the gradients can be made in the forward: backward only scales them by the incoming grad.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        z_loss: float,
        ignore_index: int,
        chunk_tokens: int,
        compute_dtype: torch.dtype | None,
        want_grad: bool,
        matmul_t: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        valid = labels != ignore_index
        # All-valid batches (pretraining) skip the gather: the hidden states are used as they are.
        idx = None if bool(valid.all()) else valid.nonzero().squeeze(1)
        h = hidden if idx is None else hidden.index_select(0, idx)
        y = labels if idx is None else labels.index_select(0, idx)
        dtype = compute_dtype or hidden.dtype  # the head's matmul dtype (bf16 under autocast)
        hc, wc = h.to(dtype), weight.to(dtype)
        # Sums in fp32, or fp64 for fp64 inputs (as lm_loss keeps them).
        acc = torch.promote_types(dtype, torch.float32)
        ce = torch.zeros((), dtype=acc, device=hidden.device)
        lse_sq = torch.zeros_like(ce)
        grad_h = torch.empty_like(hc) if want_grad else None
        # The head's gradient sums over chunks: accumulated in fp32 even when the matmuls are bf16.
        grad_w = torch.zeros_like(wc, dtype=acc) if want_grad else None
        for start in range(0, hc.shape[0], chunk_tokens):
            hs, ys = hc[start : start + chunk_tokens], y[start : start + chunk_tokens]
            logits = _at_least_fp32(matmul_t(hs, wc))
            lse = torch.logsumexp(logits, dim=-1)
            ce += (lse - logits.gather(1, ys[:, None]).squeeze(1)).sum()
            lse_sq += (lse * lse).sum()
            if grad_h is not None and grad_w is not None:
                grad = _logits_grad_(logits.sub_(lse[:, None]), 1.0 + 2.0 * z_loss * lse, ys, torch.ones_like(lse))
                grad = grad.to(dtype)
                grad_h[start : start + chunk_tokens] = matmul_t(grad, wc.T)
                grad_w += matmul_t(grad.T, hs.T)
        ctx.mark_non_differentiable(ce, lse_sq)
        ctx.save_for_backward(grad_h, grad_w, idx)  # type: ignore[arg-type]
        ctx.shapes = (hidden.shape, hidden.dtype, weight.dtype)  # type: ignore[attr-defined]
        return ce + z_loss * lse_sq, ce, lse_sq

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor, *_unused: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None, None, None, None, None]:
        grad_h, grad_w, idx = ctx.saved_tensors  # type: ignore[attr-defined]
        if grad_h is None or grad_w is None:
            raise RuntimeError("linear_lm_loss: backward through a loss computed with want_grad=False")
        shape, h_dtype, w_dtype = ctx.shapes  # type: ignore[attr-defined]
        gh = grad_h.to(h_dtype).mul_(g) if grad_h.dtype != h_dtype else grad_h * g
        if idx is not None:  # ignored rows get zero gradient
            gh = torch.zeros(shape, dtype=h_dtype, device=gh.device).index_copy_(0, idx, gh)
        return gh, (grad_w * g).to(w_dtype), None, None, None, None, None, None, None


def _matmul_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b.T


def linear_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    z_loss: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "sum",
    chunk_tokens: int = 1024,
    compute_dtype: torch.dtype | None = None,
    matmul_t: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``lm_loss`` of ``hidden @ weight.T`` without materialising the logits of the whole batch.

    ``hidden``: the final-norm output (``OLMo2.forward(..., return_hidden=True)``), (..., d);
    ``weight``: the LM head (vocab, d). Returns (objective, ce, z) with objective = ce + z, the same
    values as ``lm_loss`` on the logits; only ``objective`` is differentiable (ce and z are for
    reporting). ``chunk_tokens``: tokens per head matmul (their fp32 logits are chunk × vocab × 4
    bytes). ``compute_dtype``: dtype of the head's matmuls (bf16 to match autocast; default: the
    hidden states' dtype); the softmax and the sums are fp32 either way. ``matmul_t(a, b)`` computes
    ``a @ b.T`` for the three head matmuls (the trainer passes oneDNN's on CPU: model/onednn.py).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"linear_lm_loss: reduction must be 'mean' or 'sum', got {reduction!r}")
    if chunk_tokens < 1:
        raise ValueError(f"linear_lm_loss: chunk_tokens must be >= 1, got {chunk_tokens}")
    flat = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    objective, ce, lse_sq = _LinearCrossEntropyZLoss.apply(
        flat, weight, labels, z_loss, ignore_index, chunk_tokens, compute_dtype, want_grad, matmul_t or _matmul_t
    )
    z = z_loss * lse_sq
    if reduction == "mean":
        n = (labels != ignore_index).sum().clamp(min=1)
        objective, ce, z = objective / n, ce / n, z / n
    return objective, ce, z


def matmul_params(config: ModelConfig) -> int:
    """Parameters that take part in matrix multiplies per token (attention at its GQA sizes, MLP, head)."""
    d, hd = config.d_model, config.head_dim
    attn = d * config.n_heads * hd * 2 + d * config.kv_heads * hd * 2
    mlp = 3 * d * config.mlp_hidden
    return config.n_layers * (attn + mlp) + d * config.vocab_size


def param_counts(config: ModelConfig) -> dict[str, int]:
    d, hd = config.d_model, config.head_dim
    qk_norm = (config.n_heads + config.kv_heads) * hd if config.architecture == "olmo2" else 0
    per_layer = d * config.n_heads * hd * 2 + d * config.kv_heads * hd * 2 + 3 * d * config.mlp_hidden + qk_norm + 2 * d
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

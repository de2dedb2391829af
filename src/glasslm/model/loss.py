"""The language-model losses, kept out of the model (the model returns logits or hidden states; these
turn them into the training objective).

- ``lm_loss``: cross-entropy + z-loss on logits (adaptation's losses, FSDP2's pretraining path);
- ``linear_lm_loss``: the same values from the final hidden states and the LM head weight, a chunk of
  tokens at a time, never materialising the whole batch's logits (as Liger-Kernel's fused linear
  cross-entropy);
- ``lm_objective``: the one entry point the pretraining step calls: either of the two above, giving
  (summed objective, the named sums a step reports); ``head_objective`` is its chunked-head form.

Both kernels are custom autograd functions (one logsumexp for both terms, the gradient written in one
buffer); measured with benchmarks/train_cpu.py (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from glasslm.model import onednn


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


def _logits_grad_(
    shifted: torch.Tensor, row: torch.Tensor, safe: torch.Tensor, g_target: torch.Tensor
) -> torch.Tensor:
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
                grad = _logits_grad_(
                    logits.sub_(lse[:, None]), 1.0 + 2.0 * z_loss * lse, ys, torch.ones_like(lse)
                )
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

    ``hidden``: the final-norm output (``OLMo2.hidden``), (..., d);
    ``weight``: the LM head (vocab, d). Returns (objective, ce, z) with objective = ce + z, the same
    values as ``lm_loss`` on the logits; only ``objective`` is differentiable (ce and z are for
    reporting). ``chunk_tokens``: tokens per head matmul (their fp32 logits are chunk × vocab × 4
    bytes). ``compute_dtype``: dtype of the head's matmuls (bf16 to match autocast; default: the
    hidden states' dtype); the softmax and the sums are fp32 either way. ``matmul_t(a, b)`` computes
    ``a @ b.T`` for the three head matmuls (``head_objective`` passes oneDNN's on CPU: model/onednn.py).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"linear_lm_loss: reduction must be 'mean' or 'sum', got {reduction!r}")
    if chunk_tokens < 1:
        raise ValueError(f"linear_lm_loss: chunk_tokens must be >= 1, got {chunk_tokens}")
    flat = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    objective, ce, lse_sq = _LinearCrossEntropyZLoss.apply(
        flat,
        weight,
        labels,
        z_loss,
        ignore_index,
        chunk_tokens,
        compute_dtype,
        want_grad,
        matmul_t or _matmul_t,
    )
    z = z_loss * lse_sq
    if reduction == "mean":
        n = (labels != ignore_index).sum().clamp(min=1)
        objective, ce, z = objective / n, ce / n, z / n
    return objective, ce, z


def lm_objective(
    out: torch.Tensor,
    labels: torch.Tensor,
    z_loss: float,
    head_weight: torch.Tensor | None = None,
    chunk_tokens: int = 1024,
    compute_dtype: torch.dtype | None = None,
    use_onednn: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The pretraining objective, summed over the tokens (the step divides by the global count), and
    the named sums the step reports ("loss", "ce", "z_loss").

    ``head_weight`` None: ``out`` are logits (``lm_loss``). Otherwise ``out`` are the final hidden
    states and the LM head, cross-entropy and z-loss run ``chunk_tokens`` tokens at a time
    (``linear_lm_loss``), the head's matmuls in ``compute_dtype`` (bf16 to match autocast) and through
    oneDNN with ``use_onednn`` where usable (fp32 on CPU: model/onednn.py)."""
    if head_weight is None:
        ce, z = lm_loss(out, labels, z_loss=z_loss, reduction="sum")
        return ce + z, {"loss": ce + z, "ce": ce, "z_loss": z}
    fast = use_onednn and compute_dtype in (None, torch.float32) and onednn.usable(out, head_weight)
    objective, ce, z = linear_lm_loss(
        out,
        head_weight,
        labels,
        z_loss=z_loss,
        reduction="sum",
        chunk_tokens=chunk_tokens,
        compute_dtype=compute_dtype,
        matmul_t=onednn.matmul_t if fast else None,
    )
    return objective, {"loss": objective, "ce": ce, "z_loss": z}


def head_objective(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    labels: torch.Tensor,
    z_loss: float,
    chunk_tokens: int,
    compute_dtype: torch.dtype | None = None,
    use_onednn: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``lm_objective`` through the chunked LM head, from the final hidden states (``OLMo2.hidden``)."""
    return lm_objective(hidden, labels, z_loss, head_weight, chunk_tokens, compute_dtype, use_onednn)

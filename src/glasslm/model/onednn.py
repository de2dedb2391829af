"""Linear layers through oneDNN on CPU (fp32), applied to a plain model from outside, as torchtitan
applies float8 linears: the model file keeps ``nn.Linear``; the trainer swaps the class of each one.

Why: on CPU, ``aten::mm`` in fp32 goes to MKL's sgemm, which on the AMD EPYC dev box runs at about
97 GFLOP/s per core, while oneDNN's fp32 matmul (``torch.ops.mkldnn._linear_pointwise``, the kernel
torch.compile's CPU backend itself uses for linears) runs the same (2048 × 512)·(512 × 1536) product
at 200–215 GFLOP/s forward and d-input, ~170 d-weight (benchmarks/RESULTS.md, train_cpu). Both are
full fp32 (no bf16 inside; the results differ only in summation order, ~1e-6 relative). Matmuls are
~80% of a CPU training step, so this is the largest lever there is on CPU.

Only the arithmetic changes: parameters, their names, state dicts and checkpoints are those of
``nn.Linear``. Off CPU, under autocast, in other dtypes, or with a bias, the layer is plain
``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def available() -> bool:
    """Whether this torch build has oneDNN's linear kernel."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def matmul_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for 2-D fp32 CPU tensors through oneDNN (strided views are fine: no copies)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x @ weight.T`` can take the oneDNN path (CPU, fp32, no autocast)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and available()
    )


class _LinearFn(torch.autograd.Function):
    """y = x·Wᵀ with all three matmuls (y, dx = dy·W, dW = dyᵀ·x) through oneDNN."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, weight)
        ctx.in_shape = x.shape  # type: ignore[attr-defined]
        return matmul_t(x2, weight).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x2, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        g2 = grad.reshape(-1, grad.shape[-1])
        need_x, need_w = ctx.needs_input_grad  # type: ignore[attr-defined]
        dx = matmul_t(g2, weight.T).view(ctx.in_shape) if need_x else None  # type: ignore[attr-defined]
        dw = matmul_t(g2.T, x2.T) if need_w else None
        return dx, dw


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose CPU fp32 matmuls go through oneDNN (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None and usable(x, self.weight):
            return _LinearFn.apply(x, self.weight)
        return F.linear(x, self.weight, self.bias)


def use_onednn_linears(model: nn.Module) -> int:
    """Turn every bias-free ``nn.Linear`` of ``model`` into a ``OneDNNLinear`` in place (the class
    only: parameters and hooks stay). Returns how many were converted; 0 when oneDNN is missing."""
    if not available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.bias is None:
            module.__class__ = OneDNNLinear
            count += 1
    return count

"""AdamW with OLMo-2's weight-decay grouping, and the loss-spike guard (skip-step)."""

from __future__ import annotations

import fnmatch
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from glasslm.train.config import OptimConfig, SkipStepConfig


def _clean_name(name: str) -> str:
    # DDP prefixes "module.", torch.compile "_orig_mod."; patterns are written against the plain model.
    for prefix in ("module.", "_orig_mod."):
        name = name.replace(prefix, "")
    return name


def param_groups(model: nn.Module, config: OptimConfig) -> list[dict[str, Any]]:
    """Two groups: decayed and not decayed (names matching ``config.no_decay``)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # a tied head appears twice
            continue
        seen.add(id(p))
        clean = _clean_name(name)
        (no_decay if any(fnmatch.fnmatchcase(clean, pat) for pat in config.no_decay) else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def fused_supported(device: torch.device) -> bool:
    # torch has fused AdamW kernels for CUDA and (since 2.4) for CPU.
    return device.type in ("cuda", "cpu")


def build_optimizer(model: nn.Module, config: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    fused = fused_supported(device) if config.fused is None else config.fused
    return torch.optim.AdamW(
        param_groups(model, config),
        lr=config.lr,
        betas=(config.betas[0], config.betas[1]),
        eps=config.eps,
        fused=fused or None,
        foreach=None if fused else True,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class SkipStepGuard:
    """Decide whether an update is an outlier, from a rolling window of losses and gradient norms.

    Like OLMo-core's SkipStepOptimizer: once ``min_history`` steps are in the window, an update whose
    loss or gradient norm exceeds mean + sigma·std of the window is skipped. Every step's values enter
    the window, skipped or not, so a genuine level shift stops being an outlier after a while.
    The window is part of the trainer state so a resumed run skips exactly the same steps.
    """

    config: SkipStepConfig
    losses: deque[float] = field(default_factory=deque)
    grad_norms: deque[float] = field(default_factory=deque)

    def _outlier(self, value: float, window: Iterable[float]) -> bool:
        values = list(window)
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))
        return value > mean + self.config.sigma * std

    def should_skip(self, loss: float, grad_norm: float) -> bool:
        skip = (
            self.config.enabled
            and len(self.losses) >= self.config.min_history
            and (self._outlier(loss, self.losses) or self._outlier(grad_norm, self.grad_norms))
        )
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        while len(self.losses) > self.config.window:
            self.losses.popleft()
            self.grad_norms.popleft()
        return skip

    def state_dict(self) -> dict[str, list[float]]:
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.losses = deque(float(v) for v in state["losses"])
        self.grad_norms = deque(float(v) for v in state["grad_norms"])

"""``eval_mode``: the one way glasslm evaluates a model that may be training."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


@contextmanager
def eval_mode(model: M) -> Iterator[M]:
    """``model`` in eval mode inside the block; its training mode as it was afterwards (also on error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)

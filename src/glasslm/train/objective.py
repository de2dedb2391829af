"""What a training step minimises: an objective turns one micro-batch into (summed objective, named sums).

The step divides both by the global ``count`` of the step (summed over micro-batches and ranks), so
gradient accumulation and any number of ranks give the same objective. Pretraining's objective is
next-token cross-entropy plus z-loss (``LMObjective``); adaptation brings its own (``glasslm.adapt``:
SFT, DPO, GRPO).
"""

from __future__ import annotations

from typing import Protocol

import torch

from glasslm.model.loss import head_objective, lm_objective
from glasslm.train.train_model import Micro, TrainModel


class Objective(Protocol):
    def count(self, micro: Micro) -> int:
        """What the step's loss is averaged over (label tokens, pairs, …), for one micro-batch."""
        ...

    def loss(self, model: TrainModel, micro: Micro) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward ``micro`` and return (objective summed over it, named sums to report; the names
        include "loss")."""
        ...


class LMObjective:
    """Next-token cross-entropy + z-loss over the label tokens (OLMo-2's pretraining objective).

    With a hidden-states model (``TrainModel.hidden_states``) the head is applied a chunk of
    ``chunk_tokens`` tokens at a time and the logits of the whole batch never exist (model/loss.py).
    """

    def __init__(self, z_loss: float, chunk_tokens: int):
        self.z_loss, self.chunk_tokens = z_loss, chunk_tokens

    def count(self, micro: Micro) -> int:
        return int((micro["labels"] != -100).sum())

    def loss(self, model: TrainModel, micro: Micro) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model.forward(micro)
        if not model.hidden_states:
            return lm_objective(out, micro["labels"], self.z_loss)
        return head_objective(
            out,
            model.module.lm_head.weight,
            micro["labels"],
            self.z_loss,
            self.chunk_tokens,
            torch.bfloat16 if model.bf16 else None,
            model.onednn,
        )

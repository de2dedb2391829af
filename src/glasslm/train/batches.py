"""Where a step's data comes from: a batch source gives each (1-based) step this rank's micro-batches.

A batch source is a pure function of the step (and its data and seed), so a resumed run replays
exactly the batches an uninterrupted one would have seen; ``position`` is what a checkpoint records
of it. Pretraining reads the token loader (``TokenBatches``); adaptation stages have their own
(``glasslm.adapt``), GRPO's samples rollouts from the policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from glasslm.data.loader import TokenLoader
from glasslm.train.train_model import Micro


@dataclass
class StepBatch:
    micros: list[Micro]  # this rank's micro-batches, on the training device
    updates: int = 1  # optimizer updates taken on these micro-batches (GRPO's PPO epochs)
    metrics: dict[str, float] = field(default_factory=dict)  # reported with the step (rollout rewards)


class BatchSource(Protocol):
    def batch(self, step: int) -> StepBatch:
        """This rank's share of step ``step``'s data."""
        ...

    def position(self, step: int) -> dict[str, Any]:
        """The data position and settings saved with a checkpoint taken after ``step``."""
        ...


class TokenBatches:
    """Step ``s`` consumes the loader's global batch ``s - 1`` (``TokenLoader.batch``), this rank's
    rows of it, split into micro-batches of ``micro_batch`` rows."""

    def __init__(self, loader: TokenLoader, local_batch: int, micro_batch: int, device: torch.device):
        self.loader, self.local_batch, self.micro_batch, self.device = (
            loader,
            local_batch,
            micro_batch,
            device,
        )

    def batch(self, step: int) -> StepBatch:
        batch = self.loader.batch(step - 1)
        tensors = {
            k: torch.as_tensor(np.asarray(v)).to(self.device) for k, v in batch.items() if k != "instance_ids"
        }
        micros = [
            {k: v[start : start + self.micro_batch].long() for k, v in tensors.items()}
            for start in range(0, self.local_batch, self.micro_batch)
        ]
        return StepBatch(micros)

    def position(self, step: int) -> dict[str, Any]:
        lc = self.loader.config
        return {
            "next_batch": step,
            "seq_len": lc.seq_len,
            "global_batch_size": lc.global_batch_size,
            "seed": lc.seed,
            "tokens_manifest_sha256": self.loader.tokens_manifest_sha256,
        }

"""The model as a training step sees it: the plain OLMo2, its DDP/FSDP form, the forward a step calls.

``prepare_model`` applies everything from outside the model, in this order: activation checkpointing
(``distributed.apply_ac``), the device, the CPU linear library (``model/onednn.py``: MKL or oneDNN,
measured once on this model's shapes, or forced), the hidden-states forward for the chunked LM head
(``distributed.HiddenStates``), DDP or FSDP2 (``distributed.wrap``), and ``torch.compile``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

from glasslm.model import onednn
from glasslm.model.olmo2 import ModelConfig, OLMo2
from glasslm.model.onednn import LinearChoice
from glasslm.train import distributed
from glasslm.train.config import DistributedConfig, TrainerConfig

Micro = dict[str, torch.Tensor]  # one micro-batch: input_ids, labels and whatever the objective reads


@dataclass
class TrainModel:
    module: OLMo2  # the model itself: evaluation, sampling, the LM head's weight
    state_module: nn.Module  # what state dicts are taken from: the DDP/FSDP form, or the model
    step_forward: nn.Module  # what a training step calls (compiled, DDP, HiddenStates or the model)
    sync: DistributedDataParallel | FSDPModule | None  # where gradient all-reduce is switched off
    config: ModelConfig
    world: distributed.World
    bf16: bool
    hidden_states: bool  # step_forward returns the final hidden states (the chunked head applies the head)
    onednn: bool
    linear_choice: LinearChoice

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.world.device.type, dtype=torch.bfloat16)

    def forward(self, micro: Micro) -> torch.Tensor:
        """Logits of one micro-batch (hidden states when ``hidden_states``), under autocast."""
        with self.autocast():
            return cast(
                torch.Tensor,
                self.step_forward(
                    micro["input_ids"], position_ids=micro.get("position_ids"), doc_ids=micro.get("doc_ids")
                ),
            )

    @contextlib.contextmanager
    def grad_sync(self, sync: bool) -> Iterator[None]:
        """Skip the gradient all-reduce on all but the last micro-batch of an update."""
        if isinstance(self.sync, DistributedDataParallel) and not sync:
            with self.sync.no_sync():
                yield
            return
        if isinstance(self.sync, FSDPModule):
            self.sync.set_requires_gradient_sync(sync)
        yield

    def parameters(self) -> Iterator[nn.Parameter]:
        """What the gradient norm is clipped over."""
        return self.step_forward.parameters()


def prepare_model(
    model: OLMo2,
    model_config: ModelConfig,
    tc: TrainerConfig,
    dc: DistributedConfig,
    world: distributed.World,
    *,
    hidden_states: bool,
    rows: int,
    resumed_backend: onednn.Backend | None,
) -> TrainModel:
    """``model`` ready to train on ``world``. ``hidden_states``: the objective wants the final hidden
    states (chunked LM head; not under FSDP2, whose root parameters are sharded DTensors outside
    forward). ``rows``: tokens of one micro-batch, the shape the CPU linear choice is timed on."""
    bf16 = world.device.type == "cuda" if tc.precision == "auto" else tc.precision == "bf16"
    if tc.activation_checkpointing:
        distributed.apply_ac(model)  # from outside the model, as FSDP below
    model.to(world.device)
    # CPU fp32 linears through MKL (aten::mm) or oneDNN, whichever is faster on this CPU: timed once
    # on this model's shapes at one micro-batch's rows (model/onednn.py: MKL wins on Intel Xeon,
    # oneDNN on the AMD EPYC box, issue #23); true/false force either. A resumed run keeps the
    # library it started with (bit-exact resume). Recorded in the run manifest (linear_backend).
    choice = onednn.LinearChoice("mkl", "n/a")
    if world.device.type == "cpu" and not bf16 and world.strategy != "fsdp" and not tc.compile:
        # FSDP2/inductor (above) bring their own kernels.
        mine = (
            onednn.LinearChoice(resumed_backend, "resumed")
            if resumed_backend is not None
            else onednn.choose_backend(model, rows, tc.onednn_linear)
        )
        choice = cast(onednn.LinearChoice, distributed.broadcast_object(mine, world))  # rank 0's
    uses_onednn = onednn.apply_choice(model, choice)
    # The chunked head + loss (model/loss.py: head_objective) applies the head weight outside the
    # model's forward: the step's forward is then ``model.hidden`` (distributed.HiddenStates, which
    # DDP and torch.compile wrap in the model's place). Fine in one process and under DDP (the
    # weight's gradient hook fires when its gradient arrives).
    hidden = hidden_states and world.strategy != "fsdp"
    forward: nn.Module = distributed.HiddenStates(model) if hidden else model
    wrapped = distributed.wrap(forward, world, dc, bf16)
    sync = wrapped if isinstance(wrapped, DistributedDataParallel | FSDPModule) else None
    return TrainModel(
        module=model,
        # state dicts: DDP/FSDP/plain, before torch.compile (the model itself when the step's forward
        # is HiddenStates: same names and tensors as DDP's)
        state_module=model if hidden else wrapped,
        step_forward=cast(nn.Module, torch.compile(wrapped)) if tc.compile else wrapped,
        sync=sync,
        config=model_config,
        world=world,
        bf16=bf16,
        hidden_states=hidden,
        onednn=uses_onednn,
        linear_choice=choice,
    )

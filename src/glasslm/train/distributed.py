"""Process groups and parallelism, applied to a plain OLMo2 from outside the model code (as torchtitan).

Launch with torchrun (``python -m torch.distributed.run --nproc-per-node N -m glasslm train …``); this
module reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and never launches processes itself.
- ``ddp``: torch DistributedDataParallel, full replicas, gradients all-reduced.
- ``fsdp``: FSDP2 ``fully_shard`` per transformer block and on the root; parameters are DTensors
  sharded over ranks, gathered for compute (ZeRO-3 when ``reshard_after_forward``).

Also applied from outside, before either: activation checkpointing (``apply_ac``, as torchtitan's) and,
for the chunked LM head + loss, a forward that stops at the final hidden states (``HiddenStates``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.utils.checkpoint
from torch import nn

from glasslm.config import ConfigError
from glasslm.model.kv_cache import KVCache
from glasslm.model.olmo2 import Block, OLMo2
from glasslm.train.config import DistributedConfig


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    strategy: str  # "none" when world_size == 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device is 'cuda' but no CUDA device is available (use auto or cpu)")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_device(requested: str, key: str = "--device") -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda``, ``cuda:N``: a device this machine has, or a
    ConfigError naming ``key`` (torch's own errors for ``cuda`` on a CPU build are tracebacks)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{key} {requested!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key} is {requested!r} but no CUDA device is available (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{key} {requested!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type != "cpu":
        raise ConfigError(f"{key} {requested!r}: glasslm runs on cpu or cuda")
    return device


def _env_int(name: str, default: int) -> int:
    """A torchrun variable as an int, or one line naming it (``WORLD_SIZE=abc`` was a traceback)."""
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"${name} must be a whole number (torchrun sets it), got {text!r}") from None


def init(config: DistributedConfig, device_request: str) -> World:
    """Join torchrun's process group (if launched by torchrun with more than one process)."""
    world_size, rank, local_rank = (
        _env_int(k, d) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0))
    )
    device = pick_device(device_request, local_rank)
    if world_size == 1:
        return World(0, 1, 0, device, "none")
    if config.strategy == "none":
        raise ConfigError(
            f"launched with {world_size} processes but distributed.strategy is 'none': "
            "set --distributed.strategy=ddp or fsdp"
        )
    backend = config.backend if config.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return World(rank, world_size, local_rank, device, config.strategy)


class CheckpointedBlock(Block):
    """A ``Block`` whose activations are recomputed in backward instead of kept (in training mode):
    only the block's input is saved. Same parameters, names and state dict as ``Block``."""

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        if not self.training:
            return super().forward(x, cos, sin, mask, cache, layer)
        out: torch.Tensor = torch.utils.checkpoint.checkpoint(
            super().forward, x, cos, sin, mask, cache, layer, use_reentrant=False
        )
        return out


def apply_ac(model: OLMo2) -> int:
    """Activation checkpointing on every transformer block of ``model`` (in place: the class of each
    block changes, its parameters and hooks stay; apply before DDP/FSDP). Returns how many."""
    for block in model.blocks:
        block.__class__ = CheckpointedBlock
    return len(model.blocks)


class HiddenStates(nn.Module):
    """``model.hidden`` as a module's forward: the model up to its final norm, for the chunked LM head
    + loss (model/loss.py: head_objective), which applies the head itself. DDP and ``torch.compile``
    wrap this module, as they would the model, so that they run (DDP's gradient hooks, the compiled
    graph) around the forward the step actually calls. State dicts are taken from the model itself."""

    def __init__(self, model: OLMo2):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model.hidden(input_ids, position_ids=position_ids, doc_ids=doc_ids)


def wrap(model: nn.Module, world: World, config: DistributedConfig, bf16: bool) -> nn.Module:
    """Apply DDP or FSDP2 to ``model`` (already on ``world.device``)."""
    if world.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [world.device.index] if world.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if world.strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # On GPU gather weights in bf16 and reduce gradients in fp32; master weights stay fp32.
        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if bf16
            else MixedPrecisionPolicy()
        )
        if not isinstance(model, OLMo2):
            raise TypeError(f"FSDP2 shards an OLMo2 block by block, not a {type(model).__name__}")
        for block in model.blocks:
            fully_shard(block, reshard_after_forward=config.reshard_after_forward, mp_policy=mp)
        fully_shard(model, reshard_after_forward=config.reshard_after_forward, mp_policy=mp)
        return model
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP and ``torch.compile`` wrappers (FSDP2 shards in place: nothing to unwrap)."""
    from torch._dynamo.eval_frame import OptimizedModule
    from torch.nn.parallel import DistributedDataParallel

    while isinstance(model, DistributedDataParallel | OptimizedModule):
        model = model.module if isinstance(model, DistributedDataParallel) else model._orig_mod
    return model


def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_object(obj: object, world: World) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: object, world: World) -> list[object] | None:
    """Every rank's ``obj`` in rank order, on rank 0; None on the other ranks."""
    if not world.distributed:
        return [obj]
    box: list[object] | None = [None] * world.world_size if world.is_main else None
    dist.gather_object(obj, box, dst=0)
    return box


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()

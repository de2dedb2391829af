"""Process groups and parallelism, applied to a plain OLMo2 from outside the model code (as torchtitan).

Launch with torchrun (``python -m torch.distributed.run --nproc-per-node N -m glasslm train …``); this
module reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and never launches processes itself.
- ``ddp``: torch DistributedDataParallel, full replicas, gradients all-reduced.
- ``fsdp``: FSDP2 ``fully_shard`` per transformer block and on the root; parameters are DTensors
  sharded over ranks, gathered for compute (ZeRO-3 when ``reshard_after_forward``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from glasslm.config import ConfigError
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


def init(config: DistributedConfig, device_request: str) -> World:
    """Join torchrun's process group (if launched by torchrun with more than one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
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
        for block in model.blocks:  # type: ignore[union-attr]
            fully_shard(block, reshard_after_forward=config.reshard_after_forward, mp_policy=mp)
        fully_shard(model, reshard_after_forward=config.reshard_after_forward, mp_policy=mp)
        return model
    return model


def unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


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


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()

"""Distributed data parallel set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

NCCL on GPUs, gloo on CPU. Only rank 0 writes files and logs progress; the others train in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def read_distributed_env() -> DistributedContext:
    """The process's place in a torchrun launch (a single process when the variables are unset)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def init_distributed(context: DistributedContext, device: torch.device) -> None:
    """Join the process group (no-op for a single process or when already joined)."""
    if not context.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """True when `flag` holds on every rank (a collective: every rank must call it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0.5)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BN running statistics) to every rank, so all ranks hold one model."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src)


def average_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over all ranks (a collective: every rank must call it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return dict(values)
    names = list(values)
    tensor = torch.tensor([float(values[name]) for name in names], device=device, dtype=torch.float64)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(names, tensor.tolist()))

"""Distributed helpers: torchrun environment, NCCL on GPUs and gloo on CPU, rank-0 writing."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device_type: str) -> tuple[int, int, int]:
    """Initialise the process group when launched by torchrun; returns (rank, world, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def reduce_mean(values: dict[str, float], device) -> dict[str, float]:
    """Average a dict of floats over ranks (identity when not distributed)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def broadcast(obj):
    """Rank 0's ``obj`` on every rank (itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]

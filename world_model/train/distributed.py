"""Process-group set-up for ``torchrun`` (gloo on CPU, NCCL on CUDA), and the few
collectives the loop uses. Without ``torchrun`` everything is a one-process no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Dist", "all_reduce_mean", "barrier", "setup", "teardown"]


@dataclass(frozen=True)
class Dist:
    """Where this process stands."""

    rank: int
    """Global rank (0 logs, evaluates and writes checkpoints)."""
    world_size: int
    """Number of processes."""
    local_rank: int
    """Rank on this node (picks the GPU)."""
    device: torch.device
    """Device of this process."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Dist:
    """Read ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (set by ``torchrun``) and start the
    process group when there is more than one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                device_id=dev if use_cuda else None)
    return Dist(rank, world_size, local_rank, dev)


def teardown(d: Dist) -> None:
    if d.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.distributed:
        dist.barrier()


def all_reduce_mean(d: Dist, values: dict[str, float]) -> dict[str, float]:
    """Mean over processes of ``values`` (same keys, in the same order, on every process)."""
    if not d.distributed or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return dict(zip(values, (t / d.world_size).tolist()))

"""Data parallelism for the study under ``torchrun`` (DDP); one process stays the default.

Every rank builds the same data and the same global batch (same seeds), then trains on
its contiguous shard of each global batch: a deterministic distributed sampler. The
embedding losses gather the global batch (``gather_distributed=True``), so every rank's
gradient, averaged by DDP, is the gradient of the single-process loss. Only rank 0
evaluates, probes and writes files.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from nodulebench.distributed import get_rank, get_world_size, sum_over_ranks


@dataclass(frozen=True)
class Parallel:
    """This process's place among the ranks (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this rank evaluates and writes."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether several processes train together."""
        return self.world_size > 1

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch (its size divides evenly)."""
        size = batch.shape[0] // self.world_size
        return batch[self.rank * size : (self.rank + 1) * size]

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.active:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: torch.Tensor) -> float:
        """The mean over ranks of a scalar (a loss value for the log)."""
        return float(sum_over_ranks(value.detach().double())) / self.world_size


def init_parallel(device: str) -> tuple[Parallel, str]:
    """Join the process group that ``torchrun`` describes, if any.

    Returns:
        This rank's :class:`Parallel` and the device it should use (``cuda:LOCAL_RANK``
        for a CUDA run under torchrun).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Parallel(), device
    on_cuda = device.startswith("cuda")
    if on_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if on_cuda else "gloo")
    return Parallel(get_rank(), get_world_size()), device


def close_parallel(parallel: Parallel) -> None:
    """Leave the process group, every rank together.

    A DDP module caught in a reference cycle keeps the group's Gloo threads alive; freed
    during interpreter shutdown they abort the process ("terminate called without an
    active exception"). So the cycles are collected first, and the ranks wait for each
    other (rank 0 may still be writing the report) before the group goes.
    """
    if parallel.active and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()

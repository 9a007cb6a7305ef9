"""Data-parallel training under `torchrun`: process group, device per rank, DDP wrapping.

`torchrun` starts one process per device and sets RANK, WORLD_SIZE and LOCAL_RANK. Every process
draws its own patches (the data seed includes the rank), gradients are averaged by DDP, and only
rank 0 prints, validates and writes files, so the run folder looks the same as a one-process run.
`--batch-size` is per process; the effective batch is `batch_size × world_size`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any_true(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` is true on any process (all of them must call this together)."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return module
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)


def from_environment() -> Distributed:
    """The process's place in a `torchrun` job (rank 0 of 1 when not under torchrun)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: torch.device) -> Distributed:
    """Join the process group when launched by torchrun: NCCL on CUDA, gloo on CPU."""
    place = from_environment()
    if place.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=place.rank, world_size=place.world_size)
    return place


def teardown(place: Distributed) -> None:
    if place.enabled and dist.is_initialized():
        dist.destroy_process_group()

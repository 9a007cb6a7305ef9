"""Run by test_distributed.py under `torchrun --nproc_per_node 2`: a FitNet `distill()` that
records, on each rank, the LR patches the DDP-wrapped student is called with and, at every
optimiser step, the weights and the gradients the step uses (student and FitNet adapters).

It observes through torch's global hooks only (module forward pre-hook, optimiser step
pre-hook), so the run is the product's own, unchanged.

    torchrun --standalone --nproc_per_node 2 tests/train/ddp_recorder.py \
        TEACHER STUDENT SEED ITERS OUTPUT RECORDS
writes RECORDS/rank0.pt and RECORDS/rank1.pt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import register_optimizer_step_pre_hook

from srcompress.train.distill import distill


def main() -> None:
    teacher, student, seed, iters, output, records = sys.argv[1:7]
    record: dict[str, list[Any]] = {"lr": [], "weights": [], "grads": []}

    def on_forward(module: nn.Module, args: tuple[Any, ...]) -> None:
        if isinstance(module, DistributedDataParallel):
            record["lr"].append(args[0].detach().clone())

    def on_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        record["weights"].append([p.detach().clone() for p in parameters])
        record["grads"].append([p.grad.detach().clone() for p in parameters])

    register_module_forward_pre_hook(on_forward)
    register_optimizer_step_pre_hook(on_step)
    torch.set_num_threads(1)
    distill(teacher, student=student, method="fitnet", batch_size=2, patch_size=16, workers=0,
            device="cpu", iters=int(iters), lr=1e-3, seed=int(seed), val_benchmarks=[],
            output=output)
    torch.save(record, Path(records) / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main()

"""Does a forward (teacher) or forward+backward (student) cost twice as much at twice the batch?

DUKD's cost target assumes it does: it runs the student once on pairs and zoom-in tiles together
(batch 2B) where KD runs it on B. On this 2-core CPU the student step was measured superlinear
(batch 32 at 2.41x batch 16 for EDSR c64b32, patch 48), which is a lead for the excess of
bench_distill.py's dukd/kd ratio over the work ratio.

    .venv/bin/python benchmarks/bench_batch_scaling.py [--teacher SPEC] [--student SPEC]
"""

from __future__ import annotations

import argparse
import time

import torch

from srcompress.models import build_model


def seconds(run, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="edsr-c256b32")
    parser.add_argument("--student", default="edsr-c64b32")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=48)
    arguments = parser.parse_args()
    torch.manual_seed(0)
    teacher = build_model(arguments.teacher, arguments.scale).module.eval().requires_grad_(False)
    student = build_model(arguments.student, arguments.scale).module.train()

    def teacher_forward(batch: int) -> None:
        with torch.inference_mode():
            teacher(torch.rand(batch, 3, arguments.patch, arguments.patch))

    def student_step(batch: int) -> None:
        student(torch.rand(batch, 3, arguments.patch, arguments.patch)).mean().backward()

    for name, run in (("teacher forward", teacher_forward), ("student forward+backward",
                                                            student_step)):
        run(4)
        single = seconds(lambda run=run: run(arguments.batch))
        double = seconds(lambda run=run: run(2 * arguments.batch))
        print(f"{name}: batch {arguments.batch} {single:.2f} s, batch {2 * arguments.batch} "
              f"{double:.2f} s, ratio {double / single:.3f} (linear: 2)", flush=True)


if __name__ == "__main__":
    main()

"""Train a small real-world teacher on ../shared/data/train with Real-ESRGAN's degradation.

No real-world checkpoint (Real-ESRGAN x4plus, its Compact models) can be downloaded here, so the
real-world comparison (benchmarks/distill_realworld.py) needs a teacher trained on this machine.
This one is an SRVGGNetCompact x4 (Real-ESRGAN's compact architecture, built through spandrel)
with 32 features and 8 convolutions, about 0.09 M parameters, trained with the L1 loss on the
80 Sun-Hays photographs degraded on the fly by `--degradation realesrgan` (x4plus settings), as
Real-ESRNet (the PSNR-oriented stage of Real-ESRGAN) is trained. It is a teacher that knows the
task, not a good real-world model: a few thousand iterations on two shared CPU cores.

The weights stay under runs/ (not committed); the checkpoint records its degradation, so
`srcompress info` reports its task and `distill` defaults to real-world inputs for it.

    .venv/bin/python examples/train_realworld_teacher.py
    .venv/bin/python examples/train_realworld_teacher.py --iters 500 --output runs/rw-quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

from srcompress.train.distill import distill
from srcompress.train.progress import RichReporter

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEACHER_SPEC = "compact:num_feat=32,num_conv=8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=32, help="LR patch (HR is 4x)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-data", type=Path, default=SHARED_DATA / "train" / "SunHays80")
    parser.add_argument("--output", type=Path, default=Path("runs/realworld/teacher"),
                        help="run folder; the teacher is OUTPUT/student.safetensors")
    arguments = parser.parse_args()

    result = distill(
        teacher=None, student=TEACHER_SPEC, method="scratch", scale=4,
        degradation="realesrgan", train_data=[arguments.train_data], val_benchmarks=[],
        iters=arguments.iters, batch_size=arguments.batch_size,
        patch_size=arguments.patch_size, lr=arguments.lr, schedule="cosine",
        seed=arguments.seed, workers=arguments.workers, device=arguments.device,
        output=arguments.output, save_every=max(1, arguments.iters // 10),
        resume=(arguments.output / "checkpoints" / "last.pt").exists(),
        reporter=RichReporter(description="real-world teacher"))
    print(f"teacher: {result.student}")


if __name__ == "__main__":
    main()

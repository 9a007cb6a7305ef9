"""Train the small demo teacher shipped as `srcompress/demo/teacher_x2.safetensors`.

The teacher is an EDSR x2 with 32 features and 4 residual blocks (about 0.12 M parameters, under
1 MB), trained from scratch on the three demo training images in `srcompress/demo/train/`
(public-domain/CC0 photographs, see examples/README.md). It is small enough to train on two CPU
cores in well under an hour and to distill in a couple of minutes, which is what `make demo` needs;
it is a demonstration teacher, not a good SR model.

    .venv/bin/python examples/train_demo_teacher.py            # writes the shipped teacher
    .venv/bin/python examples/train_demo_teacher.py --iters 200 --output /tmp/teacher.safetensors
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from srcompress import models
from srcompress.demo import demo_data_folder, demo_teacher_path
from srcompress.train.distill import distill
from srcompress.train.progress import training_reporter

TEACHER_SPEC = "edsr:num_feat=32,num_block=4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--output", type=Path, default=demo_teacher_path(2))
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="srcompress-demo-teacher-") as folder:
        result = distill(
            teacher=None, student=TEACHER_SPEC, method="scratch", scale=2,
            train_data=[demo_data_folder()], val_benchmarks=[], iters=arguments.iters,
            batch_size=arguments.batch_size, patch_size=arguments.patch_size, lr=arguments.lr,
            schedule="cosine", seed=arguments.seed, workers=arguments.workers, device="cpu",
            output=Path(folder) / "run", save_every=max(arguments.iters, 1),
            reporter=training_reporter(description="demo teacher"))
        trained = models.load_model(result.student)
        trained.metadata = {"method": "scratch", "teacher": "none",
                            "iterations": arguments.iters,
                            "trained_on": "srcompress demo images (examples/README.md)",
                            "made_by": "examples/train_demo_teacher.py"}
        models.save_model(arguments.output, trained)
    print(f"wrote {arguments.output} ({arguments.output.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

"""Train a small, converged EDSR x2 teacher on the Sun-Hays 80 photographs (`../shared/data`).

Quantization's defaults must be chosen on converged models: fine-tuning a model that is still far
from its optimum improves it at almost any learning rate, which hides the damage a too-large rate
does to a trained one. The shipped demo teacher has seen three photographs; this script trains a
slightly larger EDSR (32 features, 8 residual blocks, about 0.2 M parameters) on 80 real scene
photographs with a cosine schedule that ends at a zero learning rate, validating on Set5 so the
plateau is visible in `metrics.json` (Set5 36.07, 36.59, 36.68, 36.71 dB at 1500, 3000, 4000,
5000 iterations). On one quiet CPU core it takes about half an hour (0.33 s per iteration); the
weights are not shipped (benchmarks and docs that need them say how to make them).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python examples/train_small_teacher.py \\
        --output runs/small_teacher_x2.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

from srcompress import models
from srcompress.train.distill import distill
from srcompress.train.progress import RichReporter

ROOT = Path(__file__).resolve().parents[1]
TEACHER_SPEC = "edsr:num_feat=32,num_block=8"
DEFAULT_TRAIN_DATA = ROOT.parent / "shared" / "data" / "train" / "SunHays80"
DEFAULT_DATA_ROOT = ROOT.parent / "shared" / "data" / "benchmarks"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=TEACHER_SPEC)
    parser.add_argument("--train-data", type=Path, default=DEFAULT_TRAIN_DATA)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                        help="where Set5 is found for the validation curve")
    parser.add_argument("--iters", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "small_teacher_x2",
                        help="run folder (checkpoints, metrics.json with the Set5 curve)")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" /
                        "small_teacher_x2.safetensors")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    arguments = parser.parse_args()
    if not arguments.train_data.is_dir():
        parser.error(f"the training photographs {arguments.train_data} are not there: pass "
                     "--train-data FOLDER.")

    result = distill(
        teacher=None, student=arguments.spec, method="scratch", scale=2,
        train_data=[arguments.train_data], val_benchmarks=["Set5"],
        data_root=arguments.data_root, val_every=arguments.val_every, iters=arguments.iters,
        batch_size=arguments.batch_size, patch_size=arguments.patch_size, lr=arguments.lr,
        schedule="cosine", seed=arguments.seed, workers=arguments.workers, device="cpu",
        output=arguments.run, save_every=arguments.val_every, resume=arguments.resume,
        reporter=RichReporter(description="small teacher"))
    if not result.completed:
        raise SystemExit(130)
    trained = models.load_model(result.student)
    trained.metadata = {"method": "scratch", "teacher": "none", "iterations": arguments.iters,
                        "trained_on": arguments.train_data.name,
                        "made_by": "examples/train_small_teacher.py"}
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    models.save_model(arguments.output, trained)
    print(f"wrote {arguments.output} ({arguments.output.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

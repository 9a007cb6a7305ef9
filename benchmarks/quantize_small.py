"""Quantization-aware training at small scale: w8a8, w4a4, w2a2 × none / kd / dukd, one table.

For each bit-width the float student is quantised (body scope), calibrated, and fine-tuned with
each method at the same budget (iterations, batch, patch, learning rate) and the same seed, with
the student's own full-precision weights as the teacher (or `--teacher`). Every result is
evaluated on Set5 and Set14 with the field's protocol (Y-PSNR/SSIM, border = scale), next to the
float student and to the calibrated model before any training. The table replaces this script's
section of docs/results.md (between its markers), with the command that produced it.

    .venv/bin/python benchmarks/quantize_small.py --iters 2000            # the lead's full run
    .venv/bin/python benchmarks/quantize_small.py --iters 3 --batch-size 2 --patch-size 16 \\
        --results /tmp/results.md                                         # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch
from results_doc import replace_section, shown_command

from srcompress.demo import demo_data_folder, demo_teacher_path
from srcompress.evaluation import evaluate
from srcompress.models import load_model
from srcompress.train.quantize import quantize

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = ROOT.parent / "shared" / "data" / "benchmarks"
BENCHMARKS = ("Set5", "Set14")


def scores(model: object, scale: int, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    report = evaluate(model, benchmarks=list(BENCHMARKS), scale=scale, data_root=args.data_root,
                      device=args.device)
    return {result["benchmark"]: (result["psnr"], result["ssim"]) for result in report["results"]}


def post_training(bits: int, args: argparse.Namespace, output: Path) -> Path:
    """`quantize --iters 0`: exactly the calibrated model each QAT run below starts from."""
    result = quantize(args.student, w_bits=bits, a_bits=bits, iters=0,
                      batch_size=args.batch_size, patch_size=args.patch_size, seed=args.seed,
                      calibration_batches=args.calibration_batches, train_data=args.train_data,
                      val_benchmarks=[], device=args.device, workers=0, output=output)
    return result.quantized


def row(label: str, bits: str, method: str, result: dict[str, tuple[float, float]],
        reference: dict[str, tuple[float, float]], seconds: float | None) -> str:
    cells = [label, bits, method]
    for name in BENCHMARKS:
        psnr, ssim = result[name]
        cells.append(f"{psnr:.2f} / {ssim:.4f}")
    cells.append(f"{result['Set5'][0] - reference['Set5'][0]:+.2f}")
    cells.append(f"{result['Set14'][0] - reference['Set14'][0]:+.2f}")
    cells.append(f"{seconds:.0f}" if seconds is not None else "")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default=str(demo_teacher_path(2)),
                        help="float model to quantize (default: the demo EDSR x2)")
    parser.add_argument("--teacher", help="full-precision teacher (default: the student itself)")
    parser.add_argument("--bits", default="8,4,2")
    parser.add_argument("--methods", default="none,kd,dukd")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--lr", type=float,
                        help="learning rate (default: quantize's, by bit-width)")
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-data", nargs="+", default=[str(demo_data_folder())])
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "quantize_small"),
                        help="folder for the run folders (one per bits x method)")
    parser.add_argument("--results", default=str(ROOT / "docs" / "results.md"))
    args = parser.parse_args()

    student = load_model(args.student)
    scale = student.scale
    float_scores = scores(args.student, scale, args)
    header = ("| model | bits (w/a) | method | Set5 PSNR / SSIM | Set14 PSNR / SSIM | "
              "Δ Set5 dB | Δ Set14 dB | train s |\n|---|---|---|---|---|---|---|---|")
    rows = [row("float student", "32/32", "-", float_scores, float_scores, None)]
    print(rows[0], flush=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for bits in (int(text) for text in args.bits.split(",")):
        initial = scores(str(post_training(bits, args, Path(args.runs) /
                                           f"{stamp}-w{bits}a{bits}-ptq")), scale, args)
        rows.append(row("PTQ (--iters 0)", f"{bits}/{bits}", "-", initial, float_scores, None))
        print(rows[-1], flush=True)
        for method in args.methods.split(","):
            started = time.perf_counter()
            result = quantize(
                args.student, teacher=args.teacher, method=method, w_bits=bits, a_bits=bits,
                iters=args.iters, batch_size=args.batch_size, patch_size=args.patch_size,
                lr=args.lr, seed=args.seed, calibration_batches=args.calibration_batches,
                train_data=args.train_data, val_benchmarks=[], device=args.device,
                workers=args.workers, save_every=max(args.iters // 4, 1),
                output=Path(args.runs) / f"{stamp}-w{bits}a{bits}-{method}")
            seconds = time.perf_counter() - started
            rows.append(row("QAT", f"{bits}/{bits}", method,
                            scores(str(result.quantized), scale, args), float_scores, seconds))
            print(rows[-1], flush=True)

    command = shown_command([".venv/bin/python", "benchmarks/quantize_small.py", *sys.argv[1:]])
    teacher = args.teacher or "the student's own full-precision weights"
    lr = f"{args.lr:g}" if args.lr else "quantize's default for the bit-width"
    text = "\n".join([
        "## Quantization-aware training (benchmarks/quantize_small.py)",
        "",
        f"`{command}` ({datetime.date.today().isoformat()}, torch {torch.__version__}, device "
        f"{args.device})",
        "",
        f"Student {Path(args.student).name} x{scale}; teacher: {teacher}; body convolutions "
        f"quantised (head, upsampler and output layer in full precision); {args.iters} "
        f"iterations, batch {args.batch_size}, LR patch {args.patch_size}, lr {lr}, seed "
        f"{args.seed}, the same for every method; training data "
        f"{', '.join(Path(p).name for p in args.train_data)}. Δ is against the float student.",
        "",
        header,
        *rows,
    ])
    replace_section(Path(args.results), "quantize_small", text)
    print(f"table written to {args.results}")


if __name__ == "__main__":
    main()

"""Quantized ONNX exports next to float and to ONNX Runtime's own post-training quantization.

For each model, one process exports and times, interleaved, on the same 256x256 input:

- `float`: the project's float export (`export_onnx`, verified against PyTorch);
- `srcompress wXaY` (default w8a8, w4a8, w4a4): the project's post-training quantization
  (`srcompress quantize --iters 0`, the model every QAT run starts from), or with `--qat-iters N`
  that many QAT iterations of `srcompress quantize` at `--qat-lr` (default: quantize's default
  for the bit-width) with its other defaults (trained checkpoints only: latency does not depend
  on the weights), exported by the project's Q/DQ export. What is scored is the model the
  product recommends: `best.safetensors`, which is never worse than the calibrated start;
- `ort static` (the anchor): `onnxruntime.quantization.quantize_static` of the float export,
  QDQ format, per-channel int8 weights, uint8 activations, MinMax calibration, on the same LR
  patches the project calibrates on (default 20 patches of 64x64 from the shipped demo images).

It reports, per variant: the median latency of `--repeats` runs (ONNX Runtime CPU, `--threads`
intra-op threads, sessions alternating after a warm-up) and its ratio float/variant (above 1:
faster than float); the kernels ONNX Runtime actually runs, read from the graph it optimises
(`SessionOptions.optimized_model_filepath`, the same optimisation level as the timed session):
integer and float convolutions, the other integer operators, Transposes and the Q/DQ nodes left;
the file size; and, for trained checkpoints, Set5/Set14 Y-PSNR of the ONNX file itself with the
evaluation protocol of `srcompress evaluate` (a model built from a SPEC such as `edsr-baseline`
has random weights: its PSNR is not measured). The goals of issue 10 are checked at the end.

MODELS are float checkpoints or SPECs (default: `edsr-baseline` x2 and the shipped demo
teacher). The table replaces this script's section of docs/results.md (`--results`).

    .venv/bin/python benchmarks/bench_quantize.py                                 # the table
    .venv/bin/python benchmarks/bench_quantize.py edsr-baseline \\
        runs/small_teacher_x2.safetensors --qat-iters 400 --results /tmp/results.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from results_doc import replace_section, shown_command, shown_path

from srcompress.data.images import read_image
from srcompress.data.training import PatchBatches, load_training_images
from srcompress.demo import demo_data_folder, demo_teacher_path
from srcompress.evaluation import evaluate
from srcompress.export.onnx import export_onnx
from srcompress.models import LoadedModel, build_model, load_model, save_model
from srcompress.train.quantize import default_learning_rate, quantize

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = ROOT.parent / "shared" / "data" / "benchmarks"
LATENCY_IMAGE = demo_data_folder().parent / "val" / "chelsea.png"
BENCHMARKS = ("Set5", "Set14")
ANCHOR = "ort static"
FLOAT = "float"

# Operators of the optimised graph, grouped for the table. NCHWc convolutions are ONNX Runtime's
# blocked-layout float kernels (ORT_ENABLE_ALL turns float Conv into them).
FLOAT_CONVS = ("Conv", "FusedConv", "NchwcConv")
INTEGER_CONVS = ("QLinearConv", "ConvInteger")
# Two medians within 3 % are "equal" latency: the spread of repeated medians on this machine.
EQUAL_LATENCY = 1.03
UNCHECKED_ATOL = 1e9
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")


@dataclass
class Variant:
    """One ONNX file of one model and what was measured on it."""

    name: str
    path: Path
    bits: str | None = None  # "w8a8" for srcompress's variants
    times: list[float] = field(default_factory=list)
    kernels: dict[str, int] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    p99_difference: float | None = None  # ONNX Runtime vs the PyTorch fake-quant model

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000


class PatchReader(CalibrationDataReader):
    """The calibration patches one by one (the export's batch is 1), as ONNX Runtime reads them."""

    def __init__(self, batches: Sequence[torch.Tensor]) -> None:
        self._batches = iter([{"input": patch[None].numpy()} for batch in batches
                              for patch in batch])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def parse_bits(text: str) -> list[tuple[int, int]]:
    bits = []
    for item in text.split(","):
        match = re.fullmatch(r"w(\d)a(\d)", item.strip())
        if match is None:
            raise SystemExit(f"--variants: {item!r} is not of the form w8a8.")
        bits.append((int(match[1]), int(match[2])))
    return bits


def float_model(source: str, scale: int, folder: Path) -> tuple[LoadedModel, Path, bool]:
    """The float model, its checkpoint file, and whether it is trained (a checkpoint) or a SPEC
    with random weights (saved into `folder`, since quantization reads a file)."""
    if Path(source).is_file():
        return load_model(source), Path(source), True
    torch.manual_seed(0)
    model = build_model(source, scale)
    return model, save_model(folder / f"{file_stem(source)}.safetensors", model), False


def file_stem(source: str) -> str:
    return re.sub(r"\W+", "_", Path(source).stem)


def calibration(args: argparse.Namespace) -> dict[str, Any]:
    """How `srcompress quantize --iters 0` calibrates here: the anchor gets the same patches."""
    return {"train_data": args.calibration_data, "patch_size": args.patch_size,
            "batch_size": args.calibration_batch, "seed": args.seed,
            "calibration_batches": -(-args.calibration_patches // args.calibration_batch)}


def calibration_batches(args: argparse.Namespace, scale: int) -> list[torch.Tensor]:
    """The LR patches `quantize` calibrates on: its first batches (`PatchBatches`, rank 0)."""
    settings = calibration(args)
    data = load_training_images(settings["train_data"], scale, settings["patch_size"])
    batches = PatchBatches(data, settings["patch_size"], settings["batch_size"],
                           settings["seed"])
    return [batches[index][0] for index in range(settings["calibration_batches"])]


def srcompress_quantized(checkpoint: Path, w_bits: int, a_bits: int, iters: int,
                         args: argparse.Namespace, folder: Path) -> LoadedModel:
    """`srcompress quantize` with its default settings: post-training quantization when `iters`
    is 0 (the model every QAT run starts from), else QAT from there on the calibration images at
    `--qat-lr`. The model returned is the one the product recommends, `best.safetensors`: the
    calibrated start or the final weights, whichever validates better on fixed patches
    of the training images (the run has no validation benchmark), so QAT never scores below PTQ
    here either."""
    result = quantize(checkpoint, w_bits=w_bits, a_bits=a_bits, iters=iters, val_benchmarks=[],
                      lr=args.qat_lr, device="cpu", workers=0, save_every=max(iters, 1),
                      output=folder / f"{checkpoint.stem}-w{w_bits}a{a_bits}-{iters}",
                      **{**calibration(args), **qat_patches(args, iters)})
    return load_model(result.best if result.best is not None else result.quantized)


def qat_patches(args: argparse.Namespace, iters: int) -> dict[str, int]:
    """QAT's LR patch side when `--qat-patch-size` is given: a QAT iteration on 64-pixel patches
    costs about 7 of 24-pixel ones (measured on the demo teacher), and the run calibrates on
    the same number of patches of that side."""
    return {"patch_size": args.qat_patch_size} if iters and args.qat_patch_size else {}


def ort_static(float_path: Path, output: Path, batches: Sequence[torch.Tensor]) -> None:
    """The anchor: ONNX Runtime's post-training quantization of the float export."""
    quantize_static(str(float_path), str(output), PatchReader(batches),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def session_options(threads: int) -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def executed_kernels(path: Path, threads: int, folder: Path) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime runs, after the timed session's optimisations."""
    options = session_options(threads)
    options.optimized_model_filepath = str(folder / f"{path.stem}.optimised.onnx")
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath).graph
    return dict(Counter(node.op_type for node in graph.node))


def kernel_summary(kernels: dict[str, int]) -> dict[str, Any]:
    integer_ops = {op: count for op, count in kernels.items()
                   if op.startswith("QLinear") or op.endswith("Integer")}
    return {
        "integer_convs": sum(kernels.get(op, 0) for op in INTEGER_CONVS),
        "float_convs": sum(kernels.get(op, 0) for op in FLOAT_CONVS),
        "integer_ops": integer_ops,
        "transposes": kernels.get("Transpose", 0),
        "quantize_linear": kernels.get("QuantizeLinear", 0),
        "dequantize_linear": kernels.get("DequantizeLinear", 0),
    }


def latency_input(size: int) -> dict[str, np.ndarray]:
    image = read_image(LATENCY_IMAGE)
    tiled = image.repeat(1, -(-size // image.shape[1]), -(-size // image.shape[2]))
    return {"input": tiled[:, :size, :size].unsqueeze(0).numpy()}


def time_interleaved(variants: list[Variant], args: argparse.Namespace) -> None:
    inputs = latency_input(args.size)
    sessions = {variant.name: onnxruntime.InferenceSession(
        str(variant.path), session_options(args.threads), providers=["CPUExecutionProvider"])
        for variant in variants}
    for variant in variants:  # warm-up: allocations, kernel selection, weight pre-packing
        sessions[variant.name].run(None, inputs)
    for _ in range(args.repeats):
        for variant in variants:
            started = time.perf_counter()
            sessions[variant.name].run(None, inputs)
            variant.times.append(time.perf_counter() - started)


def psnr(path: Path, scale: int, args: argparse.Namespace) -> dict[str, float]:
    report = evaluate(str(path), benchmarks=list(BENCHMARKS), scale=scale,
                      data_root=args.data_root, device="cpu")
    return {result["benchmark"]: result["psnr"] for result in report["results"]}


def measure_model(source: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    model, checkpoint, trained = float_model(source, args.scale, folder)
    label = Path(source).name if trained else f"{source} (random weights)"
    print(f"{label} x{model.scale}: exporting", flush=True)
    batches = calibration_batches(args, model.scale)
    stem = file_stem(source)
    variants = [Variant(FLOAT, folder / f"{stem}-float.onnx")]
    export_onnx(model, variants[0].path)
    for w_bits, a_bits in parse_bits(args.variants):
        # Latency does not depend on the weights: models with random weights are not trained.
        iters = args.qat_iters if trained else 0
        lr = args.qat_lr if args.qat_lr is not None else default_learning_rate(w_bits, a_bits)
        trained_label = f" QAT {iters} it lr {lr:g}" if iters else ""
        variant = Variant(f"srcompress w{w_bits}a{a_bits}{trained_label}",
                          folder / f"{stem}-w{w_bits}a{a_bits}.onnx", f"w{w_bits}a{a_bits}")
        # Written whatever the verification finds: the table shows how far ONNX Runtime is from
        # the fake-quant model (99th percentile of |difference|, against one grey level).
        report = export_onnx(
            srcompress_quantized(checkpoint, w_bits, a_bits, iters, args, folder),
            variant.path, atol=UNCHECKED_ATOL)
        variant.p99_difference = report.p99_abs_diff
        variants.append(variant)
    anchor = Variant(ANCHOR, folder / f"{stem}-ort-static.onnx")
    ort_static(variants[0].path, anchor.path, batches)
    variants.append(anchor)

    print(f"{label}: timing {len(variants)} variants x {args.repeats}", flush=True)
    time_interleaved(variants, args)
    for variant in variants:
        variant.kernels = executed_kernels(variant.path, args.threads, folder)
        if trained and not args.no_psnr:
            variant.scores = psnr(variant.path, model.scale, args)
    float_ms = variants[0].median_ms
    rows = []
    for variant in variants:
        rows.append({
            "variant": variant.name, "bits": variant.bits,
            "median_ms": round(variant.median_ms, 2),
            "float_over_variant": round(float_ms / variant.median_ms, 3),
            "file_bytes": variant.path.stat().st_size, **kernel_summary(variant.kernels),
            "psnr": {name: round(value, 4) for name, value in variant.scores.items()},
            "p99_abs_diff_to_pytorch": variant.p99_difference,
            "kernels": variant.kernels,
        })
    return {"model": label, "scale": model.scale, "trained": trained, "variants": rows}


def goals(result: dict[str, Any]) -> list[str]:
    """Issue 10's goals for this model, each as met/missed with the numbers."""
    rows = {row["variant"]: row for row in result["variants"]}
    ours = {row["bits"]: row for row in result["variants"] if row["bits"]}
    w8a8, anchor, float_row = ours.get("w8a8"), rows[ANCHOR], rows[FLOAT]
    if w8a8 is None:
        return []
    lines = []

    def check(ok: bool, text: str) -> None:
        lines.append(f"{'met' if ok else 'MISSED'}: {text}")

    speedup = w8a8["float_over_variant"]
    check(speedup >= 2.0, f"w8a8 at least 2.0x faster than float ({speedup:.2f}x)")
    check(speedup >= anchor["float_over_variant"],
          f"w8a8 at least as fast as the anchor ({speedup:.2f}x vs "
          f"{anchor['float_over_variant']:.2f}x)")
    for bits, row in ours.items():
        if bits != "w8a8":
            check(row["median_ms"] <= w8a8["median_ms"] * EQUAL_LATENCY,
                  f"{bits} faster than or equal to w8a8 ({row['median_ms']:.0f} vs "
                  f"{w8a8['median_ms']:.0f} ms)")
    for benchmark in BENCHMARKS:
        if benchmark in w8a8["psnr"]:
            drop = float_row["psnr"][benchmark] - w8a8["psnr"][benchmark]
            check(drop <= 0.05, f"w8a8 within 0.05 dB of float on {benchmark} ({-drop:+.3f} dB)")
            margin = w8a8["psnr"][benchmark] - anchor["psnr"][benchmark]
            check(margin > 0, f"w8a8 above the anchor on {benchmark} ({margin:+.3f} dB)")
    return lines


def table(result: dict[str, Any]) -> list[str]:
    lines = [f"{result['model']} x{result['scale']}:", "",
             "| variant | median ms | float / variant | int / float convs | other integer ops | "
             "Transposes | Q / DQ left | MiB | p99 vs PyTorch (grey levels) | Set5 dB | "
             "Set14 dB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["variants"]:
        others = ", ".join(f"{count} {op}" for op, count in sorted(row["integer_ops"].items())
                           if op not in INTEGER_CONVS) or "-"
        scores = [f"{row['psnr'][name]:.3f}" if name in row["psnr"] else "-"
                  for name in BENCHMARKS]
        difference = row["p99_abs_diff_to_pytorch"]
        lines.append(
            f"| {row['variant']} | {row['median_ms']:.1f} | {row['float_over_variant']:.2f}x | "
            f"{row['integer_convs']} / {row['float_convs']} | {others} | {row['transposes']} | "
            f"{row['quantize_linear']} / {row['dequantize_linear']} | "
            f"{row['file_bytes'] / 2**20:.2f} | "
            f"{f'{difference * 255:.2f}' if difference is not None else '-'} | "
            f"{' | '.join(scores)} |")
    return lines


def shown_arguments(arguments: list[str]) -> str:
    """This run's command line for the results document: paths repository-relative, and without
    the output options (`--results`, `--json`), which say where this run wrote, not what it
    measured."""
    kept, skip = [], False
    for part in arguments:
        if skip or part in ("--results", "--json"):
            skip = not skip
            continue
        kept.append(str(Path(part).absolute()) if Path(part).exists() else part)
    return shown_command([".venv/bin/python", "benchmarks/bench_quantize.py", *kept])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*",
                        default=["edsr-baseline", str(demo_teacher_path(2))],
                        help="float checkpoints or SPECs (default: edsr-baseline, demo teacher)")
    parser.add_argument("--scale", type=int, default=2, help="scale of models built from a SPEC")
    parser.add_argument("--variants", default="w8a8,w4a8,w4a4")
    parser.add_argument("--size", type=int, default=256, help="input side in pixels")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-data", nargs="+", default=[str(demo_data_folder())])
    parser.add_argument("--calibration-patches", type=int, default=20)
    parser.add_argument("--calibration-batch", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=64, help="LR calibration patch side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--qat-iters", type=int, default=0,
                        help="QAT iterations (quantize's defaults, on --calibration-data) of the "
                        "srcompress variants of trained checkpoints; 0: post-training only")
    parser.add_argument("--qat-lr", type=float,
                        help="QAT learning rate (default: quantize's, by bit-width)")
    parser.add_argument("--qat-patch-size", type=int,
                        help="LR patch side of QAT runs (default: --patch-size)")
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--no-psnr", action="store_true", help="latency and kernels only")
    parser.add_argument("--results", default=str(ROOT / "docs" / "results.md"),
                        help="document whose bench_quantize section is replaced ('' for none)")
    parser.add_argument("--json", dest="json_path",
                        help="also write the results here ('-': stdout)")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5: the table reports medians.")
    if args.qat_lr is not None and not (args.qat_lr > 0 and args.qat_iters > 0):
        parser.error("--qat-lr must be positive and needs --qat-iters N (QAT iterations).")
    if args.qat_patch_size is not None and not (args.qat_patch_size > 0 and args.qat_iters > 0):
        parser.error("--qat-patch-size must be positive and needs --qat-iters N.")
    for source in args.models:
        if Path(source).suffix in CHECKPOINT_SUFFIXES and not Path(source).is_file():
            parser.error(f"{source} does not exist (the small teacher is made by "
                         "examples/train_small_teacher.py).")
    # Quiet ONNX Runtime's advice to pre-process before quantize_static (the anchor is defined
    # without it, as in issue 10) and its warning that NCHWc graphs are machine-specific.
    logging.getLogger().setLevel(logging.ERROR)
    onnxruntime.set_default_logger_severity(3)

    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as folder:
        results = [measure_model(source, args, Path(folder)) for source in args.models]

    header = (f"ONNX Runtime {onnxruntime.__version__} CPU, {args.threads} threads, input "
              f"1x3x{args.size}x{args.size}, median of {args.repeats} interleaved runs "
              f"({datetime.date.today().isoformat()}, torch {torch.__version__})")
    lines = [header, ""]
    for result in results:
        lines += [*table(result), ""]
        lines += [f"- {line}" for line in goals(result)]
        lines.append("")
    print("\n".join(lines))

    if args.results:
        learning_rate = (f"at lr {args.qat_lr:g}" if args.qat_lr is not None
                         else "at quantize's default lr for the bit-width")
        patches = (f"LR patches of {args.qat_patch_size} pixels (calibrated on as many of "
                   "them)" if args.qat_patch_size else "the same patch size")
        trained = (f"then {args.qat_iters} QAT iterations {learning_rate}, batch "
                   f"{args.calibration_batch}, {patches}, quantize's other defaults; each "
                   "srcompress variant is the run's best.safetensors, the weights the product "
                   "recommends: the calibrated start or the final weights, whichever validates "
                   "better on fixed patches of the training images" if args.qat_iters
                   else "without training")
        replace_section(Path(args.results), "bench_quantize", "\n".join([
            "## Quantized export latency (benchmarks/bench_quantize.py)", "",
            f"`{shown_arguments(sys.argv[1:])}`", "",
            f"srcompress calibrates on {args.calibration_patches} LR patches of "
            f"{args.patch_size}x{args.patch_size} from "
            f"{', '.join(shown_path(p) for p in args.calibration_data)} ({trained}); the anchor "
            "(`quantize_static`: QDQ, per-channel int8 weights, uint8 activations, MinMax) on "
            "the same patches. Kernels are counted in the graph ONNX Runtime optimised.",
            "", *lines]))
    if args.json_path == "-":
        print(json.dumps(results, indent=2))
    elif args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

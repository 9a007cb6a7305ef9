"""onnxruntime CPU latency of a float model and its w8a8 Q/DQ export on a 256x256 input.

Both files are made by the project's own export (`srcompress.export.onnx.export_onnx`, verified
against PyTorch), from the same weights: the int8 one after `quantize_model` (body scope) and
calibration on a real image, without training (latency does not depend on it). Both sessions run
in the same process, alternately, after a warm-up, and the median of `--repeats` runs is reported
with the ratio float/int8 (above 1: the int8 model is faster).

MODEL is a float checkpoint; `--spec` builds a freshly initialised one instead (default
`edsr-baseline`: 64 features, 16 blocks).

    .venv/bin/python benchmarks/bench_quantize.py --spec edsr-baseline --scale 2
    .venv/bin/python benchmarks/bench_quantize.py student.safetensors --threads 2 --json -
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from srcompress.data.images import read_image
from srcompress.demo import demo_data_folder
from srcompress.export.onnx import export_onnx
from srcompress.models import LoadedModel, build_model, load_model
from srcompress.quant import calibrate, quantize_model

CALIBRATION_IMAGE = demo_data_folder() / "astronaut.png"


def session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fused_integer_ops(path: Path, threads: int) -> dict[str, int]:
    """Integer kernels onnxruntime actually runs after its graph optimisations."""
    with tempfile.TemporaryDirectory() as folder:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(folder) / "optimised.onnx")
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
        counts = Counter(node.op_type for node in graph.node)
    return {op: count for op, count in counts.items() if op.startswith(("QLinear", "ConvInteger"))
            or op in ("Conv", "FusedConv")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="float checkpoint (default: --spec)")
    parser.add_argument("--spec", default="edsr-baseline")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="input side in pixels")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", dest="json_path",
                        help="also write the results here ('-': stdout)")
    args = parser.parse_args()

    torch.manual_seed(0)
    float_model = load_model(args.model) if args.model else build_model(args.spec, args.scale)
    quantized_module, report = quantize_model(copy.deepcopy(float_model.module), 8, 8)
    image = read_image(CALIBRATION_IMAGE)[:, :128, :128].unsqueeze(0)
    calibrate(quantized_module, [image])
    quantized = LoadedModel(quantized_module, float_model.arch, float_model.settings,
                            float_model.scale, {"quant": report.metadata()}, "bench")

    inputs = {"input": np.random.default_rng(0).random((1, 3, args.size, args.size),
                                                       dtype=np.float32)}
    with tempfile.TemporaryDirectory() as folder:
        paths = {"float": Path(folder) / "float.onnx", "int8": Path(folder) / "int8.onnx"}
        exports = {"float": export_onnx(float_model, paths["float"]),
                   "int8": export_onnx(quantized, paths["int8"])}
        sessions = {name: session(path, args.threads) for name, path in paths.items()}
        for name in sessions:  # warm-up: allocations, kernel selection
            sessions[name].run(None, inputs)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.repeats):
            for name, current in sessions.items():
                started = time.perf_counter()
                current.run(None, inputs)
                times[name].append(time.perf_counter() - started)
        kernels = {name: fused_integer_ops(path, args.threads) for name, path in paths.items()}
        sizes = {name: path.stat().st_size for name, path in paths.items()}

    median = {name: statistics.median(values) * 1000 for name, values in times.items()}
    result = {
        "model": args.model or args.spec, "scale": float_model.scale,
        "input": f"1x3x{args.size}x{args.size}", "threads": args.threads,
        "repeats": args.repeats, "onnxruntime": onnxruntime.__version__,
        "float_ms": round(median["float"], 2), "int8_ms": round(median["int8"], 2),
        "float_over_int8": round(median["float"] / median["int8"], 3),
        "file_bytes": sizes, "quantized_layers": len(report.quantized),
        "full_precision_layers": sorted(report.full_precision),
        "executed_conv_kernels": kernels,
        "int8_verified_max_abs_diff": exports["int8"].max_abs_diff,
    }
    print(f"{result['model']} x{result['scale']}, input {result['input']}, onnxruntime "
          f"{result['onnxruntime']} CPU, {args.threads} threads, median of {args.repeats}")
    print(f"  float  {result['float_ms']:8.2f} ms   {sizes['float'] / 2**20:6.2f} MiB   "
          f"{kernels['float']}")
    print(f"  int8   {result['int8_ms']:8.2f} ms   {sizes['int8'] / 2**20:6.2f} MiB   "
          f"{kernels['int8']}")
    print(f"  float/int8 latency ratio {result['float_over_int8']:.3f} "
          f"({len(report.quantized)} layers quantized; full precision: "
          f"{', '.join(result['full_precision_layers'])})")
    if args.json_path == "-":
        print(json.dumps(result, indent=2))
    elif args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

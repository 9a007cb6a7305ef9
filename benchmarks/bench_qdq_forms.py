"""Which quantized ONNX form onnxruntime runs fastest: bit widths and INT4 weight storage.

One process exports, from the same float model (default `edsr-baseline` x2, random weights:
latency does not depend on them; `--model` a checkpoint instead), the float file,
`onnxruntime.quantization.quantize_static` of it (QDQ, per-channel int8 weights, uint8
activations, MinMax on LR crops of the shipped demo images: the anchor), and srcompress's export
of the calibrated integer graph at w8a8 (also with the output convolution in float, `quantize
--float-output`), w4a8 with INT4 weights cast to INT8 at load (`--int4 cast`, the default), w4a8
with INT4 weights read by DequantizeLinear (`--int4 dq`), w4a4 and w2a2. All sessions run
interleaved on one 256x256 input (onnxruntime CPU, `--threads` threads) after a warm-up; each
variant's latency ratio to float and to the anchor is the median of the per-round ratios (robust
on a shared machine), and its integer/float convolutions are read from onnxruntime's optimised
graph.

    .venv/bin/python benchmarks/bench_qdq_forms.py --repeats 15 --results docs/results.md
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from results_doc import replace_section, shown_command

from srcompress.data.images import list_images, read_image
from srcompress.demo import demo_data_folder
from srcompress.export import export_onnx, runtime_operator_counts
from srcompress.models import LoadedModel, build_model, load_model
from srcompress.quant import calibrate, quantize_model

# (name, weight bits, activation bits, INT4 form, output conv in float)
VARIANTS = (("w8a8", 8, 8, None, False), ("w8a8, float output conv", 8, 8, None, True),
            ("w4a8, INT4 cast", 4, 8, "cast", False), ("w4a8, INT4 dq", 4, 8, "dq", False),
            ("w4a4", 4, 4, "cast", False), ("w2a2", 2, 2, "cast", False))


class _Patches(CalibrationDataReader):
    def __init__(self, patches: list[torch.Tensor]) -> None:
        self.remaining = iter([{"input": patch.numpy()} for patch in patches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.remaining, None)


def _session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="edsr-baseline")
    parser.add_argument("--model", help="a float checkpoint to measure instead of --spec")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, help="replace this script's section of FILE")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model) if args.model else build_model(args.spec, args.scale)
    label = Path(args.model).name if args.model else args.spec
    images = list_images(demo_data_folder())
    patches = [read_image(path)[None, :, top:top + 64, left:left + 64]
               for path in images for top in (0, 64) for left in (0, 64)]
    with tempfile.TemporaryDirectory() as folder:
        paths = {"float": Path(folder) / "float.onnx", "anchor": Path(folder) / "anchor.onnx"}
        export_onnx(model, paths["float"])
        quantize_static(str(paths["float"]), str(paths["anchor"]), _Patches(patches),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        for index, (name, w_bits, a_bits, int4, float_output) in enumerate(VARIANTS):
            module, report = quantize_model(copy.deepcopy(model.module), w_bits, a_bits,
                                            float_output=float_output)
            calibrate(module, patches)
            paths[name] = Path(folder) / f"variant{index}.onnx"
            export_onnx(LoadedModel(module.eval(), model.arch, model.settings, model.scale,
                                    {"quant": report.metadata()}, "benchmark"),
                        paths[name], int4=int4, atol=1.0)  # random weights: timing only
        sessions = {name: _session(path, args.threads) for name, path in paths.items()}
        feed = {"input": np.random.default_rng(0).random((1, 3, args.size, args.size),
                                                         dtype=np.float32)}
        for session in sessions.values():
            session.run(None, feed)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.repeats):
            for name, session in sessions.items():
                started = time.perf_counter()
                session.run(None, feed)
                times[name].append(time.perf_counter() - started)
        counts = {name: runtime_operator_counts(path) for name, path in paths.items()}
        sizes = {name: path.stat().st_size for name, path in paths.items()}

    def paired(reference: str, name: str) -> float:
        return statistics.median(a / b for a, b in zip(times[reference], times[name],
                                                       strict=True))

    lines = [
        f"`.venv/bin/python {shown_command(sys.argv)}` ({datetime.date.today()}, onnxruntime "
        f"{onnxruntime.__version__} CPU, {args.threads} threads, {label} x{model.scale}, "
        f"1x3x{args.size}x{args.size}, {args.repeats} interleaved rounds; ratios are medians "
        "of per-round ratios, above 1 = faster)", "",
        "| variant | float / variant | anchor / variant | integer / float convs | "
        "other integer ops | Transposes | file MB |", "|---|---|---|---|---|---|---|"]
    for name in paths:
        count = counts[name]
        others = ", ".join(f"{n} {op}" for op, n in count["integer_ops"].items()
                           if op != "QLinearConv") or "-"
        label = "quantize_static (anchor)" if name == "anchor" else name
        lines.append(f"| {label} | {paired('float', name):.2f} | {paired('anchor', name):.2f} | "
                     f"{count['integer_convs']} / {count['float_convs']} | {others} | "
                     f"{count['transposes']} | {sizes[name] / 1e6:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.results:
        replace_section(args.results, "bench_qdq_forms", table)


if __name__ == "__main__":
    main()

"""Latency of a student on one 256x256 input: PyTorch eager vs its ONNX export in onnxruntime (CPU).

Both run in the same process on the same real image (a crop of the demo photograph shipped with
srcompress), with the same number of CPU threads, after one warm-up call each; the figure is the
median of `--repeats` calls. The ONNX file is made by `export_onnx` (so it is verified first) in a
temporary folder. MODEL is a checkpoint, or `--spec` builds a freshly initialised model of that
SPEC (latency does not depend on the weights).

    .venv/bin/python benchmarks/bench_export.py --spec edsr-baseline --scale 4
    .venv/bin/python benchmarks/bench_export.py runs/dukd/student.safetensors --json -
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from srcompress.data.images import read_image
from srcompress.export import export_onnx
from srcompress.export.verify import synthetic_texture
from srcompress.files import atomic_path
from srcompress.models import LoadedModel, build_model, load_model

DEMO_IMAGE = Path(__file__).resolve().parents[1] / "srcompress" / "demo" / "val" / "chelsea.png"


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up: allocator, kernel selection, onnxruntime's first-run shape inference
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def benchmark_input(size: int) -> tuple[torch.Tensor, str]:
    """A size×size crop of the demo photograph, or the synthetic texture without it."""
    if DEMO_IMAGE.is_file():
        image = read_image(DEMO_IMAGE)
        if min(image.shape[-2:]) >= size:
            top = (image.shape[-2] - size) // 2
            left = (image.shape[-1] - size) // 2
            return image[None, :, top:top + size, left:left + size].contiguous(), DEMO_IMAGE.name
    return synthetic_texture(size, size)[None], "synthetic texture"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None, help="checkpoint (default: --spec)")
    parser.add_argument("--spec", default="edsr-baseline",
                        help="SPEC of a freshly built student when MODEL is not given")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="LR input side in pixels")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for both runtimes (default: torch's default)")
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH",
                        help="also write the figures as JSON to PATH ('-' for stdout)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    model: LoadedModel = (build_model(args.spec, args.scale) if args.model is None
                          else load_model(args.model))
    model.module.eval()
    label = args.model or f"{args.spec} x{model.scale}"
    image, image_name = benchmark_input(args.size)

    with tempfile.TemporaryDirectory() as folder:
        report = export_onnx(model, Path(folder) / "student.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(report.output, options,
                                               providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: image.numpy()}

        def run_torch() -> torch.Tensor:
            with torch.inference_mode():
                return model.module(image)

        torch_seconds = median_seconds(run_torch, args.repeats)
        onnx_seconds = median_seconds(lambda: session.run(None, feed), args.repeats)
        difference = float(np.abs(session.run(None, feed)[0] - run_torch().numpy()).max())

    figures = {
        "model": label, "scale": model.scale, "input": [args.size, args.size],
        "image": image_name, "threads": threads, "repeats": args.repeats,
        "torch_eager_seconds": round(torch_seconds, 4),
        "onnxruntime_cpu_seconds": round(onnx_seconds, 4),
        "speedup_onnxruntime_over_torch": round(torch_seconds / onnx_seconds, 3),
        "max_abs_diff_256": difference, "export_verified_max_abs_diff": report.max_abs_diff,
        "exporter": report.exporter, "export_seconds": report.export_seconds,
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
    }
    print(f"{label} on a {args.size}x{args.size} input ({image_name}), CPU, {threads} threads, "
          f"median of {args.repeats}:", file=sys.stderr if args.json_path == "-" else sys.stdout)
    lines = [f"  PyTorch eager        {torch_seconds * 1000:9.1f} ms",
             f"  onnxruntime (CPU)    {onnx_seconds * 1000:9.1f} ms",
             f"  ratio eager / ORT    {torch_seconds / onnx_seconds:9.2f}x",
             f"  max |ORT - PyTorch|  {difference:9.2e}"]
    print("\n".join(lines), file=sys.stderr if args.json_path == "-" else sys.stdout)
    if args.json_path == "-":
        print(json.dumps(figures, indent=2))
    elif args.json_path:
        with atomic_path(args.json_path) as temporary:
            temporary.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

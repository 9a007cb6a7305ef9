"""Images per second of `srcompress.evaluation.evaluate` on Set5, whole-image and tiled.

Measures the full protocol (reading, model, uint8 rounding, PSNR and SSIM), so the figure is what
a user of `srcompress evaluate` waits for. MODEL is anything `evaluate` takes (a checkpoint,
`bicubic`), or `--spec` builds a freshly initialised model of that SPEC (speed does not depend on
the weights).

    .venv/bin/python benchmarks/bench_evaluate.py --spec edsr-baseline --scale 4 --tile 32
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from srcompress.devices import resolve_device
from srcompress.evaluation import evaluate
from srcompress.models import build_model

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"


def measure(model: object, label: str, args: argparse.Namespace, tile: int | None) -> None:
    options = dict(benchmarks=[args.benchmark], scale=args.scale, data_root=args.data_root,
                   tile=tile, tile_pad=args.tile_pad, device=args.device)
    evaluate(model, **options)  # warm-up: caches, allocator, kernels
    rates, report = [], None
    for _ in range(args.repeats):
        started = time.perf_counter()
        report = evaluate(model, **options)
        rates.append(report["results"][0]["images"] / (time.perf_counter() - started))
    assert report is not None
    result = report["results"][0]
    tiling = f"tile {tile}, pad {args.tile_pad}" if tile else "whole image"
    print(f"{label:<28} {tiling:<20} {max(rates):7.2f} images/s (best of {args.repeats}; "
          f"{result['images']} images, PSNR {result['psnr']:.3f} dB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None,
                        help="checkpoint or 'bicubic' (default: --spec)")
    parser.add_argument("--spec", default="edsr-baseline",
                        help="SPEC of a freshly built model when MODEL is not given")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--benchmark", default="Set5")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--tile", type=int, default=64, help="LR tile side for the tiled run")
    parser.add_argument("--tile-pad", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        model: object = build_model(args.spec, args.scale).module
        label = f"{args.spec} (x{args.scale})"
    else:
        model, label = args.model, args.model
    print(f"{args.benchmark} x{args.scale} on {resolve_device(args.device)}, torch threads "
          f"{torch.get_num_threads()}")
    measure(model, label, args, tile=None)
    measure(model, label, args, tile=args.tile)


if __name__ == "__main__":
    main()

"""`evaluate()`: a model over benchmark sets, with the SR field's protocol (methods.md §5).

For each image: the ground truth is cropped to a multiple of the scale; the LR input is the
benchmark's MATLAB-made file when it ships one, else our MATLAB-style bicubic of the cropped
ground truth, rounded to uint8 exactly as a saved LR file would be (so both routes feed the model
the same kind of input); the SR output is clamped and rounded to uint8; PSNR and SSIM are taken
with `crop_border` pixels removed, on BT.601 luma or RGB. The returned dict is the `--json`
schema of `srcompress evaluate`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from srcompress import metrics
from srcompress.data.benchmarks import Benchmark, ImagePair, find_benchmark
from srcompress.data.images import read_image, write_image
from srcompress.data.resize import imresize
from srcompress.errors import UserInputError
from srcompress.inference import Runner, make_runner

ProgressCallback = Callable[[str, int, int], None]

_SSIM_WINDOW = 11
_COMPARISON_CROP = 160
_SEPARATOR = 4


def quantise(image: Tensor) -> Tensor:
    """The image as an 8-bit file would store it, back in [0, 1] floats."""
    return (image.clamp(0, 1) * 255).round() / 255


def _load_pair(pair: ImagePair, scale: int, crop_border: int) -> tuple[Tensor, Tensor]:
    """Ground truth cropped to a multiple of `scale`, and the LR input that belongs to it."""
    hr = read_image(pair.hr_path)
    height, width = hr.shape[1] // scale * scale, hr.shape[2] // scale * scale
    if min(height, width) - 2 * crop_border < _SSIM_WINDOW:
        raise UserInputError(
            f"{pair.hr_path} ({hr.shape[1]}x{hr.shape[2]}) is too small to evaluate at x{scale} "
            f"with a {crop_border}-pixel border crop; remove it from the benchmark folder.")
    hr = hr[:, :height, :width]
    if pair.lr_path is None:
        return hr, quantise(imresize(hr, scale=1 / scale))
    lr = read_image(pair.lr_path)
    if lr.shape[1:] != (height // scale, width // scale):
        raise UserInputError(
            f"LR file {pair.lr_path} is {lr.shape[1]}x{lr.shape[2]} but its ground truth "
            f"{pair.hr_path.name} gives {height // scale}x{width // scale} at x{scale}: "
            "check --scale or the benchmark's LR folder.")
    return hr, lr


def _comparison(lr: Tensor, sr: Tensor, hr: Tensor, scale: int) -> Tensor:
    """bicubic | model | ground truth, cropped where bicubic upscaling errs the most."""
    bicubic = quantise(imresize(lr, scale=scale))
    sr = quantise(sr)
    size = min(_COMPARISON_CROP, hr.shape[1], hr.shape[2])
    error = (bicubic - hr).abs().mean(dim=0, keepdim=True)[None]
    stride = max(size // 4, 1)
    pooled = F.avg_pool2d(error, size, stride=stride)[0, 0]
    row, column = divmod(int(pooled.argmax()), pooled.shape[1])
    top, left = row * stride, column * stride
    crops = [image[:, top:top + size, left:left + size] for image in (bicubic, sr, hr)]
    separator = torch.ones(3, size, _SEPARATOR)
    return torch.cat([crops[0], separator, crops[1], separator, crops[2]], dim=2)


def _evaluate_benchmark(runner: Runner, benchmark: Benchmark, crop_border: int, y_channel: bool,
                        save_folder: Path | None, progress: ProgressCallback | None
                        ) -> dict[str, Any]:
    scale = runner.scale
    started = time.perf_counter()
    per_image = []
    for index, pair in enumerate(benchmark.pairs):
        hr, lr = _load_pair(pair, scale, crop_border)
        sr = runner(lr[None])[0].float().cpu()
        sr_pixels, hr_pixels = metrics.to_uint8(sr), metrics.to_uint8(hr)
        per_image.append({
            "name": pair.name,
            "psnr": metrics.psnr(sr_pixels, hr_pixels, crop_border, y_channel),
            "ssim": metrics.ssim(sr_pixels, hr_pixels, crop_border, y_channel),
        })
        if save_folder is not None:
            folder = save_folder / benchmark.name
            write_image(folder / f"{pair.name}_x{scale}.png", sr)
            write_image(folder / f"{pair.name}_x{scale}_compare.png",
                        _comparison(lr, sr, hr, scale))
        if progress:
            progress(benchmark.name, index + 1, len(benchmark.pairs))
    count = len(per_image)
    return {
        "benchmark": benchmark.name,
        "images": count,
        "psnr": sum(row["psnr"] for row in per_image) / count,
        "ssim": sum(row["ssim"] for row in per_image) / count,
        "seconds": time.perf_counter() - started,
        "per_image": per_image,
    }


def _model_label(model: object, runner: Runner) -> str:
    if isinstance(model, str | os.PathLike):
        return os.fspath(model)
    return runner.name


def evaluate(model: object, benchmarks: Sequence[str | os.PathLike[str]] | str,
             scale: int | None = None, data_root: str | os.PathLike[str] | None = None,
             crop_border: int | None = None, y_channel: bool = True, tile: int | None = None,
             tile_pad: int = 10, self_ensemble: bool = False, device: str = "auto",
             fp16: bool = False, arch: str | None = None,
             save_images: str | os.PathLike[str] | None = None,
             progress: ProgressCallback | None = None) -> dict[str, Any]:
    """PSNR/SSIM of `model` (any MODEL kind, a module, or a runner) on each benchmark.

    Every benchmark is located before any image is processed, so a missing one fails at once.
    `progress(benchmark, done, total)` is called after each image.
    """
    runner = make_runner(model, scale=scale, device=device, fp16=fp16, tile=tile,
                         tile_pad=tile_pad, self_ensemble=self_ensemble, arch=arch)
    scale = runner.scale
    crop_border = scale if crop_border is None else crop_border
    if crop_border < 0:
        raise UserInputError(f"--crop-border must be zero or more pixels, got {crop_border}.")
    names = [benchmarks] if isinstance(benchmarks, str | os.PathLike) else list(benchmarks)
    if not names:
        raise UserInputError("No benchmark to evaluate on: pass --benchmark NAME or a folder.")
    located = [find_benchmark(name, data_root, scale) for name in names]
    save_folder = Path(save_images) if save_images is not None else None
    results = [_evaluate_benchmark(runner, benchmark, crop_border, y_channel, save_folder,
                                   progress) for benchmark in located]
    return {
        "model": _model_label(model, runner),
        "scale": scale,
        "y_channel": y_channel,
        "crop_border": crop_border,
        "results": results,
    }


"""`evaluate()`: a model over benchmark sets, with the SR field's protocol (methods.md §5).

For each image: the ground truth is cropped to a multiple of the scale; the LR input is the
benchmark's MATLAB-made file when it ships one, else our MATLAB-style bicubic of the cropped
ground truth, rounded to uint8 exactly as a saved LR file would be (so both routes feed the model
the same kind of input); the SR output is clamped and rounded to uint8; PSNR and SSIM are taken
with `crop_border` pixels removed, on BT.601 luma or RGB. The returned dict is the `--json`
schema of `srcompress evaluate`.

Without ground truth (real photos, `no_reference`), the model is judged by NIQE of its outputs
(whole image, no border crop, as MATLAB's `niqe`), and by how close it stays to a reference model
(`reference_model`, e.g. its teacher): PSNR/SSIM of its outputs against the reference's, with
the same crop and channel as above. Measures not taken are None in the results.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from srcompress.metrics.niqe import BLOCK_SIZE as NIQE_BLOCK
from srcompress.metrics.niqe import fits_niqe, niqe

ProgressCallback = Callable[[str, int, int], None]

_SSIM_WINDOW = 11
_COMPARISON_CROP = 160
_SEPARATOR = 4
_MEASURES = ("psnr", "ssim", "niqe", "psnr_to_reference", "ssim_to_reference")


def quantise(image: Tensor) -> Tensor:
    """The image as an 8-bit file would store it, back in [0, 1] floats."""
    return (image.clamp(0, 1) * 255).round() / 255


def _load_pair(pair: ImagePair, scale: int, crop_border: int) -> tuple[Tensor, Tensor]:
    """Ground truth cropped to a multiple of `scale`, and the LR input that belongs to it."""
    hr = read_image(pair.hr_path)
    height, width = hr.shape[1] // scale * scale, hr.shape[2] // scale * scale
    if min(height, width) < _SSIM_WINDOW + 2 * min(crop_border, scale):
        raise UserInputError(
            f"{pair.hr_path} ({hr.shape[1]}x{hr.shape[2]}) is too small to evaluate at x{scale} "
            f"with a {crop_border}-pixel border crop; remove it from the benchmark folder.")
    if min(height, width) - 2 * crop_border < _SSIM_WINDOW:
        raise UserInputError(
            f"--crop-border {crop_border} leaves less than {_SSIM_WINDOW} pixels of "
            f"{pair.hr_path} ({hr.shape[1]}x{hr.shape[2]}) to measure: use a smaller "
            "--crop-border.")
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


def _load_input(pair: ImagePair, benchmark: Benchmark, scale: int) -> Tensor:
    """The LR input alone (no ground truth needed): the set's LR file, the image itself for a
    bare folder (an LR-only folder), else the bicubic LR of the HR image as usual."""
    if pair.lr_path is not None:
        return read_image(pair.lr_path)
    if benchmark.layout == "folder":
        return read_image(pair.hr_path)
    return _load_pair(pair, scale, 0)[1]


def _comparison(lr: Tensor, sr: Tensor, hr: Tensor | None, scale: int) -> Tensor:
    """bicubic | model | ground truth, cropped where bicubic upscaling errs the most; without
    ground truth, bicubic | model where the model changes bicubic's picture the most."""
    bicubic = quantise(imresize(lr, scale=scale))
    sr = quantise(sr)
    panels = [bicubic, sr] if hr is None else [bicubic, sr, hr]
    size = min(_COMPARISON_CROP, sr.shape[1], sr.shape[2])
    error = (bicubic - panels[-1]).abs().mean(dim=0, keepdim=True)[None]
    stride = max(size // 4, 1)
    pooled = F.avg_pool2d(error, size, stride=stride)[0, 0]
    row, column = divmod(int(pooled.argmax()), pooled.shape[1])
    top, left = row * stride, column * stride
    separator = torch.ones(3, size, _SEPARATOR)
    crops: list[Tensor] = []
    for image in panels:
        crops += [image[:, top:top + size, left:left + size], separator]
    return torch.cat(crops[:-1], dim=2)


@dataclass(frozen=True)
class _Protocol:
    """How one evaluation measures: what it compares with, and what it computes."""

    crop_border: int
    y_channel: bool
    ground_truth: bool
    niqe: bool
    reference: Runner | None


def _pair_metrics(sr: Tensor, target: Tensor, protocol: _Protocol) -> tuple[float, float]:
    sr_pixels, target_pixels = metrics.to_uint8(sr), metrics.to_uint8(target)
    return (metrics.psnr(sr_pixels, target_pixels, protocol.crop_border, protocol.y_channel),
            metrics.ssim(sr_pixels, target_pixels, protocol.crop_border, protocol.y_channel))


def _measure(runner: Runner, pair: ImagePair, benchmark: Benchmark, protocol: _Protocol,
             save_folder: Path | None) -> dict[str, Any]:
    """One image's row: PSNR/SSIM to the ground truth and to the reference model, NIQE."""
    scale = runner.scale
    hr = None
    if protocol.ground_truth:
        hr, lr = _load_pair(pair, scale, protocol.crop_border)
    else:
        lr = _load_input(pair, benchmark, scale)
    sr = runner(lr[None])[0].float().cpu()
    row: dict[str, Any] = {"name": pair.name, "psnr": None, "ssim": None, "niqe": None,
                           "psnr_to_reference": None, "ssim_to_reference": None}
    if hr is not None:
        row["psnr"], row["ssim"] = _pair_metrics(sr, hr, protocol)
    if protocol.reference is not None:
        reference = protocol.reference(lr[None])[0].float().cpu()
        row["psnr_to_reference"], row["ssim_to_reference"] = _pair_metrics(sr, reference,
                                                                           protocol)
    if protocol.niqe and fits_niqe(sr.shape[1], sr.shape[2]):
        score = niqe(metrics.to_uint8(sr))
        row["niqe"] = score if math.isfinite(score) else None  # flat: no block has a texture
    if save_folder is not None:
        folder = save_folder / benchmark.name
        write_image(folder / f"{pair.name}_x{scale}.png", sr)
        write_image(folder / f"{pair.name}_x{scale}_compare.png", _comparison(lr, sr, hr, scale))
    return row


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if row[key] is not None]
    return sum(values) / len(values) if values else None


def _evaluate_benchmark(runner: Runner, benchmark: Benchmark, protocol: _Protocol,
                        save_folder: Path | None, progress: ProgressCallback | None
                        ) -> dict[str, Any]:
    started = time.perf_counter()
    per_image = []
    for index, pair in enumerate(benchmark.pairs):
        per_image.append(_measure(runner, pair, benchmark, protocol, save_folder))
        if progress:
            progress(benchmark.name, index + 1, len(benchmark.pairs))
    too_small = [row["name"] for row in per_image if protocol.niqe and row["niqe"] is None]
    if protocol.niqe and len(too_small) == len(per_image):
        raise UserInputError(
            f"No SR output of {benchmark.name} has a NIQE score (each needs at least one "
            f"{NIQE_BLOCK}x{NIQE_BLOCK} block, and some texture): use larger images.")
    return {
        "benchmark": benchmark.name,
        "images": len(per_image),
        **{key: _mean(per_image, key) for key in _MEASURES},
        "niqe_skipped": too_small,
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
             no_reference: bool = False, reference_model: object | None = None,
             with_niqe: bool = False,
             progress: ProgressCallback | None = None,
             memory_budget: int | None = None) -> dict[str, Any]:
    """PSNR/SSIM of `model` (any MODEL kind, a module, or a runner) on each benchmark.

    `no_reference` scores without ground truth: NIQE of the outputs, on the benchmark's LR
    inputs (its LR files, or the images of a bare folder, which are then the LR inputs);
    `with_niqe` adds NIQE next to PSNR/SSIM. `reference_model` (e.g. the teacher) is run on the
    same inputs and the model's PSNR/SSIM against its outputs is reported too. SR outputs smaller
    than one NIQE block are left out of the NIQE mean and listed in `niqe_skipped`.

    Every benchmark is located before any image is processed, so a missing one fails at once.
    `progress(benchmark, done, total)` is called after each image. An image too large for the
    memory budget is tiled (see `srcompress.inference`), which can move its PSNR by a little
    where tile seams fall; benchmark images at usual model sizes never are.
    """
    runner = make_runner(model, scale=scale, device=device, fp16=fp16, tile=tile,
                         tile_pad=tile_pad, self_ensemble=self_ensemble, arch=arch,
                         memory_budget=memory_budget)
    scale = runner.scale
    crop_border = scale if crop_border is None else crop_border
    if crop_border < 0:
        raise UserInputError(f"--crop-border must be zero or more pixels, got {crop_border}.")
    names = [benchmarks] if isinstance(benchmarks, str | os.PathLike) else list(benchmarks)
    if not names:
        raise UserInputError("No benchmark to evaluate on: pass --benchmark NAME or a folder.")
    located = [find_benchmark(name, data_root, scale) for name in names]
    reference = None
    if reference_model is not None:
        # A model file knows its scale (checked below, with a message about the reference);
        # `bicubic` and plain modules are told the model's.
        is_file = (isinstance(reference_model, str | os.PathLike)
                   and os.fspath(reference_model).lower() != "bicubic")
        reference = make_runner(reference_model, scale=None if is_file else scale, device=device,
                                fp16=fp16, tile=tile, tile_pad=tile_pad,
                                self_ensemble=self_ensemble, memory_budget=memory_budget)
        if reference.scale != scale:
            raise UserInputError(
                f"The reference model {reference.name} upscales x{reference.scale} but the model "
                f"upscales x{scale}: --reference-model needs a model of the same scale.")
    protocol = _Protocol(crop_border, y_channel, ground_truth=not no_reference,
                         niqe=no_reference or with_niqe, reference=reference)
    save_folder = Path(save_images) if save_images is not None else None
    results = [_evaluate_benchmark(runner, benchmark, protocol, save_folder, progress)
               for benchmark in located]
    return {
        "model": _model_label(model, runner),
        "scale": scale,
        "y_channel": y_channel,
        "crop_border": crop_border,
        "no_reference": no_reference,
        "reference_model": (None if reference is None
                            else _model_label(reference_model, reference)),
        "results": results,
    }

"""Running any MODEL kind on an image: checkpoints, `bicubic`, and (from the export work) ONNX.

A runner maps a `1×3×h×w` LR tensor in [0, 1] to its `1×3×sh×sw` SR tensor (not clamped), and
knows its `scale` and display `name`. Runners of networks share the same machinery for large
images: tiles with an overlapping margin (`tile_pad`) of which only the un-padded centre is kept,
so a margin that covers the network's receptive field gives the same result as the whole image;
on CUDA out-of-memory the tile is halved and the image retried. Without `--tile`, an image whose
estimated activations would not fit the memory budget (`memory_budget`, default half the memory
the device has available) is tiled automatically, with tiles sized to fit it; between tiles Python
gets control back, so Ctrl-C stops a long image within a tile's time. Self-ensemble (x8) averages
the network over the four rotations with and without a flip, each mapped back.

`make_runner` turns a MODEL argument into a runner. File kinds other than checkpoints register a
factory in `FILE_RUNNERS` by suffix (the ONNX runner adds `.onnx` there; a `NetworkRunner`
subclass gets tiling and self-ensemble for free). `upscale` runs one over image files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from srcompress.data.images import list_images, read_image, write_image
from srcompress.data.resize import imresize
from srcompress.devices import available_memory, onnx_session, resolve_device
from srcompress.errors import UserInputError, WorkFailedError
from srcompress.models import LoadedModel, load_model

_SMALLEST_TILE = 16
# Activation memory of a whole forward pass, as a multiple of its largest single intermediate
# tensor: a residual network holds its input, the skip connection and the output of a layer at
# once; three covers the convolutional and transformer architectures we run (see
# `TorchRunner.activation_bytes_per_pixel`).
_LIVE_TENSORS = 3
_PROBE_SIDE = 32


@runtime_checkable
class Runner(Protocol):
    """Anything that super-resolves `1×3×h×w` [0, 1] tensors by an integer `scale`."""

    scale: int
    name: str

    def __call__(self, lr: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class RunnerOptions:
    """How to run a MODEL: what `make_runner` hands to every runner factory."""

    scale: int | None = None
    device: str = "auto"
    fp16: bool = False
    tile: int | None = None
    tile_pad: int = 10
    self_ensemble: bool = False
    arch: str | None = None
    memory_budget: int | None = None


def _ensemble_transforms() -> list[tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]]:
    """The eight (transform, inverse) pairs of the dihedral group on the image plane."""
    pairs = []
    for turns in range(4):
        for flip in (False, True):
            def forward(x: Tensor, turns: int = turns, flip: bool = flip) -> Tensor:
                x = x.flip(-1) if flip else x
                return torch.rot90(x, turns, dims=(-2, -1))

            def inverse(y: Tensor, turns: int = turns, flip: bool = flip) -> Tensor:
                y = torch.rot90(y, -turns, dims=(-2, -1))
                return y.flip(-1) if flip else y

            pairs.append((forward, inverse))
    return pairs


class NetworkRunner:
    """Tiling, out-of-memory retries and self-ensemble around a network's `_forward`.

    Subclasses implement `_forward(lr)` for a whole (or tile-sized) input on the runner's device.
    """

    def __init__(self, scale: int, name: str, device: torch.device, tile: int | None = None,
                 tile_pad: int = 10, self_ensemble: bool = False,
                 memory_budget: int | None = None) -> None:
        if tile is not None and tile < 1:
            raise UserInputError(f"--tile must be a positive number of pixels, got {tile}.")
        if tile_pad < 0:
            raise UserInputError(f"--tile-pad must be zero or more pixels, got {tile_pad}.")
        if memory_budget is not None and memory_budget < 1:
            raise UserInputError(
                f"--memory-budget must be a positive amount, got {memory_budget} bytes.")
        self.scale = scale
        self.name = name
        self.device = device
        self.tile = tile
        self.tile_pad = tile_pad
        self.self_ensemble = self_ensemble
        self.memory_budget = memory_budget
        self.last_tile: int | None = None  # the tile size the last image ran with, None: whole

    def _forward(self, lr: Tensor) -> Tensor:
        raise NotImplementedError

    def activation_bytes_per_pixel(self) -> float | None:
        """Estimated peak activation bytes per input pixel of one forward pass; None: unknown
        (then images are tiled only when `tile` is given)."""
        return None

    def tile_for_budget(self, height: int, width: int) -> int | None:
        """The tile side that keeps a forward pass within the memory budget; None when the
        whole `height`x`width` image fits (or the cost is unknown)."""
        per_pixel = self.activation_bytes_per_pixel()
        if per_pixel is None:
            return None
        budget = self.memory_budget or available_memory(self.device) // 2
        if height * width * per_pixel <= budget:
            return None
        padded_side = int(math.sqrt(budget / per_pixel))
        return max(_SMALLEST_TILE, padded_side - 2 * self.tile_pad)

    def __call__(self, lr: Tensor) -> Tensor:
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise UserInputError(
                f"{self.name} expects a B×3×h×w image tensor, got shape {tuple(lr.shape)}.")
        lr = lr.to(self.device, torch.float32)
        if not self.self_ensemble:
            return self._run_with_retries(lr)
        total = None
        for forward, inverse in _ensemble_transforms():
            output = inverse(self._run_with_retries(forward(lr)))
            total = output if total is None else total + output
        return total / 8

    def _run_with_retries(self, lr: Tensor) -> Tensor:
        tile = self.tile or self.tile_for_budget(*lr.shape[-2:])
        while True:
            try:
                output = self._run_tiled(lr, tile) if tile else self._forward(lr)
                break
            except torch.OutOfMemoryError:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                tile = (tile or max(lr.shape[-2:])) // 2
                if tile < _SMALLEST_TILE:
                    raise WorkFailedError(
                        f"{self.name} runs out of memory on {self.device} even with "
                        f"{_SMALLEST_TILE}-pixel tiles; use a smaller model or --device cpu."
                    ) from None
                # Later images of the same run start from the tile size that worked.
                self.tile = tile
        self.last_tile = tile
        expected = (lr.shape[-2] * self.scale, lr.shape[-1] * self.scale)
        if tuple(output.shape[-2:]) != expected or output.shape[:2] != lr.shape[:2]:
            raise UserInputError(
                f"{self.name} turned a {lr.shape[-2]}x{lr.shape[-1]} input into "
                f"{tuple(output.shape)}, not x{self.scale}: check --scale and the model.")
        return output

    def _run_tiled(self, lr: Tensor, tile: int) -> Tensor:
        """Run tile by tile; each tile sees `tile_pad` extra pixels of context on every side."""
        batch, channels, height, width = lr.shape
        scale, pad = self.scale, self.tile_pad
        output = lr.new_zeros(batch, channels, height * scale, width * scale)
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                bottom, right = min(top + tile, height), min(left + tile, width)
                context_top, context_left = max(top - pad, 0), max(left - pad, 0)
                context = lr[..., context_top:min(bottom + pad, height),
                             context_left:min(right + pad, width)]
                result = self._forward(context)
                row, column = (top - context_top) * scale, (left - context_left) * scale
                output[..., top * scale:bottom * scale, left * scale:right * scale] = result[
                    ..., row:row + (bottom - top) * scale, column:column + (right - left) * scale]
        return output


class TorchRunner(NetworkRunner):
    """A PyTorch module ([0, 1] RGB in and out) in eval mode under inference mode.

    The module's own training/eval mode is restored after every call, so a training loop can
    validate its live student without side effects. `fp16` and `channels_last` (CUDA only)
    convert the module in place, so they are for modules the runner owns (loaded from a file).
    """

    def __init__(self, module: nn.Module, scale: int, device: str | torch.device = "auto",
                 fp16: bool = False, tile: int | None = None, tile_pad: int = 10,
                 self_ensemble: bool = False, name: str | None = None,
                 channels_last: bool = False, memory_budget: int | None = None) -> None:
        resolved = resolve_device(device)
        if fp16 and resolved.type != "cuda":
            raise UserInputError("--fp16 needs a CUDA device; drop it or use --device cuda.")
        super().__init__(scale, name or type(module).__name__, resolved, tile, tile_pad,
                         self_ensemble, memory_budget)
        self._bytes_per_pixel: float | None = None
        self.module = module.to(resolved)
        self.fp16 = fp16
        if fp16:
            self.module.half()
        self._channels_last = channels_last and resolved.type == "cuda"
        if self._channels_last:
            self.module.to(memory_format=torch.channels_last)

    def __call__(self, lr: Tensor) -> Tensor:
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.inference_mode():
                return super().__call__(lr)
        finally:
            self.module.train(was_training)

    def activation_bytes_per_pixel(self) -> float:
        """Measured once on a small probe: the largest tensor any submodule outputs, per input
        pixel, times `_LIVE_TENSORS` (activations grow linearly with the pixels; the weights are
        already in memory). Hooks see every module, so attention maps count too."""
        if self._bytes_per_pixel is None:
            largest = 0

            def record(module: nn.Module, inputs: object, output: object) -> None:
                nonlocal largest
                tensors = output if isinstance(output, tuple | list) else (output,)
                for tensor in tensors:
                    if isinstance(tensor, Tensor):
                        largest = max(largest, tensor.numel() * tensor.element_size())

            hooks = [module.register_forward_hook(record) for module in self.module.modules()]
            was_training = self.module.training
            self.module.eval()
            try:
                probe = torch.zeros(1, 3, _PROBE_SIDE, _PROBE_SIDE, device=self.device)
                with torch.inference_mode():
                    self._forward(probe)
            finally:
                self.module.train(was_training)
                for hook in hooks:
                    hook.remove()
            self._bytes_per_pixel = _LIVE_TENSORS * largest / _PROBE_SIDE**2
        return self._bytes_per_pixel

    def _forward(self, lr: Tensor) -> Tensor:
        if self.fp16:
            lr = lr.half()
        if self._channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
        return self.module(lr).float()


class BicubicRunner:
    """The baseline: MATLAB-style bicubic upscaling by our `imresize`."""

    name = "bicubic"

    def __init__(self, scale: int, device: str | torch.device = "cpu") -> None:
        self.scale = scale
        self.device = resolve_device(device)

    def __call__(self, lr: Tensor) -> Tensor:
        return imresize(lr.to(self.device, torch.float32), scale=self.scale)


FileRunnerFactory = Callable[[Path, RunnerOptions], Runner]
FILE_RUNNERS: dict[str, FileRunnerFactory] = {}


def _checked_scale(model_scale: int, options: RunnerOptions, label: str) -> int:
    if options.scale is not None and options.scale != model_scale:
        raise UserInputError(
            f"{label} upscales x{model_scale} but --scale is {options.scale}: drop --scale or "
            f"use a x{options.scale} model.")
    return model_scale


def _torch_runner(module: nn.Module, scale: int, options: RunnerOptions, name: str,
                  owned: bool = False) -> TorchRunner:
    return TorchRunner(module, scale, options.device, fp16=options.fp16, tile=options.tile,
                       tile_pad=options.tile_pad, self_ensemble=options.self_ensemble, name=name,
                       channels_last=owned, memory_budget=options.memory_budget)


def make_runner(model: object, scale: int | None = None, device: str = "auto", fp16: bool = False,
                tile: int | None = None, tile_pad: int = 10, self_ensemble: bool = False,
                arch: str | None = None, memory_budget: int | None = None) -> Runner:
    """A runner for any MODEL: `bicubic`, a model file, a `LoadedModel`, a module or a runner.

    A plain `nn.Module` needs `scale` unless it has an integer `scale` attribute; for model files
    `scale`, when given, must match the model's. `memory_budget` (bytes; default half of what the
    device has available) sizes automatic tiles when `tile` is not given.
    """
    options = RunnerOptions(scale, device, fp16, tile, tile_pad, self_ensemble, arch,
                            memory_budget)
    return _make_runner(model, options)


def _make_runner(model: object, options: RunnerOptions) -> Runner:
    if isinstance(model, Runner) and not isinstance(model, nn.Module):
        return model
    if isinstance(model, LoadedModel):
        scale = _checked_scale(model.scale, options, model.source or model.arch)
        return _torch_runner(model.module, scale, options, model.source or model.arch)
    if isinstance(model, nn.Module):
        scale = options.scale if options.scale is not None else getattr(model, "scale", None)
        if not isinstance(scale, int):
            raise UserInputError(f"The scale of the {type(model).__name__} model is unknown: "
                                 "pass scale.")
        return _torch_runner(model, scale, options, type(model).__name__)
    if not isinstance(model, str | os.PathLike):
        raise UserInputError(f"Cannot run a {type(model).__name__} as a model.")
    text = os.fspath(model)
    if text.lower() == "bicubic":
        if options.scale is None:
            raise UserInputError("The bicubic baseline needs a scale: pass --scale.")
        if options.scale < 1:
            raise UserInputError(f"--scale must be a positive integer, got {options.scale}.")
        return BicubicRunner(options.scale, options.device)
    path = Path(text)
    factory = FILE_RUNNERS.get(path.suffix.lower())
    if factory is not None:
        if not path.is_file():
            raise UserInputError(f"Model file {path} does not exist.")
        return factory(path, options)
    loaded = load_model(path, arch=options.arch, device=resolve_device(options.device))
    scale = _checked_scale(loaded.scale, options, str(path))
    return _torch_runner(loaded.module, scale, options, str(path), owned=True)


@dataclass(frozen=True)
class UpscaledImage:
    source: Path
    output: Path
    input_size: tuple[int, int]
    output_size: tuple[int, int]


@dataclass(frozen=True)
class FailedImage:
    """An input `upscale` could not process, and the one sentence that says why."""

    source: Path
    reason: str


class SomeImagesFailed(WorkFailedError):
    """`upscale` processed every input but some failed; `done` and `failed` say which."""

    def __init__(self, done: list[UpscaledImage], failed: list[FailedImage],
                 folder: Path) -> None:
        total = len(done) + len(failed)
        names = ", ".join(str(failure.source) for failure in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        super().__init__(
            f"{len(failed)} of {total} images could not be upscaled ({names}{more}); the other "
            f"{len(done)} are in {folder}.")
        self.done = done
        self.failed = failed


def _collect_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Every image named by `inputs` (files, or folders of images), checked before any work."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(list_images(path))
        elif path.is_file():
            files.append(path)
        else:
            raise UserInputError(f"Input {path} does not exist.")
    if not files:
        raise UserInputError("No input images: name image files or folders.")
    return files


def upscale(model: object, inputs: Sequence[str | os.PathLike[str]],
            output: str | os.PathLike[str], scale: int | None = None, device: str = "auto",
            fp16: bool = False, tile: int | None = None, tile_pad: int = 10,
            self_ensemble: bool = False, arch: str | None = None,
            progress: Callable[[int, int], None] | None = None,
            memory_budget: int | None = None, fail_fast: bool = False,
            on_failure: Callable[[FailedImage], None] | None = None) -> list[UpscaledImage]:
    """Super-resolve image files and folders into `output/<stem>_x<s>.png`.

    The `_x<s>` suffix keeps outputs from ever replacing their inputs when `output` is the input
    folder. Each result is written atomically as soon as it is ready. An image that cannot be
    read or run (corrupt, too large, out of memory) does not stop the others: `on_failure` hears
    of it at once, and `SomeImagesFailed` is raised at the end, carrying the results. With
    `fail_fast`, the first such failure is raised at once, saying what was and was not done.
    """
    files = _collect_inputs(inputs)
    runner = make_runner(model, scale=scale, device=device, fp16=fp16, tile=tile,
                         tile_pad=tile_pad, self_ensemble=self_ensemble, arch=arch,
                         memory_budget=memory_budget)
    folder = Path(output)
    targets = [folder / f"{path.stem}_x{runner.scale}.png" for path in files]
    clashes = sorted({target.name for target in targets if targets.count(target) > 1})
    if clashes:
        raise UserInputError(
            f"Several inputs would be written to the same output ({', '.join(clashes)}): "
            "upscale them into separate -o folders.")
    done: list[UpscaledImage] = []
    failed: list[FailedImage] = []
    for index, (path, target) in enumerate(zip(files, targets, strict=True)):
        try:
            lr = read_image(path)
            sr = runner(lr[None])[0]
        except (UserInputError, WorkFailedError) as error:
            if fail_fast:
                later = len(files) - index - 1
                raise type(error)(f"{error} Stopped there (--fail-fast): {len(done)} earlier "
                                  f"output(s) are in {folder}, {later} later image(s) were not "
                                  "processed.") from None
            failed.append(FailedImage(path, str(error)))
            if on_failure is not None:
                on_failure(failed[-1])
        else:
            write_image(target, sr)
            done.append(UpscaledImage(path, target, (lr.shape[1], lr.shape[2]),
                                      (sr.shape[1], sr.shape[2])))
        if progress:
            progress(index + 1, len(files))
    if failed:
        raise SomeImagesFailed(done, failed, folder)
    return done


# ONNX Runtime ------------------------------------------------------------------------------------


class OnnxRunner(NetworkRunner):
    """An exported `.onnx` file run by onnxruntime, with the same tiling and self-ensemble.

    The scale comes from the file's `scale` metadata (written by `srcompress export`), or for
    other files from one probe run. Files with a fixed batch of 1 (srcompress's) get one image or
    tile per call. A file with a static input size gets tiles that fit it, each padded by edge
    replication to that size and its output cropped back.
    """

    def __init__(self, path: str | os.PathLike[str], device: str = "auto", tile: int | None = None,
                 tile_pad: int = 10, self_ensemble: bool = False) -> None:
        path = Path(path)
        try:
            self.session = onnx_session(path, device)
        except UserInputError:
            raise
        except Exception as error:
            raise UserInputError(f"{path} is not a loadable ONNX model "
                                 f"({str(error).splitlines()[0][:300]}).") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] not in (3, "3"):
            shapes = [model_input.shape for model_input in inputs]
            raise UserInputError(f"{path} is not an image model: it takes inputs {shapes}, not "
                                 "one N×3×H×W image.")
        self.input_name = inputs[0].name
        self.input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        batch, _, height, width = inputs[0].shape
        self.one_per_call = batch == 1
        self.static_size = (height, width) if isinstance(height, int) and isinstance(
            width, int) else None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.name = str(path)
        super().__init__(self._read_scale(path), self.name, torch.device("cpu"), tile, tile_pad,
                         self_ensemble)
        self.provider = self.session.get_providers()[0]
        if self.static_size is not None:
            self._fit_tiles_to_static_size(path)

    def _read_scale(self, path: Path) -> int:
        text = self.metadata.get("scale")
        if text is not None:
            if not text.isdigit() or int(text) < 1:
                raise UserInputError(f"{path} has an invalid scale '{text}' in its metadata.")
            return int(text)
        height, width = self.static_size or (16, 16)
        probe = np.zeros((1, 3, height, width), self.input_dtype)
        output = self._run_session(probe)
        scale, remainder = divmod(output.shape[-2], height)
        if remainder or scale < 1 or output.shape[-1] != scale * width:
            raise UserInputError(f"{path} turns a {height}x{width} input into "
                                 f"{output.shape[-2]}x{output.shape[-1]}, not an integer upscale.")
        return scale

    def _fit_tiles_to_static_size(self, path: Path) -> None:
        assert self.static_size is not None
        side = min(self.static_size)
        if self.tile is None:
            if side <= 2 * self.tile_pad:
                self.tile_pad = 0
            self.tile = side - 2 * self.tile_pad
        elif self.tile + 2 * self.tile_pad > side:
            raise UserInputError(
                f"{path} takes {self.static_size[0]}x{self.static_size[1]} inputs only: --tile "
                f"{self.tile} plus twice --tile-pad {self.tile_pad} must not exceed {side}.")

    def _run_session(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.session.run(None, {self.input_name: batch})[0]
        except Exception as error:
            raise WorkFailedError(
                f"onnxruntime failed to run {self.name} on a {batch.shape[-2]}x{batch.shape[-1]} "
                f"input ({str(error).splitlines()[0][:300]}).") from None

    def _forward(self, lr: Tensor) -> Tensor:
        images = lr.split(1) if self.one_per_call else [lr]
        return torch.cat([self._forward_batch(image) for image in images])

    def _forward_batch(self, lr: Tensor) -> Tensor:
        height, width = lr.shape[-2:]
        if self.static_size is not None and (height, width) != self.static_size:
            bottom, right = self.static_size[0] - height, self.static_size[1] - width
            if bottom < 0 or right < 0:
                raise UserInputError(
                    f"{self.name} takes {self.static_size[0]}x{self.static_size[1]} inputs only; "
                    f"a {height}x{width} tile does not fit: use a smaller --tile.")
            lr = torch.nn.functional.pad(lr, (0, right, 0, bottom), mode="replicate")
        output = self._run_session(lr.detach().cpu().numpy().astype(self.input_dtype))
        result = torch.from_numpy(output.astype(np.float32))
        return result[..., :height * self.scale, :width * self.scale]


def _onnx_runner(path: Path, options: RunnerOptions) -> OnnxRunner:
    if options.fp16:
        raise UserInputError(
            f"--fp16 does not apply to {path}: an ONNX file's precision is fixed when it is "
            "exported (srcompress export MODEL --onnx --fp16).")
    if options.arch is not None:
        raise UserInputError(f"--arch does not apply to {path}: ONNX files hold their graph.")
    runner = OnnxRunner(path, options.device, options.tile, options.tile_pad,
                        options.self_ensemble)
    _checked_scale(runner.scale, options, str(path))
    return runner


FILE_RUNNERS[".onnx"] = _onnx_runner

"""Degradations: how a clean HR image becomes the LR input a model is trained or tested on.

`bicubic` is the classical SR task (MATLAB-style bicubic downscaling, rounded to 8 bits).
`realesrgan` is the second-order pipeline of Real-ESRGAN (Wang et al., ICCVW 2021), the task of
the real-world checkpoints people deploy (RRDBNet x4plus, the Compact models, real-world SwinIR):

    blur (kernel per image) → resize (up/down/keep, area/bilinear/bicubic) → Gaussian or Poisson
    noise (colour or grey) → JPEG → [blur with `second_blur_prob`] → resize around the LR size →
    noise → in random order: {resize to the LR size + sinc filter (a pulse when none is drawn)}
    and JPEG → rounded to 8 bits.

Decisions that change an image's size (resize type, factor and mode, the order of the last two
steps) are drawn once per batch, as in the reference, since a batch must keep one size; kernels,
noise levels, grey-or-colour and JPEG qualities are drawn per image. The values are those of
`RealESRGANOptions`. Two differences from the reference, both deliberate: JPEG qualities are
whole numbers (a real codec, see `stages.jpeg`), and there is no training-pair queue (it would
mix samples across iterations, and a run could no longer be resumed bit-exactly from its
iteration number alone).

Randomness comes from a `DegradationRandom`: one CPU generator for the parameters (so the
parameters, and which stages run, are the same on every device) and one generator on the
images' device for the noise. Seeded from (run seed, iteration, rank), a degraded batch depends
on nothing else, so a resumed run sees exactly the inputs the uninterrupted one saw.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from srcompress.data.degradation import kernels as kernel_draws
from srcompress.data.degradation.options import RealESRGANOptions, read_options
from srcompress.data.degradation.stages import (
    RESIZE_MODES,
    add_gaussian_noise,
    add_poisson_noise,
    blur,
    jpeg,
    quantise,
    resize,
)
from srcompress.data.resize import imresize
from srcompress.errors import UserInputError

RESIZE_KINDS = ("up", "down", "keep")


class DegradationRandom:
    """The generators of one degradation call: parameters on the CPU, noise on `device`.

    Both come from `seed` (a number, or several such as (run seed, iteration, rank)) through
    NumPy's `SeedSequence`, so nearby seeds (consecutive iterations) give unrelated streams.
    """

    def __init__(self, seed: int | Sequence[int], device: torch.device | str = "cpu") -> None:
        entropy = [seed] if isinstance(seed, int) else list(seed)
        parameter_seed, noise_seed = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
        self.parameters = torch.Generator().manual_seed(int(parameter_seed))
        self.noise = torch.Generator(device=device).manual_seed(int(noise_seed))


class Degradation(ABC):
    """Turns clean HR images into LR inputs at a scale; `settings()` is its serialisable form."""

    name: ClassVar[str]

    @abstractmethod
    def degrade(self, hr: Tensor, scale: int, random: DegradationRandom) -> Tensor:
        """B×3×H×W images in [0, 1] (H, W multiples of `scale`) → B×3×(H/s)×(W/s), 8-bit
        levels, on the same device."""

    def settings(self) -> dict[str, Any]:
        """Everything that defines the degradation, as plain values (config files, cache keys)."""
        return {"name": self.name}


class BicubicDegradation(Degradation):
    """MATLAB-style bicubic downscaling (antialiased), rounded to 8 bits: the classical task."""

    name = "bicubic"

    @torch.no_grad()
    def degrade(self, hr: Tensor, scale: int, random: DegradationRandom | None = None) -> Tensor:
        _check_size(hr, scale)
        return quantise(imresize(hr, scale=1 / scale))


@dataclass(frozen=True)
class OrderDraw:
    """What one order (first or second) of the Real-ESRGAN pipeline does to a batch."""

    kernels: Tensor  # B×K×K, float64
    blur: bool
    resize_kind: str  # up, down or keep
    resize_factor: float
    resize_mode: str
    gaussian_noise: bool  # else Poisson
    noise_level: Tensor  # B: σ on the 0-255 scale, or the Poisson scale
    grey_noise: Tensor  # B, bool
    jpeg_quality: Tensor  # B, int64


@dataclass(frozen=True)
class RealESRGANDraw:
    """Every random choice of one batch's Real-ESRGAN degradation (the noise itself excepted)."""

    first: OrderDraw
    second: OrderDraw
    final_kernels: Tensor  # B×K×K: sinc filters or pulses
    final_mode: str
    sinc_before_jpeg: bool


class RealESRGANDegradation(Degradation):
    """Real-ESRGAN's second-order degradation with `options` (default: x4plus)."""

    name = "realesrgan"

    def __init__(self, options: RealESRGANOptions | None = None) -> None:
        self.options = options if options is not None else RealESRGANOptions()

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, **self.options.as_dict()}

    @torch.no_grad()
    def degrade(self, hr: Tensor, scale: int, random: DegradationRandom) -> Tensor:
        """The batch degraded in float32 (also inside a training step's autocast region: blur
        and resizing in bf16 would change the task)."""
        with torch.autocast(hr.device.type, enabled=False):
            draw = self.draw(hr.shape[0], random.parameters)
            return self.apply(hr.float(), scale, draw, random.noise)

    def draw(self, count: int, generator: torch.Generator) -> RealESRGANDraw:
        """The parameters for a batch of `count` images, from the CPU `generator`."""
        options = self.options
        first = self._draw_order(count, generator, "", blur_probability=1.0)
        second = self._draw_order(count, generator, "2", options.second_blur_prob)
        final = torch.stack([kernel_draws.random_final_kernel(
            generator, options.final_sinc_prob, options.kernel_range) for _ in range(count)])
        sinc_before_jpeg = kernel_draws.uniform(generator, 0, 1) < 0.5
        mode = RESIZE_MODES[kernel_draws.choice(generator, [1 / 3] * 3)]
        return RealESRGANDraw(first, second, final, mode, sinc_before_jpeg)

    def _draw_order(self, count: int, generator: torch.Generator, suffix: str,
                    blur_probability: float) -> OrderDraw:
        def option(name: str) -> Any:
            return getattr(self.options, name + suffix)

        kernels = torch.stack([kernel_draws.random_blur_kernel(
            generator, option("kernel_list"), option("kernel_prob"), option("sinc_prob"),
            option("blur_sigma"), option("betag_range"), option("betap_range"),
            self.options.kernel_range) for _ in range(count)])
        applies_blur = kernel_draws.uniform(generator, 0, 1) < blur_probability
        kind = RESIZE_KINDS[kernel_draws.choice(generator, option("resize_prob"))]
        low, high = option("resize_range")
        factor = {"up": lambda: kernel_draws.uniform(generator, 1, high),
                  "down": lambda: kernel_draws.uniform(generator, low, 1),
                  "keep": lambda: 1.0}[kind]()
        mode = RESIZE_MODES[kernel_draws.choice(generator, [1 / 3] * 3)]
        gaussian = kernel_draws.uniform(generator, 0, 1) < option("gaussian_noise_prob")
        span = option("noise_range") if gaussian else option("poisson_scale_range")
        levels = torch.tensor([kernel_draws.uniform(generator, *span) for _ in range(count)])
        grey = torch.tensor([kernel_draws.uniform(generator, 0, 1) < option("gray_noise_prob")
                             for _ in range(count)])
        low_quality, high_quality = option("jpeg_range")
        quality = torch.randint(low_quality, high_quality + 1, (count,), generator=generator)
        return OrderDraw(kernels, applies_blur, kind, factor, mode, gaussian, levels, grey,
                         quality)

    @torch.no_grad()
    def apply(self, hr: Tensor, scale: int, draw: RealESRGANDraw,
              noise_generator: torch.Generator) -> Tensor:
        """The pipeline with the parameters of `draw`; noise from `noise_generator` (on the
        images' device)."""
        _check_size(hr, scale)
        height, width = hr.shape[-2:]
        first, second = draw.first, draw.second
        out = blur(hr, first.kernels)
        out = _resize_by(out, (height * first.resize_factor, width * first.resize_factor),
                         first.resize_mode)
        out = jpeg(_add_noise(out, first, noise_generator), first.jpeg_quality)
        if second.blur:
            out = blur(out, second.kernels)
        factor = second.resize_factor / scale
        out = _resize_by(out, (height * factor, width * factor), second.resize_mode)
        out = _add_noise(out, second, noise_generator)
        size = (height // scale, width // scale)
        if draw.sinc_before_jpeg:
            out = blur(resize(out, size, draw.final_mode), draw.final_kernels)
            out = jpeg(out, second.jpeg_quality)
        else:
            out = jpeg(out, second.jpeg_quality)
            out = blur(resize(out, size, draw.final_mode), draw.final_kernels)
        return quantise(out)


def _resize_by(images: Tensor, size: tuple[float, float], mode: str) -> Tensor:
    """Resize to the whole-pixel `size` (at least 1x1), skipped when the size does not change."""
    target = (max(1, int(size[0])), max(1, int(size[1])))
    if target == tuple(images.shape[-2:]):
        return images
    return resize(images, target, mode)


def _add_noise(images: Tensor, order: OrderDraw, generator: torch.Generator) -> Tensor:
    if order.gaussian_noise:
        return add_gaussian_noise(images, order.noise_level, order.grey_noise, generator)
    return add_poisson_noise(images, order.noise_level, order.grey_noise, generator)


def _check_size(hr: Tensor, scale: int) -> None:
    if hr.dim() != 4 or hr.shape[-2] % scale or hr.shape[-1] % scale:
        raise ValueError(f"degradation input {tuple(hr.shape)} must be B×C×H×W with H and W "
                         f"multiples of the scale {scale}")


DEGRADATION_NAMES = ("bicubic", "realesrgan")


def resolve_degradation(spec: str | Path | Mapping[str, Any]) -> Degradation:
    """`bicubic`, `realesrgan` (x4plus defaults), a TOML file of Real-ESRGAN settings, or those
    settings as a table (the form a run's config and a checkpoint's metadata keep)."""
    if isinstance(spec, Mapping):
        return RealESRGANDegradation(RealESRGANOptions.from_mapping(spec, "The degradation table"))
    text = str(spec)
    if text == "bicubic":
        return BicubicDegradation()
    if text == "realesrgan":
        return RealESRGANDegradation()
    if text.lower().endswith(".toml") or Path(text).is_file():
        return RealESRGANDegradation(read_options(text))
    raise UserInputError(f"--degradation must be bicubic, realesrgan or a TOML file of "
                         f"Real-ESRGAN settings, got {text!r}.")


def degradation_setting(spec: str | Path | Mapping[str, Any]) -> str | dict[str, Any]:
    """The canonical, self-contained form of a degradation: its name when it is a preset, else
    the table of all its Real-ESRGAN settings (a run then no longer depends on the TOML file,
    and equal settings compare equal however they were given)."""
    degradation = resolve_degradation(spec)
    custom = (isinstance(degradation, RealESRGANDegradation)
              and degradation.options != RealESRGANOptions())
    return degradation.options.as_dict() if custom else degradation.name

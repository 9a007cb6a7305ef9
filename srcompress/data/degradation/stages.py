"""The stages of a degradation, each batched on the images' device.

Each stage is the maintained library call that does the job where one matches Real-ESRGAN's
reference (`basicsr`'s `filter2D`, `F.interpolate`, its `*_noise_pt` functions and `DiffJPEG`):

- blur: kornia's `filter2d` with one kernel per image and reflected borders, as the reference;
- resize: `torch.nn.functional.interpolate` in area, bilinear or bicubic mode, as the reference;
- noise: `torch.randn` / `torch.poisson` from the caller's generator; grey noise is one plane
  for the three channels; grey Poisson noise counts photons on torchvision's `rgb_to_grayscale`,
  as the reference does;
- JPEG: torchvision's `encode_jpeg`/`decode_jpeg` (libjpeg-turbo on the CPU, nvJPEG batched on
  CUDA), i.e. real JPEG at an integer quality. The reference uses DiffJPEG, a float
  re-implementation of the same codec; kornia's differentiable codec rounds softly in its forward
  pass and measured 0.4-0.8 dB above libjpeg at equal quality on Set5/Set14 crops, where
  torchvision's output is pixel-identical to Pillow's encoder (tests/data/test_degradation.py).
  torchvision marks its image codecs deprecated from 0.29 on in favour of TorchCodec; `jpeg`
  is the one place to change when they go.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from kornia.filters import filter2d
from torch import Tensor
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.functional import rgb_to_grayscale

RESIZE_MODES = ("area", "bilinear", "bicubic")


def quantise(images: Tensor) -> Tensor:
    """Clamped to [0, 1] and rounded to the 256 levels of an 8-bit image."""
    return (images * 255).round().clamp(0, 255) / 255


def blur(images: Tensor, kernels: Tensor) -> Tensor:
    """Each image filtered with its own kernel (B×K×K), borders mirrored as in the reference.

    Images no larger than the kernel's radius cannot be mirrored; they (only DUKD's smallest
    zoom-out inputs reach this) repeat their edge pixels instead.
    """
    radius = kernels.shape[-1] // 2
    border = "reflect" if min(images.shape[-2:]) > radius else "replicate"
    return filter2d(images, kernels.to(images.device, images.dtype), border_type=border)


def resize(images: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """`F.interpolate` to `size` in `mode` (not antialiased, as the reference)."""
    if mode == "area":
        return F.interpolate(images, size=size, mode="area")
    return F.interpolate(images, size=size, mode=mode, align_corners=False)


def add_gaussian_noise(images: Tensor, sigma: Tensor, grey: Tensor,
                       generator: torch.Generator) -> Tensor:
    """Images plus N(0, σ²) noise, σ per image on the 0-255 scale; `grey` images get the same
    noise in every channel. The result is clamped to [0, 1]."""
    count, _, height, width = images.shape
    noise = torch.randn(images.shape, generator=generator, device=images.device,
                        dtype=images.dtype)
    if bool(grey.any()):
        plane = torch.randn((count, 1, height, width), generator=generator,
                            device=images.device, dtype=images.dtype)
        noise = torch.where(_per_image(grey, images), plane.expand_as(images), noise)
    return (images + noise * _per_image(sigma, images) / 255).clamp(0, 1)


def add_poisson_noise(images: Tensor, scale: Tensor, grey: Tensor,
                      generator: torch.Generator) -> Tensor:
    """Images plus shot noise times `scale` (per image); `grey` images get the noise of their
    luminance in every channel. The result is clamped to [0, 1]."""
    noise = _shot_noise(images, generator)
    if bool(grey.any()):
        plane = _shot_noise(rgb_to_grayscale(images), generator)
        noise = torch.where(_per_image(grey, images), plane.expand_as(images), noise)
    return (images + noise * _per_image(scale, images)).clamp(0, 1)


def _shot_noise(images: Tensor, generator: torch.Generator) -> Tensor:
    """Poisson noise of the 8-bit image, photon count per level the power of two at or above the
    number of distinct levels the image uses (so a flat image is noisier than a detailed one)."""
    levels = quantise(images)
    distinct = torch.tensor([float(levels[index].unique().numel())
                             for index in range(levels.shape[0])], dtype=torch.float64)
    photons = (2 ** torch.ceil(torch.log2(distinct))).to(images.device, images.dtype)
    photons = photons.view(-1, 1, 1, 1)
    return torch.poisson(levels * photons, generator=generator) / photons - levels


def jpeg(images: Tensor, quality: Tensor) -> Tensor:
    """Each image JPEG-compressed at its integer `quality` (1-100) and decoded, by libjpeg on the
    CPU or nvJPEG on CUDA; the images are clamped and rounded to 8 bits first, as a file would.
    Images sharing a quality are coded in one call (one batched nvJPEG call on CUDA)."""
    pixels = quantise(images).mul(255).to(torch.uint8)
    decoded = torch.empty_like(pixels)
    qualities = quality.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for value in sorted(set(qualities)):
            rows = [index for index, item in enumerate(qualities) if item == value]
            encoded = encode_jpeg([pixels[index] for index in rows], quality=int(value))
            images_out = decode_jpeg([data.cpu() for data in encoded], device=images.device)
            for index, image in zip(rows, images_out, strict=True):
                decoded[index] = image
    return decoded.to(images.dtype) / 255


def _per_image(values: Tensor, images: Tensor) -> Tensor:
    """A per-image vector shaped to broadcast over B×C×H×W, on the images' device (and in their
    dtype, for numbers)."""
    dtype = images.dtype if values.is_floating_point() else values.dtype
    return values.to(images.device, dtype).view(-1, 1, 1, 1)

"""The blur kernels of Real-ESRGAN's degradation, drawn per image.

No maintained library makes these kernel families (rotated anisotropic, generalised-Gaussian and
plateau kernels, and the circular sinc, "jinc", low-pass filter): kornia and torchvision build
axis-aligned Gaussians only. They are a few lines of formula each, written here after the
definitions in the Real-ESRGAN paper (Wang et al., ICCVW 2021, §3.1) and computed in float64 on
the CPU (a 21x21 kernel per image costs microseconds); the blur itself is kornia's `filter2d`.

With the quadratic form q(v) = vᵀ Σ⁻¹ v of the covariance Σ = R(θ) diag(σx², σy²) R(θ)ᵀ:
Gaussian exp(−q/2), generalised Gaussian exp(−q^β/2), plateau 1/(1 + q^β). Isotropic kernels
have σy = σx and θ = 0. Every kernel is normalised to sum to 1 and zero-padded to the largest
size, so one batch stacks into a B×K×K tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One draw from U(low, high) (low itself when the span is empty)."""
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def choice(generator: torch.Generator, probabilities: Sequence[float]) -> int:
    """The index drawn with the given probabilities (which sum to 1)."""
    draw = float(torch.rand((), generator=generator, dtype=torch.float64))
    total = 0.0
    for index, probability in enumerate(probabilities):
        total += probability
        if draw < total:
            return index
    return max(index for index, probability in enumerate(probabilities) if probability > 0)


def _grid(size: int) -> tuple[Tensor, Tensor]:
    """Pixel offsets from the kernel centre: x along columns, y along rows."""
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    return x, y


def anisotropic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> Tensor:
    """q = vᵀ Σ⁻¹ v on the kernel grid, Σ rotated by `theta` radians."""
    x, y = _grid(size)
    cos, sin = math.cos(theta), math.sin(theta)
    along, across = cos * x + sin * y, -sin * x + cos * y
    return (along / sigma_x) ** 2 + (across / sigma_y) ** 2


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float,
                    family: str = "gaussian", beta: float = 1.0) -> Tensor:
    """A normalised `family` kernel: 'gaussian', 'generalized' or 'plateau'."""
    form = anisotropic_form(size, sigma_x, sigma_y, theta)
    if family == "gaussian":
        kernel = torch.exp(-0.5 * form)
    elif family == "generalized":
        kernel = torch.exp(-0.5 * form ** beta)
    elif family == "plateau":
        kernel = 1 / (form ** beta + 1)
    else:
        raise ValueError(f"unknown kernel family {family!r}")
    return kernel / kernel.sum()


def sinc_kernel(size: int, cutoff: float) -> Tensor:
    """The circularly symmetric ideal low-pass filter ω·J1(ω·r)/(2π·r), normalised; `cutoff` ω is
    in radians per pixel (π keeps every frequency). Its centre is the limit ω²/(4π)."""
    x, y = _grid(size)
    radius = torch.sqrt(x * x + y * y)
    safe = torch.where(radius == 0, 1.0, radius)
    kernel = cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe)
    kernel = torch.where(radius == 0, cutoff ** 2 / (4 * math.pi), kernel)
    return kernel / kernel.sum()


def pulse_kernel(size: int) -> Tensor:
    """The kernel that changes nothing (the final filter when no sinc is drawn)."""
    kernel = torch.zeros(size, size, dtype=torch.float64)
    kernel[size // 2, size // 2] = 1
    return kernel


def pad_to(kernel: Tensor, size: int) -> Tensor:
    """Zero-pad an odd kernel to `size`, centre kept."""
    margin = (size - kernel.shape[-1]) // 2
    return torch.nn.functional.pad(kernel, (margin, margin, margin, margin))


def kernel_size(generator: torch.Generator, smallest: int, largest: int) -> int:
    """An odd size drawn uniformly from smallest, smallest + 2, …, largest."""
    sizes = range(smallest, largest + 1, 2)
    return sizes[int(torch.randint(len(sizes), (), generator=generator))]


def shape_parameter(generator: torch.Generator, low: float, high: float) -> float:
    """β as Real-ESRGAN draws it: when the span straddles 1, half the draws fall below 1 and half
    above (the two sides are equally likely however long each is); otherwise uniformly."""
    if low < 1 < high:
        if uniform(generator, 0, 1) < 0.5:
            return uniform(generator, low, 1)
        return uniform(generator, 1, high)
    return uniform(generator, low, high)


def random_blur_kernel(generator: torch.Generator, kernel_types: Sequence[str],
                       kernel_probabilities: Sequence[float], sinc_probability: float,
                       sigma: tuple[float, float], beta_generalized: tuple[float, float],
                       beta_plateau: tuple[float, float], sizes: tuple[int, int]) -> Tensor:
    """One blur kernel of a first or second degradation, padded to the largest size.

    A sinc filter is drawn with `sinc_probability`, its cutoff from [π/3, π] for kernels smaller
    than 13 pixels and [π/5, π] otherwise (a strong low-pass needs room for its ripples); else a
    kernel family with its probability, σx (and σy, θ ∈ [−π, π] when anisotropic) uniformly.
    """
    size = kernel_size(generator, *sizes)
    if uniform(generator, 0, 1) < sinc_probability:
        lowest = math.pi / 3 if size < 13 else math.pi / 5
        return pad_to(sinc_kernel(size, uniform(generator, lowest, math.pi)), sizes[1])
    kind = kernel_types[choice(generator, kernel_probabilities)]
    sigma_x = uniform(generator, *sigma)
    sigma_y, theta = sigma_x, 0.0
    if kind.endswith("aniso"):
        sigma_y = uniform(generator, *sigma)
        theta = uniform(generator, -math.pi, math.pi)
    family, beta = "gaussian", 1.0
    if kind.startswith("generalized"):
        family, beta = "generalized", shape_parameter(generator, *beta_generalized)
    elif kind.startswith("plateau"):
        family, beta = "plateau", shape_parameter(generator, *beta_plateau)
    return pad_to(gaussian_kernel(size, sigma_x, sigma_y, theta, family, beta), sizes[1])


def random_final_kernel(generator: torch.Generator, sinc_probability: float,
                        sizes: tuple[int, int]) -> Tensor:
    """The last filter: a sinc with cutoff in [π/3, π] with `sinc_probability`, else a pulse."""
    if uniform(generator, 0, 1) < sinc_probability:
        size = kernel_size(generator, *sizes)
        return pad_to(sinc_kernel(size, uniform(generator, math.pi / 3, math.pi)), sizes[1])
    return pulse_kernel(sizes[1])

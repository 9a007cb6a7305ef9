"""PSNR and SSIM exactly as the SR field's benchmark protocol computes them (NIQE: `niqe`).

Paper tables come from MATLAB code (and BasicSR's port of it): the SR output is clamped, scaled to
[0, 255] and rounded to uint8 like a saved PNG; both images lose `crop_border` pixels on every
side; PSNR and SSIM are then taken on the BT.601 luma of MATLAB's `rgb2ycbcr` (or on RGB). Every
step here runs in float64 so that our figures agree with those tables to the hundredth of a dB.
`to_uint8` (from `data.images`, where saving uses it too) makes the uint8 arrays they take.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from srcompress.data.images import to_uint8
from srcompress.errors import UserInputError

__all__ = ["psnr", "rgb_to_y", "ssim", "to_uint8"]

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2


def rgb_to_y(image: NDArray[np.uint8]) -> NDArray[np.float64]:
    """BT.601 luma on [16, 235] as MATLAB's `rgb2ycbcr` of a double image, in float64."""
    rgb = image.astype(np.float64) / 255.0
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def _prepare(sr: NDArray[np.uint8], hr: NDArray[np.uint8], crop_border: int,
             y_channel: bool) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validated, cropped float64 planes: `H×W` for luma, `H×W×3` for RGB."""
    for label, array in (("SR", sr), ("HR", hr)):
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise UserInputError(
                f"Metrics need uint8 H×W×3 images; the {label} image is {array.dtype} of shape "
                f"{array.shape} (use srcompress.metrics.to_uint8).")
    if sr.shape != hr.shape:
        raise UserInputError(f"SR image {sr.shape} and HR image {hr.shape} differ in size.")
    if crop_border < 0 or 2 * crop_border >= min(sr.shape[:2]):
        raise UserInputError(
            f"crop border {crop_border} leaves nothing of a {sr.shape[0]}x{sr.shape[1]} image.")
    if crop_border:
        sr = sr[crop_border:-crop_border, crop_border:-crop_border]
        hr = hr[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        return rgb_to_y(sr), rgb_to_y(hr)
    return sr.astype(np.float64), hr.astype(np.float64)


def psnr(sr: NDArray[np.uint8], hr: NDArray[np.uint8], crop_border: int,
         y_channel: bool = True) -> float:
    """Peak signal-to-noise ratio in dB with peak 255; identical images give `inf`."""
    sr64, hr64 = _prepare(sr, hr, crop_border, y_channel)
    mse = float(np.mean((sr64 - hr64) ** 2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(255.0 ** 2 / mse)


def _gaussian_1d() -> NDArray[np.float64]:
    offsets = np.arange(_SSIM_WINDOW, dtype=np.float64) - (_SSIM_WINDOW - 1) / 2
    kernel = np.exp(-(offsets ** 2) / (2 * _SSIM_SIGMA ** 2))
    return kernel / kernel.sum()


def _filter_valid(plane: NDArray[np.float64]) -> NDArray[np.float64]:
    """The 11×11 Gaussian applied separably, keeping only fully covered pixels ('valid')."""
    kernel = _gaussian_1d()
    rows = np.lib.stride_tricks.sliding_window_view(plane, _SSIM_WINDOW, axis=0) @ kernel
    return np.lib.stride_tricks.sliding_window_view(rows, _SSIM_WINDOW, axis=1) @ kernel


def _ssim_plane(x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    mu_x, mu_y = _filter_valid(x), _filter_valid(y)
    var_x = _filter_valid(x * x) - mu_x ** 2
    var_y = _filter_valid(y * y) - mu_y ** 2
    cov = _filter_valid(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + _SSIM_C1) * (2 * cov + _SSIM_C2)) / (
        (mu_x ** 2 + mu_y ** 2 + _SSIM_C1) * (var_x + var_y + _SSIM_C2))
    return float(ssim_map.mean())


def ssim(sr: NDArray[np.uint8], hr: NDArray[np.uint8], crop_border: int,
         y_channel: bool = True) -> float:
    """SSIM of Wang et al. (11×11 Gaussian, σ 1.5, K1 .01, K2 .03, L 255); RGB averages channels."""
    sr64, hr64 = _prepare(sr, hr, crop_border, y_channel)
    if min(sr64.shape[:2]) < _SSIM_WINDOW:
        raise UserInputError(
            f"SSIM needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels after the border crop, "
            f"got {sr64.shape[0]}x{sr64.shape[1]}.")
    if y_channel:
        return _ssim_plane(sr64, hr64)
    return float(np.mean([_ssim_plane(sr64[..., c], hr64[..., c]) for c in range(3)]))

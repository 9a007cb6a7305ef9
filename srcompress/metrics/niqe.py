"""NIQE, the no-reference quality score of real-world SR papers, exactly as MATLAB's `niqe`.

NIQE (Mittal, Soundararajan and Bovik, "Making a 'completely blind' image quality analyzer", IEEE
SPL 2013) measures how far an image's natural-scene statistics are from those of pristine photos;
lower is better. Real-world SR has no ground truth, so the DUKD paper and Real-ESRGAN's tables
report it, computed by MATLAB's `niqe` (or BasicSR's port of it). To be comparable with them, this
follows MATLAB step by step:

- the image's BT.601 luma, as MATLAB's `rgb2ycbcr` of the 8-bit image, rounded to integers
  (MATLAB returns uint8 for uint8 input);
- cropped to whole 96x96 blocks (no overlap), the official block size;
- at two scales (the image, then MATLAB's bicubic `imresize` by 0.5 with antialiasing): local
  mean-subtracted, contrast-normalised coefficients with the official 7x7 Gaussian window and
  replicated borders; per block, an asymmetric generalised Gaussian fit of the coefficients and of
  their products with the four neighbours (circular shifts inside the block, as `circshift`),
  18 features per scale, the shape parameter found on MATLAB's 0.2:0.001:10 grid;
- a Gaussian over the blocks (NaN features left out) compared with the pristine model's:
  sqrt((μp − μ)ᵀ pinv((Σp + Σ)/2) (μp − μ)).

The pristine model (`niqe_pris_params.npz`: mean 1x36, covariance 36x36, window 7x7) holds the
official values of Mittal et al.'s MATLAB release, as distributed with BasicSR
(https://github.com/XPixelGroup/BasicSR, Apache-2.0, `basicsr/metrics/niqe_pris_params.npz`); it
ships inside srcompress so the metric needs no download.

Precision matters here: the luma planes, their filtering and the normalised coefficients are kept
in single precision as MATLAB keeps them (see `_block_features`). Our figures then agree with
MATLAB R2021a's 5.7295734 on Set14's baboon to 1e-6, and with BasicSR's on Set5 to 3e-4
(tests/test_niqe.py). Every block of a scale is processed at once, so an image takes a fraction
of a second.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor

from srcompress.data.resize import imresize
from srcompress.errors import UserInputError
from srcompress.metrics import rgb_to_y

BLOCK_SIZE = 96
_NEIGHBOUR_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


@lru_cache(maxsize=1)
def pristine_model() -> tuple[Tensor, Tensor, Tensor]:
    """The official pristine mean (36,), covariance (36, 36) and Gaussian window (1, 1, 7, 7)."""
    with resources.files(__package__).joinpath("niqe_pris_params.npz").open("rb") as file:
        params = np.load(file)
        mean = torch.from_numpy(params["mu_pris_param"].reshape(-1).astype(np.float64))
        covariance = torch.from_numpy(params["cov_pris_param"].astype(np.float64))
        window = torch.from_numpy(params["gaussian_window"].astype(np.float64))
    return mean, covariance, window[None, None]


@lru_cache(maxsize=1)
def _shape_grid() -> tuple[Tensor, Tensor]:
    """MATLAB's grid of AGGD shape values 0.2:0.001:10 and ρ(α) = Γ(2/α)² / (Γ(1/α)·Γ(3/α))."""
    shapes = torch.from_numpy(np.arange(0.2, 10.001, 0.001))
    ratios = torch.exp(2 * torch.lgamma(2 / shapes) - torch.lgamma(1 / shapes)
                       - torch.lgamma(3 / shapes))
    return shapes, ratios


def fits_niqe(height: int, width: int) -> bool:
    """Whether an image holds at least one whole NIQE block."""
    return height >= BLOCK_SIZE and width >= BLOCK_SIZE


def niqe(image: NDArray[np.uint8]) -> float:
    """NIQE of an 8-bit `H×W×3` RGB image (grey images as three equal channels, the way
    `read_image` gives them); lower means more natural.

    Raises `UserInputError` when the image is smaller than one 96x96 block.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UserInputError(f"NIQE needs a uint8 H×W×3 image, got {image.dtype} of shape "
                             f"{image.shape} (use srcompress.metrics.to_uint8).")
    height, width = image.shape[:2]
    if not fits_niqe(height, width):
        raise UserInputError(f"NIQE needs at least {BLOCK_SIZE}x{BLOCK_SIZE} pixels, the image is "
                             f"{width}x{height}.")
    luma = np.round(rgb_to_y(image))
    rows, columns = height // BLOCK_SIZE, width // BLOCK_SIZE
    plane = torch.from_numpy(luma[:rows * BLOCK_SIZE, :columns * BLOCK_SIZE].copy()).float()
    features = [_block_features(plane, BLOCK_SIZE)]
    half = imresize(plane[None] / 255.0, scale=0.5)[0] * 255.0
    features.append(_block_features(half, BLOCK_SIZE // 2))
    return _distance(torch.cat(features, dim=1))


def _filter(plane: Tensor) -> Tensor:
    """The 7x7 window over `plane` with replicated borders, summed in float64 and stored in
    float32 (as MATLAB's single-precision filtering and scipy's `ndimage` do)."""
    _, _, window = pristine_model()
    padded = F.pad(plane.double()[None, None], (3, 3, 3, 3), mode="replicate")
    return F.conv2d(padded, window)[0, 0].float()


def _block_features(plane: Tensor, block: int) -> Tensor:
    """The 18 features of every `block`×`block` tile of the normalised float32 `plane`.

    The normalisation runs in float32 on purpose: in flat areas the local deviation is the
    rounding noise of `E[x²] − E[x]²`, and the signs of those tiny coefficients decide the AGGD fit
    there. MATLAB computes in single precision, and in float64 the same images score differently
    (Set5's head: 8.716 instead of 8.350); float32 reproduces MATLAB's baboon to 1e-6.
    """
    mean = _filter(plane)
    deviation = (_filter(plane * plane) - mean * mean).abs().sqrt()
    normalised = (plane - mean) / (deviation + 1)
    rows, columns = plane.shape[0] // block, plane.shape[1] // block
    tiles = (normalised[:rows * block, :columns * block]
             .reshape(rows, block, columns, block).permute(0, 2, 1, 3).reshape(-1, block, block))
    shape, left, right = _aggd(tiles)
    columns_out = [shape, (left + right) / 2]
    for shift in _NEIGHBOUR_SHIFTS:
        products = tiles * torch.roll(tiles, shifts=shift, dims=(1, 2))
        shape, left, right = _aggd(products)
        mean_value = (right - left) * torch.exp(torch.lgamma(2 / shape) - torch.lgamma(1 / shape))
        columns_out += [shape, mean_value, left, right]
    return torch.stack(columns_out, dim=1)


def _aggd(values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric generalised Gaussian fit per tile (moment matching on MATLAB's shape grid):
    shape α, left scale β_l, right scale β_r, each (tiles,). A tile without negative (or
    positive) values gives NaN scales, as in MATLAB, and is left out of the covariance."""
    flat = values.reshape(values.shape[0], -1).double()
    negative, positive = flat < 0, flat > 0
    left_std = ((flat * flat * negative).sum(1) / negative.sum(1)).sqrt()
    right_std = ((flat * flat * positive).sum(1) / positive.sum(1)).sqrt()
    gamma_hat = left_std / right_std
    r_hat = flat.abs().mean(1) ** 2 / (flat * flat).mean(1)
    r_hat_norm = r_hat * (gamma_hat ** 3 + 1) * (gamma_hat + 1) / (gamma_hat ** 2 + 1) ** 2
    shapes, ratios = _shape_grid()
    position = ((ratios[None, :] - r_hat_norm[:, None]) ** 2).argmin(dim=1)
    # MATLAB's `min` over all-NaN differences returns position 1: shape 0.2, not NaN.
    shape = shapes[torch.where(r_hat_norm.isnan(), 0, position)]
    spread = torch.exp(0.5 * (torch.lgamma(1 / shape) - torch.lgamma(3 / shape)))
    return shape, left_std * spread, right_std * spread


def _distance(features: Tensor) -> float:
    """NIQE's Eq. 10 between the pristine Gaussian and the image's Gaussian over its tiles."""
    pristine_mean, pristine_covariance, _ = pristine_model()
    mean = features.nanmean(dim=0)
    complete = features[~features.isnan().any(dim=1)]
    # MATLAB's `cov` of a single observation (an image of one block) is zero, not NaN.
    covariance = (torch.cov(complete.T) if complete.shape[0] > 1
                  else features.new_zeros(features.shape[1], features.shape[1]))
    difference = pristine_mean - mean
    inverse = torch.linalg.pinv((pristine_covariance + covariance) / 2)
    return float((difference @ inverse @ difference).sqrt())

"""Our PSNR/SSIM against an independent float64 implementation of the same protocol."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from srcompress.data.images import list_images, read_image
from srcompress.data.resize import imresize
from srcompress.errors import UserInputError
from srcompress.metrics import psnr, rgb_to_y, ssim, to_uint8

signal = pytest.importorskip("scipy.signal", reason="the reference SSIM uses scipy.signal")

def reference_luma(image: np.ndarray) -> np.ndarray:
    """MATLAB's rgb2ycbcr on [0, 255] values: offsets and coefficients over 255, one pixel row."""
    coefficients = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0
    return np.tensordot(image.astype(np.float64), coefficients, axes=([2], [0])) + 16.0


def reference_psnr(a: np.ndarray, b: np.ndarray) -> float:
    squared_error = 0.0
    for row_a, row_b in zip(a, b, strict=True):
        squared_error += float(np.sum((row_a - row_b) ** 2))
    return 20 * math.log10(255.0) - 10 * math.log10(squared_error / a.size)


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s SSIM with a full 2-D window and scipy's 'valid' convolution."""
    radius = np.arange(-5, 6, dtype=np.float64)
    grid_y, grid_x = np.meshgrid(radius, radius, indexing="ij")
    window = np.exp(-(grid_x ** 2 + grid_y ** 2) / (2 * 1.5 ** 2))
    window /= window.sum()

    def blur(plane: np.ndarray) -> np.ndarray:
        return signal.convolve2d(plane, window, mode="valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mean_a, mean_b = blur(a), blur(b)
    sigma_a = blur(a * a) - mean_a * mean_a
    sigma_b = blur(b * b) - mean_b * mean_b
    sigma_ab = blur(a * b) - mean_a * mean_b
    numerator = (2 * mean_a * mean_b + c1) * (2 * sigma_ab + c2)
    denominator = (mean_a ** 2 + mean_b ** 2 + c1) * (sigma_a + sigma_b + c2)
    return float(np.mean(numerator / denominator))


@pytest.fixture(scope="module")
def bicubic_pairs(shared_data: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(SR, HR) uint8 pairs: Set5 HR and the bicubic x4 upscale of its MATLAB LR file."""
    set5 = shared_data / "benchmarks" / "Set5"
    pairs = []
    for hr_path in list_images(set5 / "HR")[:3]:
        hr = read_image(hr_path)
        hr = hr[:, : hr.shape[1] // 4 * 4, : hr.shape[2] // 4 * 4]
        lr = read_image(set5 / "LR_bicubic" / "X4" / f"{hr_path.stem}x4.png")
        pairs.append((to_uint8(imresize(lr, scale=4)), to_uint8(hr)))
    return pairs


def test_psnr_and_ssim_match_the_reference_on_luma(bicubic_pairs) -> None:
    for sr, hr in bicubic_pairs:
        sr_y, hr_y = reference_luma(sr[4:-4, 4:-4]), reference_luma(hr[4:-4, 4:-4])
        assert abs(psnr(sr, hr, crop_border=4) - reference_psnr(sr_y, hr_y)) < 1e-6
        assert abs(ssim(sr, hr, crop_border=4) - reference_ssim(sr_y, hr_y)) < 1e-6


def test_psnr_and_ssim_match_the_reference_on_rgb(bicubic_pairs) -> None:
    for sr, hr in bicubic_pairs:
        sr_c, hr_c = sr[2:-2, 2:-2].astype(np.float64), hr[2:-2, 2:-2].astype(np.float64)
        assert abs(psnr(sr, hr, 2, y_channel=False) - reference_psnr(sr_c, hr_c)) < 1e-6
        expected = np.mean([reference_ssim(sr_c[..., c], hr_c[..., c]) for c in range(3)])
        assert abs(ssim(sr, hr, 2, y_channel=False) - expected) < 1e-6


def test_luma_of_primaries_is_matlabs() -> None:
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0], [255, 255, 255]]],
                      dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(pixels)[0], [81.481, 144.553, 40.966, 16.0, 235.0])


def test_to_uint8_clamps_and_rounds() -> None:
    image = torch.tensor([-0.2, 0.5 / 255, 1.4 / 255, 0.999, 1.3]).reshape(1, 1, 5).expand(3, 1, 5)
    np.testing.assert_array_equal(to_uint8(image)[0, :, 0], [0, 0, 1, 255, 255])
    assert to_uint8(image[None]).shape == (1, 5, 3)


def test_identical_images_and_bad_inputs() -> None:
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert psnr(image, image, 4) == math.inf
    assert ssim(image, image, 4) == pytest.approx(1.0)
    with pytest.raises(UserInputError, match="differ in size"):
        psnr(image, image[:30], 4)
    with pytest.raises(UserInputError, match="uint8"):
        psnr(image.astype(np.float32), image, 4)
    with pytest.raises(UserInputError, match="SSIM needs"):
        ssim(image[:16, :16], image[:16, :16], 4)

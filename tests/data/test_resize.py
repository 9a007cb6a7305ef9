"""MATLAB compatibility and tensor behaviour of `imresize`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from srcompress.data.images import list_images, read_image
from srcompress.data.resize import imresize
from srcompress.errors import UserInputError
from srcompress.metrics import to_uint8


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_downscaling_matches_matlab_lr_files(benchmarks_root: Path, scale: int) -> None:
    differences = []
    for hr_path in list_images(benchmarks_root / "Set5" / "HR"):
        hr = read_image(hr_path)
        height, width = hr.shape[1] // scale * scale, hr.shape[2] // scale * scale
        ours = to_uint8(imresize(hr[:, :height, :width], scale=1 / scale))
        lr_folder = benchmarks_root / "Set5" / "LR_bicubic" / f"X{scale}"
        matlab = to_uint8(read_image(lr_folder / f"{hr_path.stem}x{scale}.png"))
        assert ours.shape == matlab.shape
        differences.append(np.abs(ours.astype(int) - matlab.astype(int)).ravel())
    diff = np.concatenate(differences)
    within_one = float((diff <= 1).mean())
    print(f"\nimresize x{scale} vs MATLAB (Set5, {diff.size} values): max {diff.max()}, "
          f"within 1: {100 * within_one:.4f} %, exact: {100 * (diff == 0).mean():.2f} %, "
          f"mean {diff.mean():.4f}")
    assert diff.max() <= 2
    assert within_one >= 0.99


def test_output_size_is_matlab_ceil() -> None:
    image = torch.rand(3, 7, 5)
    assert imresize(image, scale=3).shape == (3, 21, 15)
    assert imresize(image, scale=0.5).shape == (3, 4, 3)
    assert imresize(torch.rand(1, 255, 9), scale=1 / 3).shape == (1, 85, 3)
    assert imresize(image, size=(10, 20)).shape == (3, 10, 20)


def test_constant_image_stays_constant_both_ways() -> None:
    image = torch.full((3, 12, 17), 0.37, dtype=torch.float64)
    for scale in (1 / 4, 1 / 3, 2, 4):
        torch.testing.assert_close(imresize(image, scale=scale),
                                   torch.full_like(imresize(image, scale=scale), 0.37))


def test_batched_equals_per_image() -> None:
    batch = torch.rand(4, 3, 24, 18, generator=torch.Generator().manual_seed(0))
    together = imresize(batch, scale=1 / 3)
    one_by_one = torch.stack([imresize(image, scale=1 / 3) for image in batch])
    torch.testing.assert_close(together, one_by_one, rtol=0, atol=1e-6)


def test_differentiable() -> None:
    image = torch.rand(1, 1, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: imresize(x, scale=1 / 2), (image,))
    assert torch.autograd.gradcheck(lambda x: imresize(x, scale=2), (image,))


def test_dtype_and_device_follow_the_input() -> None:
    image = torch.rand(3, 16, 16, dtype=torch.float64)
    assert imresize(image, scale=2).dtype == torch.float64
    half = imresize(image.to(torch.bfloat16), scale=1 / 2)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), imresize(image, scale=1 / 2), atol=2e-2, rtol=0)


def test_bad_inputs_are_user_errors() -> None:
    with pytest.raises(UserInputError):
        imresize(torch.zeros(3, 8, 8, dtype=torch.uint8), scale=2)
    with pytest.raises(UserInputError):
        imresize(torch.zeros(3, 8, 8), scale=2, size=(16, 16))
    with pytest.raises(UserInputError):
        imresize(torch.zeros(3, 8, 8), scale=-1)

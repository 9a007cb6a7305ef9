"""A small trained EDSR and real Set5 images for the quantization tests.

The accuracy tests compare a fake-quant model with its float version, which only means something
if the float model has learned to super-resolve: a random network's output is noise that any
quantiser reproduces "within 0.1 dB". The tests therefore use a trained EDSR x2 and check that it
beats bicubic on Set5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from srcompress.data.images import list_images, read_image
from srcompress.data.resize import imresize
from srcompress.demo import demo_teacher_path
from srcompress.metrics import psnr, to_uint8
from srcompress.models import LoadedModel, load_model

SCALE = 2


@dataclass
class Pair:
    name: str
    lr: Tensor  # 3×h×w, the benchmark's MATLAB-made LR file
    hr: Tensor  # 3×(s·h)×(s·w)


@pytest.fixture(scope="session")
def set5_x2(shared_data: Path) -> list[Pair]:
    root = shared_data / "benchmarks" / "Set5"
    pairs = []
    for hr_path in list_images(root / "HR"):
        lr = read_image(root / "LR_bicubic" / f"X{SCALE}" / f"{hr_path.stem}x{SCALE}.png")
        hr = read_image(hr_path)[:, : lr.shape[1] * SCALE, : lr.shape[2] * SCALE]
        pairs.append(Pair(hr_path.stem, lr, hr))
    return pairs


def _mean_psnr(model: torch.nn.Module, pairs: list[Pair]) -> float:
    values = []
    with torch.no_grad():
        for pair in pairs:
            output = model(pair.lr.unsqueeze(0))[0]
            values.append(psnr(to_uint8(output), to_uint8(pair.hr), crop_border=SCALE))
    return sum(values) / len(values)


@pytest.fixture(scope="session")
def mean_psnr() -> Callable[[torch.nn.Module, list[Pair]], float]:
    """Set5 PSNR as the field measures it (Y channel, border = scale, uint8 output)."""
    return _mean_psnr


@pytest.fixture(scope="session")
def trained_edsr() -> LoadedModel:
    """The shipped demo teacher: EDSR x2, 32 features, 4 blocks, trained on real photographs.

    Training a model that beats bicubic inside the test session takes minutes on two shared CPU
    cores, so the tests use the one the project ships and skip when it has not been built yet.
    """
    path = demo_teacher_path(SCALE)
    if not path.is_file():
        pytest.skip(f"the demo teacher {path} is not built yet "
                    "(run examples/train_demo_teacher.py)")
    return load_model(path)


@pytest.fixture(scope="session")
def float_psnr(trained_edsr: LoadedModel, set5_x2: list[Pair]) -> float:
    """Set5 PSNR of the float model, measured once for every comparison."""
    return _mean_psnr(trained_edsr.module, set5_x2)


@pytest.fixture(scope="session")
def calibration_batch(shared_data: Path) -> torch.Tensor:
    """LR crops of two training photographs: calibration never sees the test images."""
    crops = []
    for path in list_images(shared_data / "train" / "SunHays80")[:2]:
        hr = read_image(path)[:, :192, :192]
        crops.append(imresize(hr, scale=1 / SCALE).clamp(0, 1))
    return torch.stack(crops)

"""A small trained EDSR and real Set5 images for the quantization tests.

The accuracy tests compare a fake-quant model with its float version, which only means something
if the float model has learned to super-resolve: a random network's output is noise that any
quantiser reproduces "within 0.1 dB". The fixture therefore trains a tiny EDSR x2 on real
photographs until it beats bicubic on Set5, and the test checks that it does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from srcompress.data.images import list_images, read_image
from srcompress.data.training import PatchBatches, TrainingImage, TrainingImages, make_lr
from srcompress.metrics import psnr, to_uint8
from srcompress.models import LoadedModel
from srcompress.models.edsr import EDSR

SCALE = 2
TRAINING_IMAGES = 6
ITERATIONS = 160


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
def trained_edsr(shared_data: Path) -> LoadedModel:
    """EDSR x2 (16 features, 2 blocks) trained for a few seconds on real photographs."""
    torch.manual_seed(0)
    paths = list_images(shared_data / "train" / "SunHays80")[:TRAINING_IMAGES]
    images = []
    for path in paths:
        hr = (read_image(path)[:, :256, :256] * 255).round().to(torch.uint8)
        images.append(TrainingImage(path.name, hr, make_lr(hr, SCALE)))
    batches = PatchBatches(TrainingImages(images, SCALE), patch_size=24, batch_size=8, seed=0)
    settings = {"num_feat": 16, "num_block": 2}
    model = EDSR(scale=SCALE, **settings)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for iteration in range(ITERATIONS):
        lr, hr = batches[iteration]
        loss = (model(lr) - hr).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return LoadedModel(model.eval(), "edsr", settings, SCALE, {}, "trained in tests/quant")

"""Tiny real models and real image patches for the method tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from srcompress.data.images import read_image
from srcompress.data.resize import imresize
from srcompress.methods import Batch
from srcompress.models.edsr import EDSR

SET5_HR = Path(__file__).resolve().parents[3] / "shared" / "data" / "benchmarks" / "Set5" / "HR"


@pytest.fixture(scope="session")
def set5_images() -> list[Tensor]:
    paths = sorted(SET5_HR.glob("*.png")) if SET5_HR.is_dir() else []
    if not paths:
        pytest.skip(f"real test images not found: no Set5 PNGs in {SET5_HR} "
                    f"(see ../shared/data/README.md)")
    return [read_image(path) for path in paths]


@pytest.fixture
def make_batch(set5_images: list[Tensor]) -> Callable[..., Batch]:
    """`make_batch(scale, lr_size, count)`: HR patches cut from Set5 at spread-out places, with
    their LR made by our MATLAB-style bicubic, as the training data loader does."""

    def make(scale: int = 2, lr_size: int = 16, count: int = 4) -> Batch:
        hr_size = scale * lr_size
        patches = []
        for index in range(count):
            image = set5_images[index % len(set5_images)]
            top = (37 * (index + 1)) % (image.shape[1] - hr_size)
            left = (53 * (index + 2)) % (image.shape[2] - hr_size)
            patches.append(image[:, top:top + hr_size, left:left + hr_size])
        hr = torch.stack(patches)
        return Batch(imresize(hr, scale=1 / scale), hr, scale)

    return make


@pytest.fixture
def make_pair() -> Callable[[int], tuple[nn.Module, nn.Module]]:
    """`make_pair(scale)`: a tiny EDSR student and a bigger one as the frozen (eval) teacher."""

    def make(scale: int = 2) -> tuple[nn.Module, nn.Module]:
        torch.manual_seed(1234)
        student = EDSR(scale=scale, num_feat=8, num_block=1)
        teacher = EDSR(scale=scale, num_feat=16, num_block=2).eval()
        return student, teacher

    return make


class SGDStep:
    """The training loop's StepFn in its simplest form, recording each call's `clear_grad`."""

    def __init__(self, module: nn.Module, lr: float = 0.01) -> None:
        self.optimizer = torch.optim.SGD(module.parameters(), lr=lr)
        self.clear_grad_calls: list[bool] = []

    def __call__(self, loss: Tensor, *, clear_grad: bool = True) -> None:
        loss.backward()
        self.optimizer.step()
        if clear_grad:
            self.optimizer.zero_grad()
        self.clear_grad_calls.append(clear_grad)


class CallRecorder:
    """Counts a module's forward calls and the input shape of each, with a forward hook."""

    def __init__(self, module: nn.Module) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.handle = module.register_forward_hook(self._record)

    def _record(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        self.shapes.append(tuple(args[0].shape))

    @property
    def pixels(self) -> int:
        return sum(shape[0] * shape[2] * shape[3] for shape in self.shapes)


@pytest.fixture
def make_step() -> type[SGDStep]:
    return SGDStep


@pytest.fixture
def record_calls() -> type[CallRecorder]:
    return CallRecorder

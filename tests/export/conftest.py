"""Tiny students of each exported family, and real Set5 images to export and run them on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from srcompress.data.images import read_image
from srcompress.models import LoadedModel, build_model

# Small enough to export and verify in seconds on a shared CPU, but each keeps its family's
# structure: EDSR/RCAN residual blocks (RCAN's channel attention), SwinIR's shifted windows with
# window padding (window 8, two blocks so one is shifted), ESRGAN's RRDB dense connections.
STUDENT_SPECS = {
    "edsr": "edsr:num_feat=16,num_block=2",
    "rcan": "rcan:num_feat=16,num_group=1,num_block=2,squeeze_factor=4",
    "swinir": "swinir:embed_dim=12,depths=[2],num_heads=[2],window_size=8,mlp_ratio=2.0,"
              "upsampler=pixelshuffle,img_size=64",
    "esrgan": "esrgan:num_filters=8,num_blocks=1",
}

StudentFactory = Callable[..., LoadedModel]


def _build_student(family: str, scale: int = 2, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    return build_model(STUDENT_SPECS[family], scale)


@pytest.fixture(scope="session")
def tiny_student() -> StudentFactory:
    """`tiny_student(family, scale=2, seed=0)`: a fresh student built through the registry."""
    return _build_student


@pytest.fixture(scope="session")
def set5(shared_data: Path) -> Path:
    return shared_data / "benchmarks" / "Set5"


@pytest.fixture(scope="session")
def verify_image(set5: Path) -> Path:
    """A real HR photograph (288×288) to verify exports on instead of the shipped demo image."""
    return set5 / "HR" / "bird.png"


@pytest.fixture(scope="session")
def lr_images(set5: Path) -> dict[str, Tensor]:
    """Real MATLAB-made LR inputs of different sizes, as 1×3×h×w batches."""
    names = {"woman": "X4/womanx4.png",  # 86×57: neither side a multiple of 8
             "butterfly": "X4/butterflyx4.png",  # 64×64: a multiple of every window
             "head": "X3/headx3.png"}  # 93×93
    return {name: read_image(set5 / "LR_bicubic" / path)[None] for name, path in names.items()}

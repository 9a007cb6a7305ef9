"""Runners on a real image: tiling equals whole-image inference, self-ensemble, OOM retries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from srcompress.data.images import read_image
from srcompress.data.resize import imresize
from srcompress.errors import UserInputError
from srcompress.inference import BicubicRunner, TorchRunner, make_runner
from srcompress.models import build_model, save_model
from srcompress.models.edsr import EDSR


@pytest.fixture(scope="module")
def butterfly_lr(shared_data: Path) -> Tensor:
    """Set5's butterfly x4 LR input (64×64), as a 1×3×h×w batch."""
    lr_folder = shared_data / "benchmarks" / "Set5" / "LR_bicubic" / "X4"
    return read_image(lr_folder / "butterflyx4.png")[None]


def small_edsr(scale: int = 2) -> EDSR:
    """Random but fixed weights: what matters here is the convolutional structure."""
    torch.manual_seed(0)
    return EDSR(scale=scale, num_feat=16, num_block=2)


def test_tiled_equals_whole_image_when_the_pad_covers_the_receptive_field(butterfly_lr) -> None:
    model = small_edsr()
    whole = TorchRunner(model, 2, "cpu")(butterfly_lr)
    tiled = TorchRunner(model, 2, "cpu", tile=24, tile_pad=10)(butterfly_lr)
    difference = (whole - tiled).abs().max().item()
    print(f"\nmax |tiled - whole| with tile 24, pad 10: {difference:.2e}")
    assert difference <= 1e-5
    unpadded = TorchRunner(model, 2, "cpu", tile=24, tile_pad=0)(butterfly_lr)
    assert (whole - unpadded).abs().max().item() > 1e-3


def test_self_ensemble_makes_the_model_rotation_equivariant(butterfly_lr) -> None:
    model = small_edsr()
    crop = butterfly_lr[..., :40, :48]
    plain = TorchRunner(model, 2, "cpu")
    ensemble = TorchRunner(model, 2, "cpu", self_ensemble=True)
    turned = torch.rot90(crop, 1, dims=(-2, -1))
    assert (torch.rot90(plain(crop), 1, dims=(-2, -1)) - plain(turned)).abs().max() > 1e-4
    equivariance_gap = torch.rot90(ensemble(crop), 1, dims=(-2, -1)) - ensemble(turned)
    assert equivariance_gap.abs().max() <= 1e-5
    assert ensemble(crop).shape == (1, 3, 80, 96)


class RunsOutOfMemoryAbove(nn.Module):
    """A real network that, like a GPU, fails with out-of-memory on inputs over `pixels`."""

    def __init__(self, inner: nn.Module, pixels: int) -> None:
        super().__init__()
        self.inner, self.pixels, self.sizes = inner, pixels, []

    def forward(self, x: Tensor) -> Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        if x.shape[-2] * x.shape[-1] > self.pixels:
            raise torch.OutOfMemoryError("simulated out of memory")
        return self.inner(x)


def test_out_of_memory_halves_the_tile_and_retries(butterfly_lr) -> None:
    model = small_edsr()
    limited = RunsOutOfMemoryAbove(model, pixels=40 * 40)
    runner = TorchRunner(limited, 2, "cpu", tile_pad=10)
    result = runner(butterfly_lr)
    assert runner.tile == 16
    torch.testing.assert_close(result, TorchRunner(model, 2, "cpu")(butterfly_lr), rtol=0,
                               atol=1e-5)
    # After the 32x32 probe that measures activation memory, the whole image is tried first.
    assert limited.sizes[:2] == [(32, 32), (64, 64)]


def test_training_mode_is_restored() -> None:
    model = small_edsr().train()
    TorchRunner(model, 2, "cpu")(torch.rand(1, 3, 8, 8))
    assert model.training


def test_bicubic_runner_is_imresize(butterfly_lr) -> None:
    runner = make_runner("bicubic", scale=4, device="cpu")
    assert isinstance(runner, BicubicRunner) and runner.name == "bicubic"
    torch.testing.assert_close(runner(butterfly_lr), imresize(butterfly_lr, scale=4))
    with pytest.raises(UserInputError, match="--scale"):
        make_runner("bicubic")


def test_checkpoint_runner_checks_the_scale(tmp_path: Path, butterfly_lr) -> None:
    path = save_model(tmp_path / "tiny.safetensors", build_model("edsr:num_feat=8,num_block=1", 2))
    runner = make_runner(path, device="cpu", tile=32)
    assert runner.scale == 2 and runner(butterfly_lr).shape == (1, 3, 128, 128)
    with pytest.raises(UserInputError, match="x2 but --scale is 4"):
        make_runner(path, scale=4, device="cpu")
    with pytest.raises(UserInputError, match="does not exist"):
        make_runner(tmp_path / "missing.safetensors")


def test_bad_options_are_user_errors() -> None:
    model = small_edsr()
    with pytest.raises(UserInputError, match="--fp16"):
        TorchRunner(model, 2, "cpu", fp16=True)
    with pytest.raises(UserInputError, match="--tile"):
        TorchRunner(model, 2, "cpu", tile=0)
    with pytest.raises(UserInputError, match="--device"):
        make_runner(model, device="gpu7")
    with pytest.raises(UserInputError, match="not x4"):
        TorchRunner(model, 4, "cpu")(torch.rand(1, 3, 8, 8))

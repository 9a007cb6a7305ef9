"""Training patches: aligned LR/HR pairs from real images, reproducible per (seed, iteration)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from srcompress.data.images import read_image
from srcompress.data.resize import imresize
from srcompress.data.training import (
    PatchBatches,
    augment,
    load_training_images,
    make_lr,
    patch_loader,
    to_uint8,
)
from srcompress.demo import demo_data_folder
from srcompress.errors import UserInputError

SCALE = 2


@pytest.fixture(scope="module")
def demo_images():
    return load_training_images([demo_data_folder()], SCALE, patch_size=24)


def test_lr_is_the_rounded_matlab_bicubic_of_the_whole_cropped_image(demo_images) -> None:
    image = demo_images.images[0]
    hr = to_uint8(read_image(image.name))[:, :image.hr.shape[1], :image.hr.shape[2]]
    assert torch.equal(image.hr, hr)
    assert image.hr.shape[1] % SCALE == 0 and image.hr.shape[2] % SCALE == 0
    expected = to_uint8(imresize(hr.float() / 255, scale=1 / SCALE))
    assert torch.equal(image.lr, expected)


def test_patches_are_aligned_through_flips_and_transposes(demo_images) -> None:
    batches = PatchBatches(demo_images, patch_size=24, batch_size=16, seed=3)
    lr, hr, placements = batches[5]
    assert lr.shape == (16, 3, 24, 24) and hr.shape == (16, 3, 48, 48)
    assert lr.dtype == torch.float32 and lr.min() >= 0 and lr.max() <= 1
    # The bicubic kernel of a x2 reduction spans 8 HR pixels, so LR pixels 2 or more from the
    # patch border depend only on HR pixels inside the patch and must match up to rounding.
    shrunk = imresize(hr, scale=1 / SCALE).clamp(0, 1)[..., 2:-2, 2:-2]
    assert (shrunk - lr[..., 2:-2, 2:-2]).abs().max() <= 0.5 / 255 + 1e-4
    misaligned = imresize(hr.flip(-1), scale=1 / SCALE)[..., 2:-2, 2:-2]
    assert (misaligned - lr[..., 2:-2, 2:-2]).abs().max() > 10 / 255
    # Each patch says where it came from: re-cropping its image there and flipping gives it back.
    assert placements.shape == (16, 4) and len(set(placements[:, 3].tolist())) > 1
    for patch, (index, top, left, flips) in zip(lr, placements.tolist(), strict=True):
        source = demo_images.images[index].lr[:, top:top + 24, left:left + 24]
        assert torch.equal(patch, augment(source, flips).float() / 255)


def test_each_iteration_draws_its_own_reproducible_batch(demo_images) -> None:
    first = PatchBatches(demo_images, patch_size=16, batch_size=4, seed=3)
    again = PatchBatches(demo_images, patch_size=16, batch_size=4, seed=3)
    other_rank = PatchBatches(demo_images, patch_size=16, batch_size=4, seed=3, rank=1)
    assert torch.equal(first[7][1], again[7][1])
    assert not torch.equal(first[7][1], first[8][1])
    assert not torch.equal(first[7][1], other_rank[7][1])


def test_loader_workers_do_not_change_the_data(demo_images) -> None:
    batches = PatchBatches(demo_images, patch_size=16, batch_size=2, seed=1)
    in_process = [hr for _, hr, _ in patch_loader(batches, 3, 7, workers=0)]
    with_workers = [hr for _, hr, _ in patch_loader(batches, 3, 7, workers=2)]
    resumed = [hr for _, hr, _ in patch_loader(batches, 5, 7, workers=0)]
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_workers, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(in_process[2:], resumed, strict=True))


def test_paired_folder_uses_the_stored_lr_files(benchmarks_root: Path, tmp_path: Path) -> None:
    set5 = benchmarks_root / "Set5"
    shutil.copytree(set5 / "HR", tmp_path / "HR")
    shutil.copytree(set5 / "LR_bicubic" / "X2", tmp_path / "LR_bicubic" / "X2")
    paired = load_training_images([tmp_path], SCALE, patch_size=32)
    assert len(paired.images) == 5
    for image in paired.images:
        lr_file = tmp_path / "LR_bicubic" / "X2" / f"{Path(image.name).stem}x2.png"
        stored = to_uint8(read_image(lr_file))
        assert torch.equal(image.lr, stored)
        assert image.hr.shape[1:] == (stored.shape[1] * 2, stored.shape[2] * 2)
        # MATLAB's LR files differ from our port by at most a couple of grey levels.
        assert (image.lr.int() - make_lr(image.hr, SCALE).int()).abs().max() <= 2


def test_missing_scale_folder_of_a_paired_layout(benchmarks_root: Path, tmp_path: Path) -> None:
    shutil.copytree(benchmarks_root / "Set5" / "HR", tmp_path / "HR")
    with pytest.raises(UserInputError, match=r"has HR/ but no LR_bicubic/X2/"):
        load_training_images([tmp_path], SCALE, patch_size=16)


def test_small_images_are_skipped_and_named_and_all_small_is_refused(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    shutil.copy(demo_data_folder() / "coffee.png", small / "coffee.png")
    data = load_training_images([small, demo_data_folder()], SCALE, patch_size=210)
    assert [Path(name.split(" ")[0]) for name in data.skipped] == [
        small / "coffee.png", demo_data_folder() / "coffee.png"]
    assert sorted(Path(image.name).name for image in data.images) == ["astronaut.png", "rocket.png"]
    with pytest.raises(UserInputError, match=r"smaller than one 400x400 LR patch .*coffee.png"):
        load_training_images([small], SCALE, patch_size=400)


def test_empty_and_missing_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"holds no images.*--train-data"):
        load_training_images([tmp_path], SCALE, patch_size=16)
    with pytest.raises(UserInputError, match=r"does not exist.*--train-data"):
        load_training_images([tmp_path / "nothing"], SCALE, patch_size=16)

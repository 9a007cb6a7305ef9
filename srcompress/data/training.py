"""Training data: folders of images → aligned random LR/HR patches, reproducible per iteration.

Two folder layouts are accepted:

- a folder of HR images; each image is cropped to a multiple of the scale and its LR image is made
  once, on the whole image, with the project's MATLAB-style bicubic `imresize`, then rounded to
  uint8 exactly as a stored LR file would be. Training on the rounded LR keeps training inputs in
  the same form as benchmark LR files and real 8-bit inputs;
- a paired folder, `HR/` + `LR_bicubic/X<s>/` (DIV2K and the benchmark layout), where LR files are
  named like their HR image, optionally with an `x<s>` suffix (`0001x4.png`).

Decoded images are kept in memory as uint8 (a quarter of float32), so patches cost a crop and a
flip. Images smaller than one patch are skipped and reported in `TrainingImages.skipped`; the
folders are refused only when no image is large enough, so one thumbnail in a large folder does
not stop a run.

Reproducibility: the patches of iteration `i` on process `rank` come from a generator seeded with
(seed, i, rank) alone. Any worker can therefore produce any batch, the number of loader workers
does not change the data, and a resumed run draws exactly the batches the uninterrupted run would.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from srcompress.data.images import list_images, read_image
from srcompress.data.resize import imresize
from srcompress.errors import UserInputError


@dataclass(frozen=True)
class TrainingImage:
    """One training pair kept in memory; `hr` is exactly `scale` times the size of `lr`."""

    name: str
    hr: Tensor  # 3×(s·h)×(s·w) uint8
    lr: Tensor  # 3×h×w uint8


@dataclass
class TrainingImages:
    images: list[TrainingImage]
    scale: int
    skipped: list[str] = field(default_factory=list)


def to_uint8(image: Tensor) -> Tensor:
    """Float [0, 1] → uint8 with rounding, the way an 8-bit image file stores it."""
    return image.clamp(0, 1).mul(255).round().to(torch.uint8)


def make_lr(hr: Tensor, scale: int) -> Tensor:
    """The uint8 LR image of a uint8 HR image whose sides are multiples of `scale`."""
    return to_uint8(imresize(hr.float().div(255), scale=1 / scale))


def load_training_images(folders: Sequence[str | Path], scale: int,
                         patch_size: int) -> TrainingImages:
    """Decode every image of `folders` into memory, ready for patch sampling at `scale`."""
    if not folders:
        raise UserInputError("No training data was given: pass --train-data DIR.")
    images: list[TrainingImage] = []
    skipped: list[str] = []
    for folder in map(Path, folders):
        for image in _read_folder(folder, scale):
            if min(image.lr.shape[1:]) < patch_size:
                skipped.append(f"{image.name} ({image.lr.shape[2]}x{image.lr.shape[1]} LR pixels)")
            else:
                images.append(image)
    if not images:
        names = ", ".join(skipped)
        raise UserInputError(
            f"Every training image is smaller than one {patch_size}x{patch_size} LR patch at "
            f"scale x{scale} ({names}): use larger images or a smaller --patch-size.")
    return TrainingImages(images, scale, skipped)


def _read_folder(folder: Path, scale: int) -> list[TrainingImage]:
    if folder.is_file():
        raise UserInputError(f"--train-data {folder} is a file: pass the folder that holds the "
                             "training images.")
    if not folder.is_dir():
        raise UserInputError(
            f"The training data folder {folder} does not exist: check --train-data.")
    if (folder / "HR").is_dir():
        return _read_paired(folder, scale)
    paths = _images_in(folder)
    pairs = []
    for path in paths:
        hr = _read_uint8(path)
        height, width = (hr.shape[1] // scale) * scale, (hr.shape[2] // scale) * scale
        if height == 0 or width == 0:
            raise UserInputError(f"The training image {path} is smaller than the scale x{scale}.")
        hr = hr[:, :height, :width].contiguous()
        pairs.append(TrainingImage(str(path), hr, make_lr(hr, scale)))
    return pairs


def _read_paired(folder: Path, scale: int) -> list[TrainingImage]:
    lr_folder = folder / "LR_bicubic" / f"X{scale}"
    if not lr_folder.is_dir():
        raise UserInputError(
            f"The paired training folder {folder} has HR/ but no LR_bicubic/X{scale}/: add the x"
            f"{scale} LR images or pass a folder of HR images only.")
    lr_by_stem = {_strip_scale_suffix(path.stem, scale): path for path in _images_in(lr_folder)}
    pairs = []
    for hr_path in _images_in(folder / "HR"):
        lr_path = lr_by_stem.get(hr_path.stem)
        if lr_path is None:
            raise UserInputError(
                f"The HR image {hr_path} has no LR image in {lr_folder}: name it {hr_path.stem}"
                f"x{scale}.png or {hr_path.name}.")
        hr, lr = _read_uint8(hr_path), _read_uint8(lr_path)
        height, width = lr.shape[1] * scale, lr.shape[2] * scale
        if hr.shape[1] < height or hr.shape[2] < width or hr.shape[1] - height >= scale \
                or hr.shape[2] - width >= scale:
            raise UserInputError(
                f"The LR image {lr_path} ({lr.shape[2]}x{lr.shape[1]}) is not the x{scale} "
                f"reduction of {hr_path} ({hr.shape[2]}x{hr.shape[1]}): check the scale folder.")
        pairs.append(TrainingImage(str(hr_path), hr[:, :height, :width].contiguous(), lr))
    return pairs


def _images_in(folder: Path) -> list[Path]:
    try:
        return list_images(folder)
    except UserInputError:
        raise UserInputError(f"The training data folder {folder} holds no images: add PNG or "
                             "JPEG files, or pass another --train-data.") from None


def _strip_scale_suffix(stem: str, scale: int) -> str:
    return re.sub(rf"x{scale}$", "", stem, flags=re.IGNORECASE)


def _read_uint8(path: Path) -> Tensor:
    return to_uint8(read_image(path))


def iteration_seed(seed: int, iteration: int, rank: int, stream: int = 0) -> int:
    """A well-mixed 63-bit seed for one (run seed, iteration, process, purpose) combination."""
    state = np.random.SeedSequence([seed, iteration, rank, stream]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class PatchBatches(Dataset):
    """Item `i` is the whole training batch of iteration `i`: (lr B×3×p×p, hr B×3×sp×sp) float,
    and where each patch came from, B×4 int64 (image index, LR top, LR left, `augment` flips), which
    the teacher cache needs to crop the teacher's outputs aligned with the patch.

    A batch is one item (not B items) so that it depends only on (seed, i, rank), whichever loader
    worker makes it.
    """

    def __init__(self, data: TrainingImages, patch_size: int, batch_size: int, seed: int,
                 rank: int = 0, augment: bool = True) -> None:
        self.images = data.images
        self.scale = data.scale
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.augment = augment

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, iteration: int) -> tuple[Tensor, Tensor, Tensor]:
        generator = torch.Generator().manual_seed(iteration_seed(self.seed, iteration, self.rank))
        lrs, hrs, placements = [], [], []
        for _ in range(self.batch_size):
            lr, hr, placement = self._patch(generator)
            lrs.append(lr)
            hrs.append(hr)
            placements.append(placement)
        return (torch.stack(lrs).float().div_(255), torch.stack(hrs).float().div_(255),
                torch.tensor(placements, dtype=torch.int64))

    def _patch(self, generator: torch.Generator) -> tuple[Tensor, Tensor, list[int]]:
        def draw(high: int) -> int:
            return int(torch.randint(high, (1,), generator=generator))

        index = draw(len(self.images))
        image = self.images[index]
        size, scale = self.patch_size, self.scale
        top, left = draw(image.lr.shape[1] - size + 1), draw(image.lr.shape[2] - size + 1)
        lr = image.lr[:, top:top + size, left:left + size]
        hr = image.hr[:, top * scale:(top + size) * scale, left * scale:(left + size) * scale]
        flips = draw(8) if self.augment else 0
        return augment(lr, flips), augment(hr, flips), [index, top, left, flips]


def augment(images: Tensor, flips: int) -> Tensor:
    """One of the 8 flips/transposes of square patches (`flips` 0-7: bit 0 mirrors left-right,
    bit 1 top-bottom, bit 2 transposes, applied in that order) on the last two axes.

    Shared by the patch sampler and the teacher cache, which applies the same operation to the
    teacher's output on the un-flipped patch.
    """
    if flips & 1:
        images = images.flip(-1)
    if flips & 2:
        images = images.flip(-2)
    if flips & 4:
        images = images.transpose(-2, -1)
    return images


def patch_loader(batches: PatchBatches, start: int, stop: int, workers: int,
                 pin_memory: bool = False,
                 worker_init_fn: Callable[[int], None] | None = None) -> DataLoader:
    """Batches of iterations `start` … `stop - 1`, made by `workers` background processes."""
    return DataLoader(batches, batch_size=None, sampler=range(start, stop), num_workers=workers,
                      pin_memory=pin_memory, prefetch_factor=4 if workers > 0 else None,
                      worker_init_fn=worker_init_fn)


def memory_bytes(data: TrainingImages) -> int:
    """Bytes the decoded images hold (reported to the user, who may be near the RAM limit)."""
    return sum(math.prod(image.hr.shape) + math.prod(image.lr.shape) for image in data.images)

"""The teacher-output cache: its crops are exactly the teacher's whole-image outputs cut where each
patch came from (float32 storage), and a cache is never used for another teacher, other images,
another scale or a random degradation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from srcompress import models
from srcompress.data.resize import imresize
from srcompress.data.training import PatchBatches, augment, load_training_images
from srcompress.demo import demo_data_folder
from srcompress.errors import UserInputError
from srcompress.train.teacher_cache import (
    PARTS,
    TeacherCacheChanged,
    choose_parts,
    open_teacher_cache,
)

SCALE, PATCH = 2, 16
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def teacher() -> models.LoadedModel:
    torch.manual_seed(99)
    return models.build_model("edsr:num_feat=8,num_block=1", SCALE)


@pytest.fixture(scope="module")
def data():
    """Two of the shipped demo photographs (real images, always present)."""
    loaded = load_training_images([demo_data_folder()], SCALE, PATCH)
    loaded.images = loaded.images[:2]
    return loaded


def _open(folder: Path, teacher, data, **options):
    return open_teacher_cache(folder, teacher.module, teacher.arch, teacher.settings, data,
                              PARTS, PATCH, CPU, **options)


@pytest.fixture(scope="module")
def float32_cache(tmp_path_factory: pytest.TempPathFactory, teacher, data):
    return _open(tmp_path_factory.mktemp("cache"), teacher, data, storage="float32")


def _teacher(teacher, image: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return teacher.module.eval()(image[None])[0]


def test_cached_targets_are_the_whole_image_outputs_cropped_exactly(float32_cache, teacher,
                                                                     data) -> None:
    plan = float32_cache
    assert plan.used == PARTS and plan.online == ()
    lr, _, placements = PatchBatches(data, PATCH, batch_size=8, seed=5)[3]
    assert len(set(placements[:, 3].tolist())) > 2, "the batch should mix several flips"
    tiles = torch.tensor([[0, 3], [1, 2], [2, 1], [3, 0], [0, 1], [1, 3], [2, 0], [3, 2]])
    targets = plan.cache.batch(placements, PATCH, PARTS, CPU)
    pairs, zoom_in = targets.pairs(), targets.zoom_in(tiles)
    zoom_out_input, zoom_out = targets.zoom_out_input(), targets.zoom_out()
    s, p = SCALE, PATCH
    for b, (index, top, left, flips) in enumerate(placements.tolist()):
        image = data.images[index]
        whole_lr = image.lr.float() / 255
        expected = _teacher(teacher, whole_lr)[:, s * top:s * (top + p), s * left:s * (left + p)]
        assert torch.equal(pairs[b], augment(expected, flips))

        # Zoom-in: the teacher on the whole HR image, cut to the patch, flipped as the patch
        # was, then tile t of that flipped patch, as DUKD cuts tiles from the flipped HR patch.
        region = _teacher(teacher, image.hr.float() / 255)[
            :, s * s * top:s * s * (top + p), s * s * left:s * s * (left + p)]
        flipped = augment(region, flips)
        for j, tile in enumerate(tiles[b].tolist()):
            row, column = divmod(tile, s)
            cut = flipped[:, row * s * p:(row + 1) * s * p, column * s * p:(column + 1) * s * p]
            assert torch.equal(zoom_in[b * 2 + j], cut)

        # Zoom-out: the whole LR image shrunk from the patch's phase, its teacher output.
        shrunk = imresize(whole_lr[None, :, top % s:, left % s:], scale=1 / s)[0]
        corner = (top // s, left // s)
        expected_input = shrunk[:, corner[0]:corner[0] + p // s, corner[1]:corner[1] + p // s]
        assert torch.equal(zoom_out_input[b], augment(expected_input, flips))
        expected_output = _teacher(teacher, shrunk)[
            :, s * corner[0]:s * corner[0] + p, s * corner[1]:s * corner[1] + p]
        assert torch.equal(zoom_out[b], augment(expected_output, flips))
    # The patch itself is where the cache says it is, and its zoom-out input is what DUKD would
    # make online away from the patch border (the shrink kernel reaches 2 pixels over it).
    assert torch.equal(lr, torch.stack([augment(
        data.images[i].lr[:, y:y + p, x:x + p], f).float() / 255
        for i, y, x, f in placements.tolist()]))
    online = imresize(lr, scale=1 / s)
    assert (online[..., 2:-2, 2:-2] - zoom_out_input[..., 2:-2, 2:-2]).abs().max() < 1e-5


def test_the_cached_target_differs_from_the_teacher_on_the_patch_alone(float32_cache, teacher,
                                                                      data) -> None:
    """Whole-image context: equal in the patch's middle, different at its border."""
    lr, _, placements = PatchBatches(data, PATCH, batch_size=4, seed=1, augment=False)[0]
    cached = float32_cache.cache.batch(placements, PATCH, PARTS, CPU).pairs()
    with torch.inference_mode():
        alone = teacher.module(lr)
    margin = 12  # edsr 8x1: five 3x3 convolutions at LR and one at SR size reach 11 SR pixels
    assert (cached - alone)[..., margin:-margin, margin:-margin].abs().max() < 1e-5
    assert (cached - alone)[..., :2, :].abs().max() > 1e-3


def test_float16_storage_rounds_to_half_precision(tmp_path: Path, float32_cache, teacher,
                                                  data) -> None:
    half = _open(tmp_path, teacher, data)
    assert half.cache.storage == "float16"
    _, _, placements = PatchBatches(data, PATCH, batch_size=4, seed=2)[0]
    exact = float32_cache.cache.batch(placements, PATCH, PARTS, CPU).pairs()
    stored = half.cache.batch(placements, PATCH, PARTS, CPU).pairs()
    assert torch.equal(stored, exact.half().float())
    assert not torch.equal(stored, exact)


def test_an_existing_cache_is_reused_without_running_the_teacher(float32_cache, teacher,
                                                                 data) -> None:
    calls: list[tuple[int, int]] = []
    again = _open(float32_cache.cache.folder, teacher, data, storage="float16",
                  progress=lambda done, total: calls.append((done, total)))
    assert calls == [] and again.cache.storage == "float32"


@pytest.mark.parametrize("change", ["teacher", "images", "scale"])
def test_a_cache_is_refused_when_a_key_input_changes(change: str, float32_cache, teacher,
                                                     data) -> None:
    folder = float32_cache.cache.folder
    if change == "teacher":
        other = models.build_model("edsr:num_feat=8,num_block=1", SCALE)
        other.module.load_state_dict(teacher.module.state_dict())
        with torch.no_grad():
            other.module.conv_first.weight[0, 0, 0, 0] += 1e-3
        teacher, meaning = other, "another teacher"
    elif change == "images":
        changed = load_training_images([demo_data_folder()], SCALE, PATCH)
        changed.images = changed.images[:2]
        changed.images[1].hr[0, 10, 10] ^= 1
        data, meaning = changed, "other training images"
    else:
        teacher = models.build_model("edsr:num_feat=8,num_block=1", 3)
        data, meaning = load_training_images([demo_data_folder()], 3, PATCH), "another scale"
    before = sorted(path.stat().st_mtime_ns for path in folder.iterdir())
    with pytest.raises(UserInputError, match=f"was built for {meaning}"):
        _open(folder, teacher, data)
    assert sorted(path.stat().st_mtime_ns for path in folder.iterdir()) == before


def test_a_random_degradation_cannot_be_cached(tmp_path: Path, teacher, data) -> None:
    with pytest.raises(UserInputError, match="--degradation realesrgan draws new LR inputs"):
        _open(tmp_path, teacher, data, degradation="realesrgan")


def test_a_folder_of_other_files_is_not_taken_for_a_cache(tmp_path: Path, teacher, data) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="is not a teacher cache"):
        _open(tmp_path, teacher, data)


def test_what_does_not_fit_on_the_disk_runs_online(tmp_path: Path, teacher, data) -> None:
    sizes = {"pairs": 100, "zoom_out": 100, "zoom_in": 400}
    assert choose_parts(PARTS, sizes, 600) == (list(PARTS), "")
    chosen, reason = choose_parts(PARTS, sizes, 599)
    assert chosen == ["pairs", "zoom_out"] and reason.startswith("zoom-in would need")

    full = _open(tmp_path / "full", teacher, data)
    bytes_of = {part: sum(np.load(path, mmap_mode="r").nbytes for path in full.cache.folder.glob(
        f"{name}.npy")) for part, name in [("pairs", "pairs"), ("zoom_in", "zoom_in")]}
    plan = _open(tmp_path / "small", teacher, data,
                 disk_budget=bytes_of["pairs"] * 3 + bytes_of["pairs"] // 2)
    assert plan.used == ("pairs", "zoom_out") and plan.online == ("zoom_in",)
    assert "zoom-in online (zoom-in would need" in plan.describe()
    targets = plan.cache.batch(PatchBatches(data, PATCH, 2, seed=0)[0][2], PATCH, plan.used, CPU)
    assert targets.zoom_in(torch.zeros(2, 1, dtype=torch.int64)) is None
    with pytest.raises(UserInputError, match=r"needs .* for its pairs part but the disk has"):
        _open(tmp_path / "none", teacher, data, disk_budget=1000)


def test_a_truncated_or_deleted_file_is_noticed_before_it_is_read(tmp_path: Path, teacher,
                                                                   data) -> None:
    plan = _open(tmp_path, teacher, data, storage="float32")
    placements = PatchBatches(data, PATCH, 2, seed=0)[0][2]
    plan.cache.batch(placements, PATCH, PARTS, CPU)
    path = tmp_path / "zoom_in.npy"
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(TeacherCacheChanged, match=r"zoom_in\.npy was deleted or changed"):
        plan.cache.batch(placements, PATCH, PARTS, CPU)
    # The next run finds the damaged part and builds it again.
    calls: list[tuple[int, int]] = []
    again = _open(tmp_path, teacher, data, progress=lambda done, total: calls.append(done))
    assert again.used == PARTS and calls == [1, 2]
    (tmp_path / "pairs.npy").unlink()
    with pytest.raises(TeacherCacheChanged, match=r"pairs\.npy was deleted or changed"):
        again.cache.batch(placements, PATCH, PARTS, CPU)

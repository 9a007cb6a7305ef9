"""Real-world runs: degraded inputs on the device, DUKD's upcycled inputs, the run's record of its
degradation, bit-exact resume, and the teacher's task."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from srcompress import models
from srcompress.data.degradation import (
    DegradationRandom,
    RealESRGANDegradation,
    RealESRGANOptions,
)
from srcompress.data.resize import imresize
from srcompress.data.training import PatchBatches, load_training_images
from srcompress.demo import demo_data_folder
from srcompress.errors import UserInputError
from srcompress.methods import create_method
from srcompress.methods.base import Batch
from srcompress.train.distill import distill
from srcompress.train.loop import DEGRADATION_STREAM, training_batch
from srcompress.train.quantize import quantize

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

TINY = {"student": "edsr:num_feat=8,num_block=1", "batch_size": 2, "patch_size": 16,
        "workers": 0, "device": "cpu", "val_benchmarks": []}


@pytest.fixture(scope="module")
def patches() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_training_images([demo_data_folder()], 2, 16)
    lr, hr, _ = PatchBatches(data, 16, 3, seed=0)[0]
    return lr, hr


def test_pairs_are_the_hr_patches_degraded_from_seed_iteration_and_rank(patches) -> None:
    lr, hr = patches
    degradation = RealESRGANDegradation()
    batch = training_batch(lr, hr, 2, degradation, seed=5, iteration=9, rank=1)
    expected = degradation.degrade(hr, 2, DegradationRandom((5, 9, 1, DEGRADATION_STREAM)))
    assert torch.equal(batch.lr, expected) and torch.equal(batch.clean_lr, lr)
    assert not torch.equal(batch.lr, lr)
    other = training_batch(lr, hr, 2, degradation, seed=5, iteration=10, rank=1)
    assert not torch.equal(other.lr, batch.lr)
    assert torch.equal(training_batch(lr, hr, 2, None, 5, 9, 1).lr, lr)


class Recorder(torch.nn.Module):
    """A bicubic 'network' that records every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.inputs.append(images.detach().clone())
        return imresize(images, scale=2)


def test_dukd_degrades_its_upcycled_inputs_and_both_networks_see_them(patches) -> None:
    """Pairs: D(y); zoom-in: D(bicubic×s(tile)); zoom-out: D(clean LR) with the clean LR as its
    ground truth; teacher and student get the same inputs (LCR off, so no transform between)."""
    lr, hr = patches
    degradation = RealESRGANDegradation()

    def setup():
        torch.manual_seed(0)
        method = create_method("dukd", lcr_prob=0.0)
        method.reseed(3)
        return method, training_batch(lr, hr, 2, degradation, seed=1, iteration=0, rank=0)

    method, batch = setup()
    upcycled = method.upcycle(batch)
    random = DegradationRandom((1, 0, 0, DEGRADATION_STREAM))
    pairs = degradation.degrade(hr, 2, random)
    tiles = torch.stack([hr[b].unflatten(1, (2, 16)).unflatten(3, (2, 16))[
        :, int(cell) // 2, :, int(cell) % 2, :] for b, cell in enumerate(upcycled.tiles[:, 0])])
    zoom_in = degradation.degrade(imresize(tiles, scale=2), 2, random)
    zoom_out = degradation.degrade(lr, 2, random)
    assert torch.equal(batch.lr, pairs)
    assert torch.equal(upcycled.zoom_in, zoom_in) and zoom_in.shape == lr.shape
    assert torch.equal(upcycled.zoom_out, zoom_out) and zoom_out.shape == (3, 3, 8, 8)
    assert torch.equal(upcycled.zoom_out_target, lr)

    method, batch = setup()
    teacher, student = Recorder().eval(), Recorder()
    terms = method.losses(batch, student, teacher)
    assert {"rec", "kd", "zoom_in", "zoom_out_rec", "zoom_out_kd"} == terms.keys()
    teacher_inputs = {tuple(t.shape): t for t in teacher.inputs}
    assert torch.equal(teacher_inputs[(6, 3, 16, 16)], torch.cat([pairs, zoom_in]))
    assert torch.equal(teacher_inputs[(3, 3, 8, 8)], zoom_out)
    assert [tuple(t.shape) for t in student.inputs] == [(3, 3, 16, 16)] * 2 + [(3, 3, 8, 8)]
    assert torch.equal(student.inputs[0], pairs) and torch.equal(student.inputs[1], zoom_in)
    assert torch.equal(student.inputs[2], zoom_out)


def test_bicubic_batches_keep_dukd_as_it_was(patches) -> None:
    lr, hr = patches
    method = create_method("dukd")
    method.reseed(3)
    upcycled = method.upcycle(Batch(lr, hr, 2))
    assert torch.equal(upcycled.zoom_out, imresize(lr, scale=0.5))
    assert torch.equal(upcycled.zoom_out_target, lr)


def test_resume_is_bit_exact_with_realesrgan(tiny_teacher: Path, tmp_path: Path) -> None:
    """Stopped after 3 iterations and resumed to 6 = 6 iterations in one go (constant learning
    rate, so the shorter first run follows the same schedule)."""
    common = {**TINY, "seed": 4, "method": "dukd", "degradation": "realesrgan", "save_every": 2,
              "milestones": [0.99]}
    whole = distill(tiny_teacher, **common, iters=6, output=tmp_path / "whole")
    distill(tiny_teacher, **common, iters=3, output=tmp_path / "split")
    resumed = distill(tiny_teacher, **common, iters=6, output=tmp_path / "split", resume=True)
    first, second = load_file(whole.student), load_file(resumed.student)
    assert all(torch.equal(first[key], second[key]) for key in first)
    bicubic = distill(tiny_teacher, **{**common, "degradation": "bicubic"}, iters=6,
                      output=tmp_path / "bicubic")
    other = load_file(bicubic.student)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_config_and_weights_record_the_degradation(tiny_teacher: Path, tmp_path: Path) -> None:
    settings = tmp_path / "mild.toml"
    settings.write_text("noise_range = [1, 5]\njpeg_range = [80, 95]\n")
    run = distill(tiny_teacher, **TINY, iters=2, degradation=settings, output=tmp_path / "run")
    config = tomllib.loads((run.output / "config.toml").read_text())
    expected = RealESRGANOptions(noise_range=(1.0, 5.0), jpeg_range=(80, 95)).as_dict()
    assert config["degradation"] == expected
    with safe_open(run.student, "pt") as handle:
        assert json.loads(handle.metadata()["degradation"]) == expected
    settings.write_text("noise_range = [1, 20]\n")
    with pytest.raises(UserInputError, match=r"--degradation .* differs from the run"):
        distill(tiny_teacher, **TINY, iters=4, degradation=settings, output=run.output,
                resume=True)
    preset = distill(tiny_teacher, **TINY, iters=1, degradation="realesrgan",
                     output=tmp_path / "preset")
    assert tomllib.loads((preset.output / "config.toml").read_text())["degradation"] == (
        "realesrgan")
    assert models.load_model(preset.student).metadata["degradation"] == "realesrgan"
    assert models.model_task(models.load_model(preset.student)).degradation == "realesrgan"


def test_a_student_of_a_real_world_run_teaches_real_world_inputs(tiny_teacher: Path,
                                                                 tmp_path: Path) -> None:
    first = distill(tiny_teacher, **TINY, iters=1, degradation="realesrgan",
                    output=tmp_path / "first")
    second = distill(first.student, **TINY, iters=1, output=tmp_path / "second")
    assert tomllib.loads((second.output / "config.toml").read_text())["degradation"] == (
        "realesrgan")


class Messages:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)

    def start(self, *args) -> None: ...
    def advance(self, *args) -> None: ...
    def validated(self, *args) -> None: ...
    def finish(self) -> None: ...


@pytest.mark.parametrize("arch", ["compact:num_feat=8,num_conv=2",
                                  "esrgan:num_filters=8,num_blocks=1"])
def test_real_world_architectures_warn_about_bicubic_inputs(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.safetensors"
    loaded = models.build_model(arch, 2)
    models.save_model(teacher, loaded)
    assert models.model_task(models.load_model(teacher)).real_world
    messages = Messages()
    distill(teacher, **TINY, iters=1, output=tmp_path / "warned", reporter=messages)
    (warning,) = [line for line in messages.lines
                  if line.startswith("Warning:") and "bicubic inputs" in line]
    assert "--degradation realesrgan" in warning
    chosen = Messages()
    distill(teacher, **TINY, iters=1, degradation="bicubic", output=tmp_path / "chosen",
            reporter=chosen)
    assert not [line for line in chosen.lines
                if line.startswith("Warning:") and "bicubic inputs" in line]


def test_bad_degradation_values_are_refused(tiny_teacher: Path, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="--degradation must be bicubic, realesrgan"):
        distill(tiny_teacher, **TINY, iters=1, degradation="jpeg", output=tmp_path / "a")
    config = tmp_path / "config.toml"
    config.write_text("degradation = 4\n")
    with pytest.raises(UserInputError, match="degradation must be a string or a table"):
        distill(tiny_teacher, **TINY, iters=1, config=config, output=tmp_path / "b")
    config.write_text("[degradation]\nsinc_prob = 2\n")
    with pytest.raises(UserInputError, match="sinc_prob must be a probability"):
        distill(tiny_teacher, **TINY, iters=1, config=config, output=tmp_path / "c")


def test_quantize_calibrates_and_trains_on_the_models_task(tmp_path: Path) -> None:
    """A real-world student quantized without --degradation keeps its real-world inputs: the
    activation ranges calibrated on them differ from those calibrated on bicubic inputs (the
    learning rate is too small for training to move them)."""
    torch.manual_seed(0)
    float_model = tmp_path / "student.safetensors"
    models.save_model(float_model, models.build_model("edsr:num_feat=8,num_block=2", 2),
                      degradation="realesrgan")
    run = {"iters": 1, "batch_size": 2, "patch_size": 16, "workers": 0, "val_benchmarks": [],
           "device": "cpu", "calibration_batches": 2, "method": "none", "lr": 1e-12}
    messages = Messages()
    real_world = quantize(float_model, **run, output=tmp_path / "rw", reporter=messages)
    # Validated on training patches, degraded as training is: no note about benchmark inputs.
    assert not [line for line in messages.lines if line.startswith("Note: validation on")]
    bicubic = quantize(float_model, **run, degradation="bicubic", output=tmp_path / "bicubic")
    assert tomllib.loads((real_world.output / "config.toml").read_text())["degradation"] == (
        "realesrgan")
    assert models.load_model(real_world.weights).metadata["degradation"] == "realesrgan"
    ranges = [{key: value for key, value in load_file(result.weights).items()
               if key.endswith("act_unit")} for result in (real_world, bicubic)]
    assert ranges[0] and ranges[0].keys() == ranges[1].keys()
    assert any(not torch.equal(ranges[0][key], ranges[1][key]) for key in ranges[0])


def test_cli_info_shows_the_task_and_distill_refuses_a_bad_degradation(cli, tmp_path: Path,
                                                                       tiny_teacher: Path):
    compact = tmp_path / "compact.safetensors"
    models.save_model(compact, models.build_model("compact:num_feat=8,num_conv=2", 4))
    shown = cli("info", compact, "--json", "-")
    assert shown.exit_code == 0, shown.stderr
    task = json.loads(shown.stdout)["task"]
    assert task["real_world"] and task["degradation"] is None
    assert "real-world" in task["description"]
    refused = cli("distill", tiny_teacher, "--degradation", "gaussian", "--iters", "1",
                  "--output", tmp_path / "run")
    assert refused.exit_code == 2 and "--degradation must be" in refused.stderr
    assert not (tmp_path / "run").exists()
    help_text = cli("distill", "--help").stdout
    assert "--degradation" in help_text and "realesrgan" in help_text

"""`distill()` and `srcompress distill`: run folder, metadata, config, guards and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from srcompress import models
from srcompress.data.images import write_image
from srcompress.data.training import PatchBatches, load_training_images
from srcompress.demo import demo_data_folder
from srcompress.errors import UserInputError
from srcompress.evaluation import evaluate
from srcompress.methods import create_method
from srcompress.train.distill import distill
from srcompress.train.distributed import Distributed
from srcompress.train.loop import Reporter, Trainer, TrainSettings, learning_rate

TINY = {"student": "edsr:num_feat=8,num_block=1", "batch_size": 2, "patch_size": 16,
        "workers": 0, "device": "cpu"}
DEMO_VAL = str(demo_data_folder().parent / "val")


# 100 iterations at lr 5e-3 bring the tiny student from about 18.5 dB to within 2-4 dB of
# bicubic on the demo validation photograph (measured for seeds 0-5: 31.1-33.6 dB; seed 5:
# 32.0 dB, untrained 18.5 dB, bicubic 35.3 dB). The floors sit about 1.5 dB under that.
LEARNING_RUN = {"iters": 100, "lr": 5e-3, "seed": 5}
LEARNED_OVER_UNTRAINED_DB = 10.0
BICUBIC_GAP_DB = 4.5


@pytest.fixture(scope="module")
def finished_run(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("run") / "dukd"
    torch.set_num_threads(1)
    return distill(tiny_teacher, **TINY, **LEARNING_RUN, val_every=50, save_every=40,
                   val_benchmarks=[DEMO_VAL], output=output)


def _psnr(model: object, benchmark: str) -> float:
    return evaluate(model, [benchmark], scale=2, device="cpu")["results"][0]["psnr"]


def _untrained_student() -> torch.nn.Module:
    """The weights `distill` starts from: the same spec built after seeding with the run's seed."""
    torch.manual_seed(LEARNING_RUN["seed"])
    return models.build_model(TINY["student"], 2).module


def test_run_folder_holds_student_best_metrics_config_and_checkpoint(finished_run) -> None:
    output = finished_run.output
    assert finished_run.completed
    assert {path.name for path in output.iterdir()} == {
        "student.safetensors", "best.safetensors", "metrics.json", "config.toml", "checkpoints"}
    metrics = json.loads((output / "metrics.json").read_text())
    assert [entry["iteration"] for entry in metrics["validations"]] == [50, 100]
    assert metrics["best"]["mean_psnr"] == max(v["mean_psnr"] for v in metrics["validations"])
    assert {"rec", "kd", "zoom_in", "zoom_out_rec", "zoom_out_kd"} <= metrics["train"][-1].keys()

    student = models.load_model(output / "student.safetensors")
    assert (student.arch, student.scale) == ("edsr", 2)
    assert student.settings["num_feat"] == 8 and student.settings["num_block"] == 1
    with safe_open(output / "student.safetensors", "pt") as handle:
        metadata = handle.metadata()
    assert metadata["method"] == "dukd" and metadata["teacher"] == "teacher_x2.safetensors"
    assert json.loads(metadata["metrics"])["iteration"] == 100


def test_the_saved_student_learned(finished_run) -> None:
    """The final student (the EMA weights) beats its own initial weights by a wide margin and
    comes near bicubic, and the validation in metrics.json measured those saved weights."""
    trained = _psnr(finished_run.student, DEMO_VAL)
    untrained = _psnr(_untrained_student(), DEMO_VAL)
    bicubic = _psnr("bicubic", DEMO_VAL)
    assert trained > untrained + LEARNED_OVER_UNTRAINED_DB, (trained, untrained)
    assert trained > bicubic - BICUBIC_GAP_DB, (trained, bicubic)
    assert finished_run.metrics["validations"][-1]["results"]["val"]["psnr"] == pytest.approx(
        trained, abs=1e-6)


def test_config_toml_repeats_the_run_bit_exactly(finished_run, tmp_path: Path) -> None:
    again = distill(config=finished_run.output / "config.toml", output=tmp_path / "again")
    first = load_file(finished_run.output / "student.safetensors")
    second = load_file(again.student)
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_teacher_is_frozen_in_eval_mode_and_outside_the_optimiser(tiny_teacher: Path) -> None:
    teacher = models.load_model(tiny_teacher).module
    before = {key: value.clone() for key, value in teacher.state_dict().items()}
    student = models.build_model(TINY["student"], 2).module
    student_before = [p.detach().clone() for p in student.parameters()]
    data = load_training_images([demo_data_folder()], 2, 16)
    trainer = Trainer(student, teacher, create_method("dukd"), PatchBatches(data, 16, 2, seed=0),
                      TrainSettings(iters=3, lr=1e-3, ema=0.9, workers=0), torch.device("cpu"),
                      run=None, place=Distributed())
    assert trainer.train()
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised.isdisjoint(id(p) for p in teacher.parameters())
    assert optimised == {id(p) for p in student.parameters()}
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(student_before, student.parameters(),
                                                      strict=True))
    # The EMA copy is frozen (its values are checked step by step in test_loop.py).
    assert all(not p.requires_grad for p in trainer.ema.module.parameters())


class MetricsWatcher(Reporter):
    """Reads metrics.json from the run folder at every iteration, as a person watching would."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "metrics.json"
        self.seen: dict[int, tuple[int, list[int], list[int]] | None] = {}

    def advance(self, iteration: int, terms: dict[str, float], lr: float) -> None:
        metrics = json.loads(self.path.read_text()) if self.path.exists() else None
        self.seen[iteration] = None if metrics is None else (
            metrics["iteration"], [entry["iteration"] for entry in metrics["train"]],
            [entry["iteration"] for entry in metrics["validations"]])


def test_metrics_json_follows_the_run_at_every_log_and_validation(tiny_teacher: Path,
                                                                  tmp_path: Path) -> None:
    output = tmp_path / "run"
    watcher = MetricsWatcher(output)
    distill(tiny_teacher, **TINY, method="kd", iters=6, log_every=2, val_every=3, save_every=100,
            val_benchmarks=[DEMO_VAL], output=output, reporter=watcher)
    # The loop reports iteration i before it logs or validates i, so at i it shows i - 1.
    assert watcher.seen == {1: None, 2: None, 3: (2, [2], []), 4: (3, [2], [3]),
                            5: (4, [2, 4], [3]), 6: (4, [2, 4], [3])}
    final = json.loads((output / "metrics.json").read_text())
    assert final["iteration"] == 6 and [e["iteration"] for e in final["train"]] == [2, 4, 6]


def test_schedules_follow_the_iteration() -> None:
    multistep = TrainSettings(iters=100, lr=1e-4)
    assert [learning_rate(multistep, i) for i in (0, 39, 40, 79, 80)] == pytest.approx(
        [1e-4, 1e-4, 1e-5, 1e-5, 1e-6])
    cosine = TrainSettings(iters=100, lr=2e-4, schedule="cosine")
    assert learning_rate(cosine, 0) == pytest.approx(2e-4)
    assert learning_rate(cosine, 50) == pytest.approx(1e-4)


def test_diverging_loss_stops_with_one_sentence_and_keeps_the_checkpoint(
        tiny_teacher: Path, tmp_path: Path) -> None:
    output = tmp_path / "diverged"
    with pytest.raises(UserInputError, match=r"loss became (inf|nan) at iteration 2.*lower --lr.*"
                                             r"last good checkpoint .*last.pt is kept"):
        distill(tiny_teacher, **TINY, method="kd", iters=30, lr=1e6, ema=0.0, save_every=1,
                val_benchmarks=[], output=output)
    state = torch.load(output / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 1
    assert all(torch.isfinite(value).all() for value in state["student"].values())
    assert not (output / "student.safetensors").exists()


@pytest.mark.parametrize(("arguments", "expected"), [
    (["--scale", "3"], "upscales x2 but --scale is 3"),
    (["--student", "edsr:num_feat=8,scale=4"], "is for scale x4 but the run is x2"),
    (["--method", "nope"], "Unknown method 'nope'"),
    (["--train-data", "EMPTY"], "holds no images"),
    (["--train-data", "SMALL", "--patch-size", "48"], "smaller than one 48x48 LR patch"),
    (["--lr", "0"], "--lr must be a number above 0"),
    (["--n-sub", "0"], "Option 'n_sub' of method 'dukd' must be at least 1"),
    (["--method", "kd", "--n-sub", "2"], "Method 'kd' has no option 'n_sub'"),
    (["--val-benchmark", "NoSuchSet"], "Unknown benchmark 'NoSuchSet'"),
    (["--resume"], "--resume needs --output"),
])
def test_bad_inputs_exit_2_with_one_sentence(arguments: list[str], expected: str, cli,
                                             tiny_teacher: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "small").mkdir()
    small = load_training_images([demo_data_folder()], 2, 16).images[0].lr[:, :40, :40]
    write_image(tmp_path / "small" / "small.png", small.float() / 255)
    arguments = [{"EMPTY": tmp_path / "empty", "SMALL": tmp_path / "small"}.get(a, a)
                 for a in arguments]
    output = [] if "--resume" in arguments else ["--output", tmp_path / "run"]
    result = cli("distill", tiny_teacher, *arguments, *output, "--iters", "2",
                 "--device", "cpu", "--workers", "0")
    assert result.exit_code == 2, result.stderr
    assert expected in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists(), "a bad input must fail before the run folder is made"


def test_evaluate_takes_the_student_with_no_other_flag(finished_run, shared_data: Path, cli,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRCOMPRESS_DATA", str(shared_data / "benchmarks"))
    result = cli("evaluate", finished_run.student, "--benchmark", "Set5", "--json", "-")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["scale"] == 2 and report["results"][0]["images"] == 5
    # Set5 is harder for this student than the demo photograph: measured 27.4 dB, untrained
    # 12.0 dB, bicubic 33.7 dB.
    set5 = str(shared_data / "benchmarks" / "Set5")
    assert _psnr(_untrained_student(), set5) + 12 < report["results"][0]["psnr"] < 40



def test_config_file_is_overridden_by_arguments_and_checked(tiny_teacher: Path,
                                                           tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('iters = 3\nlr = 0.002\nmethod = "kd"\n[method_options]\nw_kd = 0.5\n')
    result = distill(tiny_teacher, **TINY, config=config, lr=0.001, val_benchmarks=[],
                     output=tmp_path / "run")
    written = (result.output / "config.toml").read_text()
    assert "iters = 3\n" in written and "lr = 0.001\n" in written and 'method = "kd"' in written
    assert "w_kd = 0.5\n" in written
    assert result.metrics["train"][-1]["iteration"] == 3
    config.write_text("iterations = 3\n")
    with pytest.raises(UserInputError, match=r"unknown key 'iterations'"):
        distill(tiny_teacher, config=config, output=tmp_path / "other")

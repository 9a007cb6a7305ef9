"""`distill --teacher-cache` and `--init` end to end: what the run says, bit-exact resume with a
cache, a cache file damaged mid-run, and warm starts across scales."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from srcompress import models
from srcompress.demo import demo_data_folder
from srcompress.errors import UserInputError, WorkFailedError
from srcompress.train.distill import distill
from srcompress.train.loop import Reporter
from srcompress.train.warm_start import warm_start

TINY = {"student": "edsr:num_feat=8,num_block=1", "batch_size": 2, "patch_size": 16,
        "workers": 0, "device": "cpu", "val_benchmarks": [], "method": "dukd", "seed": 3}


class Interrupt(Reporter):
    """Acts at one iteration: Ctrl-C (a clean, checkpointed stop) or any other `action`."""

    def __init__(self, at: int, action=None) -> None:
        self.at = at
        self.action = action or (lambda: os.kill(os.getpid(), signal.SIGINT))
        self.messages: list[str] = []

    def advance(self, iteration: int, terms: dict[str, float], lr: float) -> None:
        if iteration == self.at:
            self.action()

    def message(self, text: str) -> None:
        self.messages.append(text)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


@pytest.mark.slow
def test_a_cached_run_resumes_bit_exactly(tiny_teacher: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    whole = distill(tiny_teacher, **TINY, iters=6, output=tmp_path / "whole", teacher_cache=cache)
    stopped = distill(tiny_teacher, **TINY, iters=6, output=tmp_path / "resumed",
                      teacher_cache=cache, reporter=Interrupt(3))
    assert not stopped.completed and stopped.metrics["iteration"] == 3
    resumed = distill(tiny_teacher, **TINY, iters=6, output=tmp_path / "resumed",
                      teacher_cache=cache, resume=True)
    assert resumed.completed
    reference, again = _weights(whole.student), _weights(resumed.student)
    assert all(torch.equal(reference[key], again[key]) for key in reference)
    online = _weights(distill(tiny_teacher, **TINY, iters=6, output=tmp_path / "online").student)
    assert not all(torch.equal(reference[key], online[key]) for key in reference), \
        "the cache changed nothing: its targets were not used"


def test_the_first_lines_say_what_is_cached_and_the_passes(tiny_teacher: Path,
                                                           tmp_path: Path) -> None:
    reporter = Interrupt(at=-1)
    distill(tiny_teacher, **TINY, iters=2, output=tmp_path / "run", reporter=reporter,
            teacher_cache=tmp_path / "cache")
    building, first = reporter.messages[0], reporter.messages[1]
    assert building.startswith(f"Building the teacher cache in {tmp_path / 'cache'}: pairs, "
                               "zoom-out, zoom-in of 3 images, 0.0")
    assert "passes per LR pixel" in first
    assert first.endswith(f"teacher cache {tmp_path / 'cache'} (float16): pairs, zoom-out, "
                          "zoom-in cached")
    assert reporter.messages[2].startswith("Hint: at 0.0") and "--method kd" in reporter.messages[2]


def test_a_cache_file_truncated_mid_run_stops_with_one_sentence(tiny_teacher: Path,
                                                                tmp_path: Path) -> None:
    cache, output = tmp_path / "cache", tmp_path / "run"

    def truncate() -> None:
        with open(cache / "pairs.npy", "r+b") as handle:
            handle.truncate(1000)

    with pytest.raises(WorkFailedError) as failure:
        distill(tiny_teacher, **TINY, iters=6, output=output, teacher_cache=cache,
                reporter=Interrupt(2, truncate))
    message = str(failure.value)
    assert message == (f"The teacher cache file {cache / 'pairs.npy'} was deleted or changed "
                       "during the run, so training stopped at iteration 2 with a checkpoint: "
                       f"continue with --output {output} --resume, which rebuilds what is missing.")
    resumed = distill(tiny_teacher, **TINY, iters=6, output=output, teacher_cache=cache,
                      resume=True)
    assert resumed.completed and resumed.metrics["iteration"] == 6


def test_a_method_that_reads_teacher_features_refuses_the_cache(tiny_teacher: Path, tiny_run,
                                                               tmp_path: Path, cli) -> None:
    result = cli("distill", tiny_teacher, *tiny_run, "--iters", 2, "--method", "fitnet",
                 "--teacher-cache", tmp_path / "cache", "--output", tmp_path / "run")
    assert result.exit_code == 2
    assert "--method fitnet reads the teacher's features, which a teacher cache does not hold" \
        in result.stderr
    result = cli("distill", "--scale", 2, *tiny_run, "--iters", 2, "--method", "scratch",
                 "--teacher-cache", tmp_path / "cache", "--output", tmp_path / "scratch")
    assert result.exit_code == 2
    assert "--method scratch has no teacher: drop --teacher-cache" in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "scratch").exists()


def test_warm_start_from_x2_loads_all_but_the_upsampler(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x2 = models.build_model("edsr:num_feat=8,num_block=2", 2)
    models.save_model(tmp_path / "x2.safetensors", x2)
    x4 = models.build_model("edsr:num_feat=8,num_block=2", 4)
    fresh = {name: tensor.clone() for name, tensor in x4.module.state_dict().items()}
    report = warm_start(x4.module, "edsr", 4, tmp_path / "x2.safetensors")
    assert report.kept == ["upsample.0.weight", "upsample.0.bias", "upsample.2.weight",
                           "upsample.2.bias"]
    for name, tensor in x4.module.state_dict().items():
        source = x2.module.state_dict()[name] if name in report.loaded else fresh[name]
        assert torch.equal(tensor, source), name
    assert report.describe() == (
        f"Warm start from {tmp_path / 'x2.safetensors'} (x2): loaded conv_first, body (8 tensors), "
        "conv_after_body, conv_last; freshly initialised upsample (4 tensors).")
    # Same scale: the upsampler is loaded too; a wider student keeps what does not fit.
    same = models.build_model("edsr:num_feat=8,num_block=3", 2)
    assert warm_start(same.module, "edsr", 2, tmp_path / "x2.safetensors").kept == [
        "body.2.conv1.weight", "body.2.conv1.bias", "body.2.conv2.weight", "body.2.conv2.bias"]
    # Another width shares only the output conv's 3-value bias: nothing to start from.
    wide = models.build_model("edsr:num_feat=16,num_block=2", 2)
    with pytest.raises(UserInputError, match="no weight of the student's names and shapes"):
        warm_start(wide.module, "edsr", 2, tmp_path / "x2.safetensors")
    rcan = models.build_model("rcan:num_feat=8,num_group=1,num_block=1", 2)
    with pytest.raises(UserInputError, match="holds a edsr model but the student is rcan"):
        warm_start(rcan.module, "rcan", 2, tmp_path / "x2.safetensors")


def test_distill_init_starts_from_the_given_weights(tiny_teacher: Path, tmp_path: Path) -> None:
    first = distill(tiny_teacher, **TINY, iters=2, output=tmp_path / "first")
    reporter = Interrupt(at=-1)
    distill(tiny_teacher, **{**TINY, "seed": 4}, iters=1, output=tmp_path / "second",
            init=first.student, reporter=reporter)
    assert any(text.startswith(f"Warm start from {first.student} (x2): loaded conv_first")
               for text in reporter.messages)
    start = torch.load(tmp_path / "second" / "checkpoints" / "last.pt", weights_only=True)
    trained = _weights(first.student)
    # One step of lr 1e-4 from the given weights stays within 1e-3 of them.
    assert all((start["student"][key] - trained[key]).abs().max() < 1e-3 for key in trained)
    # Resumed, the student comes from the checkpoint: the --init file is not needed again.
    first.student.unlink()
    resumed = Interrupt(at=-1)
    distill(tiny_teacher, iters=2, output=tmp_path / "second", resume=True, reporter=resumed)
    assert not any(text.startswith("Warm start") for text in resumed.messages)


@pytest.mark.slow
def test_torchrun_ranks_share_one_cache_built_by_rank_0(tiny_teacher: Path, tiny_run: list[str],
                                                       tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "srcompress", "distill", str(tiny_teacher),
               *tiny_run, "--iters", "2", "--output", str(tmp_path / "run"),
               "--teacher-cache", str(cache), "--train-data", str(demo_data_folder())]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    output = finished.stdout + finished.stderr
    assert output.count("Building the teacher cache") == 1
    assert output.count("teacher cache 9/9") == 1  # 3 images x 3 parts, as a line in a log
    assert sorted(path.name for path in cache.iterdir()) == [
        ".lock", "manifest.json", "pairs.npy", "zoom_in.npy", "zoom_out.npy",
        "zoom_out_inputs.npy"]

"""Acceptance 2: a run killed after a checkpoint and resumed ends bit-exactly where an uninterrupted
run with the same seed ends, and no partial file is left in the output folder."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ITERS = 60


@pytest.fixture(scope="module")
def run_args(tiny_run: list[str]) -> list[object]:
    return [*tiny_run, "--iters", ITERS, "--save-every", 5, "--seed", 7, "--method", "dukd"]


def _finish(process, timeout: float = 120) -> str:
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr
    return stderr


def _wait_for(path: Path, process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def _checkpoint_iteration(folder: Path) -> int:
    return int(torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["iteration"])


def _assert_same_weights(first: Path, second: Path) -> None:
    a, b = load_file(first), load_file(second)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tiny_teacher: Path, run_args: list[object], start_srcompress,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("uninterrupted") / "run"
    _finish(start_srcompress("distill", tiny_teacher, *run_args, "--output", output))
    return output


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_stopped_and_resumed_run_matches_uninterrupted_run(
        stop: signal.Signals, tiny_teacher: Path, uninterrupted: Path, run_args: list[object],
        start_srcompress, leftover_temporary_files, tmp_path: Path) -> None:
    output = tmp_path / "run"
    process = start_srcompress("distill", tiny_teacher, *run_args, "--output", output)
    _wait_for(output / "checkpoints" / "last.pt", process)
    process.send_signal(stop)
    stdout, stderr = process.communicate(timeout=60)
    if stop == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:  # Ctrl-C: a checkpoint of the current iteration, a clean exit, no final student
        assert process.returncode == 130, stderr
        assert "--resume" in stdout
    stopped_at = _checkpoint_iteration(output)
    assert 0 < stopped_at < ITERS, "the run ended before it could be interrupted"
    assert not (output / "student.safetensors").exists()

    _finish(start_srcompress("distill", tiny_teacher, *run_args, "--output", output, "--resume"))

    assert _checkpoint_iteration(output) == ITERS
    _assert_same_weights(output / "student.safetensors", uninterrupted / "student.safetensors")
    resumed = torch.load(output / "checkpoints" / "last.pt", weights_only=True)
    reference = torch.load(uninterrupted / "checkpoints" / "last.pt", weights_only=True)
    for key, value in reference["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][key]["exp_avg"], value["exp_avg"])
    assert leftover_temporary_files(output) == []


def test_resume_refuses_a_changed_training_setting(tiny_teacher: Path, uninterrupted: Path,
                                                   run_args: list[object], cli) -> None:
    result = cli("distill", tiny_teacher, *run_args, "--output", uninterrupted, "--resume",
                 "--lr", "0.01")
    assert result.exit_code == 2
    assert "--lr 0.01 differs from the run being resumed (0.0001)" in result.stderr


def test_new_run_refuses_to_overwrite_a_finished_one(tiny_teacher: Path, uninterrupted: Path,
                                                     run_args: list[object], cli) -> None:
    before = (uninterrupted / "student.safetensors").read_bytes()
    result = cli("distill", tiny_teacher, *run_args, "--output", uninterrupted)
    assert result.exit_code == 2
    assert "already holds a run" in result.stderr
    assert (uninterrupted / "student.safetensors").read_bytes() == before

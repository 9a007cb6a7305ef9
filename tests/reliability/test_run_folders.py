"""Training runs and their folders (issue 12, items 2, 4, 5 and 6).

A diverged run is never reported as a success; a run folder belongs to one run at a time; the
user's own files are never written over or deleted; and a resumed run is the run it says it is
(same teacher, no going back in iterations, a config.toml that stays true).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_one_sentence

from srcompress import models

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def test_a_diverged_run_exits_1_and_keeps_its_files(cli, tmp_path: Path, tiny_model: Path,
                                                    tiny_run: list[str]) -> None:
    run = tmp_path / "run"
    result = cli("distill", tiny_model, *tiny_run, "--lr", "1e3", "--iters", "40",
                 "--output", run)
    assert_one_sentence(result, 1, "diverged", "training loss rose", "student.safetensors",
                        "--lr")
    assert (run / "student.safetensors").is_file() and (run / "checkpoints" / "last.pt").is_file()
    healthy = cli("distill", tiny_model, *tiny_run, "--iters", "40", "--output", tmp_path / "ok")
    assert healthy.exit_code == 0, healthy.stderr


def test_a_diverged_run_with_validation_names_the_psnr_it_lost(cli, tmp_path: Path,
                                                               tiny_model: Path,
                                                               tiny_run: list[str],
                                                               real_images: Path) -> None:
    run_flags = [flag for flag in tiny_run if flag != "--no-validation"]
    result = cli("distill", tiny_model, *run_flags, "--lr", "1e3", "--iters", "40",
                 "--val-benchmark", real_images, "--val-every", "40", "--output", tmp_path / "run")
    assert_one_sentence(result, 1, "validation PSNR fell from", "best.safetensors")
    assert (tmp_path / "run" / "best.safetensors").is_file()


def _start(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "srcompress", *map(str, args)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_runs_on_one_folder_one_wins_and_the_other_names_its_pid(
        tmp_path: Path, tiny_model: Path, tiny_run: list[str]) -> None:
    # Both start together; the winner's budget is far longer than the test, so the loser always
    # meets a live owner (a short winner could end before a slow loser starts, and the loser would
    # then rightly find a finished run instead). The winner is stopped with Ctrl-C.
    output = tmp_path / "run"
    runs = {seed: _start("distill", tiny_model, *tiny_run, "--iters", "1000000", "--seed", seed,
                         "--save-every", "20", "--output", output) for seed in (1, 2)}
    deadline = time.monotonic() + 300
    while all(process.poll() is None for process in runs.values()):
        assert time.monotonic() < deadline, "neither run ended"
        time.sleep(0.2)
    (loser,) = [seed for seed, process in runs.items() if process.poll() is not None]
    (winner,) = [seed for seed in runs if seed != loser]
    message = runs[loser].communicate()[1]
    assert runs[loser].returncode == 2, message
    assert f"{output} is in use by another srcompress process (PID {runs[winner].pid})" in \
        " ".join(message.split()), message
    while not (output / "checkpoints" / "last.pt").is_file():
        assert runs[winner].poll() is None and time.monotonic() < deadline, \
            runs[winner].communicate()
        time.sleep(0.2)
    runs[winner].send_signal(signal.SIGINT)
    assert runs[winner].wait(timeout=120) == 130, runs[winner].communicate()
    # The folder is the winner's: its config; no final weights (the winner was interrupted and
    # the loser wrote nothing).
    assert tomllib.loads((output / "config.toml").read_text())["seed"] == winner
    assert not (output / "student.safetensors").exists()
    assert not (output / ".srcompress.lock").exists()  # released at the end


def test_a_folder_of_the_users_files_is_not_written_into(cli, tmp_path: Path, tiny_model: Path,
                                                         tiny_run: list[str]) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.toml").write_text("my = 'settings'\n")
    (folder / "metrics.json").write_text("{}\n")
    (folder / ".draft.tmp").write_text("unsaved work")
    refused = cli("distill", tiny_model, *tiny_run, "--iters", "2", "--output", folder)
    assert_one_sentence(refused, 2, str(folder), "config.toml", "--force")
    assert (folder / "config.toml").read_text() == "my = 'settings'\n"
    assert (folder / ".draft.tmp").read_text() == "unsaved work"
    forced = cli("distill", tiny_model, *tiny_run, "--iters", "2", "--output", folder, "--force")
    assert forced.exit_code == 0, forced.stderr
    assert (folder / ".draft.tmp").read_text() == "unsaved work"  # not srcompress's temp name
    assert (folder / "student.safetensors").is_file()


def _other_teacher(tmp_path: Path) -> Path:
    """The same architecture as the tiny model, other weights."""
    torch.manual_seed(99)
    path = tmp_path / "other_teacher.safetensors"
    models.save_model(path, models.build_model("edsr:num_feat=8,num_block=1", 2))
    return path


def test_resume_is_refused_with_another_teacher_unless_forced(cli, tmp_path: Path,
                                                              tiny_model: Path,
                                                              tiny_run: list[str]) -> None:
    run = tmp_path / "run"
    assert cli("distill", tiny_model, *tiny_run, "--iters", "2", "--output", run).exit_code == 0
    other = _other_teacher(tmp_path)
    refused = cli("distill", other, *tiny_run, "--iters", "4", "--output", run, "--resume")
    assert_one_sentence(refused, 2, str(other), "not the one the run", "--force")
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["teacher"] == str(tiny_model) and config["iters"] == 2
    forced = cli("distill", other, *tiny_run, "--iters", "4", "--output", run, "--resume",
                 "--force")
    assert forced.exit_code == 0, forced.stderr
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["teacher"] == str(other) and config["iters"] == 4  # true after the change
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 4


def test_resume_cannot_go_back_in_iterations(cli, tmp_path: Path, tiny_model: Path,
                                            tiny_run: list[str]) -> None:
    run = tmp_path / "run"
    assert cli("distill", tiny_model, *tiny_run, "--iters", "6", "--output", run).exit_code == 0
    student = (run / "student.safetensors").read_bytes()
    lower = cli("distill", tiny_model, *tiny_run, "--iters", "3", "--output", run, "--resume")
    assert_one_sentence(lower, 2, "--iters 3", "6 iterations")
    assert (run / "student.safetensors").read_bytes() == student
    assert re.search(r"^iters = 6$", (run / "config.toml").read_text(), re.MULTILINE)

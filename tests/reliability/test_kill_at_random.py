"""SIGKILL at random moments of a run, then `--resume` (issue 12, the suite's kill loop).

A short run is killed several times at a random moment soon after one of its checkpoints (so
kills land inside checkpoint, metrics and weight writes as well as inside steps). After every kill
each file in the run folder is either absent or whole and loadable (a hidden temporary file of an
interrupted write may remain; resuming removes it), and the run resumed to the end holds weights
bit-identical to an uninterrupted run's. Each kill leaves the run folder's lock behind (a dead
owner's); the next run takes it over.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from srcompress import models
from srcompress.files import is_partial_file
from srcompress.train.state import LOCK_NAME, RunFolder

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

pytestmark = pytest.mark.slow

ITERS = 40
KILLS = 3


def _start(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "srcompress", *map(str, args)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _checkpoint_stamp(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _assert_every_file_whole(folder: Path) -> None:
    """Each file is absent, a leftover temporary file, or complete and loadable."""
    run = RunFolder(folder)
    for path in folder.rglob("*"):
        if path.is_dir() or is_partial_file(path) or path.name == LOCK_NAME or \
                "tensorboard" in path.parts:
            continue
        if path == run.config:
            tomllib.loads(path.read_text(encoding="utf-8"))
        elif path == run.metrics:
            json.loads(path.read_text(encoding="utf-8"))
        elif path == run.checkpoint:
            run.load_checkpoint()
        elif path.suffix == ".safetensors":
            models.load_model(path)
        else:
            raise AssertionError(f"unexpected file {path} in the run folder")


def test_runs_killed_at_random_moments_resume_bit_exactly(tiny_model: Path, tiny_run: list[str],
                                                          tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    arguments = [tiny_model, *tiny_run, "--iters", ITERS, "--save-every", 1, "--seed", 3]
    reference = _start("distill", *arguments, "--output", tmp_path / "reference")
    output = tmp_path / "run"
    checkpoint = output / "checkpoints" / "last.pt"
    kills = 0
    while kills < KILLS:
        resume = ["--resume"] if checkpoint.exists() else []
        process = _start("distill", *arguments, "--output", output, *resume)
        seen = _checkpoint_stamp(checkpoint)
        while process.poll() is None and _checkpoint_stamp(checkpoint) == seen:
            time.sleep(0.002)
        if process.poll() is not None:
            assert process.returncode == 0, process.communicate()[1]
            break  # the run finished before this kill: what was killed so far is checked
        time.sleep(rng.uniform(0, 0.05))
        process.kill()
        process.communicate()
        kills += 1
        _assert_every_file_whole(output)
        # The killed run could not release its lock: the next one must take the stale lock over.
        assert (output / LOCK_NAME).exists()
    assert kills >= 1, f"no kill landed inside the run (seed {seed})"
    finished = _start("distill", *arguments, "--output", output, "--resume")
    assert finished.wait(timeout=300) == 0 and reference.wait(timeout=300) == 0, (
        finished.communicate()[1], reference.communicate()[1])
    _assert_every_file_whole(output)
    assert not [path for path in output.rglob("*") if is_partial_file(path)]
    final, expected = load_file(output / "student.safetensors"), load_file(
        tmp_path / "reference" / "student.safetensors")
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), f"{key} differs (seed {seed}, {kills} kills)"
    assert torch.load(checkpoint, weights_only=True)["iteration"] == ITERS

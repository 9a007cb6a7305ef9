"""Fixtures for training tests: a tiny real teacher and the tiny-run settings every test shares."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srcompress import models

# Four iterations of a one-block, eight-feature student on 16-pixel patches: each run takes about
# a second, while still exercising every part of the loop (DUKD, EMA, checkpoints, schedule).
TINY_STUDENT = "edsr:num_feat=8,num_block=1"
TINY_RUN = ["--student", TINY_STUDENT, "--batch-size", "2", "--patch-size", "16", "--workers",
            "0", "--device", "cpu", "--no-validation"]


@pytest.fixture(autouse=True)
def one_thread():
    """The machine's two cores are shared by everyone; one thread per training test avoids
    oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An EDSR x2 with 16 features and 2 blocks, randomly initialised with a fixed seed."""
    torch.manual_seed(1234)
    teacher = models.build_model("edsr:num_feat=16,num_block=2", 2)
    path = tmp_path_factory.mktemp("teacher") / "teacher_x2.safetensors"
    models.save_model(path, teacher)
    return path


@pytest.fixture(scope="session")
def tiny_run() -> list[str]:
    return list(TINY_RUN)


def _start(*args: object) -> subprocess.Popen[str]:
    """`python -m srcompress ARGS` in a child process, one CPU thread (the machine is shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "srcompress", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="session")
def start_srcompress():
    return _start


def _leftover_temporary_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob(".*") if path.name.endswith(".tmp")]


@pytest.fixture(scope="session")
def leftover_temporary_files():
    return _leftover_temporary_files

"""Fixtures of the reliability suite: a tiny real model, real images, and the one-sentence check.

Every test here reproduces a failure a user (or an adversary) can cause: bad files, hostile
archives, kills, full disks, two runs on one folder. What each asserts is the product's promise:
the only outcomes are a correct result, or exit 2 (bad input) / exit 1 (failed work) with one
sentence that names the file or flag, and nothing the user had is lost.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from srcompress import models

# Property-based fuzzing (hypothesis). The suite's profile is small and derandomised, so that `make
# test` stays quick and a failure reproduces on every machine; HYPOTHESIS_PROFILE=thorough
# explores with fresh random examples and many more of them.
_FUZZ_CHECKS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                HealthCheck.data_too_large]
settings.register_profile("suite", max_examples=25, deadline=None, derandomize=True,
                          database=None, suppress_health_check=_FUZZ_CHECKS)
settings.register_profile("thorough", max_examples=400, deadline=None,
                          suppress_health_check=_FUZZ_CHECKS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

TINY_STUDENT = "edsr:num_feat=8,num_block=1"
TINY_RUN = ["--student", TINY_STUDENT, "--batch-size", "2", "--patch-size", "16", "--workers",
            "0", "--device", "cpu", "--no-validation", "--method", "kd"]


def assert_one_sentence(result, code: int, *fragments: str) -> str:
    """`result` exited with `code` and said why in one `error:` line naming `fragments`."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "Warning" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An EDSR x2 with 8 features and 1 block, randomly initialised with a fixed seed."""
    torch.manual_seed(4321)
    model = models.build_model(TINY_STUDENT, 2)
    path = tmp_path_factory.mktemp("model") / "tiny_x2.safetensors"
    models.save_model(path, model)
    return path


@pytest.fixture(scope="session")
def real_images(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with three small real photographs (Set5's x4 LR files, about 64x64 each)."""
    folder = tmp_path_factory.mktemp("images")
    for name in ("baby", "bird", "butterfly"):
        shutil.copy(shared_data / "benchmarks" / "Set5" / "LR_bicubic" / "X4" / f"{name}x4.png",
                    folder / f"{name}.png")
    return folder


@pytest.fixture(scope="session")
def tiny_run() -> list[str]:
    return list(TINY_RUN)

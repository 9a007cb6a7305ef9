"""Acceptance 3: two torchrun processes (gloo on CPU) train one valid student; rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srcompress import models
from srcompress.demo import demo_data_folder


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_one_student(tiny_teacher: Path, tiny_run: list[str],
                                                      tmp_path: Path) -> None:
    output = tmp_path / "ddp"
    validation = demo_data_folder().parent / "val"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "srcompress", "distill", str(tiny_teacher),
               *[a for a in tiny_run if a != "--no-validation"], "--iters", "8",
               "--save-every", "4", "--val-every", "8", "--val-benchmark", str(validation),
               "--output", str(output), "--json", str(tmp_path / "report.json")]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    # Only rank 0 reports and writes: one summary, one set of files, no leftovers.
    assert finished.stdout.count("Student:") == 1
    assert sorted(path.name for path in output.rglob("*")) == [
        "best.safetensors", "checkpoints", "config.toml", "last.pt", "metrics.json",
        "student.safetensors"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["completed"] and report["iteration"] == 8

    student = models.load_model(output / "student.safetensors")
    lr = torch.rand(1, 3, 20, 20)
    with torch.inference_mode():
        sr = student.module(lr)
    assert sr.shape == (1, 3, 40, 40) and torch.isfinite(sr).all()
    state = torch.load(output / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 8
    assert not any(key.startswith("module.") for key in state["student"])
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["validations"][-1]["results"]["val"]["psnr"] > 5


@pytest.mark.slow
def test_torchrun_quantize_reports_once(tiny_teacher: Path, tmp_path: Path) -> None:
    """Every rank returns the run's result; only rank 0 may print it or write --json."""
    output = tmp_path / "qat"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "srcompress", "quantize", str(tiny_teacher),
               "--w-bits", "4", "--a-bits", "4", "--calibration-batches", "1", "--iters", "2",
               "--batch-size", "2", "--patch-size", "16", "--workers", "0", "--device", "cpu",
               "--no-validation", "--output", str(output), "--json", "-"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(finished.stdout)  # two ranks writing would leave two documents
    assert report["completed"] and report["quantization"]["w_bits"] == 4
    assert finished.stderr.count("training images") == 1
    assert (output / "quantized.safetensors").is_file()

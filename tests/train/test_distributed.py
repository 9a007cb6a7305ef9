"""Data-parallel training: two torchrun processes (gloo on CPU) train one student that learns,
every rank draws its own patches, the gradients are the ranks' mean, and rank 0 alone writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srcompress import models
from srcompress.data.training import PatchBatches, load_training_images
from srcompress.demo import demo_data_folder
from srcompress.evaluation import evaluate
from srcompress.methods import Batch, create_method

STUDENT = "edsr:num_feat=8,num_block=1"
RECORDER = Path(__file__).with_name("ddp_recorder.py")
# 40 iterations at lr 5e-3 on two ranks: measured 31.8 dB on the demo validation photograph,
# from 19.5 dB untrained (seed 0), bicubic 35.3 dB.
LEARNED_OVER_UNTRAINED_DB = 10.0
BICUBIC_GAP_DB = 5.0


def _torchrun(*arguments: object) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _psnr(model: object, benchmark: Path) -> float:
    return evaluate(model, [str(benchmark)], scale=2, device="cpu")["results"][0]["psnr"]


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_one_student(tiny_teacher: Path, tiny_run: list[str],
                                                      tmp_path: Path) -> None:
    output = tmp_path / "ddp"
    validation = demo_data_folder().parent / "val"
    finished = _torchrun(
        "-m", "srcompress", "distill", tiny_teacher,
        *[a for a in tiny_run if a != "--no-validation"], "--iters", "40", "--lr", "5e-3",
        "--seed", "0", "--save-every", "20", "--val-every", "40", "--val-benchmark", validation,
        "--output", output, "--json", tmp_path / "report.json")
    assert finished.returncode == 0, finished.stderr[-3000:]
    # Only rank 0 reports and writes: one summary, one set of files, no leftovers.
    assert finished.stdout.count("Student:") == 1
    assert sorted(path.name for path in output.rglob("*")) == [
        "best.safetensors", "checkpoints", "config.toml", "last.pt", "metrics.json",
        "student.safetensors"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["completed"] and report["iteration"] == 40

    state = torch.load(output / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 40
    assert not any(key.startswith("module.") for key in state["student"])
    metrics = json.loads((output / "metrics.json").read_text())
    trained = _psnr(output / "student.safetensors", validation)
    assert metrics["validations"][-1]["results"]["val"]["psnr"] == pytest.approx(trained, abs=1e-6)
    torch.manual_seed(0)
    untrained = _psnr(models.build_model(STUDENT, 2).module, validation)
    assert trained > untrained + LEARNED_OVER_UNTRAINED_DB, (trained, untrained)
    assert trained > _psnr("bicubic", validation) - BICUBIC_GAP_DB, trained


@pytest.mark.slow
def test_torchrun_quantize_reports_once(tiny_teacher: Path, tmp_path: Path) -> None:
    """Every rank returns the run's result; only rank 0 may print it or write --json."""
    output = tmp_path / "qat"
    finished = _torchrun(
        "-m", "srcompress", "quantize", tiny_teacher, "--w-bits", "4", "--a-bits", "4",
        "--calibration-batches", "1", "--iters", "2", "--batch-size", "2", "--patch-size", "16",
        "--workers", "0", "--device", "cpu", "--no-validation", "--output", output, "--json", "-")
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(finished.stdout)  # two ranks writing would leave two documents
    assert report["completed"] and report["quantization"]["w_bits"] == 4
    assert finished.stderr.count("training images") == 1
    assert (output / "quantized.safetensors").is_file()


RECORDED_SEED, RECORDED_ITERS = 11, 3


@pytest.fixture(scope="module")
def recorded(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Per rank: the LR patches the student was called with, and the weights and gradients of
    every optimiser step, from a FitNet run (student and adapter gradients are averaged by two
    different mechanisms: DDP, and the loop's all-reduce of the method's side parameters)."""
    folder = tmp_path_factory.mktemp("ddp-record")
    finished = _torchrun(RECORDER, tiny_teacher, STUDENT, RECORDED_SEED, RECORDED_ITERS,
                         folder / "run", folder)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return [torch.load(folder / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


def _rank_batches(rank: int) -> PatchBatches:
    data = load_training_images([demo_data_folder()], 2, 16)
    return PatchBatches(data, 16, 2, seed=RECORDED_SEED, rank=rank)


@pytest.mark.slow
def test_each_rank_draws_its_own_patches(recorded: list[dict]) -> None:
    for rank, record in enumerate(recorded):
        assert len(record["lr"]) == RECORDED_ITERS
        batches = _rank_batches(rank)
        for iteration, lr in enumerate(record["lr"]):
            assert torch.equal(lr, batches[iteration][0]), (rank, iteration)
    for first, second in zip(recorded[0]["lr"], recorded[1]["lr"], strict=True):
        assert not torch.equal(first, second)


@pytest.mark.slow
def test_every_step_uses_the_mean_of_the_ranks_gradients(recorded: list[dict],
                                                         tiny_teacher: Path) -> None:
    teacher = models.load_model(tiny_teacher).module
    batches = [_rank_batches(rank) for rank in (0, 1)]
    for iteration in range(RECORDED_ITERS):
        weights = recorded[0]["weights"][iteration]
        assert all(torch.equal(a, b) for a, b in zip(
            weights, recorded[1]["weights"][iteration], strict=True)), "replicas drifted apart"
        local = []
        for rank in (0, 1):  # what each rank's own batch gives, at the shared weights
            student = models.build_model(STUDENT, 2).module
            method = create_method("fitnet")
            method.prepare(student, teacher)
            parameters = [*student.parameters(), *method.student_side_parameters()]
            with torch.no_grad():
                for parameter, value in zip(parameters, weights, strict=True):
                    parameter.copy_(value)
            lr, hr, _ = batches[rank][iteration]
            sum(method.losses(Batch(lr, hr, 2), student, teacher).values()).backward()
            local.append([parameter.grad for parameter in parameters])
        assert not torch.allclose(local[0][-1], local[1][-1], rtol=0.1)  # an adapter's gradient
        assert not torch.allclose(local[0][0], local[1][0], rtol=0.1)  # the first conv's
        mean = [(a + b) / 2 for a, b in zip(*local, strict=True)]
        for rank in (0, 1):
            for got, want in zip(recorded[rank]["grads"][iteration], mean, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)

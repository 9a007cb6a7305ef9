"""Post-training quantization (`--iters 0`, `--method ptq`) and QAT's guarantee that
best.safetensors is never worse than the calibrated model it started from.

The guarantee only means something on a trained model (a random network has nothing to lose), so
these tests quantize the shipped demo teacher, and damage it on purpose with a far too large
learning rate to check that the start is what best.safetensors keeps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from srcompress.cli.quantize import below_start_warning
from srcompress.models import LoadedModel, load_model
from srcompress.quant import is_quantized
from srcompress.train.quantize import QuantizeResult, QuantizeSettings, quantize
from srcompress.train.run import TRAINING_PATCHES, RunDivergedError

# Calibration needs real image content: 16 patches of 32x32 bring w8a8 within 0.1 dB of float.
TINY = {"batch_size": 4, "patch_size": 32, "workers": 0, "device": "cpu",
        "calibration_batches": 4, "seed": 3}
# Ten times the learning rate that trains the demo teacher from scratch, without EMA: a few steps
# of it wreck a trained model, which is what these tests need.
DAMAGING = {"lr": 5e-3, "ema": 0.0, "schedule": "multistep", "gamma": 1.0}
GENTLE = {"lr": 1e-3, "ema": 0.0, "schedule": "multistep", "gamma": 1.0}


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_model(a).module.state_dict(), load_model(b).module.state_dict()
    return first.keys() == second.keys() and all(
        torch.equal(first[key], second[key]) for key in first)


@pytest.fixture(scope="module")
def demo_teacher(trained_edsr: LoadedModel) -> Path:
    return Path(trained_edsr.source)


@pytest.fixture(scope="module")
def benchmarks(shared_data: Path) -> Path:
    return shared_data / "benchmarks"


@pytest.fixture(scope="module")
def ptq_run(demo_teacher: Path, benchmarks: Path,
            tmp_path_factory: pytest.TempPathFactory) -> QuantizeResult:
    """Calibration only, validated on Set5 (the same seed and batches as the QAT runs below)."""
    return quantize(demo_teacher, iters=0, val_benchmarks=["Set5"], data_root=benchmarks,
                    output=tmp_path_factory.mktemp("ptq") / "run", **TINY)


def test_iters_0_calibrates_only(ptq_run: QuantizeResult, demo_teacher: Path,
                                 float_psnr: float) -> None:
    assert ptq_run.completed and ptq_run.metrics["iteration"] == 0
    quantized = load_model(ptq_run.quantized)
    assert is_quantized(quantized.module)
    assert quantized.metadata["quant_method"] == "ptq"
    # Nothing trained: the float weights are the teacher's, bit for bit.
    original = load_model(demo_teacher).module.state_dict()
    for key, value in quantized.module.state_dict().items():
        if key.endswith(("weight", "bias")):
            assert torch.equal(value, original[key]), key
    # The calibrated model is validated, and is what best.safetensors holds.
    (start,) = ptq_run.metrics["validations"]
    assert start["iteration"] == 0 and ptq_run.metrics["best"]["iteration"] == 0
    assert start["results"]["Set5"]["psnr"] == pytest.approx(float_psnr, abs=0.15)
    assert same_weights(ptq_run.best, ptq_run.quantized)


def test_method_ptq_is_iters_0(ptq_run: QuantizeResult, demo_teacher: Path,
                               tmp_path: Path) -> None:
    result = quantize(demo_teacher, method="ptq", val_benchmarks=[],
                      output=tmp_path / "run", **TINY)
    assert result.metrics["iteration"] == 0
    assert same_weights(result.quantized, ptq_run.quantized)
    assert result.metrics["validations"][0]["results"].keys() == {TRAINING_PATCHES}


def test_a_ptq_run_resumes_into_qat(demo_teacher: Path, tmp_path: Path) -> None:
    """`--iters 0` then `--resume --iters N` trains from the calibrated model it wrote, keeping
    its iteration-0 validation as the start."""
    output = tmp_path / "run"
    quantize(demo_teacher, iters=0, val_benchmarks=[], output=output, **TINY)
    resumed = quantize(demo_teacher, output=output, resume=True, iters=2)
    assert resumed.metrics["iteration"] == 2
    assert [entry["iteration"] for entry in resumed.metrics["validations"]] == [0, 2]


@pytest.mark.parametrize("validation", ["Set5", "training patches"])
def test_best_is_never_worse_than_the_calibrated_start(
        ptq_run: QuantizeResult, demo_teacher: Path, benchmarks: Path, tmp_path: Path,
        validation: str) -> None:
    val_benchmarks = ["Set5"] if validation == "Set5" else []
    output = tmp_path / "run"
    # A run that ends this far below its start is also reported as diverged (exit 1), its files
    # kept: what matters here is which weights best.safetensors holds.
    with pytest.raises(RunDivergedError, match=r"best\.safetensors holds the best validated"):
        quantize(demo_teacher, iters=3, val_benchmarks=val_benchmarks, data_root=benchmarks,
                 output=output, **TINY, **DAMAGING)
    metrics = json.loads((output / "metrics.json").read_text(encoding="utf-8"))
    start, final = metrics["validations"][0], metrics["validations"][-1]
    assert (start["iteration"], final["iteration"]) == (0, 3)
    assert list(start["results"]) == [validation]
    assert final["mean_psnr"] < start["mean_psnr"] - 1.0  # the damage happened
    assert metrics["best"]["iteration"] == 0
    assert same_weights(output / "best.safetensors", ptq_run.quantized)
    loss = start["mean_psnr"] - final["mean_psnr"]
    assert f"ended {loss:.3f} dB below its calibrated start" in below_start_warning(metrics)
    assert below_start_warning({**metrics, "validations": [start]}) is None


def test_trainable_ranges_keeps_the_float_weights(demo_teacher: Path, tmp_path: Path) -> None:
    result = quantize(demo_teacher, iters=3, trainable="ranges", val_benchmarks=[],
                      output=tmp_path / "run", **TINY, **GENTLE)
    start = quantize(demo_teacher, iters=0, val_benchmarks=[], output=tmp_path / "start",
                     **TINY)
    trained = load_model(result.quantized).module.state_dict()
    calibrated = load_model(start.quantized).module.state_dict()
    changed = {key for key in trained if not torch.equal(trained[key], calibrated[key])}
    assert changed, "nothing trained"
    assert all("clip" in key for key in changed), sorted(changed)


def test_cli_ptq_json(demo_teacher: Path, tmp_path: Path, cli) -> None:
    out = cli("quantize", demo_teacher, "--iters", "0", "--no-validation", "--device", "cpu",
              "--calibration-batches", "1", "--batch-size", "2", "--patch-size", "16",
              "--output", tmp_path / "run", "--json", "-")
    assert out.exit_code == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["iteration"] == 0 and report["completed"]
    assert is_quantized(load_model(report["quantized"]).module)
    assert report["best_validation"]["iteration"] == 0


@pytest.mark.parametrize(("flags", "message"), [
    (["--method", "ptq", "--iters", "5"], "--method ptq calibrates only, so --iters 5"),
    (["--method", "ptq", "--teacher", "TEACHER"], "--method ptq calibrates only, so --teacher"),
    (["--iters", "-1"], "--iters must be a whole number of at least 0"),
    (["--trainable", "weights"], "--trainable weights is unknown"),
])
def test_cli_bad_ptq_flags_exit_2(demo_teacher: Path, tmp_path: Path, cli, flags: list[str],
                                  message: str) -> None:
    flags = [str(demo_teacher) if flag == "TEACHER" else flag for flag in flags]
    out = cli("quantize", demo_teacher, *flags, "--output", tmp_path / "run", "--no-validation")
    assert out.exit_code == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().count(". ") == 0  # one sentence
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("w_bits", "a_bits", "lr"), [(8, 8, 1e-5), (6, 6, 3.2e-5), (4, 8, 3.2e-4),
                                                       (8, 2, 3.2e-4)])
def test_default_learning_rate_follows_the_coarser_grid(demo_teacher: Path, w_bits: int,
                                                         a_bits: int, lr: float) -> None:
    given = {"model": demo_teacher, "w_bits": w_bits, "a_bits": a_bits}
    assert QuantizeSettings.resolve(given, resume=False).lr == lr
    assert QuantizeSettings.resolve({**given, "lr": 2e-4}, resume=False).lr == 2e-4
    assert f"lr = {lr}" in QuantizeSettings.resolve(given, resume=False).config_toml()

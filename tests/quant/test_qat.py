"""`quantize()` and `srcompress quantize` on a tiny EDSR with the shipped demo images."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import safetensors
import torch

from srcompress.errors import UserInputError
from srcompress.models import LoadedModel, build_model, load_model, save_model
from srcompress.quant import QuantConv2d
from srcompress.train.quantize import QuantizeResult, quantize

# Small enough for seconds on a shared CPU: 4 iterations of 2 patches of 16x16 LR pixels.
TINY_RUN = {"iters": 4, "batch_size": 2, "patch_size": 16, "workers": 0, "val_benchmarks": [],
            "device": "cpu", "save_every": 2, "calibration_batches": 2, "schedule": "multistep",
            "gamma": 1.0}


@pytest.fixture(scope="module")
def float_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("edsr:num_feat=8,num_block=2", 2)
    path = tmp_path_factory.mktemp("float") / "student.safetensors"
    save_model(path, model, method="dukd")
    return path


@pytest.fixture(scope="module")
def w4a4_run(float_model: Path, tmp_path_factory: pytest.TempPathFactory) -> QuantizeResult:
    output = tmp_path_factory.mktemp("w4a4") / "run"
    return quantize(float_model, w_bits=4, a_bits=4, method="kd", output=output, **TINY_RUN)


def test_quantize_writes_a_rebuildable_quantized_model(w4a4_run: QuantizeResult) -> None:
    result = w4a4_run
    assert result.completed and result.quantized == result.output / "quantized.safetensors"
    assert {p.name for p in result.output.iterdir()} >= {
        "quantized.safetensors", "config.toml", "metrics.json", "checkpoints"}
    assert result.report.quantized == ["conv_first", "body.0.conv1", "body.0.conv2",
                                       "body.1.conv1", "body.1.conv2", "conv_after_body",
                                       "upsample.0", "conv_last"]

    loaded = load_model(result.quantized)
    layers = {name: m for name, m in loaded.module.named_modules() if isinstance(m, QuantConv2d)}
    assert sorted(layers) == sorted(result.report.quantized)
    # The body at 4 bits; the head and the upsampler at 8 (they read the image / make pixels).
    assert result.report.eight_bit == {"conv_first": "head (reads the image)",
                                       "upsample.0": "upsampler (feeds the upsampling)",
                                       "conv_last": "output layer (writes the image)"}
    assert all((layer.w_bits, layer.a_bits) == ((8, 8) if name in result.report.eight_bit
                                                else (4, 4)) for name, layer in layers.items())
    # calibrated, not the placeholder range, and the ReLU output uses the zero-point-0 grid
    quantizers = dict(loaded.module.get_submodule("activation_quantizers").named_children())
    assert set(quantizers) == set(result.report.activation_quantizers)
    assert all(float(quantizer.act_unit) != 1.0 for quantizer in quantizers.values())
    assert not bool(quantizers["body_0_relu"].act_signed)
    assert loaded.metadata["quant"]["w_bits"] == 4
    assert loaded.metadata["quant_method"] == "kd"
    assert loaded.metadata["quant_teacher"].endswith("(full precision)")


def test_quantize_changes_weights_and_resumes_exactly(float_model: Path, tmp_path: Path) -> None:
    straight = quantize(float_model, output=tmp_path / "straight", method="dukd",
                        **{**TINY_RUN, "iters": 4})
    first = quantize(float_model, output=tmp_path / "resumed", method="dukd",
                     **{**TINY_RUN, "iters": 2})
    assert first.metrics["iteration"] == 2
    with pytest.raises(UserInputError, match="--w-bits 4 differs"):
        quantize(float_model, output=tmp_path / "resumed", resume=True, w_bits=4)
    resumed = quantize(float_model, output=tmp_path / "resumed", resume=True, iters=4)
    assert resumed.metrics["iteration"] == 4
    a, b = load_model(straight.quantized).module, load_model(resumed.quantized).module
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    original = load_model(float_model).module.state_dict()["body.0.conv1.weight"]
    assert not torch.equal(a.state_dict()["body.0.conv1.weight"], original)


def test_quantize_refuses_an_already_quantized_model(w4a4_run: QuantizeResult,
                                                     tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"already quantized \(w4a4"):
        quantize(w4a4_run.quantized, output=tmp_path / "again", **TINY_RUN)
    assert not (tmp_path / "again").exists()


def test_a_teacher_with_method_none_is_refused(float_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="--teacher would be ignored"):
        quantize(float_model, teacher=float_model, method="none", output=tmp_path / "run",
                 **TINY_RUN)
    assert not (tmp_path / "run").exists()


def test_cli_quantize_json_info_and_tensorrt_export(float_model: Path, tmp_path: Path,
                                                     cli) -> None:
    """A model quantized with --target tensorrt (ReLU outputs on int8's 0..127) exports exactly
    to TensorRT's form at 8 bits, which a model on the uint8 grid cannot; --float-output keeps
    the output convolution float."""
    out = cli("quantize", float_model, "--w-bits", "8", "--a-bits", "8", "--method", "none",
              "--iters", "2", "--batch-size", "2", "--patch-size", "16", "--workers", "0",
              "--no-validation", "--device", "cpu", "--calibration-batches", "1",
              "--target", "tensorrt", "--float-output", "--output", tmp_path / "run",
              "--json", "-")
    assert out.exit_code == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["completed"] and report["quantization"]["w_bits"] == 8
    assert report["quantization"]["target"] == "tensorrt"
    exported = cli("export", report["quantized"], "--onnx", "--target", "tensorrt", "--output",
                   tmp_path / "trt.onnx", "--json", "-")
    assert exported.exit_code == 0, exported.stderr
    assert json.loads(exported.stdout)["form_difference"] == 0.0
    assert "conv_last" in report["quantization"]["full_precision"]
    with safetensors.safe_open(report["quantized"], framework="pt") as handle:
        assert json.loads(handle.metadata()["quant"])["layers"]
    info = cli("info", report["quantized"], "--json", "-")
    assert info.exit_code == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["metadata"]["quant"]["w_bits"] == 8
    # read from onnxruntime's optimised graph: every quantised conv runs as QLinearConv
    runtime = described["onnxruntime_cpu"]
    assert runtime["integer_convs"] == len(report["quantization"]["quantized"])
    assert runtime["float_convs"] == 1 and described["skipped_layers"] == {}


@pytest.mark.parametrize(("flags", "message"), [
    (["--w-bits", "9"], "--w-bits 9"), (["--a-bits", "1"], "--a-bits 1"),
    (["--w-bits", "16"], "--w-bits 16"), (["--method", "mkd"], "--method mkd"),
    (["--target", "tpu"], "--target tpu"),
    (["--float-output", "--quantize-all"], "drop one of them"),
])
def test_cli_bad_quantization_flags_exit_2(float_model: Path, tmp_path: Path, cli,
                                           flags: list[str], message: str) -> None:
    out = cli("quantize", float_model, *flags, "--output", tmp_path / "run", "--no-validation")
    assert out.exit_code == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_cli_already_quantized_and_unsupported_layers_exit_2(w4a4_run: QuantizeResult,
                                                             tmp_path: Path, cli) -> None:
    out = cli("quantize", w4a4_run.quantized, "--output", tmp_path / "again", "--no-validation")
    assert out.exit_code == 2 and "already quantized" in out.stderr

    swinir = build_model("swinir:embed_dim=12,depths=[1],num_heads=[2],window_size=4,"
                         "img_size=16,mlp_ratio=1,upsampler=pixelshuffle", 2)
    path = save_model(tmp_path / "swinir.safetensors", swinir)
    out = cli("quantize", path, "--strict", "--output", tmp_path / "swin", "--no-validation")
    assert out.exit_code == 2
    assert "(Linear) cannot be quantized" in out.stderr and "--strict" in out.stderr
    assert not (tmp_path / "swin").exists()


def test_quantized_model_evaluates_like_its_module(w4a4_run: QuantizeResult,
                                                    shared_data: Path) -> None:
    from srcompress.evaluation import evaluate

    loaded: LoadedModel = load_model(w4a4_run.quantized)
    report = evaluate(str(w4a4_run.quantized), benchmarks=["Set5"], scale=2,
                      data_root=shared_data / "benchmarks", device="cpu")
    direct = evaluate(loaded.module, benchmarks=["Set5"], scale=2,
                      data_root=shared_data / "benchmarks", device="cpu")
    assert report["results"][0]["psnr"] == pytest.approx(direct["results"][0]["psnr"], abs=1e-9)


def test_cli_exports_the_quantized_model_with_qdq_nodes(w4a4_run: QuantizeResult, tmp_path: Path,
                                                        cli) -> None:
    target = tmp_path / "w4a4.onnx"
    out = cli("export", w4a4_run.quantized, "--onnx", "--output", target, "--json", "-")
    assert out.exit_code == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["precision"] == "int8" and report["verified"]
    quantizers = w4a4_run.report.activation_quantizers
    assert report["qdq_nodes"]["QuantizeLinear"] == len(quantizers) + len(
        w4a4_run.report.shared_quantizers)
    assert report["runtime_ops"]["integer_convs"] == len(w4a4_run.report.quantized)
    metadata = {entry.key: entry.value for entry in onnx.load(str(target)).metadata_props}
    assert metadata["quant_bits"] == "w4a4"
    assert "integer Clip" in metadata["quant_storage"]
    assert "INT4 packed" in metadata["quant_weight_storage"]

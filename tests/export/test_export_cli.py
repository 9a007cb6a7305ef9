"""`srcompress export MODEL --onnx` end to end: exit codes, messages, files left behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from srcompress.models import LoadedModel, save_model
from srcompress.quant import calibrate, quantize_model

Students = Callable[..., LoadedModel]


@pytest.fixture
def checkpoint(tiny_student: Students, tmp_path: Path) -> Path:
    return save_model(tmp_path / "student.safetensors", tiny_student("edsr"))


def test_export_writes_a_verified_file_next_to_the_model(cli, checkpoint: Path,
                                                        verify_image: Path) -> None:
    result = cli("export", checkpoint, "--onnx", "--verify-image", verify_image)
    assert result.exit_code == 0, result.stderr
    output = checkpoint.with_suffix(".onnx")
    assert output.is_file()
    assert "max |onnxruntime - PyTorch|" in result.stdout and "passed" in result.stdout
    metadata = {entry.key: entry.value for entry in onnx.load(str(output)).metadata_props}
    assert metadata["architecture"] == "edsr" and metadata["scale"] == "2"


def test_json_report(cli, checkpoint: Path, verify_image: Path, tmp_path: Path) -> None:
    result = cli("export", checkpoint, "--onnx", "--static", "--input-size", "33x41",
                 "--output", tmp_path / "deploy" / "static.onnx", "--verify-image",
                 verify_image, "--json", "-")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] is True and report["max_abs_diff"] <= 1e-4
    assert report["input_shape"] == [1, 3, 33, 41] and report["dynamic"] is False
    assert report["verification_image"] == str(verify_image)
    assert (tmp_path / "deploy" / "static.onnx").is_file()


def test_overwrite_is_refused_with_exit_2_unless_forced(cli, checkpoint: Path,
                                                        verify_image: Path) -> None:
    output = checkpoint.with_suffix(".onnx")
    output.write_bytes(b"an earlier export")
    refused = cli("export", checkpoint, "--onnx", "--verify-image", verify_image)
    assert refused.exit_code == 2
    assert f"{output} already exists: pass --force to overwrite it." in refused.stderr
    assert "Traceback" not in refused.stderr
    assert output.read_bytes() == b"an earlier export"
    forced = cli("export", checkpoint, "--onnx", "--force", "--verify-image", verify_image)
    assert forced.exit_code == 0, forced.stderr
    assert onnx.load(str(output)).graph.node


def test_unwritable_output_folder_exits_2(cli, checkpoint: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    result = cli("export", checkpoint, "--onnx", "--output", blocker / "student.onnx")
    assert result.exit_code == 2
    assert f"Cannot write to {blocker}" in result.stderr and "Traceback" not in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["blocker",
                                                                "student.safetensors"]


def test_failed_verification_exits_1_and_leaves_no_onnx(cli, checkpoint: Path,
                                                        verify_image: Path,
                                                        tmp_path: Path) -> None:
    result = cli("export", checkpoint, "--onnx", "--fp16", "--atol", "0", "--verify-image",
                 verify_image, "--json", str(tmp_path / "report.json"))
    assert result.exit_code == 1
    assert "Verification failed" in result.stderr and "above --atol 0" in result.stderr
    assert "not written" in result.stdout  # the table of what was measured
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verified"] is False and report["max_abs_diff"] > 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.json",
                                                                "student.safetensors"]


@pytest.mark.parametrize(("arguments", "message"), [
    ((), "add --onnx"),
    (("--onnx", "--static"), "--static needs --input-size"),
    (("--onnx", "--static", "--input-size", "big"), "--input-size 'big' is not a size"),
    (("--onnx", "--output", "student.pt"), "must end in .onnx"),
])
def test_bad_flags_exit_2(cli, checkpoint: Path, arguments: tuple[str, ...],
                          message: str) -> None:
    result = cli("export", checkpoint, *arguments)
    assert result.exit_code == 2
    assert message in result.stderr


def test_missing_model_exits_2(cli, tmp_path: Path) -> None:
    result = cli("export", tmp_path / "missing.safetensors", "--onnx")
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_bicubic_has_no_network_to_export(cli) -> None:
    result = cli("export", "bicubic", "--onnx")
    assert result.exit_code == 2 and "bicubic is an interpolation with no network" in result.stderr


def test_quantized_checkpoint_is_exported_with_int8_qdq_nodes(
        cli, tiny_student: Students, verify_image: Path, lr_images: dict, tmp_path: Path) -> None:
    """The `quantize` command's output (a checkpoint with `quant` metadata) → Q/DQ int8 file."""
    model = tiny_student("edsr")
    model.module, quantization = quantize_model(model.module, 8, 8)
    calibrate(model.module, [lr_images["woman"]])
    checkpoint = save_model(tmp_path / "quantized.safetensors", model,
                            quant=quantization.metadata())
    result = cli("export", checkpoint, "--onnx", "--verify-image", verify_image, "--json", "-")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    layers = len(quantization.quantized)
    assert report["precision"] == "int8" and report["verified"] is True
    # (the pixel shuffle reuses its input's quantiser: one more QuantizeLinear, no new scale)
    quantizers = len(quantization.activation_quantizers) + len(quantization.shared_quantizers)
    # One QDQ pair per quantised tensor, one DequantizeLinear per weight and per bias.
    assert report["qdq_nodes"] == {"QuantizeLinear": quantizers,
                                   "DequantizeLinear": quantizers + 2 * layers}
    assert report["runtime_ops"]["integer_convs"] == layers
    assert report["metadata"]["quant_format"] == "qdq" and report["exporter"] == "torchscript"
    int8_weights = [init for init in onnx.load(report["output"]).graph.initializer
                    if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4]
    assert len(int8_weights) == layers
    refused = cli("export", checkpoint, "--onnx", "--fp16", "--force")
    assert refused.exit_code == 2
    assert "--fp16 does not apply to a quantized model" in refused.stderr

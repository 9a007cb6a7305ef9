"""`--device`: one rule set for training, PyTorch inference and ONNX Runtime."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import onnx
import pytest
import torch

from srcompress.devices import onnx_providers, onnx_session, resolve_device
from srcompress.errors import UserInputError
from srcompress.inference import make_runner
from srcompress.train.distill import distill


@pytest.mark.parametrize(("device", "message"), [
    ("tpu", "--device tpu is not a device: use auto, cpu, cuda, cuda:N or mps."),
    ("meta", "--device meta is not supported: use auto, cpu, cuda, cuda:N or mps."),
    *([] if torch.cuda.is_available() else [
        ("cuda:1", "--device cuda:1 asks for CUDA, which this machine does not have")]),
    *([] if torch.backends.mps.is_available() else [
        ("mps", "--device mps asks for Apple's MPS, which this machine does not have")]),
])
def test_training_and_inference_refuse_a_device_with_the_same_sentence(
        device: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserInputError) as inference:
        make_runner("bicubic", scale=2, device=device)
    with pytest.raises(UserInputError) as training:
        distill(student="edsr:num_feat=8,num_block=1", scale=2, method="scratch", device=device,
                output=tmp_path / "run")
    assert str(inference.value).startswith(message)
    assert str(training.value) == str(inference.value)
    assert not (tmp_path / "run").exists()


def test_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    assert onnx_providers("auto")[-1] == "CPUExecutionProvider"


def test_without_onnxruntime_an_onnx_model_says_which_extra_to_install(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if neither package were installed
    model = tmp_path / "student.onnx"
    model.write_bytes(b"not read: onnxruntime is missing")
    with pytest.raises(UserInputError, match=r"ONNX Runtime is not installed: pip install "
                                             r"'srcompress\[cpu\]' \(CPU\) or 'srcompress\[gpu\]'"):
        make_runner(model, device="cpu")


def test_both_onnxruntime_packages_are_named_in_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    installed = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.0" if name in (
        "onnxruntime", "onnxruntime-gpu") else installed(name))
    identity = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["input"], ["output"])], "identity",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(identity, tmp_path / "identity.onnx")
    with pytest.warns(UserWarning, match="both onnxruntime and onnxruntime-gpu are installed"):
        onnx_session(tmp_path / "identity.onnx", "cpu")

"""Q/DQ ONNX export of fake-quant models, checked with onnxruntime on a real image."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper

from srcompress.errors import UserInputError
from srcompress.export.qdq import QDQ_MIN_OPSET, qdq_export_mode
from srcompress.models import LoadedModel
from srcompress.quant import calibrate, quantize_modules


def _export(module: torch.nn.Module, image: torch.Tensor, path: Path) -> dict[str, int]:
    with qdq_export_mode(module) as qdq, torch.no_grad():
        torch.onnx.export(module, (image,), str(path), dynamo=False,
                          opset_version=QDQ_MIN_OPSET + 4, input_names=["input"],
                          output_names=["output"],
                          dynamic_axes={"input": {2: "height", 3: "width"},
                                        "output": {2: "height", 3: "width"}})
    counts = qdq.finalize(path)
    assert onnx.load(str(path)).metadata_props  # the storage note travels with the file
    return counts


def _grey_levels(output: np.ndarray) -> np.ndarray:
    return np.round(np.clip(output, 0, 1) * 255)


@pytest.mark.parametrize(("w_bits", "a_bits"), [(8, 8), (4, 4)])
def test_int8_onnx_matches_the_fake_quant_model_on_a_real_image(
        trained_edsr: LoadedModel, set5_x2: list, calibration_batch: torch.Tensor,
        tmp_path: Path, w_bits: int, a_bits: int) -> None:
    model = copy.deepcopy(trained_edsr.module).eval()
    report = quantize_modules(model, w_bits, a_bits)
    calibrate(model, [calibration_batch])
    path = tmp_path / "model.onnx"
    counts = _export(model, set5_x2[0].lr[:, :32, :32].unsqueeze(0), path)

    # One activation Q/DQ pair per quantised layer, and one weight DequantizeLinear.
    layers = len(report.quantized)
    assert counts == {"QuantizeLinear": layers, "DequantizeLinear": 2 * layers}
    proto = onnx.load(str(path))
    int8_weights = [numpy_helper.to_array(init) for init in proto.graph.initializer
                    if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4]
    assert len(int8_weights) == layers
    levels = 2 ** (w_bits - 1) - 1
    assert all(np.abs(weights).max() <= levels for weights in int8_weights)

    image = set5_x2[4].lr.unsqueeze(0)  # a whole Set5 image, not the export size
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_output = session.run(None, {"input": image.numpy()})[0]
    with torch.no_grad():
        torch_output = model(image).numpy()
    differences = np.abs(_grey_levels(onnx_output) - _grey_levels(torch_output))
    assert (differences <= 1).mean() >= 0.99
    # and the fake-quant layers are back to their training forward
    assert not any(getattr(module, "qdq_export", False) for module in model.modules())


def test_a_float_model_has_no_qdq_export(trained_edsr: LoadedModel) -> None:
    with pytest.raises(UserInputError, match="not quantized"), \
            qdq_export_mode(trained_edsr.module):
        pass

"""The quantised part of ONNX export: fake-quant layers traced as QuantizeLinear/DequantizeLinear.

`srcompress.export.onnx` calls into this module when the model holds `QuantConv2d` layers:

    with qdq_export_mode(module) as metadata:
        torch.onnx.export(module, ..., dynamo=False, opset_version=max(opset, QDQ_MIN_OPSET))
    # then store `metadata` in the ONNX file and report `qdq_node_counts(onnx_model)`

Inside the context every quantised layer uses `torch.fake_quantize_per_tensor_affine` for its
input and `torch.fake_quantize_per_channel_affine` for its weights, which the TorchScript exporter
emits as Q/DQ pairs (per-channel needs opset 13; the dynamo exporter does not translate them). The
weights' QuantizeLinear is constant-folded, so the file stores int8 weights and one
DequantizeLinear per layer; onnxruntime fuses the pairs into integer convolutions where it can.

Bit-widths below 8 use the same 8-bit containers: values are clipped to the b-bit range and the
scale is clip/levels(b), so the stored integers lie exactly on the b-bit grid and the exported
model computes what the fake-quant model computes. The metadata says so, because the file is
then no smaller than an 8-bit one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
from torch import nn

from srcompress.errors import UserInputError
from srcompress.quant.fakequant import quantization_settings, quantized_layers

QDQ_MIN_OPSET = 13


def is_quantized_model(module: nn.Module) -> bool:
    """True when `module` holds fake-quant layers, i.e. the export must take the Q/DQ path."""
    return next(quantized_layers(module), None) is not None


@contextmanager
def qdq_export_mode(module: nn.Module) -> Iterator[dict[str, str]]:
    """Switch the fake-quant layers to their Q/DQ-emitting forward while the model is traced.

    Yields the metadata to store in the ONNX file (`quant_format`, bit-widths, storage note).
    Raises UserInputError on a model without quantised layers.
    """
    layers = [layer for _, layer in quantized_layers(module)]
    if not layers:
        raise UserInputError("the model is not quantized, so it has no Q/DQ export: export it as a "
                             "float model instead.")
    settings = quantization_settings(module)
    assert settings is not None
    for layer in layers:
        layer.freeze_export_weight()
        layer.qdq_export = True
    try:
        yield qdq_metadata(settings)
    finally:
        for layer in layers:
            layer.qdq_export = False
            del layer.export_weight


def qdq_metadata(settings: dict[str, object]) -> dict[str, str]:
    w_bits = settings["w_bits"]
    a_bits = settings["a_bits"]
    assert isinstance(w_bits, list) and isinstance(a_bits, list)
    low_bit = min(w_bits) < 8 or min(a_bits) < 8
    bits = f"w{'/'.join(map(str, w_bits))}a{'/'.join(map(str, a_bits))}"
    storage = (f"{bits} values stored in int8/uint8 Q/DQ containers (exact, not smaller than "
               "8-bit)" if low_bit else "int8 weights and int8/uint8 activations as Q/DQ pairs")
    return {"quant_format": "qdq", "quant_bits": bits, "quant_storage": storage,
            "quant_layers": str(len(settings["layers"]))}  # type: ignore[arg-type]


def qdq_node_counts(model: onnx.ModelProto | str | Path) -> dict[str, int]:
    """How many QuantizeLinear and DequantizeLinear nodes an exported graph holds."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for node in proto.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    return counts

"""Quantized layers: fake-quant layers, their insertion as the integer graph, their calibration
and their (de)serialisation.

This package sits below `models` (which rebuilds a quantized model from a file's metadata with
`restore_quantization`); quantization-aware training, `quantize()`, is a training command and
lives in `srcompress.train.quantize`.
"""

from srcompress.quant.calibration import calibrate
from srcompress.quant.fakequant import (
    ActivationQuantizer,
    IntegerPooling,
    QuantConv2d,
    check_bits,
    fake_quantize,
)
from srcompress.quant.graph import (
    QUANTIZATION_TARGETS,
    QuantizationReport,
    describe_quantization,
    is_quantized,
    quantize_model,
    restore_quantization,
)

__all__ = [
    "QUANTIZATION_TARGETS",
    "ActivationQuantizer",
    "IntegerPooling",
    "QuantConv2d",
    "QuantizationReport",
    "calibrate",
    "check_bits",
    "describe_quantization",
    "fake_quantize",
    "is_quantized",
    "quantize_model",
    "restore_quantization",
]

"""Quantized layers: fake-quant convolutions, their calibration and their (de)serialisation.

This package sits below `models` (which rebuilds a quantized model from a file's metadata with
`restore_quantization`); quantization-aware training, `quantize()`, is a training command and
lives in `srcompress.train.quantize`.
"""

from srcompress.quant.calibration import calibrate
from srcompress.quant.fakequant import (
    QuantConv2d,
    QuantizationReport,
    check_bits,
    describe_quantization,
    fake_quantize,
    is_quantized,
    quantize_modules,
    restore_quantization,
)

__all__ = [
    "QuantConv2d",
    "QuantizationReport",
    "calibrate",
    "check_bits",
    "describe_quantization",
    "fake_quantize",
    "is_quantized",
    "quantize_modules",
    "restore_quantization",
]

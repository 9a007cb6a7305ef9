"""Quantization-aware training: fake-quantised layers, calibration and the `quantize()` API."""

from srcompress.quant.calibration import calibrate
from srcompress.quant.fakequant import (
    QuantConv2d,
    QuantizationReport,
    check_bits,
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
    "fake_quantize",
    "is_quantized",
    "quantize_modules",
    "restore_quantization",
]

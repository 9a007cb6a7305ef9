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
from srcompress.quant.qat import QuantizeResult, quantize

__all__ = [
    "QuantConv2d",
    "QuantizationReport",
    "QuantizeResult",
    "calibrate",
    "check_bits",
    "fake_quantize",
    "is_quantized",
    "quantize",
    "quantize_modules",
    "restore_quantization",
]

"""Quantization-aware training: fake-quantised layers, calibration and the `quantize()` API."""

from srcompress.quant.calibration import calibrate
from srcompress.quant.fakequant import (
    QuantConv2d,
    QuantizationReport,
    apply_from_metadata,
    check_bits,
    fake_quantize,
    is_quantized,
    quantize_modules,
)

__all__ = [
    "QuantConv2d",
    "QuantizationReport",
    "apply_from_metadata",
    "calibrate",
    "check_bits",
    "fake_quantize",
    "is_quantized",
    "quantize_modules",
]

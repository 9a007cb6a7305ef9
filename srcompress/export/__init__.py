"""Deployment formats: verified ONNX export (float, fp16, and int8 Q/DQ for quantized models)."""

from srcompress.export.onnx import (
    DEFAULT_ATOL,
    ExportReport,
    VerificationFailedError,
    check_output,
    default_output,
    export_onnx,
    parse_input_size,
)
from srcompress.export.qdq import runtime_operator_counts, runtime_summary

__all__ = [
    "DEFAULT_ATOL",
    "ExportReport",
    "VerificationFailedError",
    "check_output",
    "default_output",
    "export_onnx",
    "parse_input_size",
    "runtime_operator_counts",
    "runtime_summary",
]

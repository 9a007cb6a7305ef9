"""`srcompress export MODEL --onnx`: a thin layer over `srcompress.export.export_onnx`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from srcompress.cli import app, inference_flags
from srcompress.cli.common import JSON_OPTION, console, emit_json, error_console, human_output
from srcompress.errors import UserInputError
from srcompress.export import (
    DEFAULT_ATOL,
    ExportReport,
    VerificationFailedError,
    check_output,
    default_output,
    export_onnx,
    parse_input_size,
    runtime_summary,
)
from srcompress.models import load_model

EXAMPLE = """Examples:

  srcompress export runs/dukd/student.safetensors --onnx

  srcompress export student.safetensors --onnx --fp16 --output deploy/student-fp16.onnx

  srcompress export student.safetensors --onnx --static --input-size 256x256 --json -

  srcompress export runs/w8a8/quantized.safetensors --onnx --target tensorrt
"""


@app.command(epilog=EXAMPLE)
def export(
    model: Path = typer.Argument(..., metavar="MODEL",
                                 help="Checkpoint (.safetensors, .pth, .pt, .ckpt) to export."),
    onnx: bool = typer.Option(False, "--onnx", help="Export to ONNX (the format available)."),
    output: Path | None = typer.Option(
        None, "--output", "-o", metavar="FILE",
        help="Where to write the .onnx file (default: next to MODEL, same name)."),
    opset: int | None = typer.Option(
        None, "--opset", metavar="N",
        help="ONNX opset (default 17 with the TorchScript exporter, the dynamo exporter's own "
        "otherwise)."),
    dynamic: bool = typer.Option(True, "--dynamic/--static",
                                 help="Dynamic height and width, or a fixed --input-size."),
    input_size: str | None = typer.Option(
        None, "--input-size", metavar="HxW",
        help="LR input size: required with --static; with --dynamic, the size traced and "
        "verified."),
    fp16: bool = typer.Option(False, "--fp16",
                              help="Half-precision weights and arithmetic (float32 inputs)."),
    atol: float | None = typer.Option(
        None, "--atol", metavar="F",
        help=f"Largest accepted |onnxruntime - PyTorch| (default {DEFAULT_ATOL['fp32']:g}; "
        f"{DEFAULT_ATOL['fp16']:g} with --fp16; {DEFAULT_ATOL['int8']:g} for quantized models)."),
    verify_image: Path | None = typer.Option(
        None, "--verify-image", metavar="IMAGE",
        help="Real image to verify on (default: the demo photograph shipped with srcompress)."),
    exporter: str = typer.Option(
        "auto", "--exporter", metavar="auto|torchscript|dynamo",
        help="torch exporter; auto = TorchScript (fast), else dynamo (torch.export)."),
    int4: str | None = typer.Option(
        None, "--int4", metavar="cast|dq|none",
        help="Quantized models of 4 weight bits or fewer: INT4 weights cast to INT8 at load "
        "(cast, default: half the file, integer kernels), INT4 read by DequantizeLinear (dq: "
        "float kernels on onnxruntime's CPU), or 8-bit containers (none)."),
    runtime: str = typer.Option(
        "onnxruntime", "--target", metavar="onnxruntime|tensorrt",
        help="Runtime a quantized model's Q/DQ nodes are written for: onnxruntime (uint8, fused "
        "by its CPU kernels; default) or tensorrt (int8 with zero point 0, float biases, 8-bit "
        "weights; verified here with onnxruntime, not with TensorRT)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
    arch: str | None = inference_flags.ARCH_OPTION,
    json_path: str | None = JSON_OPTION,
) -> None:
    """Export MODEL to ONNX and check it against PyTorch with onnxruntime before keeping it.

    The file records architecture, scale, input range [0, 1], RGB NCHW layout and version.
    Quantized models are written with int8 Q/DQ nodes.
    Exit code 1 when the largest difference from PyTorch is above --atol (nothing is written).
    """
    if not onnx:
        raise UserInputError("Choose the export format: add --onnx.")
    if str(model).lower() == "bicubic":
        raise UserInputError("bicubic is an interpolation with no network to export: pass a "
                             "model checkpoint.")
    if model.suffix.lower() == ".onnx":
        raise UserInputError(f"{model} is already an ONNX file: export its checkpoint instead.")
    size = parse_input_size(input_size) if input_size is not None else None
    target = output or default_output(model, fp16)
    check_output(target, force)
    shown = console if human_output(json_path) else error_console
    loaded = load_model(model, arch=arch)
    with shown.status("exporting") as status:
        try:
            report = export_onnx(loaded, target, opset=opset, dynamic=dynamic, input_size=size,
                                 fp16=fp16, force=force, atol=atol, verify_image=verify_image,
                                 exporter=exporter, int4=int4, target=runtime,
                                 progress=lambda message: status.update(message))
        except VerificationFailedError as failure:
            if human_output(json_path):
                _print(failure.report, written=False)
            emit_json(failure.report.to_dict(), json_path)
            raise
    if human_output(json_path):
        _print(report, written=True)
    emit_json(report.to_dict(), json_path)


def _print(report: ExportReport, written: bool) -> None:
    table = Table(title=report.output if written else f"{report.output} (not written)",
                  show_header=False)
    table.add_row("architecture", f"{report.architecture} x{report.scale}")
    table.add_row("precision", report.precision)
    table.add_row("exporter, opset", f"{report.exporter}, {report.opset}")
    table.add_row("input", " x ".join(str(dim) for dim in report.input_shape)
                  + (" (dynamic height and width)" if report.dynamic else " (static)"))
    if report.qdq_nodes:
        table.add_row("Q/DQ nodes", ", ".join(f"{k} {v}" for k, v in report.qdq_nodes.items()))
    if "quant_storage" in report.metadata:
        table.add_row("quantization", f"{report.metadata.get('quant_bits', '')} for "
                      f"{report.metadata.get('quant_target', 'onnxruntime')}: "
                      f"{report.metadata['quant_storage']}; weights: "
                      f"{report.metadata.get('quant_weight_storage', '')}")
    if report.runtime_ops is not None:
        table.add_row("onnxruntime CPU runs", runtime_summary(report.runtime_ops))
    sizes = ", ".join(f"{h}x{w}" for h, w in report.verification_sizes)
    if report.max_abs_diff is None:
        table.add_row("verification", f"[yellow]not verified[/]: {report.not_verified_reason}")
    else:
        verdict = "[green]passed[/]" if report.verified else "[bold red]FAILED[/]"
        if report.precision == "int8":
            table.add_row("|onnxruntime - PyTorch|", f"99 % within {report.p99_abs_diff:.3g}, "
                          f"max {report.max_abs_diff:.3g} (atol {report.atol:.3g}) {verdict}")
        else:
            table.add_row("max |onnxruntime - PyTorch|",
                          f"{report.max_abs_diff:.3g} (atol {report.atol:g}) {verdict}")
        table.add_row("verified on", f"{report.verification_image} at {sizes}, "
                      f"{report.verification_provider}")
    if written:
        table.add_row("file size", f"{report.file_bytes / 1e6:.2f} MB")
    table.add_row("seconds", f"export {report.export_seconds:.1f}, verify "
                  f"{report.verify_seconds:.1f}")
    console.print(table)

"""`srcompress quantize MODEL`: a thin layer over `srcompress.quant.quantize`.

The training flags are those of `distill` (`srcompress.cli.training_flags`); the options of the
three QAT methods (`dukd`, `kd`, `none` = the scratch loss) get one flag each, generated from the
method registry as in `distill`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from srcompress.cli import app, training_flags
from srcompress.cli.common import JSON_OPTION, console, emit_json, error_console, human_output
from srcompress.quant.qat import QAT_METHODS, QuantizeResult, quantize
from srcompress.train.progress import RichReporter

EXAMPLE = """Examples:

  srcompress quantize student.safetensors --w-bits 4 --a-bits 4 --iters 30000 --output runs/w4a4

  srcompress quantize student.safetensors --teacher teacher.safetensors --method kd

  srcompress quantize student.safetensors --output runs/w4a4 --resume
"""


def quantize_command(
    model: Path = typer.Argument(..., help="Full-precision checkpoint to quantize (any MODEL "
                                 "srcompress reads, e.g. a distilled student)."),
    teacher: Path | None = typer.Option(
        None, "--teacher", help="Full-precision teacher (default: a frozen copy of MODEL's own "
        "weights)."),
    method: str | None = typer.Option(
        None, "--method", help="dukd (upcycled data + KD), kd, or none (plain L1) "
        "(default: dukd)."),
    w_bits: int | None = typer.Option(None, "--w-bits", help="Weight bits, 2 to 8, per output "
                                      "channel (default: 8)."),
    a_bits: int | None = typer.Option(None, "--a-bits", help="Activation bits, 2 to 8, with "
                                      "learned clipping ranges (default: 8)."),
    quantize_all: bool = typer.Option(
        False, "--quantize-all", help="Quantize every convolution, head and upsampling tail "
        "included (default: the body only)."),
    calibration_batches: int | None = typer.Option(
        None, "--calibration-batches", help="Training batches that set the initial activation "
        "ranges (default: 8)."),
    *,
    json_path: str | None = JSON_OPTION,
    **flags: Any,
) -> None:
    """Quantization-aware training of MODEL, guided by a full-precision teacher (DUKD default).

    Replaces the body convolutions (all with --quantize-all) by fake-quant ones with per-channel
    weights and learned activation ranges, calibrates the ranges, fine-tunes, and writes
    quantized.safetensors (which evaluate, info and export take as MODEL), best.safetensors,
    metrics.json, config.toml and resumable checkpoints into --output.
    """
    arguments = training_flags.training_arguments(flags)
    reporter = RichReporter(console=error_console if not human_output(json_path) else console,
                            description=f"quantize ({method or 'dukd'})")
    result = quantize(
        model=model, teacher=teacher, method=method, w_bits=w_bits, a_bits=a_bits,
        scope="all" if quantize_all else None, calibration_batches=calibration_batches,
        **arguments, reporter=reporter)
    if human_output(json_path):
        _print(result)
    emit_json(_report(result), json_path)
    if not result.completed:
        raise typer.Exit(130)


def _report(result: QuantizeResult) -> dict[str, Any]:
    return {"output": str(result.output), "completed": result.completed,
            "quantized": str(result.quantized) if result.completed else None,
            "best": str(result.best) if result.best else None,
            "quantization": result.report.to_dict(),
            "iteration": result.metrics["iteration"], "best_validation": result.metrics["best"],
            "validations": result.metrics["validations"]}


def _print(result: QuantizeResult) -> None:
    report = result.report
    console.print(f"Quantized w{report.w_bits}a{report.a_bits} ({report.scope}): "
                  f"{len(report.quantized)} layers; full precision: "
                  + (", ".join(f"{name} ({why})" for name, why in report.full_precision.items())
                     or "none"))
    training_flags.print_outcome(result, "Quantized model", result.quantized)


training_flags.add_training_flags(
    quantize_command,
    training_flags.training_parameters(
        scale_help="Upscaling factor; must be the model's (default: the model's).",
        iters_help="Training iterations (default: 30000).",
        ema_help="EMA decay of the weights, 0 = off (default: 0.999).",
        output_help="Run folder (default: runs/<model-stem>-w<W>a<A>-<method>-<date>)."),
    training_flags.method_parameters(QAT_METHODS))
app.command("quantize", epilog=EXAMPLE)(quantize_command)

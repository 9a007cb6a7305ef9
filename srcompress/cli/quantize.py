"""`srcompress quantize MODEL`: a thin layer over `srcompress.train.quantize.quantize`.

The training flags are those of `distill` (`srcompress.cli.training_flags`); the options of the
three QAT methods (`dukd`, `kd`, `none` = the scratch loss) get one flag each, generated from the
method registry as in `distill`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from srcompress.cli import app, training_flags
from srcompress.cli.common import JSON_OPTION, console, error_console, human_output
from srcompress.train.distributed import from_environment
from srcompress.train.progress import training_reporter
from srcompress.train.quantize import QAT_METHODS, QuantizeSettings, quantize

EXAMPLE = """Examples:

  srcompress quantize student.safetensors --w-bits 4 --a-bits 4 --iters 30000 --output runs/w4a4

  srcompress quantize student.safetensors --iters 0       # calibration only (PTQ), in seconds

  srcompress quantize student.safetensors --teacher teacher.safetensors --method kd

  srcompress quantize student.safetensors --output runs/w4a4 --resume
"""


def quantize_command(
    model: Path = typer.Argument(..., help="Full-precision checkpoint to quantize (any MODEL "
                                 "srcompress reads, e.g. a distilled student)."),
    quantize_all: bool = typer.Option(
        False, "--quantize-all", help="Quantize every convolution at the bits asked, channel "
        "attention included (default: all but channel attention, with the head, upsampler and "
        "output convolution at 8 bits below 8 bits)."),
    *,
    json_path: str | None = JSON_OPTION,
    **flags: Any,
) -> None:
    """Quantization-aware training of MODEL, guided by a full-precision teacher (DUKD default).

    Turns MODEL into the integer graph ONNX Runtime runs (per-channel weights; every conv
    output, residual Add and ReLU quantised with learned ranges, the output convolution too
    unless --float-output), calibrates the ranges, fine-tunes, and writes
    quantized.safetensors (which evaluate, info and export take as MODEL), best.safetensors,
    metrics.json, config.toml and resumable checkpoints into --output. The calibrated model is
    validated before training (iteration 0), so best.safetensors is never worse than it; --iters 0
    (or --method ptq) stops there: post-training quantization.
    """
    arguments = training_flags.training_arguments(flags, QuantizeSettings)
    reporter = training_reporter(
        console=error_console if not human_output(json_path) else console,
        description=f"quantize ({arguments['method'] or 'dukd'})")
    result = quantize(model=model, scope="all" if quantize_all else None, **arguments,
                      reporter=reporter)
    report = result.report
    summary = (f"Quantized w{report.w_bits}a{report.a_bits} ({report.scope}): "
               f"{len(report.quantized)} layers; full precision: "
               + (", ".join(f"{name} ({why})" for name, why in report.full_precision.items())
                  or "none"))
    if report.skipped:
        summary += f"; {report.skipped_sentence()}"
    if result.metrics["iteration"] == 0 and result.completed:
        summary += "\nCalibrated only (post-training quantization): no training iterations."
    training_flags.report_run(result, json_path, ("Quantized model", "quantized"), summary,
                              quantization=report.to_dict())
    if human_output(json_path) and from_environment().is_main:
        warning = below_start_warning(result.metrics)
        if warning:
            console.print(f"[yellow]{warning}[/]")
    if not result.completed:
        raise typer.Exit(130)


def below_start_warning(metrics: dict[str, Any]) -> str | None:
    """A sentence when training ended below the calibrated start it validated at iteration 0."""
    validations = metrics["validations"]
    if len(validations) < 2 or validations[0]["iteration"] != 0:
        return None
    start, final = validations[0], validations[-1]
    loss = start["mean_psnr"] - final["mean_psnr"]
    if loss <= 0:
        return None
    return (f"Training ended {loss:.3f} dB below its calibrated start (iteration 0, "
            f"{', '.join(start['results'])}): best.safetensors holds the better model; "
            "a lower --lr or fewer --iters avoid the loss.")


training_flags.add_training_flags(
    quantize_command, training_flags.training_parameters(QuantizeSettings),
    training_flags.method_parameters(QAT_METHODS))
app.command("quantize", epilog=EXAMPLE)(quantize_command)

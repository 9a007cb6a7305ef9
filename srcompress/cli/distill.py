"""`srcompress distill TEACHER`: a thin layer over `srcompress.train.distill.distill`.

The training flags and the per-method option flags are shared with `quantize`
(`srcompress.cli.training_flags`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from srcompress.cli import app, training_flags
from srcompress.cli.common import JSON_OPTION, console, emit_json, error_console, human_output
from srcompress.methods import METHODS
from srcompress.train.distill import DistillResult, distill
from srcompress.train.distributed import from_environment
from srcompress.train.progress import RichReporter

EXAMPLE = """Examples:

  srcompress distill teacher.safetensors --train-data DIV2K/HR --iters 250000 --output runs/dukd

  srcompress distill teacher.safetensors --method kd --student edsr:num_feat=32,num_block=8

  srcompress distill teacher.safetensors --output runs/dukd --resume
"""


def distill_command(
    teacher: Path | None = typer.Argument(
        None, metavar="TEACHER",
        help="Teacher checkpoint (any MODEL srcompress reads); may come from --config."),
    student: str | None = typer.Option(
        None, "--student", metavar="SPEC",
        help="Student SPEC, preset or file (default: about 1/10 of the teacher's cost)."),
    method: str | None = typer.Option(
        None, "--method", help=f"Training method: {', '.join(METHODS)} (default: dukd)."),
    *,
    json_path: str | None = JSON_OPTION,
    **flags: Any,
) -> None:
    """Train a small student from TEACHER by knowledge distillation (DUKD by default).

    Writes student.safetensors (final EMA weights), best.safetensors, metrics.json, config.toml
    and resumable checkpoints into --output. Ctrl-C writes a checkpoint and stops cleanly.
    """
    arguments = training_flags.training_arguments(flags)
    reporter = RichReporter(console=error_console if not human_output(json_path) else console,
                            description=method or "dukd")
    result = distill(teacher=teacher, student=student, method=method, **arguments,
                     reporter=reporter)
    if from_environment().is_main:  # under torchrun, rank 0 speaks for the run
        if human_output(json_path):
            training_flags.print_outcome(result, "Student", result.student)
        emit_json(_report(result), json_path)
    if not result.completed:
        raise typer.Exit(130)


def _report(result: DistillResult) -> dict[str, Any]:
    return {"output": str(result.output), "completed": result.completed,
            "student": str(result.student) if result.completed else None,
            "best": str(result.best) if result.best else None,
            "iteration": result.metrics["iteration"], "best_validation": result.metrics["best"],
            "validations": result.metrics["validations"]}


training_flags.add_training_flags(
    distill_command,
    training_flags.training_parameters(
        scale_help="Upscaling factor (default: the teacher's).",
        iters_help="Training iterations (default: 250000, the paper's).",
        ema_help="EMA decay of the student's weights, 0 = off (default: 0.999).",
        output_help="Run folder (default: runs/<teacher-stem>-<method>-<date>)."),
    training_flags.method_parameters({name: name for name in METHODS}))
app.command("distill", epilog=EXAMPLE)(distill_command)

"""`srcompress distill TEACHER`: a thin layer over `srcompress.train.distill.distill`.

The training flags and the per-method option flags are shared with `quantize`
(`srcompress.cli.training_flags`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from srcompress.cli import app, training_flags
from srcompress.cli.common import JSON_OPTION, console, error_console, human_output
from srcompress.methods import METHODS
from srcompress.train.distill import DistillSettings, distill
from srcompress.train.progress import training_reporter

EXAMPLE = """Examples:

  srcompress distill teacher.safetensors --train-data DIV2K/HR --iters 250000 --output runs/dukd

  srcompress distill teacher.safetensors --method kd --student edsr:num_feat=32,num_block=8

  srcompress distill teacher.safetensors --output runs/dukd --resume

  srcompress distill teacher.safetensors --teacher-cache runs/cache --train-data photos/

  srcompress distill teacher_x4.safetensors --init runs/x2/student.safetensors
"""


def distill_command(
    teacher: Path | None = typer.Argument(
        None, metavar="TEACHER",
        help="Teacher checkpoint (any MODEL srcompress reads); may come from --config."),
    *,
    json_path: str | None = JSON_OPTION,
    **flags: Any,
) -> None:
    """Train a small student from TEACHER by knowledge distillation (DUKD by default).

    Writes student.safetensors (final EMA weights), best.safetensors, metrics.json, config.toml
    and resumable checkpoints into --output. Ctrl-C writes a checkpoint and stops cleanly.
    """
    arguments = training_flags.training_arguments(flags, DistillSettings)
    reporter = training_reporter(
        console=error_console if not human_output(json_path) else console,
        description=arguments["method"] or "dukd")
    result = distill(teacher=teacher, **arguments, reporter=reporter)
    training_flags.report_run(result, json_path, ("Student", "student"))
    if not result.completed:
        raise typer.Exit(130)


training_flags.add_training_flags(
    distill_command, training_flags.training_parameters(DistillSettings),
    training_flags.method_parameters({name: name for name in METHODS}))
app.command("distill", epilog=EXAMPLE)(distill_command)

"""`srcompress distill TEACHER`: a thin layer over `srcompress.train.distill.distill`.

Every option of every training method gets its own flag (`--w-rec`, `--n-sub`, `--zoom-out/
--no-zoom-out`, ...), generated from the method registry's declared options, so a method added to
the registry is configurable from the command line without touching this file. A flag left out
keeps the method's default (or the value from `--config`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from srcompress.cli import app
from srcompress.cli.common import JSON_OPTION, console, emit_json, error_console, human_output
from srcompress.errors import UserInputError
from srcompress.methods import METHODS, method_options
from srcompress.train.distill import DistillResult, distill
from srcompress.train.distributed import from_environment
from srcompress.train.progress import RichReporter

EXAMPLE = """Examples:

  srcompress distill teacher.safetensors --train-data DIV2K/HR --iters 250000 --output runs/dukd

  srcompress distill teacher.safetensors --method kd --student edsr:num_feat=32,num_block=8

  srcompress distill teacher.safetensors --output runs/dukd --resume
"""

METHOD_PANEL = "Method options (a flag applies to the methods named in its help)"


def _method_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per method option name, shared by the methods that declare it."""
    declared: dict[str, tuple[type, dict[str, Any], str]] = {}
    for name in METHODS:
        for option, description in method_options(name).items():
            kind, defaults, text = declared.get(option, (description.type, {}, description.help))
            defaults[name] = description.default
            declared[option] = (kind, defaults, text)
    parameters = []
    for option, (kind, defaults, text) in declared.items():
        flag = "--" + option.replace("_", "-")
        flags = f"{flag}/--no-{option.replace('_', '-')}" if kind is bool else flag
        by_method = ", ".join(f"{method} {value}" for method, value in defaults.items())
        parameters.append(inspect.Parameter(
            option, inspect.Parameter.KEYWORD_ONLY, annotation=kind | None,
            default=typer.Option(None, flags, help=f"{text} (default: {by_method})",
                                 rich_help_panel=METHOD_PANEL, show_default=False)))
    return parameters


def distill_command(
    teacher: Path | None = typer.Argument(
        None, metavar="TEACHER",
        help="Teacher checkpoint (any MODEL srcompress reads); may come from --config."),
    student: str | None = typer.Option(
        None, "--student", metavar="SPEC",
        help="Student SPEC, preset or file (default: about 1/10 of the teacher's cost)."),
    method: str | None = typer.Option(
        None, "--method", help=f"Training method: {', '.join(METHODS)} (default: dukd)."),
    train_data: list[Path] | None = typer.Option(
        None, "--train-data", metavar="DIR",
        help="Folder of HR images, or HR/ + LR_bicubic/X<s>/ (repeatable; default: the demo "
        "images shipped with srcompress)."),
    val_benchmark: list[str] | None = typer.Option(
        None, "--val-benchmark", metavar="NAME",
        help="Validation benchmark name or folder (repeatable; default: Set5)."),
    no_validation: bool = typer.Option(False, "--no-validation",
                                       help="Train without validating (no best.safetensors)."),
    val_every: int | None = typer.Option(None, "--val-every", help="Iterations between "
                                         "validations (default: 5000, and at the end)."),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Where benchmarks live (default: $SRCOMPRESS_DATA, else "
        "~/.cache/srcompress/datasets)."),
    scale: int | None = typer.Option(None, "--scale", help="Upscaling factor (default: the "
                                     "teacher's)."),
    iters: int | None = typer.Option(None, "--iters", help="Training iterations (default: "
                                     "250000, the paper's)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Patches per iteration "
                                          "and process (default: 16)."),
    patch_size: int | None = typer.Option(None, "--patch-size", help="LR patch side in pixels "
                                          "(default: 48)."),
    lr: float | None = typer.Option(None, "--lr", help="Adam learning rate (default: 1e-4)."),
    schedule: str | None = typer.Option(
        None, "--schedule", help="multistep (x gamma at each milestone) or cosine "
        "(default: multistep)."),
    milestones: str | None = typer.Option(
        None, "--milestones", metavar="F,F",
        help="Multistep milestones as fractions of --iters (default: 0.4,0.8)."),
    gamma: float | None = typer.Option(None, "--gamma", help="Multistep factor (default: 0.1)."),
    grad_clip: float | None = typer.Option(None, "--grad-clip", help="Clip the gradient norm "
                                           "to this value, 0 = off (default: 0)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (default: 0)."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N "
                                      "(default: auto)."),
    amp: bool | None = typer.Option(None, "--amp/--no-amp", help="bf16/fp16 mixed precision on "
                                    "CUDA (default: on)."),
    ema: float | None = typer.Option(None, "--ema", help="EMA decay of the student's weights, "
                                     "0 = off (default: 0.999)."),
    workers: int | None = typer.Option(None, "--workers", help="Data loader processes "
                                       "(default: 2)."),
    config: Path | None = typer.Option(None, "--config", help="TOML file with the same keys "
                                       "(flags win); a run's config.toml repeats it."),
    output: Path | None = typer.Option(
        None, "--output", help="Run folder (default: runs/<teacher-stem>-<method>-<date>)."),
    save_every: int | None = typer.Option(None, "--save-every", help="Iterations between "
                                          "resumable checkpoints (default: 1000)."),
    log_every: int | None = typer.Option(None, "--log-every", help="Iterations between loss "
                                         "entries in metrics.json (default: 100)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its "
                                "last checkpoint."),
    json_path: str | None = JSON_OPTION,
    **method_values: Any,
) -> None:
    """Train a small student from TEACHER by knowledge distillation (DUKD by default).

    Writes student.safetensors (final EMA weights), best.safetensors, metrics.json, config.toml
    and resumable checkpoints into --output. Ctrl-C writes a checkpoint and stops cleanly.
    """
    if no_validation and val_benchmark:
        raise UserInputError("--no-validation and --val-benchmark contradict each other: "
                             "keep one.")
    chosen_options = {key: value for key, value in method_values.items() if value is not None}
    reporter = RichReporter(console=error_console if not human_output(json_path) else console,
                            description=method or "dukd")
    result = distill(
        teacher=teacher, student=student, method=method, train_data=train_data,
        val_benchmarks=[] if no_validation else val_benchmark or None, scale=scale, iters=iters,
        batch_size=batch_size, patch_size=patch_size, lr=lr, seed=seed, device=device, amp=amp,
        ema=ema, workers=workers, output=output, save_every=save_every, resume=resume,
        method_options=chosen_options or None, data_root=data_root, val_every=val_every,
        schedule=schedule, milestones=_fractions(milestones), gamma=gamma, grad_clip=grad_clip,
        log_every=log_every, config=config, reporter=reporter)
    if from_environment().is_main:  # under torchrun, rank 0 speaks for the run
        if human_output(json_path):
            _print(result)
        emit_json(_report(result), json_path)
    if not result.completed:
        raise typer.Exit(130)


def _fractions(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserInputError(f"--milestones must be comma-separated fractions such as 0.4,0.8, "
                             f"got {text!r}.") from None


def _report(result: DistillResult) -> dict[str, Any]:
    return {"output": str(result.output), "completed": result.completed,
            "student": str(result.student) if result.completed else None,
            "best": str(result.best) if result.best else None,
            "iteration": result.metrics["iteration"], "best_validation": result.metrics["best"],
            "validations": result.metrics["validations"]}


def _print(result: DistillResult) -> None:
    metrics = result.metrics
    if not result.completed:
        console.print(f"[yellow]Stopped at iteration {metrics['iteration']}[/]; the checkpoint "
                      f"is saved: continue with --output {result.output} --resume.")
        return
    validations = metrics["validations"]
    if validations:
        last, best = validations[-1], metrics["best"]
        table = Table(title="Validation (Y-PSNR / SSIM)")
        table.add_column("benchmark")
        table.add_column(f"final (iter {last['iteration']})", justify="right")
        table.add_column(f"best (iter {best['iteration']})", justify="right")
        for name, final in last["results"].items():
            top = best["results"][name]
            table.add_row(name, f"{final['psnr']:.2f} dB / {final['ssim']:.4f}",
                          f"{top['psnr']:.2f} dB / {top['ssim']:.4f}")
        console.print(table)
    console.print(f"Student: [bold]{result.student}[/]")
    if result.best is not None:
        console.print(f"Best:    {result.best}")


distill_command.__signature__ = inspect.signature(distill_command).replace(  # type: ignore[attr-defined]
    parameters=[parameter for parameter in inspect.signature(distill_command).parameters.values()
                if parameter.kind is not inspect.Parameter.VAR_KEYWORD] + _method_parameters())
app.command("distill", epilog=EXAMPLE)(distill_command)

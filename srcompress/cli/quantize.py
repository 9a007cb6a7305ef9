"""`srcompress quantize MODEL`: a thin layer over `srcompress.quant.quantize`.

The training flags are those of `distill`; the options of the three QAT methods (`dukd`, `kd`,
`none` = the scratch loss) get one flag each, generated from the method registry as in `distill`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from srcompress.cli import app
from srcompress.cli.common import JSON_OPTION, console, emit_json, error_console, human_output
from srcompress.cli.distill import _fractions
from srcompress.errors import UserInputError
from srcompress.methods import method_options
from srcompress.quant.qat import QAT_METHODS, QuantizeResult, quantize
from srcompress.train.progress import RichReporter

EXAMPLE = """Examples:

  srcompress quantize student.safetensors --w-bits 4 --a-bits 4 --iters 30000 --output runs/w4a4

  srcompress quantize student.safetensors --teacher teacher.safetensors --method kd

  srcompress quantize student.safetensors --output runs/w4a4 --resume
"""

METHOD_PANEL = "Method options (a flag applies to the methods named in its help)"


def _method_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per option of the QAT methods, shared by those that declare it."""
    declared: dict[str, tuple[type, dict[str, Any], str]] = {}
    for label, name in QAT_METHODS.items():
        for option, description in method_options(name).items():
            kind, defaults, text = declared.get(option, (description.type, {}, description.help))
            defaults[label] = description.default
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
    scale: int | None = typer.Option(None, "--scale", help="Upscaling factor; must be the "
                                     "model's (default: the model's)."),
    iters: int | None = typer.Option(None, "--iters", help="Training iterations (default: "
                                     "30000)."),
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
    ema: float | None = typer.Option(None, "--ema", help="EMA decay of the weights, 0 = off "
                                     "(default: 0.999)."),
    workers: int | None = typer.Option(None, "--workers", help="Data loader processes "
                                       "(default: 2)."),
    config: Path | None = typer.Option(None, "--config", help="TOML file with the same keys "
                                       "(flags win); a run's config.toml repeats it."),
    output: Path | None = typer.Option(
        None, "--output", help="Run folder (default: runs/<model-stem>-w<W>a<A>-<method>-<date>)."),
    save_every: int | None = typer.Option(None, "--save-every", help="Iterations between "
                                          "resumable checkpoints (default: 1000)."),
    log_every: int | None = typer.Option(None, "--log-every", help="Iterations between loss "
                                         "entries in metrics.json (default: 100)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its "
                                "last checkpoint."),
    json_path: str | None = JSON_OPTION,
    **method_values: Any,
) -> None:
    """Quantization-aware training of MODEL, guided by a full-precision teacher (DUKD default).

    Replaces the body convolutions (all with --quantize-all) by fake-quant ones with per-channel
    weights and learned activation ranges, calibrates the ranges, fine-tunes, and writes
    quantized.safetensors (which evaluate, info and export take as MODEL), best.safetensors,
    metrics.json, config.toml and resumable checkpoints into --output.
    """
    if no_validation and val_benchmark:
        raise UserInputError("--no-validation and --val-benchmark contradict each other: "
                             "keep one.")
    chosen_options = {key: value for key, value in method_values.items() if value is not None}
    reporter = RichReporter(console=error_console if not human_output(json_path) else console,
                            description=f"quantize ({method or 'dukd'})")
    result = quantize(
        model=model, teacher=teacher, method=method, w_bits=w_bits, a_bits=a_bits,
        scope="all" if quantize_all else None, calibration_batches=calibration_batches,
        train_data=train_data, val_benchmarks=[] if no_validation else val_benchmark or None,
        scale=scale, iters=iters, batch_size=batch_size, patch_size=patch_size, lr=lr, seed=seed,
        device=device, amp=amp, ema=ema, workers=workers, output=output, save_every=save_every,
        resume=resume, method_options=chosen_options or None, data_root=data_root,
        val_every=val_every, schedule=schedule, milestones=_fractions(milestones), gamma=gamma,
        grad_clip=grad_clip, log_every=log_every, config=config, reporter=reporter)
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
    report, metrics = result.report, result.metrics
    console.print(f"Quantized w{report.w_bits}a{report.a_bits} ({report.scope}): "
                  f"{len(report.quantized)} layers; full precision: "
                  + (", ".join(f"{name} ({why})" for name, why in report.full_precision.items())
                     or "none"))
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
    console.print(f"Quantized model: [bold]{result.quantized}[/]")
    if result.best is not None:
        console.print(f"Best:            {result.best}")


quantize_command.__signature__ = inspect.signature(quantize_command).replace(  # type: ignore[attr-defined]
    parameters=[parameter for parameter in inspect.signature(quantize_command).parameters.values()
                if parameter.kind is not inspect.Parameter.VAR_KEYWORD] + _method_parameters())
app.command("quantize", epilog=EXAMPLE)(quantize_command)

"""`srcompress evaluate MODEL`: a thin layer over `srcompress.evaluation.evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from srcompress.cli import app, inference_flags
from srcompress.cli.common import JSON_OPTION, console, emit_json, error_console, human_output
from srcompress.evaluation import evaluate

EXAMPLE = """Examples:

  srcompress evaluate bicubic --benchmark Set5 --scale 4

  srcompress evaluate runs/dukd/student.safetensors --benchmark Set5 --benchmark Urban100 -v

  srcompress evaluate model.onnx --benchmark my_photos/ --tile 256 --save-images out/ --json -

  srcompress evaluate student.safetensors --benchmark real_photos/ --no-reference \
      --reference-model teacher.pth
"""


def evaluate_command(
    model: str = typer.Argument(..., metavar="MODEL",
                                help="Checkpoint, .onnx file, or 'bicubic' for the baseline."),
    benchmark: list[str] | None = typer.Option(
        None, "--benchmark", "-b", metavar="NAME",
        help="Set5, Set14, B100, Urban100, Manga109, DIV2K-val, or a folder (repeatable; "
        "default: Set5)."),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Where benchmarks live (default: $SRCOMPRESS_DATA, else "
        "~/.cache/srcompress/datasets)."),
    scale: int | None = inference_flags.SCALE_OPTION,
    crop_border: int | None = typer.Option(None, "--crop-border",
                                           help="Pixels ignored on every side (default: scale)."),
    y_channel: bool = typer.Option(True, "--y-channel/--rgb",
                                   help="Measure on BT.601 luma (as papers do) or on RGB."),
    tile: int | None = typer.Option(None, "--tile", help="Run in tiles of N LR pixels."),
    tile_pad: int = inference_flags.TILE_PAD_OPTION,
    self_ensemble: bool = inference_flags.SELF_ENSEMBLE_OPTION,
    device: str = inference_flags.DEVICE_OPTION,
    fp16: bool = inference_flags.FP16_OPTION,
    arch: str | None = inference_flags.ARCH_OPTION,
    memory_budget: float | None = inference_flags.MEMORY_BUDGET_OPTION,
    save_images: Path | None = typer.Option(
        None, "--save-images", metavar="DIR",
        help="Write SR outputs and bicubic | model | ground-truth comparison crops here."),
    no_reference: bool = typer.Option(
        False, "--no-reference",
        help="No ground truth: score the outputs with NIQE. A bare folder then holds the LR "
        "inputs themselves; a paired benchmark's HR images are ignored."),
    reference_model: str | None = typer.Option(
        None, "--reference-model", metavar="MODEL",
        help="Also report PSNR/SSIM of MODEL's outputs against this model's (e.g. the teacher) "
        "on the same inputs."),
    with_niqe: bool = typer.Option(False, "--niqe",
                                   help="Also report NIQE when there is ground truth."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print per-image rows."),
    json_path: str | None = JSON_OPTION,
) -> None:
    """Measure PSNR/SSIM of MODEL on benchmarks with the field's exact protocol.

    Ground truth is cropped to a multiple of the scale.
    LR inputs are the benchmark's MATLAB-made files, else MATLAB-style bicubic.
    The output is rounded to 8 bits; a border of `scale` pixels is ignored; BT.601 luma.
    Without ground truth (--no-reference), NIQE as MATLAB's niqe (lower is better).
    """
    shown = console if human_output(json_path) else error_console
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=shown, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def advance(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        report = evaluate(model, benchmark or ["Set5"], scale=scale, data_root=data_root,
                          crop_border=crop_border, y_channel=y_channel, tile=tile,
                          tile_pad=tile_pad, self_ensemble=self_ensemble, device=device,
                          fp16=fp16, arch=arch, save_images=save_images,
                          no_reference=no_reference, reference_model=reference_model,
                          with_niqe=with_niqe, progress=advance,
                          memory_budget=inference_flags.memory_budget_bytes(memory_budget))
    for result in report["results"]:
        if result["niqe_skipped"]:
            error_console.print(
                f"[yellow]Warning:[/] NIQE left out {len(result['niqe_skipped'])} image(s) of "
                f"{result['benchmark']} whose output is smaller than 96x96: "
                f"{', '.join(result['niqe_skipped'])}.")
    if human_output(json_path):
        _print(report, verbose, save_images)
    emit_json(report, json_path)


def _columns(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(heading, result key, format) of each measure this report holds."""
    channel = "Y" if report["y_channel"] else "RGB"
    candidates = [(f"PSNR ({channel})", "psnr", "{:.2f} dB"), ("SSIM", "ssim", "{:.4f}"),
                  ("NIQE", "niqe", "{:.3f}"),
                  (f"PSNR to reference ({channel})", "psnr_to_reference", "{:.2f} dB"),
                  ("SSIM to reference", "ssim_to_reference", "{:.4f}")]
    return [column for column in candidates
            if any(result[column[1]] is not None for result in report["results"])]


def _cell(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def _print(report: dict[str, Any], verbose: bool, save_images: Path | None) -> None:
    channel = "Y" if report["y_channel"] else "RGB"
    title = f"{report['model']}  x{report['scale']}  ({channel}, border {report['crop_border']})"
    if report["reference_model"] is not None:
        title += f"  reference: {report['reference_model']}"
    columns = _columns(report)
    table = Table(title=title)
    for heading in ("benchmark", "images", *(column[0] for column in columns), "seconds"):
        table.add_column(heading, justify="left" if heading == "benchmark" else "right")
    for result in report["results"]:
        table.add_row(result["benchmark"], str(result["images"]),
                      *(_cell(result[key], form) for _, key, form in columns),
                      f"{result['seconds']:.1f}")
    console.print(table)
    if verbose:
        for result in report["results"]:
            rows = Table(title=f"{result['benchmark']} per image")
            for heading in ("image", *(column[0] for column in columns)):
                rows.add_column(heading, justify="left" if heading == "image" else "right")
            for row in result["per_image"]:
                rows.add_row(row["name"], *(_cell(row[key], form) for _, key, form in columns))
            console.print(rows)
    if save_images is not None:
        console.print(f"SR images and comparisons written to [bold]{save_images}[/]")


app.command("evaluate", epilog=EXAMPLE)(evaluate_command)

"""`srcompress upscale MODEL INPUT... -o DIR`: a thin layer over `srcompress.inference.upscale`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from srcompress.cli import app, inference_flags
from srcompress.cli.common import JSON_OPTION, console, emit_json, error_console, human_output
from srcompress.inference import FailedImage, SomeImagesFailed, UpscaledImage, upscale

EXAMPLE = """Examples:

  srcompress upscale runs/dukd/student.safetensors photo.jpg -o out/

  srcompress upscale model.onnx photos/ -o out/ --tile 256

  srcompress upscale bicubic photo.png --scale 4 -o out/

An image that cannot be processed (corrupt, too large) is reported on its own line and the
others go on; the exit code is 1 if any failed (--fail-fast stops at the first).
"""


def upscale_command(
    model: str = typer.Argument(..., metavar="MODEL",
                                help="Checkpoint, .onnx file, or 'bicubic' (needs --scale)."),
    inputs: list[Path] = typer.Argument(..., metavar="INPUT...", help="Images or folders."),
    output: Path = typer.Option(..., "--output", "-o", metavar="DIR",
                                help="Folder for the results, named <stem>_x<scale>.png."),
    scale: int | None = inference_flags.SCALE_OPTION,
    tile: int | None = typer.Option(None, "--tile", help="Run in tiles of N input pixels."),
    tile_pad: int = inference_flags.TILE_PAD_OPTION,
    self_ensemble: bool = inference_flags.SELF_ENSEMBLE_OPTION,
    device: str = inference_flags.DEVICE_OPTION,
    fp16: bool = inference_flags.FP16_OPTION,
    arch: str | None = inference_flags.ARCH_OPTION,
    memory_budget: float | None = inference_flags.MEMORY_BUDGET_OPTION,
    fail_fast: bool = typer.Option(False, "--fail-fast",
                                   help="Stop at the first image that fails."),
    json_path: str | None = JSON_OPTION,
) -> None:
    """Super-resolve images or folders of images with any MODEL."""
    shown = console if human_output(json_path) else error_console

    def report_failure(failure: FailedImage) -> None:
        error_console.print(f"[bold red]failed:[/] {failure.reason}", highlight=False,
                            soft_wrap=True)

    failures: list[FailedImage] = []
    with Progress(TextColumn("[bold]upscale"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=shown, transient=True) as bar:
        task = bar.add_task("upscale", total=None)
        try:
            results = upscale(model, inputs, output, scale=scale, device=device, fp16=fp16,
                              tile=tile, tile_pad=tile_pad, self_ensemble=self_ensemble,
                              arch=arch, memory_budget=inference_flags.memory_budget_bytes(
                                  memory_budget), fail_fast=fail_fast, on_failure=report_failure,
                              progress=lambda done, total: bar.update(task, completed=done,
                                                                      total=total))
        except SomeImagesFailed as partial:
            results, failures = partial.done, partial.failed
            unfinished: SomeImagesFailed | None = partial
        else:
            unfinished = None
    _report(model, results, failures, json_path)
    if unfinished is not None:
        raise unfinished


def _report(model: str, results: list[UpscaledImage], failures: list[FailedImage],
            json_path: str | None) -> None:
    if human_output(json_path):
        for result in results:
            console.print(f"{result.source} ({result.input_size[1]}x{result.input_size[0]}) → "
                          f"[bold]{result.output}[/] ({result.output_size[1]}x"
                          f"{result.output_size[0]})", highlight=False)
    emit_json({"model": model, "outputs": [
        {"input": str(result.source), "output": str(result.output),
         "width": result.output_size[1], "height": result.output_size[0]}
        for result in results],
        "failed": [{"input": str(failure.source), "reason": failure.reason}
                   for failure in failures]}, json_path)


app.command("upscale", epilog=EXAMPLE)(upscale_command)

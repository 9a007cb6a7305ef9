"""`srcompress info MODEL` and `srcompress models`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from srcompress.cli import app
from srcompress.cli.common import JSON_OPTION, console, emit_json, human_output
from srcompress.export import export_onnx, runtime_summary
from srcompress.models import (
    ARCHITECTURES,
    PRESETS,
    LoadedModel,
    count_macs,
    load_model,
    model_task,
)

_SHOWN_ABOVE = {"architecture", "settings", "scale", "srcompress_format", "degradation"}


@app.command(epilog="Example: srcompress info runs/edsr-dukd/student.safetensors --json -")
def info(
    model: Path = typer.Argument(..., help="Checkpoint (.safetensors, .pth, .pt, .ckpt)."),
    arch: str | None = typer.Option(None, "--arch", metavar="SPEC",
                                    help="Architecture SPEC overriding detection."),
    json_path: str | None = JSON_OPTION,
) -> None:
    """Show a checkpoint's architecture, settings, scale, task, parameters, MACs and metadata.

    The task is the degradation the model was trained for: recorded by srcompress, or guessed
    from real-world architectures (Compact, RRDBNet, real-world SwinIR).
    For a quantized checkpoint, also how many convs and matmuls ONNX Runtime runs in integers:
    the model is exported to a temporary file and read back from the runtime's optimised graph.
    """
    loaded = load_model(model, arch=arch)
    macs = count_macs(loaded.module)
    task = model_task(loaded)
    report: dict[str, Any] = {
        "model": str(model), "architecture": loaded.arch, "settings": loaded.settings,
        "scale": loaded.scale, "parameters": loaded.parameters, "macs_256x256": macs,
        "task": {"degradation": task.degradation, "real_world": task.real_world,
                 "description": task.describe()},
        "metadata": loaded.metadata,
    }
    quant = loaded.metadata.get("quant")
    if isinstance(quant, dict):
        report["skipped_layers"] = quant.get("skipped", {})
        report["onnxruntime_cpu"] = _runtime_ops(loaded)
    if human_output(json_path):
        table = Table(title=str(model), show_header=False)
        table.add_row("architecture", loaded.arch)
        table.add_row("scale", f"x{loaded.scale}")
        table.add_row("task", task.describe())
        table.add_row("parameters", f"{loaded.parameters:,} ({loaded.parameters / 1e6:.2f} M)")
        table.add_row("MACs (256x256 input)", f"{macs / 1e9:,.1f} G")
        table.add_row("settings", ", ".join(f"{k}={v}" for k, v in loaded.settings.items()))
        for key, value in loaded.metadata.items():
            if key not in _SHOWN_ABOVE:
                table.add_row(key, str(value))
        if "onnxruntime_cpu" in report:
            table.add_row("onnxruntime CPU runs", runtime_summary(report["onnxruntime_cpu"]))
            if report["skipped_layers"]:
                table.add_row("not quantized (unsupported)", ", ".join(
                    f"{name} ({kind})" for name, kind in report["skipped_layers"].items()))
        console.print(table)
    emit_json(report, json_path)


def _runtime_ops(loaded: LoadedModel) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        return export_onnx(loaded, Path(folder) / "model.onnx").runtime_ops or {}


@app.command(epilog="Example: srcompress models --json -")
def models(json_path: str | None = JSON_OPTION) -> None:
    """List the architectures srcompress builds and detects, and the named presets."""
    presets = {name: {"architecture": arch, "settings": settings}
               for name, (arch, settings) in PRESETS.items()}
    architectures = {name: {"summary": entry.summary,
                            "default_student": entry.smaller_student is not None}
                     for name, entry in ARCHITECTURES.items()}
    if human_output(json_path):
        table = Table(title="Presets")
        table.add_column("preset")
        table.add_column("architecture")
        table.add_column("settings")
        for name, entry in presets.items():
            table.add_row(name, entry["architecture"],
                          ", ".join(f"{k}={v}" for k, v in entry["settings"].items()))
        console.print(table)
        table = Table(title="Architectures (detected from weights; default students where marked)")
        table.add_column("name")
        table.add_column("summary")
        table.add_column("default student")
        for name, entry in architectures.items():
            table.add_row(name, entry["summary"], "yes" if entry["default_student"] else "")
        console.print(table)
    emit_json({"architectures": architectures, "presets": presets}, json_path)

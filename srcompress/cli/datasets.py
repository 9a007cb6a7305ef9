"""`srcompress datasets fetch NAME`, `datasets list` and `datasets degrade NAME`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from srcompress.cli import app
from srcompress.cli.common import JSON_OPTION, console, emit_json, error_console, human_output
from srcompress.data.benchmarks import (
    ArchiveLimits,
    default_data_root,
    fetch,
    installed_benchmarks,
)
from srcompress.data.degradation import resolve_degradation
from srcompress.data.synthetic import degrade_benchmark

datasets_app = typer.Typer(
    help="Download benchmark sets (checksum-verified), show what is installed, and make "
    "synthetic real-world sets.",
    no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")

DATA_ROOT_OPTION = typer.Option(
    None, "--data-root", help="Where benchmarks live (default: $SRCOMPRESS_DATA, else "
    "~/.cache/srcompress/datasets).")


@datasets_app.command("fetch", epilog="Examples:\n\n  srcompress datasets fetch Set5 --sha256 "
                      "<hex>\n\n  srcompress datasets fetch Manga109 --url https://mirror/m.zip "
                      "--sha256 <hex>")
def fetch_command(
    name: str = typer.Argument(..., metavar="NAME",
                               help="Set5, Set14, B100, Urban100, Manga109 or DIV2K-val."),
    data_root: Path | None = DATA_ROOT_OPTION,
    url: str | None = typer.Option(None, "--url", help="Download from this archive instead."),
    sha256: str | None = typer.Option(None, "--sha256", metavar="HEX",
                                      help="Expected sha256 of the archive."),
    no_verify: bool = typer.Option(False, "--no-verify",
                                   help="Install even without a checksum to check against."),
    max_expanded_gib: float = typer.Option(
        ArchiveLimits.max_bytes / 2**30, "--max-expanded-gib", min=0,
        help="Refuse archives that would unpack to more than this many GiB."),
    max_ratio: float = typer.Option(
        ArchiveLimits.max_ratio, "--max-ratio", min=1,
        help="Refuse archives that would unpack to more than this many times their size."),
    json_path: str | None = JSON_OPTION,
) -> None:
    """Download a benchmark's public archive, verify it, and install it safely.

    Nothing is unpacked before the checksum matches.
    Entries that would land outside the target folder are refused.
    Archives that would expand past --max-expanded-gib or --max-ratio are refused unpacked.
    The set appears under the data root only when complete.
    """
    shown = console if human_output(json_path) else error_console
    with Progress(TextColumn(f"[bold]{name}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=shown,
                  transient=True) as bar:
        task = bar.add_task(name, total=None)
        limits = ArchiveLimits(int(max_expanded_gib * 2**30), max_ratio)
        result = fetch(name, data_root, url=url, sha256=sha256, verify=not no_verify,
                       limits=limits,
                       progress=lambda done, total: bar.update(task, completed=done,
                                                               total=total))
    if human_output(json_path):
        if result.already_installed:
            console.print(f"{result.name} is already installed in [bold]{result.folder}[/] "
                          "(delete that folder to fetch it again).")
        else:
            console.print(f"Installed {result.name} in [bold]{result.folder}[/]")
            if no_verify:
                console.print(f"Unverified archive; its sha256 is {result.sha256}")
    emit_json({"name": result.name, "folder": str(result.folder), "sha256": result.sha256,
               "already_installed": result.already_installed}, json_path)


@datasets_app.command("list", epilog="Example:\n\n  srcompress datasets list --data-root data/")
def list_command(data_root: Path | None = DATA_ROOT_OPTION,
                 json_path: str | None = JSON_OPTION) -> None:
    """Show which benchmarks are installed under the data root, and where."""
    root = data_root if data_root is not None else default_data_root()
    rows = installed_benchmarks(root)
    if human_output(json_path):
        table = Table(title=f"Benchmarks in {root}")
        for column in ("name", "installed in", "layout", "images", "LR files"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(row.entry.name, str(row.folder) if row.folder else "[dim]not installed",
                          row.layout or "", str(row.images) if row.folder else "",
                          ", ".join(f"x{scale}" for scale in row.lr_scales))
        console.print(table)
    emit_json({"data_root": str(root), "benchmarks": [
        {"name": row.entry.name, "folder": str(row.folder) if row.folder else None,
         "layout": row.layout, "images": row.images, "lr_scales": list(row.lr_scales),
         "description": row.entry.description, "url": row.entry.url} for row in rows]},
        json_path)


@datasets_app.command("degrade", epilog="Examples:\n\n  srcompress datasets degrade Set14 "
                      "--degradation realesrgan --seed 0\n\n  srcompress datasets degrade "
                      "photos_hr/ --degradation mild.toml --scale 2 --output photos_x2/")
def degrade_command(
    name: str = typer.Argument(..., metavar="NAME",
                               help="A benchmark name or a folder of HR images."),
    degradation: str = typer.Option(
        "realesrgan", "--degradation",
        help="bicubic, realesrgan (Real-ESRGAN x4plus settings) or a TOML file of "
        "Real-ESRGAN settings."),
    scale: int = typer.Option(4, "--scale", min=2, help="Downscaling factor of the LR images."),
    seed: int = typer.Option(0, "--seed", min=0, help="The same seed makes the same set."),
    data_root: Path | None = DATA_ROOT_OPTION,
    output: Path | None = typer.Option(
        None, "--output", metavar="DIR",
        help="Where to write the set (default: DATA_ROOT/NAME-DEGRADATION-xS-seedN)."),
    json_path: str | None = JSON_OPTION,
) -> None:
    """Make a fixed-seed degraded copy of a benchmark: PSNR/SSIM for real-world models.

    Writes HR/ and LR_<degradation>/X<s>/ (the layout evaluate reads) and degradation.json.
    """
    chosen = resolve_degradation(degradation)
    label = Path(degradation).stem if degradation.lower().endswith(".toml") else chosen.name
    shown = console if human_output(json_path) else error_console
    with Progress(TextColumn(f"[bold]{name}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), TimeRemainingColumn(), console=shown, transient=True) as bar:
        task = bar.add_task(name, total=None)
        made = degrade_benchmark(name, chosen, scale, seed, data_root=data_root, output=output,
                                 label=label, progress=lambda done, total: bar.update(
                                     task, completed=done, total=total))
    # A set written under the data root is found by its name, as the registry's sets are.
    benchmark = made.folder.name if output is None else made.folder
    if human_output(json_path):
        console.print(f"Wrote {made.images} {chosen.name} x{scale} pairs (seed {seed}) to "
                      f"[bold]{made.folder}[/]; evaluate with --benchmark {benchmark}, or "
                      f"--benchmark {made.lr_folder} --no-reference for its LR images alone.")
    emit_json({"folder": str(made.folder), "lr_folder": str(made.lr_folder),
               "images": made.images, "scale": scale, "seed": seed,
               "degradation": chosen.settings()}, json_path)

"""The `srcompress` command: a thin Typer layer over the library API.

This package is the only place that knows about exit codes: library code raises
`UserInputError` (exit 2) or `WorkFailedError` (exit 1), and `main` turns them into one sentence.
Each command lives in its own module and registers itself on `app`.
"""

from __future__ import annotations

import os
import sys
import traceback

import click
import typer
from typer.core import TyperGroup

from srcompress._version import __version__
from srcompress.cli.common import console, error_console
from srcompress.data.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_VARIABLE
from srcompress.errors import SRCompressError

# `srcompress --help` lists the commands in the order of the job, then the helpers.
COMMAND_ORDER = ("distill", "quantize", "evaluate", "export", "upscale", "info", "models",
                 "datasets")


class _JobOrder(TyperGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: COMMAND_ORDER.index(name)
                      if name in COMMAND_ORDER else len(COMMAND_ORDER))


app = typer.Typer(
    name="srcompress",
    cls=_JobOrder,
    help="Compress super-resolution models: distill a big teacher into a small student (DUKD, "
    "MKD), quantize it, evaluate it with the field's exact PSNR/SSIM protocol, export to ONNX.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        console.print(f"srcompress {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors."),
    max_pixels: int | None = typer.Option(
        None, "--max-pixels", metavar="N", min=1,
        help=f"Refuse images of more than N pixels (default: {DEFAULT_MAX_PIXELS}, i.e. "
        f"8192x8192, or ${MAX_PIXELS_VARIABLE}); guards against decompression bombs."),
) -> None:
    if debug:
        os.environ["SRCOMPRESS_DEBUG"] = "1"
    if max_pixels is not None:  # read by every image read of this process and its workers
        os.environ[MAX_PIXELS_VARIABLE] = str(max_pixels)


from srcompress.cli import datasets as _datasets  # noqa: E402, F401
from srcompress.cli import distill as _distill  # noqa: E402, F401
from srcompress.cli import evaluate as _evaluate  # noqa: E402, F401
from srcompress.cli import export as _export  # noqa: E402, F401
from srcompress.cli import info as _info  # noqa: E402, F401  (commands register on `app`)
from srcompress.cli import quantize as _quantize  # noqa: E402, F401
from srcompress.cli import upscale as _upscale  # noqa: E402, F401


def main() -> None:
    """Entry point: run the app and turn every expected failure into one sentence + exit code."""
    try:
        app()
    except SRCompressError as error:
        error_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        if os.environ.get("SRCOMPRESS_DEBUG"):
            traceback.print_exc()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        error_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as error:
        if os.environ.get("SRCOMPRESS_DEBUG"):
            raise
        error_console.print(
            f"[bold red]internal error:[/] {type(error).__name__}: {error} "
            "(rerun with --debug for the traceback and please report it)", highlight=False,
            soft_wrap=True)
        sys.exit(1)

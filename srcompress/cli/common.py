"""What every command shares: the output and error consoles, and `--json` output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from srcompress.files import atomic_path

console = Console()
error_console = Console(stderr=True)

JSON_OPTION = typer.Option(None, "--json", metavar="PATH",
                           help="Also write machine-readable results to PATH ('-' for stdout).")


def emit_json(data: Any, destination: str | None) -> None:
    """Write `data` as JSON to a file (atomically) or, for '-', to stdout."""
    if destination is None:
        return
    text = json.dumps(data, indent=2, default=str)
    if destination == "-":
        sys.stdout.write(text + "\n")
        return
    with atomic_path(Path(destination)) as temporary:
        temporary.write_text(text + "\n", encoding="utf-8")


def human_output(destination: str | None) -> bool:
    """Rich tables go to the terminal unless stdout is reserved for `--json -`."""
    return destination != "-"

"""The flags of the commands that run a model on images (`evaluate`, `upscale`; `--arch` also
`export`), defined once so that the same flag means and says the same in every command."""

from __future__ import annotations

import typer

from srcompress.errors import UserInputError

SCALE_OPTION = typer.Option(None, "--scale", help="Upscaling factor (default: the model's).")
TILE_PAD_OPTION = typer.Option(10, "--tile-pad", help="Context pixels around each tile.")
SELF_ENSEMBLE_OPTION = typer.Option(False, "--self-ensemble",
                                    help="Average over 8 flips/rotations (x8 slower).")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
FP16_OPTION = typer.Option(False, "--fp16", help="Half precision (CUDA only).")
ARCH_OPTION = typer.Option(None, "--arch", metavar="SPEC",
                           help="Architecture SPEC overriding detection.")
MEMORY_BUDGET_OPTION = typer.Option(
    None, "--memory-budget", metavar="GIB",
    help="Memory a forward pass may use; larger images are tiled to fit (default: half of what "
    "the device has available).")


def memory_budget_bytes(gib: float | None) -> int | None:
    """`--memory-budget` in GiB as bytes (None stays None: the device's own default)."""
    if gib is None:
        return None
    if not gib > 0 or gib == float("inf"):
        raise UserInputError(f"--memory-budget must be a positive number of GiB, got {gib}.")
    return max(1, int(gib * 2**30))

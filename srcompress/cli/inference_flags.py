"""The flags of the commands that run a model on images (`evaluate`, `upscale`; `--arch` also
`export`), defined once so that the same flag means and says the same in every command."""

from __future__ import annotations

import typer

SCALE_OPTION = typer.Option(None, "--scale", help="Upscaling factor (default: the model's).")
TILE_PAD_OPTION = typer.Option(10, "--tile-pad", help="Context pixels around each tile.")
SELF_ENSEMBLE_OPTION = typer.Option(False, "--self-ensemble",
                                    help="Average over 8 flips/rotations (x8 slower).")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
FP16_OPTION = typer.Option(False, "--fp16", help="Half precision (CUDA only).")
ARCH_OPTION = typer.Option(None, "--arch", metavar="SPEC",
                           help="Architecture SPEC overriding detection.")

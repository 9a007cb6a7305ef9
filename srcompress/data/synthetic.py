"""Synthetic real-world benchmarks: a benchmark's HR images degraded once, with a fixed seed.

Real photos have no ground truth, so a real-world model can only be scored by NIQE on them. A
synthetic set gives PSNR/SSIM as well: each HR image (cropped to a multiple of the scale) is
degraded by the chosen pipeline with a seed made from (seed, image index), and the pair is
written in the benchmark layout `evaluate` reads:

    OUTPUT/HR/<name>.png
    OUTPUT/LR_<degradation>/X<s>/<name>x<s>.png
    OUTPUT/degradation.json   (source, scale, seed and every degradation setting)

The set is written into a temporary folder next to OUTPUT and renamed into place when complete,
so an interrupted run leaves nothing half-made; the same command makes the same files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from srcompress._version import __version__
from srcompress.data.benchmarks import default_data_root, find_benchmark
from srcompress.data.degradation import Degradation, DegradationRandom
from srcompress.data.images import read_image, write_image
from srcompress.errors import UserInputError
from srcompress.files import make_temporary_folder

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class DegradedSet:
    """Where `degrade_benchmark` wrote the set, and how many images it holds."""

    folder: Path
    lr_folder: Path
    images: int


def degrade_benchmark(name: str | os.PathLike[str], degradation: Degradation, scale: int,
                      seed: int, data_root: str | os.PathLike[str] | None = None,
                      output: str | os.PathLike[str] | None = None, label: str | None = None,
                      progress: ProgressCallback | None = None) -> DegradedSet:
    """Write the degraded copy of benchmark `name` (a registry name or a folder of HR images).

    The default OUTPUT is `<data root>/<name>-<label>-x<scale>-seed<seed>`, `label` defaulting
    to the degradation's name. An existing OUTPUT is refused rather than mixed with.
    """
    source = find_benchmark(name, data_root, scale)
    label = label or degradation.name
    root = Path(data_root) if data_root is not None else default_data_root()
    target = (Path(output) if output is not None
              else root / f"{source.name}-{label}-x{scale}-seed{seed}")
    if target.exists():
        raise UserInputError(f"{target} already exists: delete it or pass another --output.")
    workspace = make_temporary_folder(target.parent, f".{target.name}-", "--output")
    lr_relative = Path(f"LR_{degradation.name}") / f"X{scale}"
    try:
        for index, pair in enumerate(source.pairs):
            hr = read_image(pair.hr_path)
            hr = hr[:, :hr.shape[1] // scale * scale, :hr.shape[2] // scale * scale]
            if min(hr.shape[1:]) < scale:
                raise UserInputError(f"{pair.hr_path} is smaller than the scale x{scale}.")
            lr = degradation.degrade(hr[None], scale, DegradationRandom((seed, index)))[0]
            write_image(workspace / "HR" / f"{pair.name}.png", hr)
            write_image(workspace / lr_relative / f"{pair.name}x{scale}.png", lr)
            if progress:
                progress(index + 1, len(source.pairs))
        provenance = {"source": str(source.folder), "benchmark": source.name, "scale": scale,
                      "seed": seed, "degradation": degradation.settings(),
                      "srcompress": __version__}
        (workspace / "degradation.json").write_text(json.dumps(provenance, indent=2) + "\n",
                                                    encoding="utf-8")
        os.replace(workspace, target)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    return DegradedSet(target, target / lr_relative, len(source.pairs))

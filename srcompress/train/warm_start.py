"""Warm start (`distill --init CHECKPOINT`): the student begins from given weights.

The DUKD paper initialises its x3 and x4 students from the trained x2 ones: every layer whose name
and shape match is loaded, and the upsampler is left freshly initialised when the scales differ
(its pixel-shuffle convolutions would otherwise be copied between stages of different meaning,
even where shapes happen to agree). Layers of other shapes (another width or depth) keep their
initial weights; the run says which layers were loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from srcompress.errors import UserInputError
from srcompress.models import load_model


@dataclass(frozen=True)
class WarmStart:
    source: Path
    source_scale: int
    loaded: list[str]
    kept: list[str]

    def describe(self) -> str:
        text = (f"Warm start from {self.source} (x{self.source_scale}): loaded "
                f"{_modules(self.loaded)}")
        if self.kept:
            text += f"; freshly initialised {_modules(self.kept)}"
        return text + "."


def upsampler_prefixes(module: nn.Module) -> tuple[str, ...]:
    """Names of the sub-modules that hold a pixel shuffle: the scale-specific upsampler."""
    return tuple(f"{name}." for name, child in module.named_modules()
                 if name and any(isinstance(grandchild, nn.PixelShuffle)
                                 for grandchild in child.children()))


def warm_start(student: nn.Module, arch: str, scale: int, checkpoint: str | Path) -> WarmStart:
    """Loads the matching tensors of `checkpoint` into `student` (in place)."""
    source = load_model(checkpoint)
    if source.arch != arch:
        raise UserInputError(
            f"--init {checkpoint} holds a {source.arch} model but the student is {arch}: pass a "
            f"{arch} checkpoint, or a student SPEC of its architecture.")
    skipped = upsampler_prefixes(student) if source.scale != scale else ()
    own, given = student.state_dict(), source.module.state_dict()
    loaded = {name: tensor for name, tensor in given.items()
              if name in own and tensor.shape == own[name].shape and not name.startswith(skipped)}
    if not any(tensor.ndim > 1 for tensor in loaded.values()):  # a bias alone starts nothing
        raise UserInputError(
            f"--init {checkpoint} has no weight of the student's names and shapes: pass a "
            "checkpoint of the same architecture and width.")
    student.load_state_dict(loaded, strict=False)
    return WarmStart(Path(checkpoint), source.scale, list(loaded),
                     [name for name in own if name not in loaded])


def _modules(names: list[str]) -> str:
    """Tensor names summarised by top-level module, with a count where it holds several."""
    counts: dict[str, int] = {}
    for name in names:
        top = name.split(".")[0]
        counts[top] = counts.get(top, 0) + 1
    return ", ".join(top if count <= 2 else f"{top} ({count} tensors)"
                     for top, count in counts.items())

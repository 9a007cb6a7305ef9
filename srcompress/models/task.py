"""Which task a model was trained for: its degradation, when it can be known.

A checkpoint written by srcompress records the degradation its student was trained on
(`degradation` metadata: `bicubic`, `realesrgan` or a table of Real-ESRGAN settings). A
third-party checkpoint records nothing, but some architectures are, in practice, real-world
models: SRVGGNetCompact exists only as Real-ESRGAN's compact models; RRDBNet is Real-ESRGAN's
x4plus and most community ESRGAN models (the original ESRGAN is the exception); SwinIR and
Swin2SR with the `nearest+conv` upsampler are their real-world variants. For those we know the
family, not the exact degradation, so `distill` warns instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from srcompress.models.checkpoint import LoadedModel

_REAL_WORLD_ARCHITECTURES = {
    "compact": "SRVGGNetCompact, the architecture of Real-ESRGAN's compact real-world models",
    "esrgan": "RRDBNet (ESRGAN), the architecture of Real-ESRGAN x4plus and most community "
              "real-world ESRGAN models",
}
_REAL_WORLD_UPSAMPLER = ("swinir", "swin2sr")


@dataclass(frozen=True)
class Task:
    """What is known about a model's task: the recorded degradation (None when unknown), and
    whether its architecture is usually trained for real-world SR (`real_world`, with `why`)."""

    degradation: str | dict[str, Any] | None
    real_world: bool
    why: str

    def describe(self) -> str:
        """One line for `info` and run messages."""
        if isinstance(self.degradation, dict):
            return "realesrgan with custom settings (recorded in its metadata)"
        if self.degradation is not None:
            return f"{self.degradation} (recorded in its metadata)"
        if self.real_world:
            return f"real-world SR, degradation unknown: {self.why}"
        return "not recorded (bicubic SR assumed)"


def model_task(model: LoadedModel) -> Task:
    """The task of `model`, from its metadata or, failing that, its architecture."""
    recorded = model.metadata.get("degradation")
    real_world = model.arch in _REAL_WORLD_ARCHITECTURES
    why = _REAL_WORLD_ARCHITECTURES.get(model.arch, "")
    if model.arch in _REAL_WORLD_UPSAMPLER and model.settings.get("upsampler") == "nearest+conv":
        real_world = True
        why = (f"{model.arch} with the nearest+conv upsampler, the configuration of its "
               "real-world models")
    if isinstance(recorded, str | dict):
        return Task(recorded, real_world, why)
    return Task(None, real_world, why)

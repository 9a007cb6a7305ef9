"""Degradations: the task a model solves, as the way its LR inputs are made from HR images.

`pipeline` holds the degradations (`bicubic`, `realesrgan`) and `resolve_degradation`, `options`
the Real-ESRGAN settings and their TOML files, `kernels` the blur kernels, `stages` the batched
image operations.
"""

from srcompress.data.degradation.options import RealESRGANOptions, read_options
from srcompress.data.degradation.pipeline import (
    DEGRADATION_NAMES,
    BicubicDegradation,
    Degradation,
    DegradationRandom,
    RealESRGANDegradation,
    degradation_setting,
    resolve_degradation,
)

__all__ = ["DEGRADATION_NAMES", "BicubicDegradation", "Degradation", "DegradationRandom",
           "RealESRGANDegradation", "RealESRGANOptions", "degradation_setting", "read_options",
           "resolve_degradation"]

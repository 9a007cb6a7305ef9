"""Every architecture spandrel recognises, as a plain trainable `nn.Module`.

We use spandrel for detection and for its architecture classes, but call the module itself,
never spandrel's inference wrapper (which clamps outputs and forces eval mode, both wrong for
training a student). Settings are the constructor arguments spandrel records in
`module.hyperparameters`, so a saved student rebuilds from its metadata like our own models.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import warnings
from collections.abc import Mapping
from typing import Any

import spandrel
from torch import nn

from srcompress.errors import UserInputError
from srcompress.models.registry import (
    ARCHITECTURES,
    Architecture,
    Detection,
    StateDict,
    register,
    scale_argument_of,
)


@functools.cache
def architecture_class(arch_id: str) -> type[nn.Module]:
    """The module class spandrel builds for `arch_id` (the one class its package exports)."""
    package = importlib.import_module(f"spandrel.architectures.{arch_id}")
    classes = {value for value in vars(package).values()
               if isinstance(value, type) and issubclass(value, nn.Module)
               and value.__module__.startswith(package.__name__)}
    if len(classes) != 1:
        raise UserInputError(f"spandrel architecture {arch_id} cannot be built from settings.")
    return classes.pop()


def json_settings(module: nn.Module) -> dict[str, Any]:
    """The module's recorded hyperparameters that survive JSON (tuples become lists).

    Values JSON cannot hold (e.g. `norm_layer=nn.LayerNorm`) are left out, which is safe only
    because they are the constructor defaults; anything else is refused rather than lost.
    """
    defaults = {name: p.default for name, p in
                inspect.signature(type(module).__init__).parameters.items()}
    settings: dict[str, Any] = {}
    for name, value in getattr(module, "hyperparameters", {}).items():
        try:
            settings[name] = json.loads(json.dumps(value))
        except TypeError as error:
            if defaults.get(name) is not value:
                raise UserInputError(
                    f"Setting '{name}' of {type(module).__name__} cannot be stored in a checkpoint."
                ) from error
    return settings


def _detector(arch_id: str, name: str):
    support = spandrel.MAIN_REGISTRY.get(arch_id)

    def detect(state: StateDict) -> Detection | None:
        if not support.detect(state):
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            descriptor = support.architecture.load(state)
        module = descriptor.model
        settings = json_settings(module)
        settings.pop(scale_argument_of(type(module)), None)
        return Detection(name, settings, descriptor.scale, module.state_dict(), "spandrel")

    return detect


def _smaller_swinir(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The DUKD paper's SwinIR pair: embed 180 with 6×6 blocks → embed 60 with 4×6; a real-world
    teacher's `nearest+conv` upsampler is kept (it avoids pixel-shuffle's checkerboards on GAN
    outputs), any other becomes pixelshuffle as in the paper."""
    heads = settings.get("num_heads", [6, 6, 6, 6])[0]
    embed = max(heads, settings.get("embed_dim", 96) // 3 // heads * heads)
    upsampler = "nearest+conv" if settings.get("upsampler") == "nearest+conv" else "pixelshuffle"
    return {**settings, "embed_dim": embed, "depths": [6] * 4, "num_heads": [heads] * 4,
            "upsampler": upsampler}


def _compact_for_esrgan(settings: Mapping[str, Any]) -> dict[str, Any]:
    """RRDBNet teachers (ESRGAN, Real-ESRGAN x4plus) get SRVGGNetCompact, Real-ESRGAN's own fast
    architecture: the teacher's width, 1.4 convolutions per RRDB block (32 for x4plus's 23
    blocks, the size of realesr-general-x4v3: about 1/14 of x4plus's cost per pixel)."""
    student = {"num_feat": settings.get("num_filters", 64),
               "num_conv": max(2, round(settings.get("num_blocks", 23) * 1.4))}
    for teacher_key, student_key in (("in_nc", "num_in_ch"), ("out_nc", "num_out_ch")):
        if settings.get(teacher_key, 3) != 3:
            student[student_key] = settings[teacher_key]
    return student


def _smaller_compact(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {**settings, "num_feat": max(16, settings.get("num_feat", 64) // 2),
            "num_conv": max(2, round(settings.get("num_conv", 16) * 0.4))}


_STUDENT_RULES = {"swinir": _smaller_swinir, "esrgan": _compact_for_esrgan,
                  "compact": _smaller_compact}
_STUDENT_ARCHITECTURES = {"esrgan": "compact"}

_SWINIR_COMMON = {"window_size": 8, "mlp_ratio": 2.0, "upsampler": "pixelshuffle",
                  "resi_connection": "1conv", "img_size": 64, "img_range": 1.0}
_PRESETS: dict[str, dict[str, Mapping[str, Any]]] = {
    "swinir": {
        "swinir-c180s36": {**_SWINIR_COMMON, "embed_dim": 180, "depths": [6] * 6,
                           "num_heads": [6] * 6},
        "swinir-c60s24": {**_SWINIR_COMMON, "embed_dim": 60, "depths": [6] * 4,
                          "num_heads": [6] * 4},
    },
    "esrgan": {
        "esrgan-c64b23": {"num_filters": 64, "num_blocks": 23},
        "esrgan-c32b6": {"num_filters": 32, "num_blocks": 6},
    },
    "compact": {"compact-c64n16": {"num_feat": 64, "num_conv": 16}},
}


def register_spandrel_architectures() -> None:
    """Registers every architecture spandrel detects; one whose name is taken by our own (which
    must be registered first) becomes `<name>-spandrel`."""
    for support in spandrel.MAIN_REGISTRY:
        arch_id = support.architecture.id
        name = arch_id.lower()
        if name in ARCHITECTURES:
            name = f"{name}-spandrel"
        register(Architecture(
            name=name,
            summary=f"{arch_id} via spandrel",
            module_class=functools.partial(architecture_class, arch_id),
            defaults={},
            detect=_detector(arch_id, name),
            smaller_student=_STUDENT_RULES.get(name),
            presets=_PRESETS.get(name, {}),
            student_arch=_STUDENT_ARCHITECTURES.get(name),
        ))

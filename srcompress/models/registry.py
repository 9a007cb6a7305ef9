"""The architecture registry: names, builders, presets, detection and student rules.

Each entry knows how to build its module from plain settings (so a checkpoint's metadata alone
rebuilds it), how to recognise its weights in a third-party state dict, and how to propose a
student about a tenth of a teacher's cost. Our own architectures (EDSR, RCAN) come first in
detection; everything spandrel recognises is bridged in `spandrel_bridge`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from srcompress.errors import UserInputError
from srcompress.models.common import max_index
from srcompress.models.edsr import EDSR, edsr_pytorch_to_basicsr
from srcompress.models.rcan import RCAN, original_rcan_to_basicsr

StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class Detection:
    """What detection learned from a state dict: settings, scale, and the weights in our layout."""

    arch: str
    settings: dict[str, Any]
    scale: int
    state_dict: StateDict
    layout: str


@dataclass(frozen=True)
class Architecture:
    """A registry entry. `module_class` is resolved lazily so listing entries imports nothing."""

    name: str
    summary: str
    module_class: Callable[[], type[nn.Module]]
    defaults: Mapping[str, Any]
    detect: Callable[[StateDict], Detection | None]
    smaller_student: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def build(self, settings: Mapping[str, Any], scale: int) -> nn.Module:
        arguments = dict(settings)
        scale_argument = scale_argument_of(self.module_class())
        if scale_argument is not None:
            arguments[scale_argument] = scale
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return self.module_class()(**arguments)

    def setting_names(self) -> list[str]:
        """Settings the constructor accepts (the scale excluded: it is always separate)."""
        cls = self.module_class()
        parameters = inspect.signature(cls.__init__).parameters
        return [name for name, parameter in parameters.items()
                if name not in {"self", scale_argument_of(cls)}
                and parameter.kind is not inspect.Parameter.VAR_KEYWORD]


def scale_argument_of(cls: type[nn.Module]) -> str | None:
    """The constructor argument that sets the upscaling factor (its name varies by project)."""
    parameters = inspect.signature(cls.__init__).parameters
    return next((name for name in ("scale", "upscale", "upscaling_factor") if name in parameters),
                None)


ARCHITECTURES: dict[str, Architecture] = {}
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {}


def register(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.name] = arch
    for preset, settings in arch.presets.items():
        PRESETS[preset] = (arch.name, dict(settings))
    return arch


def get_architecture(name: str) -> Architecture:
    key = name.lower()
    if key not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UserInputError(f"Unknown architecture '{name}'; known architectures: {known}.")
    return ARCHITECTURES[key]


def detect_architecture(state: StateDict) -> Detection | None:
    """First registered architecture whose detector recognises `state`, or None."""
    for arch in ARCHITECTURES.values():
        found = arch.detect(state)
        if found is not None:
            return found
    return None


def _upsample_scale(state: StateDict, prefix: str, num_feat: int) -> int:
    """Scale of a sub-pixel upsampler from its conv shapes (4·C per ×2 stage, 9·C for ×3)."""
    last = max_index(state, rf"{prefix}\.(\d+)\.weight")
    stages = [state[f"{prefix}.{i}.weight"].shape[0] // num_feat for i in range(0, last + 1, 2)
              if f"{prefix}.{i}.weight" in state]
    scale = 1
    for ratio in stages:
        scale *= {4: 2, 9: 3}.get(ratio, 0)
    return scale


def _edsr_res_scale(num_feat: int) -> float:
    """EDSR's residual scaling is not stored in its weights: the paper uses 0.1 for the wide model.

    BasicSR's and EDSR-PyTorch's configs agree (0.1 at 256 features, 1 otherwise); a checkpoint
    trained otherwise needs `--arch edsr:res_scale=...`.
    """
    return 0.1 if num_feat >= 256 else 1.0


def _detect_edsr(state: StateDict) -> Detection | None:
    layout = "basicsr"
    if "head.0.weight" in state and "body.0.body.0.weight" in state and "tail.1.weight" in state:
        state, layout = edsr_pytorch_to_basicsr(state), "edsr-pytorch"
    if not {"conv_first.weight", "body.0.conv1.weight", "conv_after_body.weight",
            "upsample.0.weight", "conv_last.weight"} <= state.keys():
        return None
    num_feat = state["conv_first.weight"].shape[0]
    settings = {
        "num_feat": num_feat,
        "num_block": max_index(state, r"body\.(\d+)\.conv1\.weight") + 1,
        "res_scale": _edsr_res_scale(num_feat),
        "num_in_ch": state["conv_first.weight"].shape[1],
        "num_out_ch": state["conv_last.weight"].shape[0],
    }
    return Detection("edsr", settings, _upsample_scale(state, "upsample", num_feat), state, layout)


def _detect_rcan(state: StateDict) -> Detection | None:
    layout = "basicsr"
    if "head.0.weight" in state and "body.0.body.0.body.3.conv_du.0.weight" in state:
        state, layout = original_rcan_to_basicsr(state), "rcan-original"
    required = {"conv_first.weight", "body.0.residual_group.0.rcab.0.weight",
                "body.0.residual_group.0.rcab.3.attention.1.weight", "conv_last.weight"}
    if not required <= state.keys():
        return None
    num_feat = state["conv_first.weight"].shape[0]
    squeezed = state["body.0.residual_group.0.rcab.3.attention.1.weight"].shape[0]
    settings = {
        "num_feat": num_feat,
        "num_group": max_index(state, r"body\.(\d+)\.conv\.weight") + 1,
        "num_block": max_index(state, r"body\.0\.residual_group\.(\d+)\.rcab\.0\.weight") + 1,
        "squeeze_factor": num_feat // squeezed,
        "res_scale": 1.0,
        "num_in_ch": state["conv_first.weight"].shape[1],
        "num_out_ch": state["conv_last.weight"].shape[0],
    }
    return Detection("rcan", settings, _upsample_scale(state, "upsample", num_feat), state, layout)


def _smaller_edsr(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The DUKD paper's pair for the wide EDSR (c256b32 → c64b32, res_scale 0.1); else half the
    width and 40 % of the blocks, about a tenth of the cost."""
    if settings["num_feat"] >= 256:
        return {**settings, "num_feat": settings["num_feat"] // 4, "res_scale": 0.1}
    return {**settings, "num_feat": max(8, settings["num_feat"] // 2),
            "num_block": max(1, round(settings["num_block"] * 0.4))}


def _smaller_rcan(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The DUKD paper's RCAN pair keeps width and groups and cuts blocks per group (20 → 6)."""
    return {**settings, "num_block": max(1, round(settings["num_block"] * 0.3))}


register(Architecture(
    name="edsr",
    summary="EDSR (Lim et al. 2017); BasicSR and EDSR-PyTorch layouts",
    module_class=lambda: EDSR,
    defaults={"num_feat": 64, "num_block": 16, "res_scale": 1.0, "num_in_ch": 3,
              "num_out_ch": 3},
    detect=_detect_edsr,
    smaller_student=_smaller_edsr,
    presets={
        "edsr-baseline": {"num_feat": 64, "num_block": 16, "res_scale": 1.0},
        "edsr-c256b32": {"num_feat": 256, "num_block": 32, "res_scale": 0.1},
        "edsr-c64b32": {"num_feat": 64, "num_block": 32, "res_scale": 0.1},
    },
))

register(Architecture(
    name="rcan",
    summary="RCAN (Zhang et al. 2018); BasicSR and original RCAN layouts",
    module_class=lambda: RCAN,
    defaults={"num_feat": 64, "num_group": 10, "num_block": 20, "squeeze_factor": 16,
              "res_scale": 1.0, "num_in_ch": 3, "num_out_ch": 3},
    detect=_detect_rcan,
    smaller_student=_smaller_rcan,
    presets={
        "rcan-c64g10b20": {"num_feat": 64, "num_group": 10, "num_block": 20},
        "rcan-c64g10b6": {"num_feat": 64, "num_group": 10, "num_block": 6},
    },
))

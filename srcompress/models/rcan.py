"""RCAN (Zhang et al., 2018) with BasicSR's parameter names, and its registry entry.

Checkpoints of the original RCAN code (`head/body/tail`, `conv_du`) are renamed to this layout on
load by `original_rcan_to_basicsr`. Everything the registry knows about RCAN is here: detection
from a state dict, presets, the smaller-student rule, registration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from srcompress.models.common import MeanShift, Upsample, max_index, upsample_scale
from srcompress.models.registry import Architecture, Detection, StateDict, register


class ChannelAttention(nn.Module):
    def __init__(self, num_feat: int, squeeze_factor: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, num_feat // squeeze_factor, 1, padding=0),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // squeeze_factor, num_feat, 1, padding=0),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)


class RCAB(nn.Module):
    def __init__(self, num_feat: int, squeeze_factor: int, res_scale: float) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.rcab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.rcab(x) * self.res_scale + x


class ResidualGroup(nn.Module):
    def __init__(self, num_feat: int, num_block: int, squeeze_factor: int,
                 res_scale: float) -> None:
        super().__init__()
        self.residual_group = nn.Sequential(
            *(RCAB(num_feat, squeeze_factor, res_scale) for _ in range(num_block))
        )
        self.conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.residual_group(x)) + x


class RCAN(nn.Module):
    """Input and output are RGB in [0, 1]; the 0-255 mean-free range is internal."""

    def __init__(self, scale: int = 4, num_feat: int = 64, num_group: int = 10, num_block: int = 20,
                 squeeze_factor: int = 16, res_scale: float = 1.0, num_in_ch: int = 3,
                 num_out_ch: int = 3) -> None:
        super().__init__()
        self.scale = scale
        self.shift = MeanShift()
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(
            *(ResidualGroup(num_feat, num_block, squeeze_factor, res_scale)
              for _ in range(num_group))
        )
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(scale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_first(self.shift.normalise(x))
        x = self.conv_after_body(self.body(x)) + x
        return self.shift.denormalise(self.conv_last(self.upsample(x)))


def original_rcan_to_basicsr(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a state dict of the original RCAN code to BasicSR's names.

    Original: `head.0`, `body.G.body.B.body.{0,2}`, `body.G.body.B.body.3.conv_du.{0,2}`,
    `body.G.body.<num_block>` (group tail conv), `body.<num_group>` (body tail conv), `tail.0.K`,
    `tail.1`; the fixed `sub_mean`/`add_mean` convs are dropped (MeanShift computes them).
    """
    num_group = max_index(state, r"body\.(\d+)\.body\.0\.body\.0\.weight") + 1
    num_block = max_index(state, r"body\.0\.body\.(\d+)\.body\.0\.weight") + 1
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(("sub_mean.", "add_mean.")):
            continue
        new = re.sub(r"^head\.0\.", "conv_first.", key)
        new = re.sub(r"^body\.(\d+)\.body\.(\d+)\.body\.([02])\.",
                     r"body.\1.residual_group.\2.rcab.\3.", new)
        new = re.sub(r"^body\.(\d+)\.body\.(\d+)\.body\.3\.conv_du\.0\.",
                     r"body.\1.residual_group.\2.rcab.3.attention.1.", new)
        new = re.sub(r"^body\.(\d+)\.body\.(\d+)\.body\.3\.conv_du\.2\.",
                     r"body.\1.residual_group.\2.rcab.3.attention.3.", new)
        new = re.sub(rf"^body\.(\d+)\.body\.{num_block}\.", r"body.\1.conv.", new)
        new = re.sub(rf"^body\.{num_group}\.", "conv_after_body.", new)
        new = re.sub(r"^tail\.0\.(\d+)\.", r"upsample.\1.", new)
        new = re.sub(r"^tail\.1\.", "conv_last.", new)
        renamed[new] = value
    return renamed



def detect(state: StateDict) -> Detection | None:
    """RCAN in BasicSR's or the original code's layout, with its settings and scale; else None."""
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
    return Detection("rcan", settings, upsample_scale(state, "upsample", num_feat), state, layout)


def smaller_student(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The DUKD paper's RCAN pair keeps width and groups and cuts blocks per group (20 → 6)."""
    return {**settings, "num_block": max(1, round(settings["num_block"] * 0.3))}


ARCHITECTURE = register(Architecture(
    name="rcan",
    summary="RCAN (Zhang et al. 2018); BasicSR and original RCAN layouts",
    module_class=lambda: RCAN,
    defaults={"num_feat": 64, "num_group": 10, "num_block": 20, "squeeze_factor": 16,
              "res_scale": 1.0, "num_in_ch": 3, "num_out_ch": 3},
    detect=detect,
    smaller_student=smaller_student,
    presets={
        "rcan-c64g10b20": {"num_feat": 64, "num_group": 10, "num_block": 20},
        "rcan-c64g10b6": {"num_feat": 64, "num_group": 10, "num_block": 6},
    },
))

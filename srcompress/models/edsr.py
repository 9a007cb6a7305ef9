"""EDSR (Lim et al., 2017) with BasicSR's parameter names, and its registry entry.

Checkpoints of the official EDSR-PyTorch code (`head/body/tail`) are renamed to this layout on
load by `edsr_pytorch_to_basicsr`, so one module serves both. Everything the registry knows about
EDSR is here: detection from a state dict, presets, the smaller-student rule, registration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from srcompress.models.common import MeanShift, Upsample, max_index, upsample_scale
from srcompress.models.registry import Architecture, Detection, StateDict, register


class ResidualBlockNoBN(nn.Module):
    def __init__(self, num_feat: int, res_scale: float) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class EDSR(nn.Module):
    """Input and output are RGB in [0, 1]; the 0-255 mean-free range is internal."""

    def __init__(self, scale: int = 4, num_feat: int = 64, num_block: int = 16,
                 res_scale: float = 1.0, num_in_ch: int = 3, num_out_ch: int = 3) -> None:
        super().__init__()
        self.scale = scale
        self.shift = MeanShift()
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(
            *(ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block))
        )
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(scale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_first(self.shift.normalise(x))
        x = self.conv_after_body(self.body(x)) + x
        return self.shift.denormalise(self.conv_last(self.upsample(x)))


def edsr_pytorch_to_basicsr(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an official EDSR-PyTorch state dict (`head.0`, `body.N.body.0`, `tail.0.K`) to ours.

    The official MeanShift layers (`sub_mean`, `add_mean`) are fixed 1x1 convs holding the DIV2K
    mean; they are dropped because `MeanShift` computes the same thing.
    """
    num_block = max_index(state, r"body\.(\d+)\.body\.0\.weight") + 1
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(("sub_mean.", "add_mean.")):
            continue
        new = re.sub(r"^head\.0\.", "conv_first.", key)
        new = re.sub(r"^body\.(\d+)\.body\.0\.", r"body.\1.conv1.", new)
        new = re.sub(r"^body\.(\d+)\.body\.2\.", r"body.\1.conv2.", new)
        new = re.sub(rf"^body\.{num_block}\.", "conv_after_body.", new)
        new = re.sub(r"^tail\.0\.(\d+)\.", r"upsample.\1.", new)
        new = re.sub(r"^tail\.1\.", "conv_last.", new)
        renamed[new] = value
    return renamed



def residual_scale(num_feat: int) -> float:
    """EDSR's residual scaling is not stored in its weights: the paper uses 0.1 for the wide model.

    BasicSR's and EDSR-PyTorch's configs agree (0.1 at 256 features, 1 otherwise); a checkpoint
    trained otherwise needs `--arch edsr:res_scale=...`.
    """
    return 0.1 if num_feat >= 256 else 1.0


def detect(state: StateDict) -> Detection | None:
    """EDSR in BasicSR's or EDSR-PyTorch's layout, with its settings and scale; else None."""
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
        "res_scale": residual_scale(num_feat),
        "num_in_ch": state["conv_first.weight"].shape[1],
        "num_out_ch": state["conv_last.weight"].shape[0],
    }
    return Detection("edsr", settings, upsample_scale(state, "upsample", num_feat), state, layout)


def smaller_student(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The DUKD paper's pair for the wide EDSR (c256b32 → c64b32, res_scale 0.1); else half the
    width and 40 % of the blocks, about a tenth of the cost."""
    if settings["num_feat"] >= 256:
        return {**settings, "num_feat": settings["num_feat"] // 4, "res_scale": 0.1}
    return {**settings, "num_feat": max(8, settings["num_feat"] // 2),
            "num_block": max(1, round(settings["num_block"] * 0.4))}


ARCHITECTURE = register(Architecture(
    name="edsr",
    summary="EDSR (Lim et al. 2017); BasicSR and EDSR-PyTorch layouts",
    module_class=lambda: EDSR,
    defaults={"num_feat": 64, "num_block": 16, "res_scale": 1.0, "num_in_ch": 3,
              "num_out_ch": 3},
    detect=detect,
    smaller_student=smaller_student,
    presets={
        "edsr-baseline": {"num_feat": 64, "num_block": 16, "res_scale": 1.0},
        "edsr-c256b32": {"num_feat": 256, "num_block": 32, "res_scale": 0.1},
        "edsr-c64b32": {"num_feat": 64, "num_block": 32, "res_scale": 0.1},
    },
))

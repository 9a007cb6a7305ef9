"""EDSR (Lim et al., 2017) with BasicSR's parameter names.

Checkpoints of the official EDSR-PyTorch code (`head/body/tail`) are renamed to this layout on
load by `edsr_pytorch_to_basicsr`, so one module serves both.
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from srcompress.models.common import MeanShift, Upsample, max_index


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


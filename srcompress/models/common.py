"""Building blocks shared by the project's own architectures (BasicSR's layout and conventions)."""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor, nn

# The DIV2K RGB mean that EDSR and RCAN subtract (on the 0-255 scale after multiplying by 255).
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class Upsample(nn.Sequential):
    """Sub-pixel upsampler: one conv + pixel shuffle per factor 2, or a single one for 3.

    Keys match BasicSR (`upsample.0`, `upsample.2`, ...), which is why shuffles sit between convs.
    """

    def __init__(self, scale: int, num_feat: int) -> None:
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"scale {scale} is not supported: use 2, 3, 4 or 8")
        super().__init__(*layers)


class MeanShift(nn.Module):
    """Maps [0, 1] RGB to the mean-free 0-255 range the EDSR family was trained on, and back."""

    def __init__(self, img_range: float = 255.0, rgb_mean: tuple[float, float, float] = DIV2K_MEAN):
        super().__init__()
        self.img_range = img_range
        self.register_buffer("mean", torch.tensor(rgb_mean).view(1, 3, 1, 1), persistent=False)

    def normalise(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) * self.img_range

    def denormalise(self, x: Tensor) -> Tensor:
        return x / self.img_range + self.mean.to(x.dtype)


def max_index(state: dict[str, Tensor], pattern: str) -> int:
    """Largest integer captured by `pattern` over the keys of a state dict, or -1 if none match.

    Architectures are sized from their weights this way (how many blocks, groups, upsamplers).
    """
    return max((int(m.group(1)) for key in state if (m := re.fullmatch(pattern, key))), default=-1)


def upsample_scale(state: dict[str, Tensor], prefix: str, num_feat: int) -> int:
    """Scale of a sub-pixel upsampler from its conv shapes (4·C per ×2 stage, 9·C for ×3)."""
    last = max_index(state, rf"{prefix}\.(\d+)\.weight")
    stages = [state[f"{prefix}.{i}.weight"].shape[0] // num_feat for i in range(0, last + 1, 2)
              if f"{prefix}.{i}.weight" in state]
    scale = 1
    for ratio in stages:
        scale *= {4: 2, 9: 3}.get(ratio, 0)
    return scale

"""Independent re-statements of the original EDSR-PyTorch and RCAN modules (their key names and
0-255 input range), so tests can build checkpoints exactly as those projects write them."""

from __future__ import annotations

import math

import torch
from torch import nn

RGB_MEAN = (0.4488, 0.4371, 0.4040)


class OriginalMeanShift(nn.Conv2d):
    def __init__(self, sign: int) -> None:
        super().__init__(3, 3, kernel_size=1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * 255.0 * torch.tensor(RGB_MEAN)
        self.requires_grad_(False)


def conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class OriginalUpsampler(nn.Sequential):
    def __init__(self, scale: int, n_feats: int) -> None:
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [conv(n_feats, 4 * n_feats), nn.PixelShuffle(2)]
        else:
            layers += [conv(n_feats, 9 * n_feats), nn.PixelShuffle(3)]
        super().__init__(*layers)


class OriginalResBlock(nn.Module):
    def __init__(self, n_feats: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(n_feats, n_feats), nn.ReLU(True), conv(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x):
        return self.body(x).mul(self.res_scale) + x


class OriginalEDSR(nn.Module):
    """EDSR-PyTorch's `model/edsr.py`: input and output on the 0-255 scale."""

    def __init__(self, n_resblocks: int, n_feats: int, scale: int, res_scale: float = 1.0):
        super().__init__()
        self.sub_mean = OriginalMeanShift(-1)
        self.add_mean = OriginalMeanShift(1)
        self.head = nn.Sequential(conv(3, n_feats))
        self.body = nn.Sequential(*[OriginalResBlock(n_feats, res_scale)
                                    for _ in range(n_resblocks)], conv(n_feats, n_feats))
        self.tail = nn.Sequential(OriginalUpsampler(scale, n_feats), conv(n_feats, 3))

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        res = self.body(x) + x
        return self.add_mean(self.tail(res))


class OriginalCALayer(nn.Module):
    def __init__(self, channel: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(nn.Conv2d(channel, channel // reduction, 1), nn.ReLU(True),
                                     nn.Conv2d(channel // reduction, channel, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))


class OriginalRCAB(nn.Module):
    def __init__(self, n_feat: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(n_feat, n_feat), nn.ReLU(True), conv(n_feat, n_feat),
                                  OriginalCALayer(n_feat, reduction))

    def forward(self, x):
        return self.body(x) + x


class OriginalResidualGroup(nn.Module):
    def __init__(self, n_feat: int, reduction: int, n_resblocks: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*[OriginalRCAB(n_feat, reduction) for _ in range(n_resblocks)],
                                  conv(n_feat, n_feat))

    def forward(self, x):
        return self.body(x) + x


class OriginalRCAN(nn.Module):
    """The RCAN authors' `model/rcan.py`: input and output on the 0-255 scale."""

    def __init__(self, n_resgroups: int, n_resblocks: int, n_feats: int, reduction: int,
                 scale: int):
        super().__init__()
        self.sub_mean = OriginalMeanShift(-1)
        self.add_mean = OriginalMeanShift(1)
        self.head = nn.Sequential(conv(3, n_feats))
        self.body = nn.Sequential(*[OriginalResidualGroup(n_feats, reduction, n_resblocks)
                                    for _ in range(n_resgroups)], conv(n_feats, n_feats))
        self.tail = nn.Sequential(OriginalUpsampler(scale, n_feats), conv(n_feats, 3))

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        res = self.body(x) + x
        return self.add_mean(self.tail(res))

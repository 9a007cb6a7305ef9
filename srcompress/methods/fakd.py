"""FAKD (He et al., ICIP 2020): distil the spatial affinity of intermediate features.

L = w_rec·ℓ1(S(x), y) + w_feat·Σ_positions ℓ1(A_S, A_T), with A = F̂ᵀF̂ the HW×HW matrix of
cosine similarities between the channel vectors of every pair of pixels (F̂: each pixel's feature
divided by its norm). Affinities have no channel axis, so student and teacher widths may differ
without an adapter; they do need the same spatial size, which LR-resolution taps have.

Cost: B·(HW)² entries per position, for the student and the teacher: 85 M per position at batch
16 and 48×48 LR patches. That is the method as published; use smaller patches on small devices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from srcompress.methods.features import FeatureDistillation, feature_layers_option


def spatial_affinity(features: Tensor) -> Tensor:
    """B×HW×HW cosine similarities between the C-vectors of every pair of pixels."""
    flat = F.normalize(features.flatten(2), dim=1, eps=1e-8)
    return flat.transpose(1, 2) @ flat


@dataclass(frozen=True)
class FAKDOptions:
    w_rec: float = field(default=1.0, metadata={"help": "weight of ℓ1(S(x), y)", "min": 0.0})
    w_feat: float = field(default=1.0, metadata={
        "help": "weight of the ℓ1 between spatial affinity matrices, summed over positions",
        "min": 0.0})
    feature_layers: str = feature_layers_option()


class FAKD(FeatureDistillation):
    name = "fakd"
    Options = FAKDOptions

    def feature_loss(self, position: int, student: Tensor, teacher: Tensor) -> Tensor:
        return F.l1_loss(spatial_affinity(student), spatial_affinity(teacher))

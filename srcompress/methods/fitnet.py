"""FitNet (Romero et al., 2015) for super-resolution: match the teacher's intermediate features.

L = w_rec·ℓ1(S(x), y) + w_feat·Σ_positions ‖A(F_S) − F_T‖² / mean(F_T²), with A a 1×1 adapter
from the student's to the teacher's channels (the identity when they agree), trained with the
student. The ℓ2 is measured in units of the teacher feature's mean energy, a constant per batch:
EDSR and RCAN compute on a 0-255 range and SwinIR on 0-1, and without that unit the same w_feat
would mean a thousandfold different weight from one teacher to the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from srcompress.methods.features import (
    FeatureDistillation,
    TapPair,
    adapter,
    feature_layers_option,
)


@dataclass(frozen=True)
class FitNetOptions:
    w_rec: float = field(default=1.0, metadata={"help": "weight of ℓ1(S(x), y)", "min": 0.0})
    w_feat: float = field(default=0.1, metadata={
        "help": "weight of the feature ℓ2 (relative to the teacher feature's energy), summed "
                "over positions", "min": 0.0})
    feature_layers: str = feature_layers_option()


class FitNet(FeatureDistillation):
    name = "fitnet"
    Options = FitNetOptions

    def __init__(self, options: FitNetOptions | None = None) -> None:
        super().__init__(options)
        self.adapters = nn.ModuleList()

    def build_helpers(self, taps: TapPair) -> None:
        self.adapters = nn.ModuleList(
            adapter(s, t) for s, t in zip(taps.student_channels, taps.teacher_channels,
                                          strict=True))

    def feature_loss(self, position: int, student: Tensor, teacher: Tensor) -> Tensor:
        energy = teacher.pow(2).mean().clamp_min(1e-12)
        return F.mse_loss(self.adapters[position](student), teacher) / energy

    def student_side_parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

"""The no-teacher baseline: the student trained on the pairs alone, at the same budget."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from srcompress.methods.base import Batch, Method


class Scratch(Method):
    """L = ℓ1(S(x), y); what every distillation method must beat to be worth its teacher."""

    name = "scratch"
    needs_teacher = False

    def losses(self, batch: Batch, student: nn.Module,
               teacher: nn.Module | None) -> dict[str, Tensor]:
        return {"rec": F.l1_loss(student(batch.lr), batch.hr)}

"""Output ("logits") knowledge distillation, the baseline DUKD is measured against."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from srcompress.methods.base import Batch, Method, require_teacher, run_teacher


@dataclass(frozen=True)
class KDOptions:
    w_rec: float = field(default=1.0, metadata={
        "help": "weight of ℓ1(S(x), y), the ground truth", "min": 0.0})
    w_kd: float = field(default=1.0, metadata={
        "help": "weight of ℓ1(S(x), T(x)), the teacher", "min": 0.0})


class KD(Method):
    """L = w_rec·ℓ1(S(x), y) + w_kd·ℓ1(S(x), T(x)); one student and one teacher call per step
    (none with a teacher cache)."""

    cached_parts = ("pairs",)

    name = "kd"
    Options = KDOptions

    def losses(self, batch: Batch, student: nn.Module,
               teacher: nn.Module | None) -> dict[str, Tensor]:
        target = batch.cached.pairs() if batch.cached is not None else None
        if target is None:
            (target,) = run_teacher(require_teacher(self.name, teacher), [batch.lr])
        sr = student(batch.lr)
        return {"rec": self.options.w_rec * F.l1_loss(sr, batch.hr),
                "kd": self.options.w_kd * F.l1_loss(sr, target)}

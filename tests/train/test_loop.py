"""The Trainer holds the values it promises: the EMA recurrence, the scheduled learning rate in
the optimiser, and DUKD's two-step schedule under a GradScaler whose scale changes every step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from srcompress import models
from srcompress.data.training import PatchBatches, load_training_images
from srcompress.demo import demo_data_folder
from srcompress.methods import create_method
from srcompress.train.distributed import Distributed
from srcompress.train.loop import Reporter, Trainer, TrainSettings

TINY_STUDENT = "edsr:num_feat=8,num_block=1"


def _trainer(method: str, settings: TrainSettings, teacher: Path | None = None,
             **options: object) -> Trainer:
    """A tiny student on the demo photographs; the same seed gives the same start every time."""
    torch.manual_seed(3)
    student = models.build_model(TINY_STUDENT, 2).module
    teacher_module = models.load_model(teacher).module if teacher is not None else None
    data = load_training_images([demo_data_folder()], 2, 16)
    return Trainer(student, teacher_module, create_method(method, **options),
                   PatchBatches(data, 16, 2, seed=0), settings, torch.device("cpu"), run=None,
                   place=Distributed())


def _copy(parameters) -> list[Tensor]:
    return [p.detach().clone() for p in parameters]


class Snapshots(Reporter):
    """The student's and the EMA's weights after every iteration, taken where the loop reports."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.student: list[list[Tensor]] = []
        self.ema: list[list[Tensor]] = []
        self.reported_lr: list[float] = []

    def advance(self, iteration: int, terms: dict[str, float], lr: float) -> None:
        assert self.trainer.ema is not None
        self.student.append(_copy(self.trainer.student.parameters()))
        self.ema.append(_copy(self.trainer.ema.module.parameters()))
        self.reported_lr.append(lr)


def test_ema_follows_its_warm_up_and_decay_recurrence() -> None:
    """EMA_i = d_i·EMA_(i-1) + (1 − d_i)·θ_i with d_i = min(decay, (1 + i)/(10 + i)), from the
    initial weights; decay 0.6 is reached at iteration 13, so warm-up and cap are both seen."""
    decay, iters = 0.6, 16
    trainer = _trainer("scratch", TrainSettings(iters=iters, lr=2e-3, ema=decay, workers=0))
    initial = _copy(trainer.student.parameters())
    snapshots = Snapshots(trainer)
    trainer.reporter = snapshots
    assert trainer.train()

    previous = initial
    for i in range(iters):
        weight = min(decay, (1 + i) / (10 + i))
        expected = [weight * average.double() + (1 - weight) * current.double()
                    for average, current in zip(previous, snapshots.student[i], strict=True)]
        for got, want in zip(snapshots.ema[i], expected, strict=True):
            torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)
        previous = snapshots.ema[i]
    # It lags: after 16 steps the EMA is neither the start nor the student.
    distance_to_student = sum((a - b).abs().sum() for a, b in zip(
        snapshots.ema[-1], snapshots.student[-1], strict=True))
    distance_to_start = sum((a - b).abs().sum() for a, b in zip(
        snapshots.ema[-1], initial, strict=True))
    assert distance_to_student > 0 and distance_to_start > distance_to_student
    assert all(torch.equal(a, b) for a, b in zip(trainer.final_module.parameters(),
                                                 snapshots.ema[-1], strict=True))


@pytest.mark.parametrize(("schedule", "expected"), [
    ("multistep", [1e-3, 1e-3, 1e-4, 1e-4, 1e-5]),  # ×0.1 at round(0.4·5) = 2 and round(0.8·5) = 4
    ("cosine", [1e-3, 9.045085e-4, 6.545085e-4, 3.454915e-4, 9.54915e-5]),
])
def test_the_optimiser_steps_with_the_scheduled_learning_rate(schedule: str,
                                                               expected: list[float]) -> None:
    trainer = _trainer("scratch", TrainSettings(iters=5, lr=1e-3, schedule=schedule, workers=0))
    stepped_with: list[float] = []
    trainer.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: stepped_with.extend(
            group["lr"] for group in optimizer.param_groups))
    snapshots = Snapshots(trainer)
    trainer.reporter = snapshots
    assert trainer.train()
    assert stepped_with == pytest.approx(expected, rel=1e-6)
    assert snapshots.reported_lr == pytest.approx(expected, rel=1e-6)


def test_two_step_schedule_under_a_changing_grad_scale_equals_unscaled_training(
        tiny_teacher: Path) -> None:
    """The fp16 path on a GPU: each step unscales the kept first-step gradient, the scale then
    grows, and the second backward adds gradients at the new scale. A CPU GradScaler that doubles
    its scale at every step (growth_interval=1) reproduces it; powers of two scale exactly, so the
    weights must equal those of training without a scaler."""
    settings = TrainSettings(iters=3, lr=1e-3, ema=0.9, workers=0)
    plain = _trainer("dukd", settings, tiny_teacher, two_step=True)
    scaled = _trainer("dukd", settings, tiny_teacher, two_step=True)
    assert not plain.scaler.is_enabled()
    initial = _copy(plain.student.parameters())
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    scales: list[float] = []
    scaled.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: scales.append(scaled.scaler.get_scale()))

    assert plain.train() and scaled.train()
    assert scales == [2.0**k for k in range(10, 16)]  # two steps per iteration, a new scale each
    for a, b in zip(plain.student.parameters(), scaled.student.parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(not torch.equal(a, b) for a, b in zip(initial, plain.student.parameters(),
                                                      strict=True))

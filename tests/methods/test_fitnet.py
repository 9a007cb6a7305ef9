"""FitNet: adapted student features against the teacher's, adapters trained with the student."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from srcompress.methods import create_method
from srcompress.models.edsr import EDSR


def edsr_features(model: EDSR, x: Tensor) -> list[Tensor]:
    """After the first block and after the body's tail conv, computed by hand."""
    start = model.conv_first(model.shift.normalise(x))
    return [model.body[0](start), model.conv_after_body(model.body(start))]


def test_fitnet_terms_are_relative_l2_of_adapted_features(make_pair, make_batch) -> None:
    student, teacher = make_pair()
    batch = make_batch()
    method = create_method("fitnet", w_rec=2.0, w_feat=0.5)
    method.prepare(student, teacher)
    assert method.taps.student.layers == ["body.0", "conv_after_body"]
    assert [type(a).__name__ for a in method.adapters] == ["Conv2d", "Conv2d"]
    terms = method.losses(batch, student, teacher)
    with torch.no_grad():
        expected = sum(F.mse_loss(adapter(s), t) / t.pow(2).mean() for adapter, s, t in zip(
            method.adapters, edsr_features(student, batch.lr), edsr_features(teacher, batch.lr),
            strict=True))
        torch.testing.assert_close(terms["feat"], 0.5 * expected)
        torch.testing.assert_close(terms["rec"], 2.0 * F.l1_loss(student(batch.lr), batch.hr))
    assert terms["feat"].item() > 0.01


def test_fitnet_trains_adapters_and_student_but_saves_only_the_student(make_pair,
                                                                        make_batch) -> None:
    student, teacher = make_pair()
    method = create_method("fitnet")
    method.prepare(student, teacher)
    side = method.student_side_parameters()
    assert len(side) == 4 and all(p.shape[:2] == (16, 8) for p in side if p.dim() == 4)
    optimizer = torch.optim.Adam([*student.parameters(), *side], lr=1e-3)

    def step(loss: Tensor, *, clear_grad: bool = True) -> None:
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in side)
        assert student.body[0].conv1.weight.grad.abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()

    before = [p.detach().clone() for p in side]
    first = method.train_step(make_batch(), student, teacher, step)
    for _ in range(3):
        last = method.train_step(make_batch(), student, teacher, step)
    assert last["feat"] < first["feat"]
    assert all(not torch.equal(b, p) for b, p in zip(before, side, strict=True))
    assert set(student.state_dict()) == set(EDSR(scale=2, num_feat=8, num_block=1).state_dict())
    assert sum(len(m._forward_hooks) for m in student.modules()) == 0

    restored = create_method("fitnet")
    restored.prepare(student, teacher)
    restored.load_state_dict(method.state_dict())
    for a, b in zip(restored.student_side_parameters(), side, strict=True):
        assert torch.equal(a, b)


def test_equal_widths_need_no_adapter(make_batch) -> None:
    student = EDSR(scale=2, num_feat=8, num_block=3)
    teacher = EDSR(scale=2, num_feat=8, num_block=6).eval()
    method = create_method("fitnet", feature_layers="body.0=body.1,conv_after_body")
    method.prepare(student, teacher)
    assert method.student_side_parameters() == []
    assert method.losses(make_batch(), student, teacher)["feat"].item() > 0

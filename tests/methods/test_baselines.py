"""scratch and kd, and the teacher contract of `run_teacher` they and DUKD rely on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from srcompress.errors import UserInputError
from srcompress.methods import create_method, run_teacher


def test_scratch_is_l1_to_ground_truth_without_teacher(make_batch, make_pair) -> None:
    batch = make_batch()
    student, _ = make_pair()
    terms = create_method("scratch").losses(batch, student, None)
    assert list(terms) == ["rec"]
    with torch.no_grad():
        expected = F.l1_loss(student(batch.lr), batch.hr)
    torch.testing.assert_close(terms["rec"], expected)
    assert terms["rec"].item() > 0.01


def test_kd_terms_are_weighted_l1_to_truth_and_teacher(make_batch, make_pair, record_calls) -> None:
    batch = make_batch()
    student, teacher = make_pair()
    calls = record_calls(teacher)
    terms = create_method("kd", w_rec=2.0, w_kd=0.5).losses(batch, student, teacher)
    assert calls.shapes == [tuple(batch.lr.shape)]
    with torch.no_grad():
        sr, target = student(batch.lr), teacher(batch.lr)
    torch.testing.assert_close(terms["rec"], 2.0 * F.l1_loss(sr, batch.hr))
    torch.testing.assert_close(terms["kd"], 0.5 * F.l1_loss(sr, target))
    assert terms["kd"].item() > 1e-4


def test_kd_train_step_logs_terms_and_leaves_teacher_untouched(make_batch, make_pair,
                                                                make_step) -> None:
    batch = make_batch()
    student, teacher = make_pair()
    teacher_before = {key: value.clone() for key, value in teacher.state_dict().items()}
    step = make_step(student)
    logged = create_method("kd").train_step(batch, student, teacher, step)
    assert set(logged) == {"rec", "kd"} and all(isinstance(v, float) for v in logged.values())
    assert step.clear_grad_calls == [True]
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())


def test_teacher_methods_refuse_a_missing_teacher(make_batch, make_pair) -> None:
    student, _ = make_pair()
    for name in ("kd", "dukd"):
        with pytest.raises(UserInputError, match=f"Method '{name}' distils from a teacher"):
            create_method(name).losses(make_batch(), student, None)


def test_run_teacher_refuses_train_mode(make_pair) -> None:
    _, teacher = make_pair()
    teacher.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        run_teacher(teacher, [torch.rand(1, 3, 8, 8)])


def test_run_teacher_groups_by_shape_and_returns_constants(make_batch, make_pair,
                                                           record_calls) -> None:
    _, teacher = make_pair()
    pairs, small = make_batch(lr_size=16, count=3), make_batch(lr_size=8, count=2)
    inputs = [pairs.lr, small.lr, pairs.hr[:, :, :16, :16]]
    calls = record_calls(teacher)
    outputs = run_teacher(teacher, inputs)
    assert sorted(calls.shapes) == [(2, 3, 8, 8), (6, 3, 16, 16)]
    for tensor, output in zip(inputs, outputs, strict=True):
        with torch.no_grad():
            torch.testing.assert_close(output, teacher(tensor), rtol=1e-5, atol=1e-6)
        # Constants for the student's loss, usable by any autograd op (not inference tensors).
        assert not output.requires_grad and output.grad_fn is None and not output.is_inference()
    prediction = torch.zeros_like(outputs[0], requires_grad=True)
    F.mse_loss(prediction, outputs[0]).backward()
    assert prediction.grad is not None
    assert all(p.grad is None for p in teacher.parameters())

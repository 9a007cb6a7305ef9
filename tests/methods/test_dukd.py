"""DUKD's mechanics, checked on tiny EDSRs and real Set5 patches (issue 4, acceptance 1)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from srcompress.data.resize import imresize
from srcompress.errors import UserInputError
from srcompress.methods import create_method
from srcompress.methods.dukd import LCR_OPERATIONS, apply_operations, undo_operations

TERMS = {"rec", "kd", "zoom_in", "zoom_out_rec", "zoom_out_kd"}
ALL_COMBINATIONS = torch.tensor(list(itertools.product([False, True], repeat=4)))
# 1 − (1 − v) rounds once in float32: v comes back within half an ulp of 1.
INVERSION_ROUNDING = 2.0**-25


def _rotated_by_same_order(combination: Tensor) -> bool:
    """Where re-applying ops in the same order is wrong: a transpose with exactly one flip."""
    _invert, vflip, hflip, transpose = combination.tolist()
    return transpose and vflip != hflip


@pytest.mark.parametrize(("scale", "n_sub"), [(2, 1), (2, 2), (2, 4), (3, 2)])
def test_zoom_in_inputs_are_the_sampled_hr_tiles(make_batch, scale: int, n_sub: int) -> None:
    batch = make_batch(scale=scale, lr_size=12, count=4)
    upcycled = create_method("dukd", n_sub=n_sub).upcycle(batch)
    assert upcycled.tiles.shape == (4, n_sub)
    assert upcycled.zoom_in.shape == (4 * n_sub, 3, 12, 12)
    for sample in range(4):
        cells = upcycled.tiles[sample].tolist()
        assert len(set(cells)) == n_sub and all(0 <= cell < scale * scale for cell in cells)
        for slot, cell in enumerate(cells):
            row, column = divmod(cell, scale)
            tile = batch.hr[sample, :, 12 * row:12 * row + 12, 12 * column:12 * column + 12]
            assert torch.equal(upcycled.zoom_in[sample * n_sub + slot], tile)


def test_zoom_in_draws_every_cell_and_ops_at_their_probability(make_batch) -> None:
    batch = make_batch(scale=2, lr_size=8, count=4)
    method = create_method("dukd")
    draws = [method.upcycle(batch) for _ in range(200)]
    cells = torch.cat([draw.tiles.flatten() for draw in draws])
    assert torch.bincount(cells, minlength=4).min() > 120  # 800 draws over 4 cells
    operations = torch.cat([draw.operations for draw in draws]).float()
    assert torch.allclose(operations.mean(dim=0), torch.full((4,), 0.3), atol=0.05)
    last = draws[-1]
    assert torch.equal(last.zoom_in_student, apply_operations(last.zoom_in, last.operations))


@pytest.mark.parametrize(("scale", "lr_size"), [(2, 16), (4, 12), (3, 16), (2, 15)])
def test_zoom_out_input_is_our_imresize_of_the_lr_patch(make_batch, scale: int,
                                                        lr_size: int) -> None:
    batch = make_batch(scale=scale, lr_size=lr_size, count=3)
    upcycled = create_method("dukd").upcycle(batch)
    assert torch.equal(upcycled.zoom_out, imresize(batch.lr, scale=1 / scale))
    assert upcycled.zoom_out.shape[-1] == math.ceil(lr_size / scale)
    assert create_method("dukd", zoom_out=False).upcycle(batch).zoom_out is None


def test_each_operation_and_their_order(make_batch) -> None:
    tiles = make_batch(count=2).hr[:, :, :16, :16]
    expected = [1 - tiles, tiles.flip(-2), tiles.flip(-1), tiles.transpose(-2, -1)]
    for index, (name, _) in enumerate(LCR_OPERATIONS):
        flags = torch.zeros(2, 4, dtype=torch.bool)
        flags[:, index] = True
        assert torch.equal(apply_operations(tiles, flags), expected[index]), name
    both = torch.tensor([[False, True, False, True], [False, False, False, False]])
    transformed = apply_operations(tiles, both)
    assert torch.equal(transformed[0], tiles[0].flip(-2).transpose(-2, -1))
    assert torch.equal(transformed[1], tiles[1])


def test_inverse_undoes_all_16_combinations_exactly() -> None:
    # Values that are multiples of 2^-24 (what torch.rand gives) make 1 − (1 − v) exact too.
    images = torch.rand(16, 3, 10, 10, generator=torch.Generator().manual_seed(7))
    restored = undo_operations(apply_operations(images, ALL_COMBINATIONS), ALL_COMBINATIONS)
    assert torch.equal(restored, images)


def test_inverse_on_real_tiles_and_the_same_order_variant(make_batch) -> None:
    tile = make_batch(count=1).hr[:, :, 8:24, 8:24]
    images = tile.expand(16, -1, -1, -1).clone()
    transformed = apply_operations(images, ALL_COMBINATIONS)
    correct = undo_operations(transformed, ALL_COMBINATIONS)
    same_order = undo_operations(transformed, ALL_COMBINATIONS, same_order=True)
    rotated_rows = []
    for row, combination in enumerate(ALL_COMBINATIONS):
        inverts = bool(combination[0])
        # Real pixel values k/255: colour inversion comes back within its one rounding.
        reference = 1 - (1 - tile[0]) if inverts else tile[0]
        assert torch.equal(correct[row], reference)
        assert (correct[row] - tile[0]).abs().max() <= (INVERSION_ROUNDING if inverts else 0)
        if _rotated_by_same_order(combination):
            rotated_rows.append(row)
            assert torch.equal(same_order[row], reference.flip(-2, -1))
            assert (same_order[row] - tile[0]).abs().max() > 0.1
        else:
            assert torch.equal(same_order[row], reference)
    assert len(rotated_rows) == 4
    # The share of samples the authors' inverse gets wrong at p = 0.3 (methods.md: 12.6 %).
    p = 0.3
    share = sum(math.prod(p if flag else 1 - p for flag in ALL_COMBINATIONS[row].tolist())
                for row in rotated_rows)
    assert share == pytest.approx(0.126)


def _manual_objective(method, batch, student, teacher, upcycled) -> dict[str, Tensor]:
    """methods.md §2 written out term by term, with one model call per input."""
    options = method.options
    with torch.no_grad():
        t_pair, t_zoom_in = teacher(batch.lr), teacher(upcycled.zoom_in)
        t_down = teacher(upcycled.zoom_out)
    sr = student(batch.lr)
    restored = undo_operations(student(upcycled.zoom_in_student), upcycled.operations,
                               options.same_order_inverse)
    sr_down = student(upcycled.zoom_out)
    size = batch.lr.shape[-1]
    lam = options.w_upcycled
    return {
        "rec": options.w_rec * F.l1_loss(sr, batch.hr),
        "kd": options.w_kd * F.l1_loss(sr, t_pair),
        "zoom_in": lam * F.l1_loss(restored, t_zoom_in),
        "zoom_out_rec": lam * options.w_rec * F.l1_loss(sr_down[..., :size, :size], batch.lr),
        "zoom_out_kd": lam * options.w_kd * F.l1_loss(sr_down, t_down),
    }


@pytest.mark.parametrize(("scale", "options"), [
    (2, {}),
    (2, {"n_sub": 2, "lcr_prob": 1.0, "w_rec": 2.0, "w_kd": 0.5, "w_upcycled": 3.0}),
    (2, {"same_order_inverse": True, "lcr_prob": 0.5, "n_sub": 4}),
    (3, {"n_sub": 3}),
])
def test_losses_equal_the_objective_written_out(make_batch, make_pair, scale, options) -> None:
    # LR side 16 is not a multiple of 3; 15 is not one of 2: x↓ has ceil(h/s) pixels and the
    # student's output on it is cropped to h for the ground-truth term.
    batch = make_batch(scale=scale, lr_size=15 if scale == 2 else 16, count=4)
    student, teacher = make_pair(scale)
    method = create_method("dukd", **options)
    state = method.generator.get_state()
    terms = method.losses(batch, student, teacher)
    method.generator.set_state(state)
    expected = _manual_objective(method, batch, student, teacher, method.upcycle(batch))
    assert set(terms) == TERMS
    for name in TERMS:
        torch.testing.assert_close(terms[name], expected[name], rtol=1e-5, atol=1e-7)
        assert terms[name].item() > 1e-4, name


def test_every_term_has_a_gradient_for_the_student(make_batch, make_pair) -> None:
    batch = make_batch()
    student, teacher = make_pair()
    terms = create_method("dukd", n_sub=2).losses(batch, student, teacher)
    parameters = list(student.parameters())
    for name, term in terms.items():
        gradients = torch.autograd.grad(term, parameters, retain_graph=True)
        assert sum(g.abs().sum() for g in gradients) > 0, name


@pytest.mark.parametrize("two_step", [False, True])
def test_teacher_runs_once_per_shape_without_gradient(make_batch, make_pair, make_step,
                                                      record_calls, two_step: bool) -> None:
    batch = make_batch(scale=2, lr_size=16, count=4)
    student, teacher = make_pair()
    teacher_calls, student_calls = record_calls(teacher), record_calls(student)
    step = make_step(student)
    logged = create_method("dukd", n_sub=2, two_step=two_step).train_step(
        batch, student, teacher, step)
    assert set(logged) == TERMS and all(math.isfinite(v) for v in logged.values())
    # Pairs and zoom-in tiles share a shape, so one call; the zoom-out input is the other.
    assert teacher_calls.shapes == [(4 + 8, 3, 16, 16), (4, 3, 8, 8)]
    assert student_calls.shapes == [(4, 3, 16, 16), (8, 3, 16, 16), (4, 3, 8, 8)]
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    assert step.clear_grad_calls == ([False, True] if two_step else [True])


def test_teacher_targets_are_constants(make_batch, make_pair) -> None:
    batch = make_batch()
    _, teacher = make_pair()
    method = create_method("dukd")
    targets = method.teacher_targets(batch, method.upcycle(batch), teacher)
    assert len(targets) == 3
    assert all(not t.requires_grad and t.grad_fn is None and not t.is_inference()
               for t in targets)
    no_zoom_out = create_method("dukd", zoom_out=False)
    assert len(no_zoom_out.teacher_targets(batch, no_zoom_out.upcycle(batch), teacher)) == 2


def test_zoom_out_off_drops_its_terms_and_teacher_call(make_batch, make_pair, record_calls) -> None:
    batch = make_batch()
    student, teacher = make_pair()
    calls = record_calls(teacher)
    terms = create_method("dukd", zoom_out=False).losses(batch, student, teacher)
    assert set(terms) == {"rec", "kd", "zoom_in"}
    assert calls.shapes == [(8, 3, 16, 16)]


@pytest.mark.parametrize(("n_sub", "zoom_out", "ratio"), [(1, True, 2.25), (2, True, 3.25),
                                                          (2, False, 3.0)])
def test_work_ratio_to_kd_is_one_plus_n_sub_plus_inverse_square_scale(
        make_batch, make_pair, make_step, record_calls, n_sub, zoom_out, ratio) -> None:
    batch = make_batch(scale=2, lr_size=16, count=4)
    pixels = {}
    for name, options in (("kd", {}), ("dukd", {"n_sub": n_sub, "zoom_out": zoom_out})):
        student, teacher = make_pair()
        student_calls, teacher_calls = record_calls(student), record_calls(teacher)
        create_method(name, **options).train_step(batch, student, teacher, make_step(student))
        pixels[name] = (student_calls.pixels, teacher_calls.pixels)
    assert pixels["dukd"][0] / pixels["kd"][0] == ratio
    assert pixels["dukd"][1] / pixels["kd"][1] == ratio


def test_two_step_takes_the_authors_two_steps(make_batch, make_pair, make_step) -> None:
    """The second forward sees the weights after step 1, and step 2 applies the sum of both
    gradients (the first one is not cleared), as the authors' code does."""
    batch = make_batch()
    student, teacher = make_pair()
    start = {name: p.detach().clone() for name, p in student.named_parameters()}
    seen: list[Tensor] = []
    student.register_forward_pre_hook(lambda module, args: seen.append(
        module.conv_first.weight.detach().clone()))
    method = create_method("dukd", two_step=True)
    state = method.generator.get_state()
    step = make_step(student, lr=0.05)
    logged = method.train_step(batch, student, teacher, step)
    assert step.clear_grad_calls == [False, True] and set(logged) == TERMS
    assert len(seen) == 3 and torch.equal(seen[0], start["conv_first.weight"])
    assert not torch.equal(seen[1], seen[0]) and torch.equal(seen[1], seen[2])

    # Replay by hand with the same draws: θ1 = θ0 − lr·g_pair(θ0); θ2 = θ1 − lr·(g_pair + g_up(θ1)).
    replica, _ = make_pair()
    replica.load_state_dict(start)
    method.generator.set_state(state)
    upcycled = method.upcycle(batch)
    parameters = list(replica.parameters())
    pair = _manual_objective(method, batch, replica, teacher, upcycled)
    g_pair = torch.autograd.grad(pair["rec"] + pair["kd"], parameters)
    with torch.no_grad():
        for p, g in zip(parameters, g_pair, strict=True):
            p -= 0.05 * g
    torch.testing.assert_close(replica.conv_first.weight, seen[1])
    terms = _manual_objective(method, batch, replica, teacher, upcycled)
    g_up = torch.autograd.grad(terms["zoom_in"] + terms["zoom_out_rec"] + terms["zoom_out_kd"],
                               parameters)
    with torch.no_grad():
        for p, a, b in zip(parameters, g_pair, g_up, strict=True):
            p -= 0.05 * (a + b)
    for (name, p), q in zip(student.named_parameters(), parameters, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(logged["zoom_in"], terms["zoom_in"].item(), rtol=1e-5, atol=1e-7)


def test_draws_follow_the_seed_and_resume_from_the_state_dict(make_batch) -> None:
    batch = make_batch()

    def draws(method) -> Tensor:
        upcycled = method.upcycle(batch)
        return torch.cat([upcycled.tiles.flatten(), upcycled.operations.flatten().long()])

    torch.manual_seed(3)
    first = create_method("dukd", n_sub=2)
    torch.manual_seed(3)
    again = create_method("dukd", n_sub=2)
    torch.manual_seed(4)
    other = create_method("dukd", n_sub=2)
    assert torch.equal(draws(first), draws(again))
    assert not torch.equal(draws(first), draws(other))
    resumed = create_method("dukd", n_sub=2)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(draws(first), draws(resumed))


def test_bad_batches_are_refused(make_batch, make_pair) -> None:
    student, teacher = make_pair()
    with pytest.raises(UserInputError, match="n_sub=5 asks for more tiles than the 4"):
        create_method("dukd", n_sub=5).losses(make_batch(scale=2), student, teacher)
    batch = make_batch(scale=2, lr_size=16)
    batch.lr, batch.hr = batch.lr[..., :12], batch.hr[..., :24]
    with pytest.raises(UserInputError, match="square training patches"):
        create_method("dukd").losses(batch, student, teacher)

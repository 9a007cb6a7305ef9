"""MKD: the meta-gradient against finite differences, KRNet kernels, state, and dukd+mkd."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from srcompress.errors import UserInputError
from srcompress.methods import Batch, create_method
from srcompress.methods.mkd import DUKDMKD, MKD
from srcompress.models.edsr import EDSR


def _tiny_float64_pair() -> tuple[EDSR, EDSR]:
    torch.manual_seed(7)
    student = EDSR(scale=2, num_feat=8, num_block=3).double()
    teacher = EDSR(scale=2, num_feat=12, num_block=3).double().eval()
    return student, teacher


def _split(batch: Batch) -> tuple[Batch, Batch]:
    half = batch.lr.shape[0] // 2
    return (Batch(batch.lr[:half], batch.hr[:half], batch.scale),
            Batch(batch.lr[half:], batch.hr[half:], batch.scale))


def test_meta_gradient_equals_central_finite_differences(make_batch) -> None:
    """∇φ ℓ1(S_θ'(x_m), y_m) with θ' = θ − α∇θ L_S(θ, φ), against (f(φ+h) − f(φ−h)) / 2h."""
    student, teacher = _tiny_float64_pair()
    real = make_batch(scale=2, lr_size=8, count=4)
    batch, meta_batch = _split(Batch(real.lr.double(), real.hr.double(), 2))
    method = create_method("mkd", krnet_width=4, w_kd=0.5, look_ahead_lr=0.1)
    method.prepare(student, teacher)
    knowledge = method.knowledge
    teacher_sr, teacher_features = method._teacher(batch, teacher)

    def meta_loss() -> torch.Tensor:
        return knowledge.look_ahead_loss(
            student, batch, meta_batch, teacher_features,
            lambda sr: sum(method.output_terms(batch, sr, teacher_sr).values()))

    parameters = list(knowledge.krnets.parameters())
    gradient = torch.autograd.grad(meta_loss(), parameters)
    # Directional derivatives along random directions over every KRNet tensor (adapters,
    # encoders, kernel heads, all positions) at once: ⟨∇φ, v⟩ against central differences.
    generator = torch.Generator().manual_seed(0)
    step = 1e-6
    numeric, analytic = [], []
    for _ in range(10):
        direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype)
                     for p in parameters]
        analytic.append(sum((g * v).sum() for g, v in zip(gradient, direction, strict=True)))
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, v in zip(parameters, direction, strict=True):
                    p.add_(sign * step * v)
            values.append(meta_loss().item())
            with torch.no_grad():
                for p, v in zip(parameters, direction, strict=True):
                    p.sub_(sign * step * v)
        numeric.append((values[0] - values[1]) / (2 * step))
    numeric_vector = torch.tensor(numeric, dtype=torch.float64)
    analytic_vector = torch.stack(analytic).detach()
    assert analytic_vector.abs().max() > 1e-6
    cosine = F.cosine_similarity(analytic_vector, numeric_vector, dim=0).item()
    ratio = (analytic_vector.norm() / numeric_vector.norm()).item()
    assert cosine > 0.99, cosine
    assert abs(ratio - 1) < 0.05, ratio


def test_look_ahead_simulates_the_student_step_that_train_step_takes(make_batch) -> None:
    """θ' = θ − α∇θ L_S must be the step the student really takes on the same batch when its
    optimiser is SGD with learning rate α: the meta loss the look-ahead reports (on the kept
    previous batch) equals ℓ1(S(x_m), y_m) measured after that real step. With meta_lr 0 the
    meta step leaves the KRNets as they were, so both steps see the same φ."""
    student, teacher = _tiny_float64_pair()
    real = make_batch(scale=2, lr_size=8, count=4)
    meta_batch, batch = _split(Batch(real.lr.double(), real.hr.double(), 2))
    alpha = 0.05
    method = create_method("mkd", krnet_width=4, w_kd=0.5, look_ahead_lr=alpha, meta_lr=0.0)
    method.prepare(student, teacher)
    sgd = torch.optim.SGD(student.parameters(), lr=alpha)

    def real_step(loss: torch.Tensor, *, clear_grad: bool = True) -> None:
        loss.backward()
        sgd.step()
        sgd.zero_grad(set_to_none=True)

    method.train_step(meta_batch, student, teacher, real_step)  # keeps it as the previous batch
    with torch.no_grad():
        before = F.l1_loss(student(meta_batch.lr), meta_batch.hr).item()
    logged = method.train_step(batch, student, teacher, real_step)
    with torch.no_grad():
        after = F.l1_loss(student(meta_batch.lr), meta_batch.hr).item()
    assert abs(after - before) > 1e-4  # the step moves the meta loss, so equality means something
    assert logged["meta"] == pytest.approx(after, rel=1e-9, abs=0)


def test_kernels_are_zero_mean_per_channel_and_unit_norm(make_pair, make_batch) -> None:
    student, teacher = make_pair()
    method = create_method("mkd")
    method.prepare(student, teacher)
    batch = make_batch()
    taps = method.knowledge.taps
    with taps.student.capture() as record:
        student(batch.lr)
    feature = taps.student.features(record)[0]
    krnet = method.knowledge.krnets[0]
    guidance = torch.randn(feature.shape[0], 16, *feature.shape[-2:])
    kernels = krnet.kernels(feature.detach(), krnet.teacher_adapter(guidance))
    assert kernels.shape == (4, 8, 8, 3, 3)
    torch.testing.assert_close(kernels.sum(dim=(-2, -1)), torch.zeros(4, 8, 8), atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(kernels.flatten(2).norm(dim=-1), torch.ones(4, 8))


def _adam_step(student: torch.nn.Module, lr: float = 1e-3):
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)

    def step(loss: torch.Tensor, *, clear_grad: bool = True) -> None:
        loss.backward()
        optimizer.step()
        if clear_grad:
            optimizer.zero_grad(set_to_none=True)

    step.optimizer = optimizer  # type: ignore[attr-defined]
    return step


def test_krnets_learn_only_from_the_meta_step_and_student_only_from_its_loss(
        make_pair, make_batch) -> None:
    student, teacher = make_pair()
    method = create_method("mkd", meta_every=3)
    method.prepare(student, teacher)
    step = _adam_step(student)
    batches = [make_batch(count=2 + i % 2) for i in range(5)]
    fresh_keys = set(EDSR(scale=2, num_feat=8, num_block=1).state_dict())
    changed = []
    for batch in batches:
        before = [p.detach().clone() for p in method.knowledge.krnets.parameters()]
        logged = method.train_step(batch, student, teacher, step)
        after = list(method.knowledge.krnets.parameters())
        changed.append(any(not torch.equal(b, a) for b, a in zip(before, after, strict=True)))
        assert ("meta" in logged) == changed[-1]
        assert logged["kr"] > 0
        assert all(p.grad is None for p in method.knowledge.krnets.parameters())
    # No previous batch at iteration 0; then every third iteration: 3.
    assert changed == [False, False, False, True, False]
    assert set(student.state_dict()) == fresh_keys
    assert sum(len(m._forward_hooks) for m in student.modules()) == 0
    assert method.student_side_parameters() == []


def test_kr_term_gives_the_student_nonzero_gradients_on_real_patches(make_pair,
                                                                     make_batch) -> None:
    student, teacher = make_pair()
    method = create_method("mkd", w_rec=0.0, penalty="l1")
    method.prepare(student, teacher)
    terms = method.losses(make_batch(), student, teacher)
    assert terms["rec"].item() == 0 and terms["kr"].item() > 0.01
    terms["kr"].backward()
    body_gradient = student.body[0].conv1.weight.grad
    assert body_gradient is not None and body_gradient.abs().sum() > 0
    assert student.conv_last.weight.grad is None or student.conv_last.weight.grad.abs().sum() == 0
    assert all(p.grad is None for p in method.knowledge.krnets.parameters())


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", ["mkd", "dukd+mkd"])
def test_method_state_round_trips_for_a_bit_exact_continuation(name, make_pair,
                                                              make_batch) -> None:
    student, teacher = make_pair()
    method = create_method(name)
    method.prepare(student, teacher)
    step = _adam_step(student)
    for count in (2, 3):
        method.train_step(make_batch(count=count), student, teacher, step)
    saved_method = _roundtrip(method.state_dict())
    saved_student = _roundtrip(student.state_dict())
    saved_optimizer = _roundtrip(step.optimizer.state_dict())

    resumed_student = copy.deepcopy(student)
    resumed_student.load_state_dict(saved_student)
    torch.manual_seed(999)  # a resumed process starts from another random state
    resumed = create_method(name)
    resumed.prepare(resumed_student, teacher)
    resumed.load_state_dict(saved_method)
    resumed_step = _adam_step(resumed_student)
    resumed_step.optimizer.load_state_dict(saved_optimizer)

    batch = make_batch(count=4)
    expected = method.train_step(batch, student, teacher, step)
    got = resumed.train_step(batch, resumed_student, teacher, resumed_step)
    assert got == expected and "meta" in got
    for a, b in zip(student.state_dict().values(), resumed_student.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    for a, b in zip(method.state_dict().values(), resumed.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_dukd_mkd_adds_the_kr_term_to_the_pair_term_only(make_pair, make_batch) -> None:
    student, teacher = make_pair()
    batch = make_batch(count=3)
    combined = create_method("dukd+mkd", n_sub=2)
    combined.prepare(student, teacher)
    plain = create_method("dukd", n_sub=2)
    plain.load_state_dict(combined.state_dict(), strict=False)  # the same random generator
    combined_terms = combined.losses(batch, student, teacher)
    plain_terms = plain.losses(batch, student, teacher)
    assert set(combined_terms) == set(plain_terms) | {"kr"}
    for name, value in plain_terms.items():
        torch.testing.assert_close(combined_terms[name], value)
    # The KR term is the one of the pairs alone, as if student and teacher ran on x only.
    single = MKD(MKD.Options())
    single.knowledge = combined.knowledge
    _, teacher_features = single._teacher(batch, teacher)
    with combined.knowledge.taps.student.capture() as record:
        student(batch.lr)
    expected = combined.knowledge.loss(combined.knowledge.taps.student.features(record),
                                       teacher_features)
    torch.testing.assert_close(combined_terms["kr"], expected, rtol=1e-4, atol=1e-6)
    assert isinstance(combined, DUKDMKD)


def test_dukd_mkd_meta_step_and_two_step_schedule(make_pair, make_batch) -> None:
    student, teacher = make_pair()
    method = create_method("dukd+mkd", two_step=True)
    method.prepare(student, teacher)
    step = _adam_step(student)
    first = method.train_step(make_batch(count=2), student, teacher, step)
    second = method.train_step(make_batch(count=3), student, teacher, step)
    assert "meta" not in first and second["meta"] > 0 and second["kr"] > 0


def test_bad_penalty_and_missing_prepare_are_reported(make_pair, make_batch) -> None:
    with pytest.raises(UserInputError, match="Option 'penalty' of method 'mkd' must be one of"):
        create_method("mkd", penalty="l2")
    student, teacher = make_pair()
    with pytest.raises(RuntimeError, match=r"call prepare\(student, teacher\)"):
        create_method("mkd").losses(make_batch(), student, teacher)
    with pytest.raises(UserInputError, match="Method 'mkd' distils from a teacher"):
        create_method("mkd").prepare(student, None)


@pytest.mark.slow
def test_resumed_mkd_run_is_bit_exact(tmp_path, set5_images) -> None:
    """Acceptance 2: 3 iterations, then resumed to 6, equal the uninterrupted 6-iteration run:
    student, EMA, KRNets and their meta optimiser, with the meta step on every iteration."""
    from srcompress import models
    from srcompress.train.distill import distill

    torch.manual_seed(1234)
    teacher = tmp_path / "teacher_x2.safetensors"
    models.save_model(teacher, models.build_model("edsr:num_feat=16,num_block=3", 2))
    common = dict(teacher=teacher, student="edsr:num_feat=8,num_block=3", method="mkd",
                  batch_size=2, patch_size=16, workers=0, device="cpu", val_benchmarks=[],
                  seed=5, gamma=1.0, save_every=100, method_options={"krnet_width": 8})
    whole = distill(**common, iters=6, output=tmp_path / "whole")
    distill(**common, iters=3, output=tmp_path / "parts")
    parts = distill(**common, iters=6, output=tmp_path / "parts", resume=True)
    assert whole.completed and parts.completed

    def checkpoint(result) -> dict:
        return torch.load(result.output / "checkpoints" / "last.pt", weights_only=True)

    expected, got = checkpoint(whole), checkpoint(parts)
    assert got["iteration"] == expected["iteration"] == 6
    for part in ("student", "ema", "method"):
        assert expected[part].keys() == got[part].keys()
        for key, value in expected[part].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, got[part][key]), (part, key)
    extra = expected["method"]["knowledge._extra_state"]
    assert extra["iterations"] == 6 and extra["meta_optimizer"]["state"]
    for index, state in extra["meta_optimizer"]["state"].items():
        resumed = got["method"]["knowledge._extra_state"]["meta_optimizer"]["state"][index]
        assert torch.equal(state["exp_avg"], resumed["exp_avg"])
    assert any(key.startswith("knowledge.krnets.") for key in expected["method"])
    student_file = models.load_model(parts.student)
    fresh = models.build_model("edsr:num_feat=8,num_block=3", 2).module
    assert set(student_file.module.state_dict()) == set(fresh.state_dict())

"""Feature taps: default positions, shapes for EDSR, RCAN and a spandrel SwinIR, hook lifetime."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from srcompress.errors import UserInputError
from srcompress.methods import run_teacher
from srcompress.methods.features import (
    FeatureTaps,
    TapPair,
    as_constant,
    default_feature_layers,
    feature_channels,
    feature_layer_pairs,
)
from srcompress.models import build_model
from srcompress.models.edsr import EDSR
from srcompress.models.rcan import RCAN

TINY_SWINIR = ("swinir:embed_dim=12,depths=[2,2,2,2,2,2],num_heads=[2,2,2,2,2,2],window_size=4,"
               "img_size=16,mlp_ratio=2.0,upsampler=pixelshuffle,resi_connection=1conv,"
               "img_range=1.0")


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(module._forward_hooks) for module in model.modules())


def test_edsr_taps_after_body_thirds_and_tail(make_batch) -> None:
    model = EDSR(scale=2, num_feat=8, num_block=16)
    assert default_feature_layers(model) == ["body.4", "body.10", "conv_after_body"]
    batch = make_batch(scale=2, lr_size=12, count=3)
    taps = FeatureTaps(model, default_feature_layers(model))
    with taps.capture() as record:
        model(batch.lr)
    features = taps.features(record)
    assert [tuple(f.shape) for f in features] == [(3, 8, 12, 12)] * 3
    with torch.no_grad():
        expected = model.conv_first(model.shift.normalise(batch.lr))
        for block in model.body[:5]:
            expected = block(expected)
    torch.testing.assert_close(features[0], expected)


def test_rcan_taps_after_groups_3_and_7_and_body_tail(make_batch) -> None:
    model = RCAN(scale=2, num_feat=16, num_group=10, num_block=1, squeeze_factor=4)
    layers = default_feature_layers(model)
    assert layers == ["body.2", "body.6", "conv_after_body"]
    taps = FeatureTaps(model, layers)
    with taps.capture() as record:
        model(make_batch(scale=2, lr_size=10, count=2).lr)
    assert [tuple(f.shape) for f in taps.features(record)] == [(2, 16, 10, 10)] * 3


def test_spandrel_swinir_tokens_become_maps(make_batch) -> None:
    model = build_model(TINY_SWINIR, 2).module
    assert type(model).__module__.startswith("spandrel.")
    layers = default_feature_layers(model)
    assert layers == ["layers.1", "layers.3", "conv_after_body"]
    batch = make_batch(scale=2, lr_size=12, count=2)
    model.eval()
    taps = FeatureTaps(model, layers)
    with taps.capture() as record:
        model(batch.lr)
    features = taps.features(record)
    assert [tuple(f.shape) for f in features] == [(2, 12, 12, 12)] * 3
    # The map of a Swin layer is its B×L×C tokens laid out on the H×W grid, as SwinIR's own
    # patch_unembed lays them out.
    with torch.no_grad():
        tokens = model.patch_embed(model.conv_first(batch.lr - model.mean))
        for layer in model.layers[:2]:
            tokens = layer(tokens, (12, 12))
        torch.testing.assert_close(features[0], model.patch_unembed(tokens, (12, 12)))


def test_generic_rule_finds_esrgan_trunk_and_override_by_name() -> None:
    model = build_model("esrgan:num_filters=16,num_blocks=4", 2).module
    assert default_feature_layers(model) == ["model.1.sub.0", "model.1.sub.2", "model.1.sub.4"]
    student = EDSR(scale=2, num_feat=8, num_block=3)
    teacher = EDSR(scale=2, num_feat=16, num_block=6)
    assert feature_layer_pairs(student, teacher, "body.1=body.3, conv_after_body") == (
        ["body.1", "conv_after_body"], ["body.3", "conv_after_body"])
    pair = TapPair(student, teacher, "body.1=body.3,conv_after_body")
    assert (pair.student_channels, pair.teacher_channels) == ([8, 8], [16, 16])


def test_short_bodies_pair_taps_by_depth() -> None:
    two_blocks = EDSR(scale=2, num_feat=16, num_block=2)
    four_blocks = EDSR(scale=2, num_feat=32, num_block=4)
    assert default_feature_layers(four_blocks) == ["body.0", "body.2", "conv_after_body"]
    assert feature_layer_pairs(two_blocks, four_blocks) == (
        ["body.0", "conv_after_body"], ["body.2", "conv_after_body"])
    assert feature_layer_pairs(four_blocks, EDSR(scale=2, num_feat=8, num_block=1)) == (
        ["body.2", "conv_after_body"], ["body.0", "conv_after_body"])


def test_bad_feature_layers_name_the_flag() -> None:
    student = EDSR(scale=2, num_feat=8, num_block=3)
    with pytest.raises(UserInputError, match=r"--feature-layers: EDSR has no module 'body.9'"):
        FeatureTaps(student, ["body.9"])
    with pytest.raises(UserInputError, match=r"--feature-layers item 'body\.1=' is incomplete"):
        feature_layer_pairs(student, student, "body.1=")
    with pytest.raises(UserInputError, match="module 'shift' of EDSR is never called"):
        feature_channels(student, ["upsample.0", "shift"])
    swinir = build_model(TINY_SWINIR, 2).module
    with pytest.raises(UserInputError, match=r"'norm' gives \(1, 256, 12\), not an image-shaped"):
        feature_channels(swinir, ["norm"])
    with pytest.raises(UserInputError, match="no stack of repeated blocks"):
        default_feature_layers(torch.nn.Conv2d(3, 3, 3))


def test_hooks_live_only_inside_a_capture_and_sessions_nest(make_batch) -> None:
    model = EDSR(scale=2, num_feat=8, num_block=3)
    x = make_batch(scale=2, lr_size=8, count=2).lr
    taps = FeatureTaps(model, default_feature_layers(model))
    assert _hook_count(model) == 0
    with taps.capture() as outer:
        model(x)
        with taps.capture() as inner:
            model(x[:1])
        with taps.paused():
            model(x)
        model(x)
        assert _hook_count(model) == 3
    assert _hook_count(model) == 0
    model(x)
    assert [len(calls) for calls in outer.values()] == [2, 2, 2]
    assert [len(calls) for calls in inner.values()] == [1, 1, 1]
    assert inner["body.0"][0].shape[0] == 1
    assert [f.shape[0] for f in taps.features(outer, rows=1, call=1)] == [1, 1, 1]


def test_teacher_features_from_inference_mode_serve_as_loss_targets(make_pair, make_batch) -> None:
    student, teacher = make_pair()
    batch = make_batch()
    pair = TapPair(student, teacher, "conv_after_body")
    with pair.teacher.capture() as record:
        run_teacher(teacher, [batch.lr])
    (raw,) = pair.teacher.features(record)
    assert raw.is_inference()
    target = as_constant(raw)
    assert not target.is_inference() and not target.requires_grad
    with pair.student.capture() as student_record:
        student(batch.lr)
    (feature,) = pair.student.features(student_record)
    adapter = torch.nn.Conv2d(8, 16, 1)
    F.mse_loss(adapter(feature), target).backward()
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0

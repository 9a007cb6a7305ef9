"""The quantiser itself, its gradients, and which layers module replacement touches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from srcompress.errors import UserInputError
from srcompress.models.edsr import EDSR
from srcompress.models.rcan import RCAN
from srcompress.quant import (
    QuantConv2d,
    calibrate,
    check_bits,
    fake_quantize,
    quantize_modules,
    restore_quantization,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_lands_on_the_grid_within_half_a_step(bits: int, signed: bool) -> None:
    clip = torch.tensor(1.7)
    levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    step = clip / levels
    values = torch.linspace(-1.7 if signed else 0.0, 1.7, 1001)
    quantized = fake_quantize(values, clip, bits, signed)
    integers = quantized / step
    assert torch.allclose(integers, integers.round(), atol=1e-4)
    assert integers.round().unique().numel() == levels + 1 + (levels if signed else 0)
    assert (quantized - values).abs().max() <= step / 2 + 1e-6
    assert torch.equal(fake_quantize(quantized, clip, bits, signed), quantized)


def test_values_outside_the_range_are_clipped() -> None:
    clip = torch.tensor(2.0)
    values = torch.tensor([-5.0, -2.5, 2.5, 9.0])
    assert fake_quantize(values, clip, 8, signed=True).tolist() == [-2.0, -2.0, 2.0, 2.0]
    assert fake_quantize(values, clip, 4, signed=False).tolist() == [0.0, 0.0, 2.0, 2.0]


def test_straight_through_gradient_inside_zero_outside_and_clip_learns() -> None:
    clip = torch.tensor(1.0, requires_grad=True)
    values = torch.tensor([-3.0, -0.4, 0.1234, 0.77, 2.0], requires_grad=True)
    fake_quantize(values, clip, 4, signed=True).sum().backward()
    assert values.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    # Outside the range the output is ±clip (gradient ±1); inside, (round(v/s) - v/s)/levels.
    step = 1.0 / 7
    inside = sum((round(v / step) - v / step) / 7 for v in (-0.4, 0.1234, 0.77))
    assert clip.grad is not None
    assert clip.grad.item() == pytest.approx(-1.0 + 1.0 + inside, abs=1e-5)


def test_quant_conv_passes_gradients_to_weights_activations_and_both_clips() -> None:
    torch.manual_seed(0)
    layer = QuantConv2d(nn.Conv2d(4, 6, 3, padding=1), w_bits=4, a_bits=4)
    with torch.no_grad():
        layer.act_unit.fill_(0.5)
    inputs = torch.randn(2, 4, 8, 8, requires_grad=True)
    layer(inputs).pow(2).mean().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.weight_clip.grad is not None and layer.weight_clip.grad.abs().sum() > 0
    assert layer.act_clip.grad is not None and layer.act_clip.grad.abs() > 0
    outside = inputs.detach().abs() > 0.5
    assert inputs.grad is not None
    assert torch.all(inputs.grad[outside] == 0)
    assert torch.all(inputs.grad[~outside] != 0)


def test_weight_clip_trims_outliers_at_low_bits() -> None:
    """Per channel: 2-bit weights get a clip well below max|w|, 8-bit ones stay near it."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3)
    largest = conv.weight.detach().abs().flatten(1).amax(1)
    layer8 = QuantConv2d(conv, w_bits=8, a_bits=8)
    layer2 = QuantConv2d(conv, w_bits=2, a_bits=8)
    assert torch.all(layer8.weight_clip >= 0.9 * largest)
    assert torch.all(layer2.weight_clip < 0.8 * largest)
    assert layer8.weight is conv.weight  # parameters are shared, not copied


@pytest.mark.parametrize("bits", [0, 1, 9, 16, -8, 4.0, True, "8"])
def test_bits_outside_two_to_eight_are_refused(bits: object) -> None:
    with pytest.raises(UserInputError, match="--w-bits"):
        check_bits(bits, "--w-bits")  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="--a-bits"):
        quantize_modules(EDSR(scale=2, num_feat=8, num_block=1), 8, bits)  # type: ignore[arg-type]


def test_body_scope_keeps_head_upsampler_and_output_in_full_precision() -> None:
    model = EDSR(scale=4, num_feat=8, num_block=2)
    report = quantize_modules(model, 4, 4)
    assert report.quantized == ["body.0.conv1", "body.0.conv2", "body.1.conv1", "body.1.conv2",
                                "conv_after_body"]
    assert set(report.full_precision) == {"conv_first", "upsample.0", "upsample.2", "conv_last"}
    assert "head" in report.full_precision["conv_first"]
    assert all(isinstance(model.get_submodule(name), QuantConv2d) for name in report.quantized)
    assert type(model.conv_first) is nn.Conv2d


def test_rcan_body_scope_includes_channel_attention_and_group_tails() -> None:
    model = RCAN(scale=3, num_feat=8, num_group=2, num_block=1, squeeze_factor=4)
    convs = [name for name, module in model.named_modules() if type(module) is nn.Conv2d]
    report = quantize_modules(model, 8, 8)
    assert set(report.full_precision) == {"conv_first", "upsample.0", "conv_last"}
    assert sorted(report.quantized) == sorted(set(convs) - set(report.full_precision))


def test_all_scope_quantizes_every_conv() -> None:
    model = EDSR(scale=2, num_feat=8, num_block=1)
    report = quantize_modules(model, 8, 8, scope="all")
    assert report.full_precision == {}
    assert not any(type(module) is nn.Conv2d for module in model.modules())


class _AttentionSR(nn.Module):
    """A SwinIR-like network: conv head, a Linear inside the body, pixel-shuffle tail."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, 8, 3, padding=1)
        self.body_conv = nn.Conv2d(8, 8, 3, padding=1)
        self.mlp = nn.Linear(8, 8)
        self.upsample = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body_conv(self.conv_first(x))
        x = self.mlp(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.upsample(x)


@pytest.mark.parametrize("scope", ["body", "all"])
def test_unsupported_layer_in_scope_is_named(scope: str) -> None:
    with pytest.raises(UserInputError, match=r"layer 'mlp' \(Linear\) cannot be quantized"):
        quantize_modules(_AttentionSR(), 8, 8, scope=scope)  # type: ignore[arg-type]


def test_already_quantized_model_is_refused() -> None:
    model = EDSR(scale=2, num_feat=8, num_block=1)
    quantize_modules(model, 8, 8)
    with pytest.raises(UserInputError, match="already quantized"):
        quantize_modules(model, 4, 4)


def test_calibration_sets_ranges_and_the_sign_of_each_input(set5_x2: list) -> None:
    torch.manual_seed(0)
    model = EDSR(scale=2, num_feat=8, num_block=2)
    quantize_modules(model, 8, 8)
    images = [pair.lr[:, :64, :64].unsqueeze(0) for pair in set5_x2[:2]]
    chosen = calibrate(model, images)
    assert set(chosen) == {"body.0.conv1", "body.0.conv2", "body.1.conv1", "body.1.conv2",
                           "conv_after_body"}
    # conv2 reads a ReLU output (never negative): unsigned; conv1 reads the residual stream.
    assert not bool(model.body[0].conv2.act_signed)
    assert bool(model.body[0].conv1.act_signed)
    with torch.no_grad():
        features = model.conv_first(model.shift.normalise(images[0]))
    assert 0 < chosen["body.0.conv1"] <= features.abs().max().item() + 1e-4


def test_restore_quantization_rebuilds_the_same_layers() -> None:
    model = EDSR(scale=2, num_feat=8, num_block=1)
    report = quantize_modules(model, 2, 4)
    fresh = restore_quantization(EDSR(scale=2, num_feat=8, num_block=1), report.metadata())
    fresh.load_state_dict(model.state_dict())
    image = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(fresh(image), model(image))
    with pytest.raises(UserInputError, match="not a Conv2d"):
        restore_quantization(EDSR(scale=2, num_feat=8, num_block=1),
                             {"w_bits": 8, "a_bits": 8, "layers": ["body.0.relu"]})

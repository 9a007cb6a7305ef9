"""The quantisers, their gradients, and where the graph pass puts them."""

from __future__ import annotations

import operator

import numpy as np
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn

from srcompress.errors import UserInputError
from srcompress.models.edsr import EDSR
from srcompress.models.rcan import RCAN
from srcompress.quant import (
    ActivationQuantizer,
    IntegerPooling,
    QuantConv2d,
    calibrate,
    check_bits,
    fake_quantize,
    quantize_model,
    restore_quantization,
)
from srcompress.quant.fakequant import runtime_sigmoid


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_lands_on_the_uint8_grid_within_half_a_step(bits: int, signed: bool) -> None:
    clip = torch.tensor(1.7)
    levels = 2 ** (bits - 1) if signed else 2**bits - 1  # zero point 2^(b-1) or 0
    step = clip / levels
    values = torch.linspace(-1.7 if signed else 0.0, 1.7, 1001)
    quantized = fake_quantize(values, clip, bits, signed)
    integers = quantized / step
    assert torch.allclose(integers, integers.round(), atol=1e-4)
    assert integers.round().unique().numel() == 2**bits  # every level of the b-bit grid is used
    inside = values <= (2**bits - 1 - (levels if signed else 0)) * step
    assert (quantized - values)[inside].abs().max() <= step / 2 + 1e-6
    assert torch.equal(fake_quantize(quantized, clip, bits, signed), quantized)


def test_values_outside_the_range_are_clipped() -> None:
    clip = torch.tensor(2.0)
    values = torch.tensor([-5.0, -2.5, 2.5, 9.0])
    assert fake_quantize(values, clip, 8, signed=True).tolist() == [-2.0, -2.0, 2.0 * 127 / 128,
                                                                    2.0 * 127 / 128]
    assert fake_quantize(values, clip, 4, signed=False).tolist() == [0.0, 0.0, 2.0, 2.0]


def test_straight_through_gradient_inside_zero_outside_and_clip_learns() -> None:
    clip = torch.tensor(1.0, requires_grad=True)
    values = torch.tensor([-3.0, -0.4, 0.1234, 0.77, 2.0], requires_grad=True)
    fake_quantize(values, clip, 4, signed=True).sum().backward()
    assert values.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    # Below the range the output is -clip (gradient -1), above it clip·7/8; inside,
    # (round(v/s) - v/s)/8 with s = clip/8.
    step = 1.0 / 8
    inside = sum((round(v / step) - v / step) / 8 for v in (-0.4, 0.1234, 0.77))
    assert clip.grad is not None
    assert clip.grad.item() == pytest.approx(-1.0 + 7 / 8 + inside, abs=1e-5)


def test_training_reaches_weights_and_every_clipping_value(set5_x2: list) -> None:
    torch.manual_seed(0)
    model, _ = quantize_model(EDSR(scale=2, num_feat=8, num_block=2), 4, 4)
    image = set5_x2[0].lr[:, :24, :24].unsqueeze(0)
    calibrate(model, [image])
    model(image).pow(2).mean().backward()
    for name, module in model.named_modules():
        if isinstance(module, QuantConv2d):
            assert module.weight.grad.abs().sum() > 0, name
            assert module.weight_clip.grad.abs().sum() > 0, name
        if isinstance(module, ActivationQuantizer):
            assert module.act_clip.grad is not None and module.act_clip.grad.abs() > 0, name


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
        quantize_model(EDSR(scale=2, num_feat=8, num_block=1), 8, bits)  # type: ignore[arg-type]


def _calls(model: fx.GraphModule, target: object) -> list[fx.Node]:
    return [node for node in model.graph.nodes if node.target == target]


def test_edsr_graph_quantizes_every_tensor_the_runtime_holds_in_integers() -> None:
    model, report = quantize_model(EDSR(scale=4, num_feat=8, num_block=2, res_scale=0.1), 8, 8)
    assert isinstance(model, fx.GraphModule) and report.graph
    assert report.full_precision == {}
    assert report.quantized == ["conv_first", "body.0.conv1", "body.0.conv2", "body.1.conv1",
                                "body.1.conv2", "conv_after_body", "upsample.0", "upsample.2",
                                "conv_last"]
    # res_scale is folded into conv2 (no Mul left); ReLU outputs carry the quantiser, not conv1.
    assert report.folded_multipliers == {"body.0.conv2": 0.1, "body.1.conv2": 0.1}
    assert not _calls(model, operator.mul)[1:]  # only MeanShift's * 255 remains
    assert {"body_0_relu", "body_0_conv2", "add", "conv_first"} <= set(
        report.activation_quantizers)
    assert "body_0_conv1" not in report.activation_quantizers
    # Each pixel shuffle re-quantises with its input's quantiser (the runtime moves uint8).
    assert report.shared_quantizers == {"upsample_1": "upsample_0", "upsample_3": "upsample_2"}
    # One quantiser per Add, called with both addends (it computes QLinearAdd), read by both
    # the skip path (the next Add) and the next conv; only MeanShift's float Add remains.
    assert len(_calls(model, operator.add)) == 1
    (quantizer,) = _calls(model, "activation_quantizers.add")
    assert [arg.target for arg in quantizer.args] == ["activation_quantizers.conv_first",
                                                      "activation_quantizers.body_0_conv2"]
    assert {user.target for user in quantizer.users} == {"body.1.conv1",
                                                          "activation_quantizers.add_1"}
    assert model.get_submodule("body.1.conv1").input_quantizer is model.get_submodule(
        str(quantizer.target))


def test_low_bits_apply_to_the_body_convs_and_their_inputs_only() -> None:
    """w4a4: the body's convs have 4-bit weights and 4-bit inputs; the head, the upsampler and
    every tensor no conv reads (conv outputs, the residual stream) keep 8 bits. A stream tensor
    that also enters a 4-bit conv gets a 4-bit copy for it."""
    model, report = quantize_model(EDSR(scale=4, num_feat=8, num_block=2), 4, 4)
    assert report.eight_bit == {"conv_first": "head (reads the image)",
                                "upsample.0": "upsampler (feeds the upsampling)",
                                "upsample.2": "upsampler (runs on the upsampled features)",
                                "conv_last": "output layer (writes the image)"}
    quantizers = dict(model.get_submodule("activation_quantizers").named_children())
    conv_inputs = set()
    for name, layer in model.named_modules():
        if isinstance(layer, QuantConv2d):
            bits = 8 if name in report.eight_bit else 4
            assert (layer.w_bits, layer.a_bits, layer.input_quantizer.bits) == (bits,) * 3, name
            conv_inputs.add(layer.input_quantizer)
    assert all(quantizer.bits == 8 for quantizer in quantizers.values()
               if quantizer not in conv_inputs)
    # The block output feeds the next block's conv1 (4 bits) and the next Add (8 bits): the
    # copy re-computes the Add (a second QLinearAdd); the head's output is a conv's, so its
    # copy re-quantises the 8-bit tensor. The last block's output only enters a conv: 4 bits.
    assert report.conv_inputs == {"conv_first": "conv_first_conv_input",
                                  "add": "add_conv_input"}
    (copy,) = _calls(model, "activation_quantizers.add_conv_input")
    (stream,) = _calls(model, "activation_quantizers.add")
    assert copy.args == stream.args and len(copy.args) == 2
    (head_copy,) = _calls(model, "activation_quantizers.conv_first_conv_input")
    assert head_copy.args[0].target == "activation_quantizers.conv_first"
    assert quantizers["add_1"].bits == 4 and "add_1" not in report.conv_inputs


def test_rcan_residual_stream_is_integer_and_channel_attention_stays_float() -> None:
    model = RCAN(scale=3, num_feat=8, num_group=2, num_block=1, squeeze_factor=4)
    convs = [name for name, module in model.named_modules() if type(module) is nn.Conv2d]
    attention = {name for name in convs if ".attention." in name}
    quantized, report = quantize_model(model, 8, 8)
    assert len(attention) == 4 and set(report.full_precision) == attention
    assert all("channel attention" in report.full_precision[name] for name in attention)
    assert sorted(report.quantized) == sorted(set(convs) - attention)
    # The gate's Mul runs in float; its output is quantised where the residual Add reads it.
    # The gate is computed as onnxruntime computes it: the pooling sums the quantised tensor's
    # integers and the sigmoid is MLAS's.
    multiplies = _calls(quantized, operator.mul)[1:]
    gates = [node.args[1] for node in multiplies]
    assert len(gates) == 2 and all(gate.target is runtime_sigmoid for gate in gates)
    assert all(isinstance(quantized.get_submodule(str(next(iter(node.users)).target)),
                          ActivationQuantizer) for node in multiplies)
    poolings = [module for name, module in quantized.named_modules()
                if name.endswith("attention.0")]
    assert len(poolings) == 2 and all(isinstance(pool, IntegerPooling) for pool in poolings)


def test_float_output_keeps_the_output_conv_and_all_scope_quantizes_attention_too() -> None:
    """The output conv is quantized unless `float_output`; `scope="all"` also quantizes channel
    attention, and asking for both is refused."""
    model, report = quantize_model(EDSR(scale=2, num_feat=8, num_block=1), 4, 4,
                                   float_output=True)
    assert report.full_precision == {"conv_last": "output layer (last to run; --float-output)"}
    assert type(model.get_submodule("conv_last")) is nn.Conv2d
    assert "conv_last" not in (report.eight_bit or {})
    rcan = RCAN(scale=2, num_feat=8, num_group=1, num_block=1, squeeze_factor=4)
    model, report = quantize_model(rcan, 8, 8, scope="all")
    assert report.full_precision == {}
    assert not any(type(module) is nn.Conv2d for module in model.modules())
    with pytest.raises(UserInputError, match=r"--float-output.*--quantize-all.*drop one"):
        quantize_model(EDSR(scale=2, num_feat=8, num_block=1), scope="all", float_output=True)


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


def test_unsupported_layer_is_left_float_and_named_or_refused_when_strict() -> None:
    model, report = quantize_model(_AttentionSR(), 8, 8)
    assert report.skipped == {"mlp": "Linear"}
    assert report.skipped_sentence() == ("not quantized (unsupported layer type, kept in float): "
                                         "mlp (Linear)")
    assert type(model.get_submodule("mlp")) is nn.Linear
    assert report.quantized == ["conv_first", "body_conv", "upsample.0"]
    with pytest.raises(UserInputError, match=r"layer 'mlp' \(Linear\).*--strict"):
        quantize_model(_AttentionSR(), 8, 8, strict=True)


def test_already_quantized_model_is_refused() -> None:
    model, _ = quantize_model(EDSR(scale=2, num_feat=8, num_block=1), 8, 8)
    with pytest.raises(UserInputError, match="already quantized"):
        quantize_model(model, 4, 4)


def test_calibration_sets_ranges_and_the_sign_of_each_tensor(set5_x2: list) -> None:
    torch.manual_seed(0)
    float_model = EDSR(scale=2, num_feat=8, num_block=2)
    model, _ = quantize_model(float_model, 8, 8)
    images = [pair.lr[:, :64, :64].unsqueeze(0) for pair in set5_x2[:2]]
    chosen = calibrate(model, images)
    quantizers = model.get_submodule("activation_quantizers")
    assert set(chosen) == {f"activation_quantizers.{name}" for name, _ in
                           quantizers.named_children()}
    # ReLU outputs are never negative: zero point 0; the residual stream is signed: 128.
    assert not bool(quantizers.body_0_relu.act_signed)
    assert bool(quantizers.add.act_signed)
    assert quantizers.add.quantization_parameters()[1:] == (128, 255)
    with torch.no_grad():
        features = float_model.conv_first(float_model.shift.normalise(images[0]))
    assert 0 < chosen["activation_quantizers.conv_first"] <= features.abs().max().item() + 1e-4


def test_restore_quantization_rebuilds_the_same_graph() -> None:
    model, report = quantize_model(EDSR(scale=2, num_feat=8, num_block=1, res_scale=0.5), 2, 4)
    fresh = restore_quantization(EDSR(scale=2, num_feat=8, num_block=1, res_scale=0.5),
                                 report.metadata())
    fresh.load_state_dict(model.state_dict())
    image = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(fresh(image), model(image))
    with pytest.raises(UserInputError, match="not a Conv2d"):
        restore_quantization(EDSR(scale=2, num_feat=8, num_block=1),
                             {"w_bits": 8, "a_bits": 8, "layers": ["body.0.relu"]})


def test_inference_gives_the_values_training_computes() -> None:
    """Without gradients the quantiser skips the straight-through bookkeeping (about twice as
    fast to evaluate) and must still give the same numbers, bit for bit."""
    torch.manual_seed(0)
    values = torch.randn(4096) * 3
    for bits, signed, int8 in [(8, True, False), (4, False, False), (8, False, True),
                               (2, torch.tensor(True), False)]:
        clip = torch.tensor(2.7)
        trained = fake_quantize(values.clone().requires_grad_(), clip, bits, signed, int8)
        assert torch.equal(fake_quantize(values, clip, bits, signed, int8), trained.detach())


def test_the_integer_conv_sums_exactly_under_autocast() -> None:
    """Mixed precision is the production path on a GPU: the conv's integer sums must not be
    taken in the autocast dtype (fp16 overflows at 65504, bf16 rounds); bf16 on the CPU shows
    it here."""
    torch.manual_seed(0)
    conv = QuantConv2d(nn.Conv2d(64, 64, 3, padding=1), w_bits=8, a_bits=8)
    quantizer = ActivationQuantizer(8)
    quantizer.act_clip.data.fill_(4.0)
    conv.link_input_quantizer(quantizer)
    x = quantizer(torch.randn(1, 64, 12, 12).abs() * 2)
    with torch.no_grad():
        exact = conv(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = conv(x)
    assert torch.equal(mixed.float(), exact.to(mixed.dtype).float())
    assert exact.abs().max() > 1  # sums far beyond bf16's 8-bit mantissa


def test_calibration_is_the_same_whatever_the_random_state(set5_x2: list) -> None:
    """Every observed value counts (a histogram, no sampling): two calibrations of the same
    model on the same batches set the same ranges, whatever the global random state."""
    images = [pair.lr[:, :64, :64].unsqueeze(0) for pair in set5_x2[:2]]
    chosen = []
    for state in (1, 2):
        torch.manual_seed(0)
        model, _ = quantize_model(EDSR(scale=2, num_feat=8, num_block=2), 4, 4)
        torch.manual_seed(state)
        chosen.append(calibrate(model, images))
    assert chosen[0] == chosen[1]


def _qlinear_add(first: np.ndarray, second: np.ndarray, scales: list[float],
                 zero_points: list[int]) -> np.ndarray:
    """onnxruntime's fused QLinearAdd of two uint8 tensors (DQ, DQ → Add → Q → DQ)."""
    nodes, initializers = [], []
    for index, name in enumerate(("a", "b", "c")):
        initializers += [numpy_helper.from_array(np.array(scales[index], np.float32), f"s{name}"),
                         numpy_helper.from_array(np.array(zero_points[index], np.uint8),
                                                 f"z{name}")]
    nodes += [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["fa"]),
              helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["fb"]),
              helper.make_node("Add", ["fa", "fb"], ["sum"]),
              helper.make_node("QuantizeLinear", ["sum", "sc", "zc"], ["q"]),
              helper.make_node("DequantizeLinear", ["q", "sc", "zc"], ["out"])]
    shape = list(first.shape)
    graph = helper.make_graph(
        nodes, "add", [helper.make_tensor_value_info(name, TensorProto.UINT8, shape)
                       for name in ("a", "b")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, {"a": first, "b": second})[0]


def test_a_residual_add_computes_what_onnxruntimes_qlinearadd_computes() -> None:
    """The quantiser of an Add gets both addends and reproduces the runtime's integer kernel
    bit for bit; rounding the float sum instead differs on some values."""
    generator = np.random.default_rng(0)
    first, second = (generator.integers(0, 256, (1, 8, 64, 64), dtype=np.uint8)
                     for _ in range(2))
    quantizers = [ActivationQuantizer(8) for _ in range(3)]
    for quantizer, clip in zip(quantizers, (3.3, 2.2, 4.4), strict=True):
        quantizer.act_unit.fill_(clip)
    quantizers[2].link_addends(quantizers[0], quantizers[1])
    steps = [float(quantizer.step().detach()) for quantizer in quantizers]
    addends = [torch.from_numpy(values.astype(np.float32) - 128) * step
               for values, step in zip((first, second), steps[:2], strict=True)]
    expected = _qlinear_add(first, second, steps, [128, 128, 128])
    with torch.no_grad():
        assert np.array_equal(quantizers[2](*addends).numpy(), expected)
        assert not np.array_equal(quantizers[2](addends[0] + addends[1]).numpy(), expected)


def test_the_sigmoid_is_onnxruntimes() -> None:
    values = torch.linspace(-20, 20, 20001)
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"])], "sigmoid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [20001])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [20001])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": values.numpy()})[0]
    assert np.array_equal(runtime_sigmoid(values).numpy(), expected)
    assert not np.array_equal(torch.sigmoid(values).numpy(), expected)
    values.requires_grad_()
    runtime_sigmoid(values).sum().backward()
    assert torch.allclose(values.grad, torch.sigmoid(values) * (1 - torch.sigmoid(values)))


def test_the_int8_grid_holds_relu_outputs_on_127_levels() -> None:
    quantizer = ActivationQuantizer(8, int8=True)
    quantizer.act_signed.fill_(False)
    assert quantizer.quantization_parameters()[1:] == (0, 127)
    assert fake_quantize(torch.tensor([5.0]), torch.tensor(1.0), 8, False, int8=True) == 1.0
    assert ActivationQuantizer(4, int8=True).quantization_parameters()[1:] == (8, 15)


def test_a_low_bit_file_from_the_earlier_layout_is_refused() -> None:
    """Files quantized below 8 bits before the head, the upsampler and the stream kept 8 bits
    would load into a different graph: they are refused with one sentence."""
    layers = ["conv_first", "body.0.conv1", "body.0.conv2", "conv_after_body", "upsample.0"]
    with pytest.raises(UserInputError, match=r"earlier srcompress.*quantize its full-precision"):
        restore_quantization(EDSR(scale=2, num_feat=8, num_block=1),
                             {"w_bits": 4, "a_bits": 4, "layers": layers, "graph": True})
    restore_quantization(EDSR(scale=2, num_feat=8, num_block=1),
                         {"w_bits": 8, "a_bits": 8, "layers": layers, "graph": True})

"""Fake-quantised layers that compute exactly what ONNX Runtime's integer kernels compute.

Two kinds of quantiser, placed by `srcompress.quant.graph` where the runtime quantises:

* `ActivationQuantizer` sits on a tensor (a conv output, a ReLU output, each Add's output, a float
  head's output feeding the body) and rounds it to the unsigned 8-bit grid ONNX Runtime's CPU
  kernels need: zero point 2^(b-1) (128 at 8 bits) for signed tensors, 0 for ReLU outputs. Its
  range is learned: SR networks have no batch norm, so activations keep a wide range that
  shifts during training, and the SR quantization papers (PAMS, DAQ) learn the clipping value.
* `QuantConv2d` quantises its weights per output channel (symmetric int8 grid, learned clipping
  value) and rounds its bias to the int32 grid integer kernels hold (step = input step × weight
  step). A constant scaling after the convolution (EDSR's `res_scale`, RRDB's 0.2) is folded into
  its weight scale and bias (`output_multiplier`), so the integers are unchanged and no Mul runs.

Rounding uses the straight-through estimator: inside the clipping range the gradient passes
unchanged, outside it is zero, and the clipping value receives the LSQ/PAMS gradient, so training
moves both.

At bit-widths below 8 the values still travel in 8-bit containers; the b-bit range is enforced by
an integer Clip after the QuantizeLinear (see `QuantizeDequantize`), never a float Clip before it,
which would block the runtime's fusions.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from srcompress.errors import UserInputError

MIN_BITS = 2
MAX_BITS = 8
METADATA_KEY = "quant"


def check_bits(bits: int, flag: str) -> int:
    """Validate one bit-width; `flag` names the option in the message (e.g. `--w-bits`)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise UserInputError(
            f"{flag} {bits!r} is not supported: choose a whole number of bits from "
            f"{MIN_BITS} to {MAX_BITS} (8, 4 and 2 are the usual choices).")
    return bits


def weight_levels(bits: int) -> int:
    """Largest weight integer: symmetric ±(2^(b-1) - 1), so that zero is exact and the grid is
    symmetric (integer kernels require a zero weight zero point)."""
    return 2 ** (bits - 1) - 1


def activation_grid(bits: int, signed: bool, int8: bool = False) -> tuple[int, int]:
    """(zero point, largest integer) of the unsigned b-bit activation grid.

    Signed tensors centre the grid (zero point 2^(b-1)); ReLU outputs start at zero, which makes
    the ReLU redundant after the QuantizeLinear, so the runtime fuses it away. The `int8` grid
    (TensorRT: int8 with zero point 0 everywhere) holds a ReLU output on 0..127 at most, so
    that every tensor is also exactly an int8 tensor with zero point 0 (the signed grid already
    is: uint8 with zero point 128 is int8 with zero point 0).
    """
    if signed:
        return 2 ** (bits - 1), 2**bits - 1
    return 0, min(2**bits - 1, 127) if int8 else 2**bits - 1


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast switched off where the device has it (not on `meta`, where MACs are counted)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _round_ste(values: Tensor) -> Tensor:
    """Round forward, identity backward (straight-through estimator)."""
    return values + (values.round() - values).detach()


def fake_quantize(values: Tensor, clip: Tensor, bits: int, signed: bool | Tensor,
                  int8: bool = False) -> Tensor:
    """Round `values` to the b-bit grid a clipping value `clip` defines; returns float values.

    Signed grids put `clip` at the zero point's distance from zero (range [-clip, clip·(zp-1)/zp]
    for the activation grid, ±clip for weights, which pass `bits` of their own grid); unsigned
    grids span [0, clip] (with at most 127 levels on the `int8` grid, see `activation_grid`).
    `clip` broadcasts against `values`; `signed` may be a bool tensor, so a forward never reads a
    value back to the host. Gradients: d/dvalues is 1 inside the range and 0 outside; d/dclip is
    the LSQ/PAMS gradient that lets training move the range.
    """
    zero_signed, top = activation_grid(bits, True)
    unsigned_top = activation_grid(bits, False, int8)[1]
    if isinstance(signed, Tensor):
        levels: Tensor | int = torch.where(signed, float(zero_signed),
                                           float(unsigned_top)).to(clip.dtype)
        upper = torch.where(signed, clip * (top - zero_signed) / zero_signed, clip)
        lower = torch.where(signed, -clip, torch.zeros_like(clip))
    elif signed:
        levels, upper, lower = zero_signed, clip * (top - zero_signed) / zero_signed, -clip
    else:
        levels, upper, lower = unsigned_top, clip, torch.zeros_like(clip)
    step = clip / levels
    if not (torch.is_grad_enabled() and (values.requires_grad or clip.requires_grad)):
        # Inference: the same numbers without the straight-through bookkeeping, in place
        # (evaluating a fake-quant model is about twice as fast).
        return torch.clamp(values, lower, upper).div_(step).round_().mul_(step)
    clipped = torch.maximum(torch.minimum(values, upper), lower)
    return _round_ste(clipped / step) * step


def fake_quantize_weight(weight: Tensor, clip: Tensor, bits: int,
                         multiplier: float = 1.0) -> Tensor:
    """Symmetric per-channel weight grid ±clip with levels ±(2^(b-1) - 1), times `multiplier`.

    The integers are multiplied by (step × multiplier), the scale the export stores, so the
    trained and the exported weights are the same float32 numbers.
    """
    step = clip / weight_levels(bits)
    clipped = torch.maximum(torch.minimum(weight, clip), -clip)
    return _round_ste(clipped / step) * (step * multiplier)


# MLAS's logistic (onnxruntime's Sigmoid on the CPU): Eigen's rational approximation.
_LOGISTIC_RANGE = 18.0
_LOGISTIC_NUMERATOR = (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05,
                       8.51377133304701e-03, 2.48287947061529e-01)
_LOGISTIC_DENOMINATOR = (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06,
                         1.70198817374094e-03, 1.16817656904453e-01, 9.93151921023180e-01)


def _fused_multiply_add(a: Tensor, b: Tensor | float, c: Tensor | float) -> Tensor:
    """float32 a·b + c rounded once, as an FMA instruction does (float64 holds the exact
    product of two float32 values and, here, the sum)."""
    b = b.double() if isinstance(b, Tensor) else float(np.float32(b))
    c = c.double() if isinstance(c, Tensor) else float(np.float32(c))
    return (a.double() * b + c).float()


class RuntimeSigmoid(torch.autograd.Function):
    """The sigmoid as onnxruntime's CPU kernel computes it, with the exact sigmoid's gradient.

    A float operation between two quantisers must give the runtime's float32 result: PyTorch's
    sigmoid differs from MLAS's approximation by up to 1e-4 (relative), which moved about one
    RCAN channel-attention output in a thousand across a rounding boundary of the quantiser after
    it, and those flips spread through a 4-bit body. Exports as an ordinary Sigmoid.
    """

    @staticmethod
    def forward(ctx: Any, values: Tensor) -> Tensor:
        ctx.save_for_backward(values)
        x = values.float().clamp(-_LOGISTIC_RANGE, _LOGISTIC_RANGE)
        squared = x * x
        numerator = _fused_multiply_add(squared, _LOGISTIC_NUMERATOR[0], _LOGISTIC_NUMERATOR[1])
        for coefficient in _LOGISTIC_NUMERATOR[2:]:
            numerator = _fused_multiply_add(numerator, squared, coefficient)
        denominator = _fused_multiply_add(squared, _LOGISTIC_DENOMINATOR[0],
                                          _LOGISTIC_DENOMINATOR[1])
        for coefficient in _LOGISTIC_DENOMINATOR[2:]:
            denominator = _fused_multiply_add(denominator, squared, coefficient)
        # Clamped below only, as the x86 kernel does (it returns 1.0000001 near 18).
        return ((numerator * x) / denominator + 0.5).clamp_min(0.0).to(values.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (values,) = ctx.saved_tensors
        exact = torch.sigmoid(values)
        return grad * exact * (1 - exact)

    @staticmethod
    def symbolic(g: Any, values: Any) -> Any:
        return g.op("Sigmoid", values)


def runtime_sigmoid(values: Tensor) -> Tensor:
    """`RuntimeSigmoid` as a function the quantised graph calls in place of torch's sigmoid."""
    return RuntimeSigmoid.apply(values)


class IntegerPooling(nn.Module):
    """A global average pooling of a quantised tensor, summed on its integers.

    The runtime sums in float32 in its own order: over the dequantised values its mean differed
    from PyTorch's by up to 1e-4 (relative), enough to flip RCAN's channel-attention outputs
    across the next quantiser's rounding boundaries. Integers sum exactly in any order (below
    2^24), so both sides pool the integers and multiply by the step once; the export traces the
    same operations (Div, Round, GlobalAveragePool, Mul).
    """

    def __init__(self, pooling: nn.Module, quantizer: ActivationQuantizer) -> None:
        super().__init__()
        self.pooling = pooling
        self.__dict__["quantizer"] = quantizer  # the tensor's, not a submodule of this one

    def forward(self, x: Tensor) -> Tensor:
        quantizer: ActivationQuantizer = self.__dict__["quantizer"]
        if not quantizer.enabled:
            return self.pooling(x)
        if quantizer.export_parameters is not None:
            step: Tensor | float = quantizer.export_parameters[0]
            return self.pooling(torch.round(x / step)) * step
        step = quantizer.step().to(x.dtype)
        return self.pooling(_round_ste(x / step)) * step


class QuantizeDequantize(torch.autograd.Function):
    """`fake_quantize_per_tensor_affine` that exports as a QuantizeLinear / DequantizeLinear
    pair, for any b-bit range inside 8 bits, in one of two forms.

    torch's own exporter accepts only the full 8-bit ranges. The ONNX Runtime form is uint8 with
    the b-bit range as an integer Clip between the two nodes, which keeps both fusable on the
    CPU. The TensorRT form (`int8`) is int8 with zero point 0, which is the same grid shifted by
    the zero point, with the b-bit range as a float Clip before the QuantizeLinear (TensorRT
    wants nothing between Q and DQ); clipping to the grid's ends before rounding gives the same
    integers as clipping after it.
    """

    @staticmethod
    def forward(ctx: Any, values: Tensor, scale: float, zero_point: int, top: int,
                int8: bool) -> Tensor:
        # Only traced: the value checked against onnxruntime is the training forward's, which
        # divides by the scale as onnxruntime's QuantizeLinear does.
        return torch.fake_quantize_per_tensor_affine(values, scale, zero_point, 0, top)

    @staticmethod
    def symbolic(g: Any, values: Any, scale: float, zero_point: int, top: int,
                 int8: bool) -> Any:
        scale_value = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        if int8:
            low, high = -zero_point, top - zero_point
            if (low, high) != (-128, 127):
                values = g.op("Clip", values,
                              g.op("Constant", value_t=torch.tensor(low * scale,
                                                                    dtype=torch.float32)),
                              g.op("Constant", value_t=torch.tensor(high * scale,
                                                                    dtype=torch.float32)))
            zero_value = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8))
            quantized = g.op("QuantizeLinear", values, scale_value, zero_value)
            return g.op("DequantizeLinear", quantized, scale_value, zero_value)
        zero_value = g.op("Constant", value_t=torch.tensor(zero_point, dtype=torch.uint8))
        quantized = g.op("QuantizeLinear", values, scale_value, zero_value)
        if top < 255:
            quantized = g.op("Clip", quantized,
                             g.op("Constant", value_t=torch.tensor(0, dtype=torch.uint8)),
                             g.op("Constant", value_t=torch.tensor(top, dtype=torch.uint8)))
        return g.op("DequantizeLinear", quantized, scale_value, zero_value)


class ActivationQuantizer(nn.Module):
    """One tensor's quantisation: learned range, sign from calibration, uint8 grid.

    The clipping value is `act_clip * act_unit`: `calibrate` sets the unit to the measured range
    and the learned factor to 1, so one learning rate suits every tensor (SR activations range
    from ~1 to hundreds) and Adam's steps are relative changes.
    """

    def __init__(self, bits: int, int8: bool = False) -> None:
        super().__init__()
        self.bits = check_bits(bits, "--a-bits")
        self.int8 = int8  # the grid TensorRT's int8 holds exactly (see `activation_grid`)
        self.act_clip = nn.Parameter(torch.ones(()))
        self.register_buffer("act_unit", torch.ones(()))
        self.register_buffer("act_signed", torch.ones((), dtype=torch.bool))
        # Switched off by `calibrate` so ranges are measured on float activations.
        self.enabled = True
        # Set by `srcompress.export.qdq.qdq_export_mode` while tracing for ONNX.
        self.export_parameters: tuple[float, int, int, bool] | None = None

    def extra_repr(self) -> str:
        return f"bits={self.bits}" + (", int8" if self.int8 else "")

    def clip(self) -> Tensor:
        return (self.act_clip.abs() * self.act_unit).clamp_min(1e-8)

    def step(self) -> Tensor:
        zero_signed = activation_grid(self.bits, True)[0]
        unsigned_top = activation_grid(self.bits, False, self.int8)[1]
        levels = torch.where(self.act_signed, float(zero_signed), float(unsigned_top))
        return self.clip().float() / levels

    def quantization_parameters(self) -> tuple[float, int, int]:
        """(scale, zero point, largest integer) of the uint8 grid the ONNX Runtime form holds."""
        signed = bool(self.act_signed)
        zero_point, top = activation_grid(self.bits, signed, self.int8)
        return float(self.step().detach()), zero_point, top

    def link_addends(self, first: ActivationQuantizer, second: ActivationQuantizer) -> None:
        """This quantiser reads the sum of two quantised tensors (a residual Add), which the
        runtime computes from their integers (QLinearAdd); see `forward`."""
        self.__dict__["addends"] = (first, second)

    def forward(self, x: Tensor, addend: Tensor | None = None) -> Tensor:
        """Quantise `x`, or `x + addend` as ONNX Runtime's QLinearAdd computes it.

        QLinearAdd does not round (a + b) / scale: it takes the integers of both inputs and
        multiplies them by the ratios of the scales in float32 with fused multiply-adds. Those
        roundings put about one value in two thousand on the other side of a rounding boundary,
        and each such flip spreads through the following layers; so the forward value is the
        kernel's, while the gradient is that of quantising the float sum.
        """
        total = x if addend is None else x + addend
        if not self.enabled:
            return total
        if self.export_parameters is not None:
            return QuantizeDequantize.apply(total, *self.export_parameters)
        # In float32 even under autocast: bf16 cannot hold the 8-bit grid's rounding exactly.
        needs_gradient = torch.is_grad_enabled() and total.requires_grad
        if addend is None or needs_gradient:
            quantized = fake_quantize(total.float(), self.clip().float(), self.bits,
                                      self.act_signed, self.int8)
            if addend is None:
                return quantized.to(x.dtype)
            return (quantized + (self._integer_add(x, addend) - quantized).detach()).to(x.dtype)
        return self._integer_add(x, addend).to(x.dtype)

    def zero_point(self) -> Tensor:
        return torch.where(self.act_signed, float(activation_grid(self.bits, True)[0]), 0.0)

    def _integer_add(self, first: Tensor, second: Tensor) -> Tensor:
        """MLAS's QLinearAdd (its AVX2 kernel, the x86 one): c = round(a·(sa/sc) + (b·(sb/sc)
        + zc - (sa/sc)·za - (sb/sc)·zb)), each multiply-add fused (one rounding), in float32.

        Float64 holds each product and sum exactly, so rounding it once to float32 is the
        fused multiply-add.
        """
        quantizers = self.__dict__.get("addends")
        assert quantizers is not None, "link_addends() first"
        with torch.no_grad():
            step = self.step().float()
            integers, ratios, offsets = [], [], []
            for value, quantizer in zip((first, second), quantizers, strict=True):
                input_step = quantizer.step().float()
                levels = torch.round(value.float() / input_step) + quantizer.zero_point()
                integers.append(levels.double())  # the uint8 values the kernel reads
                ratios.append(input_step / step)
                offsets.append(ratios[-1] * quantizer.zero_point())
            zero_point = self.zero_point()
            fixed = zero_point - (offsets[0] + offsets[1])
            partial = (integers[1] * ratios[1].double() + fixed.double()).float()
            total = (integers[0] * ratios[0].double() + partial.double()).float()
            signed_top, unsigned_top = (activation_grid(self.bits, True)[1],
                                        activation_grid(self.bits, False, self.int8)[1])
            top = torch.where(self.act_signed, float(signed_top), float(unsigned_top))
            levels = torch.minimum(torch.maximum(torch.round(total), total.new_zeros(())), top)
            return (levels - zero_point) * step


class QuantConv2d(nn.Conv2d):
    """A Conv2d with per-channel fake-quantised weights, an int32-grid bias and a folded scale.

    Its input is quantised by the `ActivationQuantizer` on the tensor it reads, which the graph
    pass links as `input_quantizer` (not a submodule: the quantiser belongs to the tensor and is
    shared with the tensor's other readers). Without a graph pass (a model torch.fx cannot trace)
    the layer owns the quantisers of its input and output instead (`owns_quantizers`), which is
    still the DQ → Conv → Q group the runtime fuses.
    """

    def __init__(self, conv: nn.Conv2d, w_bits: int, a_bits: int,
                 owns_quantizers: bool = False, int8: bool = False) -> None:
        if isinstance(conv, QuantConv2d):
            raise UserInputError("this layer is already quantized: quantize the float model.")
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                         conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
        self.weight = conv.weight
        self.bias = conv.bias
        self.w_bits = check_bits(w_bits, "--w-bits")
        self.a_bits = check_bits(a_bits, "--a-bits")
        self.weight_clip = nn.Parameter(initial_weight_clip(conv.weight.detach(), w_bits))
        # A constant the graph multiplied this layer's output by, folded into its weight scale.
        self.output_multiplier = 1.0
        self.owns_quantizers = owns_quantizers
        if owns_quantizers:
            self.own_quantizer = ActivationQuantizer(a_bits, int8).to(conv.weight.device)
            # Low bit-widths are for convolution inputs; the output, read by float operations,
            # keeps 8 bits.
            self.output_quantizer = ActivationQuantizer(8, int8).to(conv.weight.device)
        self.__dict__["linked_quantizer"] = None
        # Set by `srcompress.export.qdq.qdq_export_mode` while tracing for ONNX.
        self.export_constants: tuple[Tensor, Tensor | None] | None = None

    def extra_repr(self) -> str:
        multiplier = (f", output_multiplier={self.output_multiplier:g}"
                      if self.output_multiplier != 1.0 else "")
        return (f"{super().extra_repr()}, w_bits={self.w_bits}, a_bits={self.a_bits}"
                f"{multiplier}")

    @property
    def input_quantizer(self) -> ActivationQuantizer | None:
        return self.own_quantizer if self.owns_quantizers else self.__dict__["linked_quantizer"]

    def link_input_quantizer(self, quantizer: ActivationQuantizer) -> None:
        self.__dict__["linked_quantizer"] = quantizer

    def weight_clip_values(self) -> Tensor:
        return self.weight_clip.abs().clamp_min(1e-8).view(-1, 1, 1, 1)

    def weight_steps(self) -> Tensor:
        """Per-output-channel weight scale, the folded multiplier included."""
        return (self.weight_clip_values().flatten() / weight_levels(self.w_bits)
                * self.output_multiplier)

    def quantized_weight(self) -> Tensor:
        return fake_quantize_weight(self.weight, self.weight_clip_values(), self.w_bits,
                                    self.output_multiplier)

    def quantized_bias(self) -> Tensor | None:
        """The (scaled) bias on the int32 grid of step input_step × weight_step.

        Integer convolutions add the bias as int32 in that unit; at 4 and 2 bits the steps are
        coarse enough for the rounding to matter, so training sees it too.
        """
        if self.bias is None:
            return None
        bias = self.bias * self.output_multiplier
        quantizer = self.input_quantizer
        if quantizer is None:
            return bias
        step = quantizer.step().to(bias.dtype) * self.weight_steps()
        return _round_ste(bias / step) * step

    def forward(self, x: Tensor) -> Tensor:
        if not self.owns_quantizers:
            return self._quantized_conv(x)
        return self.output_quantizer(self._quantized_conv(self.own_quantizer(x)))

    def _quantized_conv(self, x: Tensor) -> Tensor:
        if self.export_constants is not None:
            weight, bias = self.export_constants
            return self._conv_forward(x, weight.to(x.dtype),
                                      bias.to(x.dtype) if bias is not None else None)
        quantizer = self.input_quantizer
        if quantizer is not None and not quantizer.enabled:  # calibrating: the float layer
            bias = self.bias * self.output_multiplier if self.bias is not None else None
            return self._conv_forward(x, self.weight * self.output_multiplier, bias)
        if quantizer is None:
            return self._conv_forward(x, self.quantized_weight(), self.quantized_bias())
        return self._integer_conv(x, quantizer)

    def _integer_conv(self, x: Tensor, quantizer: ActivationQuantizer) -> Tensor:
        """The convolution as the runtime computes it: integer inputs times integer weights,
        summed exactly, plus the int32 bias, times one per-channel scale. The sums are taken in
        float32 with autocast off: float32 holds integer sums below 2^24 exactly (TF32 keeps
        8-bit integer operands exact too), while under fp16 autocast a 64-channel 8-bit sum
        overflows fp16's 65504 and under bf16 it is rounded.

        Summing the dequantised values instead rounds at every product, which moves a few
        outputs across a rounding boundary of the next quantiser; each such flip spreads to the
        following layers, and at 4 bits the exported model then missed the exactness bar.
        """
        input_step = quantizer.step().to(torch.float32)
        integers = _round_ste(x.float() / input_step)
        clip = self.weight_clip_values()
        levels = weight_levels(self.w_bits)
        weight_step = clip / levels
        weights = _round_ste(torch.maximum(torch.minimum(self.weight, clip), -clip) / weight_step)
        with _autocast_off(x.device.type):
            accumulated = self._conv_forward(integers, weights.float(), None)
        scale = (input_step * self.weight_steps().float()).view(1, -1, 1, 1)
        if self.bias is not None:
            bias = self.bias.float() * self.output_multiplier / scale.view(-1)
            accumulated = accumulated + _round_ste(bias).view(1, -1, 1, 1)
        return (accumulated * scale).to(x.dtype)

    def integer_weights(self) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(int8 weights, per-channel scale, int32 bias, bias scale) as the runtime holds them."""
        with torch.no_grad():
            clip = self.weight_clip_values()
            levels = weight_levels(self.w_bits)
            integers = torch.round(torch.maximum(torch.minimum(self.weight, clip), -clip)
                                   / (clip / levels)).to(torch.int8)
            steps = self.weight_steps().float()
            bias = bias_step = None
            quantizer = self.input_quantizer
            if self.bias is not None and quantizer is not None:
                bias_step = quantizer.step().float() * steps
                bias = torch.round(self.bias.float() * self.output_multiplier
                                   / bias_step).to(torch.int32)
        return integers, steps, bias, bias_step


def initial_weight_clip(weight: Tensor, bits: int, candidates: int = 64) -> Tensor:
    """Per-output-channel clipping value that minimises the weight quantisation error.

    At 8 bits this is close to max|w|; at 4 and 2 bits clipping the few largest weights keeps far
    more resolution for the rest (max-scaling at 2 bits would round most weights to zero).
    """
    flat = weight.reshape(weight.shape[0], -1).float()
    largest = flat.abs().amax(dim=1).clamp_min(1e-8)
    best_error = torch.full_like(largest, math.inf)
    best_clip = largest.clone()
    for fraction in torch.linspace(1.0 / candidates, 1.0, candidates).tolist():
        clip = (largest * fraction).unsqueeze(1)
        error = (fake_quantize_weight(flat, clip, bits) - flat).pow(2).mean(dim=1)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_clip = torch.where(better, clip.squeeze(1), best_clip)
    return best_clip.to(weight.dtype)

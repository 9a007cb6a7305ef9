"""Fake-quantised convolutions and their insertion into any architecture by module replacement.

SR networks have no batch norm, so activations keep a wide range that shifts during training; the
SR quantization papers (PAMS, DAQ) therefore learn the clipping range of every activation instead
of fixing it. `QuantConv2d` does that for the input of a convolution and quantises its weights per
output channel with a learned, symmetric clipping value. Rounding uses the straight-through
estimator: inside the clipping range the gradient of the input passes unchanged, outside it is
zero, and the clipping value receives the LSQ-style gradient, so training moves both. The bias is
rounded to the int32 grid integer kernels use (step = input step × weight step), so the model
trained is the model onnxruntime runs.

`QuantConv2d` subclasses `nn.Conv2d` and keeps the original `weight` and `bias` parameters, so a
quantised model's state dict has the float model's keys plus the quantisation parameters
(`weight_clip`, `act_clip`, `act_unit`, `act_signed`) and can be rebuilt from the float
architecture and the list of quantised layers (`restore_quantization`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from srcompress.errors import UserInputError

MIN_BITS = 2
MAX_BITS = 8
METADATA_KEY = "quant"
Scope = Literal["body", "all"]

# Layers that carry weights but that srcompress cannot quantise: finding one inside the chosen
# scope is an error rather than a silently half-quantised model.
_UNSUPPORTED_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                         nn.ConvTranspose3d, nn.MultiheadAttention, nn.Bilinear, nn.Embedding)


def check_bits(bits: int, flag: str) -> int:
    """Validate one bit-width; `flag` names the option in the message (e.g. `--w-bits`)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise UserInputError(
            f"{flag} {bits!r} is not supported: choose a whole number of bits from "
            f"{MIN_BITS} to {MAX_BITS} (8, 4 and 2 are the usual choices).")
    return bits


def level_count(bits: int, signed: bool) -> int:
    """Largest integer level: symmetric signed grids use ±(2^(b-1) - 1), unsigned 0..2^b - 1.

    The signed grid drops -2^(b-1) so that it is symmetric around zero, as the weights and the
    signed activations of an SR body (residual sums) are.
    """
    return 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1


def _round_ste(values: Tensor) -> Tensor:
    """Round forward, identity backward (straight-through estimator)."""
    return values + (values.round() - values).detach()


def fake_quantize(values: Tensor, clip: Tensor, bits: int, signed: bool | Tensor) -> Tensor:
    """Clip to [-clip, clip] (or [0, clip]), round to the b-bit grid, return float values.

    `clip` broadcasts against `values` (a scalar per tensor or one value per output channel).
    `signed` may be a bool tensor, so a layer's forward never reads a value back to the host (no
    device sync per layer, and shapes still flow on the meta device).
    Gradients: d/dvalues is 1 inside the range and 0 outside; d/dclip is (round(v) - v)/levels
    inside and ±1 outside, i.e. the LSQ/PAMS gradient that lets training move the range.
    """
    if isinstance(signed, Tensor):
        levels: Tensor | int = torch.where(signed, float(level_count(bits, True)),
                                           float(level_count(bits, False))).to(clip.dtype)
        lower = torch.where(signed, -clip, torch.zeros_like(clip))
    else:
        levels = level_count(bits, signed)
        lower = -clip if signed else torch.zeros_like(clip)
    clipped = torch.maximum(torch.minimum(values, clip), lower)
    step = clip / levels
    return _round_ste(clipped / step) * step


class QuantConv2d(nn.Conv2d):
    """A Conv2d whose weights (per output channel) and input (per tensor) are fake-quantised."""

    def __init__(self, conv: nn.Conv2d, w_bits: int, a_bits: int) -> None:
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
        # The activation clip is `act_clip * act_unit`: `calibrate` sets the unit to the measured
        # range and the learned factor to 1, so one learning rate suits every layer (SR
        # activations range from ~1 to hundreds) and Adam's steps are relative changes.
        self.act_clip = nn.Parameter(torch.ones((), device=conv.weight.device,
                                                dtype=conv.weight.dtype))
        self.register_buffer("act_unit", torch.ones((), device=conv.weight.device,
                                                    dtype=conv.weight.dtype))
        self.register_buffer("act_signed", torch.ones((), dtype=torch.bool,
                                                      device=conv.weight.device))
        # Switched on by `srcompress.export.qdq.qdq_export_mode` while tracing for ONNX.
        self.qdq_export = False
        # Switched off by `calibrate` so ranges are measured on float activations.
        self.quantization_enabled = True

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w_bits={self.w_bits}, a_bits={self.a_bits}"

    def _weight_clip(self) -> Tensor:
        return self.weight_clip.abs().clamp_min(1e-8).view(-1, 1, 1, 1)

    def _act_clip(self) -> Tensor:
        return (self.act_clip.abs() * self.act_unit).clamp_min(1e-8)

    def quantized_weight(self) -> Tensor:
        return fake_quantize(self.weight, self._weight_clip(), self.w_bits, signed=True)

    def quantized_input(self, x: Tensor) -> Tensor:
        # In float32 even under autocast: bf16 cannot hold the 8-bit grid's rounding exactly.
        return fake_quantize(x.float(), self._act_clip().float(), self.a_bits,
                             self.act_signed).to(x.dtype)

    def _act_step(self) -> Tensor:
        levels = torch.where(self.act_signed, float(level_count(self.a_bits, True)),
                             float(level_count(self.a_bits, False)))
        return self._act_clip().float() / levels

    def quantized_bias(self, act_step: Tensor) -> Tensor | None:
        """The bias on the int32 grid of step input_step × weight_step, as integer kernels hold it.

        onnxruntime's integer convolutions round the bias to that grid; at 4 and 2 bits the steps
        are coarse enough for the rounding to matter, so training sees it too.
        """
        if self.bias is None:
            return None
        step = act_step * (self._weight_clip().flatten() / level_count(self.w_bits, True))
        return _round_ste(self.bias / step) * step

    def forward(self, x: Tensor) -> Tensor:
        if not self.quantization_enabled:
            return super().forward(x)
        if self.qdq_export:
            return self._qdq_forward(x)
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(),
                                  self.quantized_bias(self._act_step()))

    def freeze_for_export(self) -> tuple[Tensor, Tensor]:
        """Fix this layer's export constants; returns the dequantised weights and their steps.

        Computed once outside the trace: weights and bias as plain tensors (not parameters), so
        the tracer stores them as constants (the Q/DQ export finds the weights by value and
        stores them as int8), and the activation range as Python numbers.
        """
        with torch.no_grad():
            clip = self._weight_clip()
            step = (clip / level_count(self.w_bits, True)).flatten().float()
            weight = torch.maximum(torch.minimum(self.weight, clip), -clip).float()
            zero_points = torch.zeros(step.shape, dtype=torch.int32, device=step.device)
            dequantized = torch.fake_quantize_per_channel_affine(weight, step, zero_points,
                                                                 0, -128, 127)
            signed = bool(self.act_signed)
            act_clip = float(self._act_clip())
            act_step = act_clip / level_count(self.a_bits, signed)
            bias = self.quantized_bias(torch.tensor(act_step, device=step.device))
        self.export_weight = dequantized
        self.export_bias = bias.detach().clone() if bias is not None else None
        self.export_activation = (act_clip, act_step, signed)
        return dequantized, step

    def _qdq_forward(self, x: Tensor) -> Tensor:
        """The same computation written with the ops the ONNX exporter turns into Q/DQ pairs.

        Every bit-width from 2 to 8 fits an 8-bit container: values are clipped to the b-bit range
        first and the scale is clip/levels(b), so the int8/uint8 QuantizeLinear lands exactly on
        the b-bit grid. Scales are Python numbers (from `freeze_for_export`) so the exporter
        stores them as initialisers.
        """
        act_clip, act_step, signed = self.export_activation
        x = torch.clamp(x, -act_clip if signed else 0.0, act_clip)
        low, high = (-128, 127) if signed else (0, 255)
        x = torch.fake_quantize_per_tensor_affine(x, act_step, 0, low, high)
        bias = self.export_bias.to(x.dtype) if self.export_bias is not None else None
        return self._conv_forward(x, self.export_weight.to(x.dtype), bias)


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
        error = (fake_quantize(flat, clip, bits, signed=True) - flat).pow(2).mean(dim=1)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_clip = torch.where(better, clip.squeeze(1), best_clip)
    return best_clip.to(weight.dtype)


@dataclass
class QuantizationReport:
    """Which layers were quantised and which stayed in full precision, and why."""

    w_bits: int
    a_bits: int
    scope: str
    quantized: list[str] = field(default_factory=list)
    full_precision: dict[str, str] = field(default_factory=dict)

    def metadata(self) -> dict[str, object]:
        """The `quant` entry of a checkpoint's metadata: `save_model(..., quant=report.metadata())`.

        Holds what `restore_quantization` needs, plus the layers kept in full precision.
        """
        return {"w_bits": self.w_bits, "a_bits": self.a_bits, "scope": self.scope,
                "layers": self.quantized, "full_precision": sorted(self.full_precision)}

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, QuantConv2d]]:
    for name, module in model.named_modules():
        if isinstance(module, QuantConv2d):
            yield name, module


def is_quantized(model: nn.Module) -> bool:
    return next(quantized_layers(model), None) is not None


def quantize_modules(model: nn.Module, w_bits: int = 8, a_bits: int = 8,
                     scope: Scope = "body") -> QuantizationReport:
    """Replace the Conv2d layers in `scope` by `QuantConv2d`, in place, and say what was done.

    `scope="body"` keeps the head (the first convolution to run), the upsampling tail (every
    convolution feeding a spatial upsampler or running above the input resolution) and the output
    convolution in full precision, as the SR quantization papers do; `"all"` quantises every
    Conv2d. The rule comes from one small forward pass, so it works on any architecture without
    naming its layers. Activation ranges still need `calibrate` before use.
    """
    check_bits(w_bits, "--w-bits")
    check_bits(a_bits, "--a-bits")
    if scope not in ("body", "all"):
        raise UserInputError(f"quantization scope {scope!r} is unknown: use 'body' or 'all'.")
    if is_quantized(model):
        existing = describe_quantization(model)
        raise UserInputError(
            f"the model is already quantized ({existing}): pass its full-precision checkpoint "
            "to quantize it again.")
    convs = {name: module for name, module in model.named_modules()
             if type(module) is nn.Conv2d}
    if not convs:
        raise UserInputError("the model has no Conv2d layer that srcompress could quantize.")
    if scope == "body":
        head_and_tail = kept = _full_precision_layers(model, convs)
    else:
        # Only needed for the wording of an error; a model the probe cannot run still quantises.
        try:
            head_and_tail, kept = _full_precision_layers(model, convs), {}
        except UserInputError:
            head_and_tail, kept = {}, {}
    unsupported = _unsupported_in_scope(model, kept)
    if unsupported:
        name, module = unsupported
        hint = ("quantize without --quantize-all to keep it in full precision"
                if _inside(name, head_and_tail)
                else "it sits in the body, so this architecture cannot be quantized yet")
        raise UserInputError(
            f"layer '{name}' ({type(module).__name__}) cannot be quantized: srcompress quantizes "
            f"Conv2d layers only; {hint}.")
    report = QuantizationReport(w_bits, a_bits, scope, full_precision=dict(kept))
    for name, conv in convs.items():
        if name in kept:
            continue
        _replace(model, name, QuantConv2d(conv, w_bits, a_bits))
        report.quantized.append(name)
    return report


def restore_quantization(model: nn.Module, settings: Mapping[str, object] | str) -> nn.Module:
    """Rebuild the fake-quant layers of a `quantized.safetensors` before its weights are loaded.

    Called by the checkpoint loader on the freshly built float architecture with the decoded
    `quant` metadata entry (`QuantizationReport.metadata()`); the quantisation parameters then
    load with the state dict. Returns `model`, changed in place.
    """
    try:
        decoded = json.loads(settings) if isinstance(settings, str) else dict(settings)
        w_bits, a_bits = int(decoded["w_bits"]), int(decoded["a_bits"])
        layers = [str(name) for name in decoded["layers"]]
    except (ValueError, KeyError, TypeError) as error:
        raise UserInputError(
            f"the checkpoint's '{METADATA_KEY}' metadata is unreadable ({error}): re-create the "
            "file with `srcompress quantize`.") from error
    modules = dict(model.named_modules())
    for name in layers:
        conv = modules.get(name)
        if type(conv) is not nn.Conv2d:
            raise UserInputError(
                f"the checkpoint lists quantized layer '{name}', which is not a Conv2d of this "
                "architecture: the file does not match its architecture metadata.")
        _replace(model, name, QuantConv2d(conv, w_bits, a_bits))
    return model


def quantization_settings(model: nn.Module) -> dict[str, object] | None:
    """The bit-widths and quantised layer names of a model (None for a float model)."""
    layers = list(quantized_layers(model))
    if not layers:
        return None
    return {"w_bits": sorted({layer.w_bits for _, layer in layers}),
            "a_bits": sorted({layer.a_bits for _, layer in layers}),
            "layers": [name for name, _ in layers]}


def describe_quantization(model: nn.Module) -> str:
    settings = quantization_settings(model)
    if settings is None:
        return "full precision"
    w_bits = "/".join(str(b) for b in settings["w_bits"])  # type: ignore[union-attr]
    a_bits = "/".join(str(b) for b in settings["a_bits"])  # type: ignore[union-attr]
    return f"w{w_bits}a{a_bits}, {len(settings['layers'])} layers"  # type: ignore[arg-type]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _full_precision_layers(model: nn.Module, convs: dict[str, nn.Conv2d]) -> dict[str, str]:
    """Head, upsampling-tail and output convolutions, found by tracing one small forward pass."""
    conv_names = {id(module): name for name, module in convs.items()}
    # Execution order of (conv name, input shape, output shape); upsizers are recorded with the
    # name None and their input shape, so the conv that fed one is the last conv before it with
    # a matching output shape.
    trace: list[tuple[str | None, tuple[int, ...], tuple[int, ...]]] = []

    def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if not inputs or not isinstance(inputs[0], Tensor) or not isinstance(output, Tensor):
            return
        if inputs[0].dim() != 4 or output.dim() != 4:
            return
        in_shape, out_shape = tuple(inputs[0].shape), tuple(output.shape)
        if id(module) in conv_names:
            trace.append((conv_names[id(module)], in_shape, out_shape))
        elif out_shape[-2] > in_shape[-2] or out_shape[-1] > in_shape[-1]:
            trace.append((None, in_shape, out_shape))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    first = next(iter(convs.values()))
    probe_size = 32
    probe = torch.rand(1, first.in_channels, probe_size, probe_size,
                       device=first.weight.device, dtype=first.weight.dtype)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(probe)
    except Exception as error:
        raise UserInputError(
            f"the model could not run on a {probe_size}x{probe_size} probe image to find its head "
            f"and tail layers ({error}): quantize with --quantize-all instead.") from error
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    executed = [(name, in_shape) for name, in_shape, _ in trace if name is not None]
    if not executed:
        raise UserInputError("no Conv2d layer ran in a forward pass: this model cannot be "
                             "quantized by srcompress.")
    kept: dict[str, str] = {executed[0][0]: "head (first layer)"}
    last_conv: tuple[str, tuple[int, ...]] | None = None
    for name, in_shape, out_shape in trace:
        if name is not None:
            last_conv = (name, out_shape)
        elif last_conv is not None and last_conv[1] == in_shape:
            kept.setdefault(last_conv[0], "upsampling tail (feeds the upsampler)")
    for name, in_shape in executed:
        if in_shape[-2] > probe_size or in_shape[-1] > probe_size:
            kept.setdefault(name, "upsampling tail (runs above the input resolution)")
    kept.setdefault(executed[-1][0], "output layer (last to run)")
    return kept


def _unsupported_in_scope(model: nn.Module,
                          kept: dict[str, str]) -> tuple[str, nn.Module] | None:
    """The first weighted layer srcompress cannot quantise that is not kept in full precision.

    Anything with weights left out silently would make a partly quantised model look like a
    quantised one, so it is an error instead.
    """
    for name, module in model.named_modules():
        if isinstance(module, _UNSUPPORTED_WEIGHTED) and not _inside(name, kept):
            return name, module
    return None


def _inside(name: str, layers: Mapping[str, str]) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in layers)

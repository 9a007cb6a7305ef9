"""Quantise a float SR model into the integer graph ONNX Runtime fuses, by a torch.fx pass.

Module replacement alone quantises each convolution's input; the runtime needs more to keep a
network in integers: a QuantizeLinear on every conv output, on every Add of the residual stream
(shared by the skip path and the next conv), on the inputs and output of each Mul and Concat, and
the ReLU folded into the quantiser after it. Channel attention (global pooling, its 1x1 convs,
the sigmoid gate and its Mul) stays float. `quantize_model` therefore

1. replaces the Conv2d layers in scope by `QuantConv2d` (weights, bias grid);
2. traces the model with torch.fx and marks every tensor the runtime will hold in integers:
   the output of a quantised conv (or of the ReLU right after it), of an Add/Concat that reads
   an integer tensor, of a Mul of two integer tensors, of a LeakyReLU/PReLU that reads one, and
   every float tensor such an operation reads (an image-side input joining the body);
3. folds a constant scaling of a conv's output (`x * res_scale`, `x * 0.2`) into that conv;
4. puts one `ActivationQuantizer` on each marked tensor, shared by all its readers.

The result is a `torch.fx.GraphModule` with the model's own parameter names plus
`activation_quantizers.<tensor>.*`; `restore_quantization` rebuilds it from the float
architecture and the `quant` metadata, since the pass is deterministic. Models torch.fx cannot
trace (shape-dependent Python control flow, e.g. SwinIR's window padding) fall back to quantising
each conv's input and output, which still runs as integer convolutions but leaves the Adds and
everything between the convs in float; the report says so (`graph: false`).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from srcompress.errors import UserInputError
from srcompress.quant.fakequant import (
    METADATA_KEY,
    ActivationQuantizer,
    QuantConv2d,
    check_bits,
)

Scope = Literal["body", "all"]
QUANTIZERS = "activation_quantizers"

# Layers with weights srcompress does not quantise: they stay float and are named in the report.
_UNSUPPORTED_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                         nn.ConvTranspose3d, nn.MultiheadAttention, nn.Bilinear, nn.Embedding)
_ADD = {operator.add, operator.iadd, torch.add}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div}
_CAT = {torch.cat, torch.concat}
_RELU_FUNCTIONS = {F.relu, torch.relu}
# Element-wise operations with an integer kernel in ONNX Runtime (or whose output the next integer
# operation needs quantised anyway): quantised when they read an integer tensor. Pooling is not
# among them: a global average rounds differently in integers, and one flipped level of a pooled
# channel moves that channel in every pixel (RCAN's channel attention then missed the exactness
# bar: 99.64 % of pixels within one grey level instead of 99.9 %), so attention stays float.
_UNARY_MODULES = (nn.LeakyReLU, nn.PReLU, nn.ReLU)
_UNARY_FUNCTIONS = {F.leaky_relu, F.prelu, F.relu, torch.relu}


@dataclass
class QuantizationReport:
    """Which layers were quantised, which stayed in full precision and why, and the tensors
    quantised between them."""

    w_bits: int
    a_bits: int
    scope: str
    quantized: list[str] = field(default_factory=list)
    full_precision: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    activation_quantizers: list[str] = field(default_factory=list)
    # Rearranging operations (pixel shuffle) reusing their input's quantiser: tensor → quantiser.
    shared_quantizers: dict[str, str] = field(default_factory=dict)
    folded_multipliers: dict[str, float] = field(default_factory=dict)
    graph: bool = True

    def metadata(self) -> dict[str, object]:
        """The `quant` entry of a checkpoint's metadata (what `restore_quantization` needs)."""
        return {"w_bits": self.w_bits, "a_bits": self.a_bits, "scope": self.scope,
                "layers": self.quantized, "full_precision": sorted(self.full_precision),
                "skipped": self.skipped, "graph": self.graph,
                "activation_quantizers": len(self.activation_quantizers)}

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def skipped_sentence(self) -> str | None:
        """One line naming the layers left in float because srcompress cannot quantise them."""
        if not self.skipped:
            return None
        names = ", ".join(f"{name} ({kind})" for name, kind in self.skipped.items())
        return f"not quantized (unsupported layer type, kept in float): {names}"


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, QuantConv2d]]:
    for name, module in model.named_modules():
        if isinstance(module, QuantConv2d):
            yield name, module


def activation_quantizers(model: nn.Module) -> Iterator[tuple[str, ActivationQuantizer]]:
    for name, module in model.named_modules():
        if isinstance(module, ActivationQuantizer):
            yield name, module


def is_quantized(model: nn.Module) -> bool:
    """True when `model` holds fake-quant layers (so it trains, saves and exports as quantised)."""
    return next(quantized_layers(model), None) is not None


def quantize_model(model: nn.Module, w_bits: int = 8, a_bits: int = 8, scope: Scope = "body",
                   strict: bool = False) -> tuple[nn.Module, QuantizationReport]:
    """The fake-quant version of `model` (a new module sharing its parameters) and its report.

    `scope="body"` keeps the output convolution (the last to run, at the output resolution) in
    full precision; `"all"` quantises every Conv2d. Layers with weights that srcompress cannot
    quantise (Linear, transposed convs...) stay float and are named in `report.skipped`;
    `strict=True` refuses them instead. Activation ranges still need `calibrate` before use.
    """
    check_bits(w_bits, "--w-bits")
    check_bits(a_bits, "--a-bits")
    if scope not in ("body", "all"):
        raise UserInputError(f"quantization scope {scope!r} is unknown: use 'body' or 'all'.")
    if is_quantized(model):
        raise UserInputError(
            f"the model is already quantized ({describe_quantization(model)}): pass its "
            "full-precision checkpoint to quantize it again.")
    convs = {name: module for name, module in model.named_modules()
             if type(module) is nn.Conv2d}
    if not convs:
        raise UserInputError("the model has no Conv2d layer that srcompress could quantize.")
    kept = _full_precision_layers(model, convs) if scope == "body" else {}
    skipped = {name: type(module).__name__ for name, module in model.named_modules()
               if isinstance(module, _UNSUPPORTED_WEIGHTED) and not _inside(name, kept)}
    if skipped and strict:
        name, kind = next(iter(skipped.items()))
        raise UserInputError(
            f"layer '{name}' ({kind}) cannot be quantized (srcompress quantizes Conv2d layers) "
            "and --strict refuses to leave it in float: drop --strict to quantize the rest.")
    report = QuantizationReport(w_bits, a_bits, scope, full_precision=dict(kept),
                                skipped=skipped)
    report.quantized = [name for name in convs if name not in kept]
    return _build(model, report), report


def restore_quantization(model: nn.Module, settings: Mapping[str, object] | str) -> nn.Module:
    """Rebuild the fake-quant model of a `quantized.safetensors` before its weights are loaded.

    Called by the checkpoint loader on the freshly built float architecture with the decoded
    `quant` metadata entry (`QuantizationReport.metadata()`); returns the module to load into.
    """
    try:
        decoded = json.loads(settings) if isinstance(settings, str) else dict(settings)
        report = QuantizationReport(int(decoded["w_bits"]), int(decoded["a_bits"]),
                                    str(decoded.get("scope", "body")),
                                    quantized=[str(name) for name in decoded["layers"]],
                                    skipped=dict(decoded.get("skipped", {})),
                                    graph=bool(decoded.get("graph", False)))
    except (ValueError, KeyError, TypeError) as error:
        raise UserInputError(
            f"the checkpoint's '{METADATA_KEY}' metadata is unreadable ({error}): re-create the "
            "file with `srcompress quantize`.") from error
    modules = dict(model.named_modules())
    for name in report.quantized:
        if type(modules.get(name)) is not nn.Conv2d:
            raise UserInputError(
                f"the checkpoint lists quantized layer '{name}', which is not a Conv2d of this "
                "architecture: the file does not match its architecture metadata.")
    return _build(model, report, graph=report.graph)


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


def _build(model: nn.Module, report: QuantizationReport, graph: bool | None = None) -> nn.Module:
    """Swap the listed convs and insert the activation quantisers; `graph=None` tries fx first."""
    if graph is not False:
        try:
            traced = fx.symbolic_trace(model)
        except Exception:
            if graph:
                raise UserInputError(
                    "the checkpoint was quantized as a traced graph, but this architecture no "
                    "longer traces with torch.fx: re-create it with `srcompress quantize`."
                ) from None
        else:
            for name in report.quantized:
                conv = traced.get_submodule(name)
                assert isinstance(conv, nn.Conv2d)
                _replace(traced, name, QuantConv2d(conv, report.w_bits, report.a_bits))
            _insert_quantizers(traced, report)
            report.graph = True
            return traced
    for name in report.quantized:
        conv = model.get_submodule(name)
        assert isinstance(conv, nn.Conv2d)
        _replace(model, name, QuantConv2d(conv, report.w_bits, report.a_bits,
                                          owns_quantizers=True))
    report.graph = False
    return model


def _insert_quantizers(traced: fx.GraphModule, report: QuantizationReport) -> None:
    graph = traced.graph
    modules = dict(traced.named_modules())
    device = next(traced.parameters()).device
    quantized: dict[fx.Node, bool] = {}  # node → its output carries a quantiser
    shares: dict[fx.Node, fx.Node] = {}  # rearranged tensor → the tensor whose quantiser it reuses

    def needs_quantizer(node: Any) -> None:
        if isinstance(node, fx.Node) and node not in shares:
            quantized[node] = True

    def is_integer(node: Any) -> bool:
        return isinstance(node, fx.Node) and (quantized.get(node, False) or node in shares)

    image_side: set[fx.Node] = set()  # computed from the input image without a layer between
    for node in list(graph.nodes):
        module = modules.get(node.target) if node.op == "call_module" else None
        tensors = [arg for arg in _flat_args(node) if isinstance(arg, fx.Node)]
        if node.op in ("placeholder", "get_attr") or (
                module is None and tensors and all(t in image_side for t in tensors)):
            image_side.add(node)
        if isinstance(module, QuantConv2d):
            needs_quantizer(node.args[0])
            quantized[node] = True
        elif _is_relu(node, modules) and _fusable_conv(tensors[0], modules):
            # Conv → ReLU → Q: the quantiser moves after the ReLU (zero point 0), which the
            # runtime then drops.
            quantized[tensors[0]] = False
            quantized[node] = True
        elif _scaled_conv(node, modules, quantized) is not None:
            conv_node, factor = _scaled_conv(node, modules, quantized)  # type: ignore[misc]
            conv = modules[conv_node.target]
            assert isinstance(conv, QuantConv2d)
            conv.output_multiplier *= factor
            report.folded_multipliers[str(conv_node.target)] = conv.output_multiplier
            node.replace_all_uses_with(conv_node)
            graph.erase_node(node)
        elif _scale(node) == 1.0:  # `x * res_scale` with res_scale 1: exactly nothing
            node.replace_all_uses_with(node.args[0] if isinstance(node.args[0], fx.Node)
                                       else node.args[1])
            graph.erase_node(node)
        elif _combines(node, tensors, is_integer):
            for tensor in tensors:
                needs_quantizer(tensor)
            quantized[node] = True
        elif _is_unary(node, module) and tensors and is_integer(tensors[0]):
            quantized[node] = True
        elif _rearranges(node, module) and tensors and is_integer(tensors[0]):
            # Same values, moved: quantised again by the same quantiser (an identity), so the
            # runtime drops the DQ/Q pair around it and moves uint8 instead of float (the
            # upsampler's DepthToSpace: 174 ms in float, 63 ms in uint8 on edsr-baseline).
            shares[node] = tensors[0]

    for node in list(graph.nodes):
        if not quantized.get(node, False):
            continue
        name = node.name
        # The image is 8-bit data: its quantiser keeps 8 bits whatever --a-bits says (the same
        # uint8 container, so no cost at run time; at w4a4 it alone cost 1.0 dB on Set5).
        quantizer = ActivationQuantizer(8 if node in image_side else report.a_bits).to(device)
        traced.add_submodule(f"{QUANTIZERS}.{name}", quantizer)
        with graph.inserting_after(node):
            quantizer_node = graph.call_module(f"{QUANTIZERS}.{name}", (node,))
        node.replace_all_uses_with(quantizer_node,
                                   delete_user_cb=lambda user, q=quantizer_node: user is not q)
        report.activation_quantizers.append(name)
    for node, source in shares.items():
        owner = source
        while owner in shares:
            owner = shares[owner]
        target = f"{QUANTIZERS}.{owner.name}"
        with graph.inserting_after(node):
            quantizer_node = graph.call_module(target, (node,))
        node.replace_all_uses_with(quantizer_node,
                                   delete_user_cb=lambda user, q=quantizer_node: user is not q)
        report.shared_quantizers[node.name] = owner.name
    graph.lint()
    traced.recompile()
    modules = dict(traced.named_modules())
    for node in graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, QuantConv2d):
            source = node.args[0]
            quantizer = (modules.get(source.target) if isinstance(source, fx.Node)
                         and source.op == "call_module" else None)
            assert isinstance(quantizer, ActivationQuantizer)
            module.link_input_quantizer(quantizer)


def _flat_args(node: fx.Node) -> list[Any]:
    flat: list[Any] = []
    for arg in node.args:
        flat.extend(arg if isinstance(arg, (list, tuple)) else [arg])
    return flat


def _is_relu(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _fusable_conv(node: Any, modules: Mapping[str, nn.Module]) -> bool:
    return (isinstance(node, fx.Node) and node.op == "call_module"
            and isinstance(modules.get(str(node.target)), QuantConv2d) and len(node.users) == 1)


def _combines(node: fx.Node, tensors: list[fx.Node], is_integer: Callable[[Any], bool]) -> bool:
    """An Add of two tensors or a Concat reading an integer tensor (the others are quantised to
    join it), or a Mul of two integer tensors: integer kernels in ONNX Runtime.

    A Mul with a float operand (channel attention's gate) stays float: quantising the gate would
    put the rounding of a few pooled values on whole channels.
    """
    if node.op == "call_function" and node.target in _CAT:
        return any(map(is_integer, tensors))
    if len(tensors) != 2:
        return False
    if (node.op == "call_function" and node.target in _ADD) or (
            node.op == "call_method" and node.target in ("add", "add_")):
        return any(map(is_integer, tensors))
    if (node.op == "call_function" and node.target in _MUL) or (
            node.op == "call_method" and node.target in ("mul", "mul_")):
        return all(map(is_integer, tensors))
    return False


def _is_unary(node: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return isinstance(module, _UNARY_MODULES)
    return node.op == "call_function" and node.target in _UNARY_FUNCTIONS


def _rearranges(node: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return isinstance(module, (nn.PixelShuffle, nn.PixelUnshuffle))
    return node.op == "call_function" and node.target in (F.pixel_shuffle, F.pixel_unshuffle,
                                                          torch.pixel_shuffle,
                                                          torch.pixel_unshuffle)


def _scaled_conv(node: fx.Node, modules: Mapping[str, nn.Module],
                 quantized: Mapping[fx.Node, bool]) -> tuple[fx.Node, float] | None:
    """(conv node, factor) when `node` multiplies or divides a quantised conv's output (its only
    reader) by a Python number, which folds exactly into the conv's weight scale and bias."""
    factor = _scale(node)
    if factor is None:
        return None
    first = next(arg for arg in node.args if isinstance(arg, fx.Node))
    if not _fusable_conv(first, modules) or not quantized.get(first, False):
        return None
    return first, factor


def _scale(node: fx.Node) -> float | None:
    """The factor when `node` multiplies or divides one tensor by a Python number."""
    if node.op != "call_function" or len(node.args) != 2:
        return None
    first, second = node.args
    if node.target in _MUL:
        if isinstance(second, fx.Node):
            first, second = second, first
        if isinstance(first, fx.Node) and isinstance(second, (int, float)):
            return float(second)
    elif (node.target in _DIV and isinstance(first, fx.Node)
          and isinstance(second, (int, float)) and second != 0):
        return 1.0 / float(second)
    return None


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _full_precision_layers(model: nn.Module, convs: dict[str, nn.Conv2d]) -> dict[str, str]:
    """The output convolution (the last to run) and channel attention's convolutions (those
    running on globally pooled 1x1 features), found by running one small forward pass.

    Attention stays float for exactness (see `_UNARY_MODULES`) and costs little: its convs run
    on one pixel. The output conv stays float: it writes the image itself, at the output
    resolution, where one quantisation level is a visible error. The head reads an 8-bit image,
    so quantising its input costs little, and keeping it float costs the integer graph its
    speed: onnxruntime then keeps every residual Add in NCHW and wraps each conv in a pair of
    Transposes (36 instead of 4 in edsr-baseline, 2.12x instead of 2.36x over float; see
    docs/results.md). The upsampler's convolutions run at the input resolution like the body.
    """
    order: list[str] = []
    pooled: list[str] = []
    conv_names = {id(module): name for name, module in convs.items()}

    def record(module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        order.append(conv_names[id(module)])
        if output.dim() == 4 and output.shape[-2:] == (1, 1):
            pooled.append(conv_names[id(module)])

    handles = [module.register_forward_hook(record) for module in convs.values()]
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
            f"the model could not run on a {probe_size}x{probe_size} probe image to find its "
            f"output layer ({error}): quantize with --quantize-all instead.") from error
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not order:
        raise UserInputError("no Conv2d layer ran in a forward pass: this model cannot be "
                             "quantized by srcompress.")
    kept = dict.fromkeys(pooled, "channel attention (runs on pooled 1x1 features, float)")
    kept[order[-1]] = "output layer (last to run)"
    return kept


def _inside(name: str, layers: Mapping[str, str]) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in layers)

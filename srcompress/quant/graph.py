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
4. puts one `ActivationQuantizer` on each marked tensor, shared by all its readers, except that
   below 8 bits a tensor of the 8-bit stream that also enters a low-bit conv gets a low-bit copy
   for that conv (head, upsampler, conv outputs and the stream keep 8 bits), and a pixel
   shuffle's output re-uses its input's quantiser (the runtime moves uint8 through it);
5. replaces the residual Adds, the sigmoid and global pooling it keeps in integers by the
   runtime's own arithmetic (`fakequant`), so training computes what the export will.

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
    IntegerPooling,
    QuantConv2d,
    check_bits,
    runtime_sigmoid,
)

Scope = Literal["body", "all"]
QUANTIZATION_TARGETS = ("onnxruntime", "tensorrt")
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
    # "tensorrt": every activation on the grid int8 with zero point 0 holds (ReLU outputs on
    # 0..127), so the TensorRT export is exact; "onnxruntime": ReLU outputs on 0..255.
    target: str = "onnxruntime"
    quantized: list[str] = field(default_factory=list)
    full_precision: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    activation_quantizers: list[str] = field(default_factory=list)
    # Rearranging operations (pixel shuffle) reusing their input's quantiser: tensor → quantiser.
    shared_quantizers: dict[str, str] = field(default_factory=dict)
    folded_multipliers: dict[str, float] = field(default_factory=dict)
    # Quantised convs kept at 8 bits (weights and input) below 8 bits: layer → why. None until
    # the graph pass has looked for them.
    eight_bit: dict[str, str] | None = None
    # 8-bit tensors that also enter low-bit convs: tensor → the quantiser of the convs' copy.
    conv_inputs: dict[str, str] = field(default_factory=dict)
    graph: bool = True

    def metadata(self) -> dict[str, object]:
        """The `quant` entry of a checkpoint's metadata (what `restore_quantization` needs)."""
        return {"w_bits": self.w_bits, "a_bits": self.a_bits, "scope": self.scope,
                "target": self.target, "layers": self.quantized,
                "full_precision": sorted(self.full_precision), "eight_bit": self.eight_bit or {},
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
                   strict: bool = False, target: str = "onnxruntime",
                   float_output: bool = False) -> tuple[nn.Module, QuantizationReport]:
    """The fake-quant version of `model` (a new module sharing its parameters) and its report.

    `scope="body"` keeps channel attention in full precision, and below 8 bits the head, the
    upsampler and the output convolution at 8 bits (`report.eight_bit`); `float_output=True`
    also keeps the output convolution (the last to run, at the output resolution) in full
    precision, about 0.01 dB closer to float and up to 5 % slower (docs/results.md). `"all"`
    quantises every Conv2d at the bits asked. `w_bits` applies to the weights and
    `a_bits` to the inputs of the convolutions; every other tensor held in integers (conv
    outputs, the residual stream, Concat inputs...) keeps 8 bits. `target="tensorrt"` puts ReLU
    outputs on 0..127 so that the int8 TensorRT export is exact. Layers with weights that
    srcompress cannot quantise (Linear, transposed convs...) stay float and are named in
    `report.skipped`; `strict=True` refuses them instead. Activation ranges still need
    `calibrate` before use.
    """
    check_bits(w_bits, "--w-bits")
    check_bits(a_bits, "--a-bits")
    if scope not in ("body", "all"):
        raise UserInputError(f"quantization scope {scope!r} is unknown: use 'body' or 'all'.")
    if target not in QUANTIZATION_TARGETS:
        raise UserInputError(f"--target {target} is unknown: use "
                             f"{', '.join(QUANTIZATION_TARGETS)}.")
    if float_output and scope == "all":
        raise UserInputError("--float-output keeps the output convolution in float and "
                             "--quantize-all quantizes every convolution: drop one of them.")
    if is_quantized(model):
        raise UserInputError(
            f"the model is already quantized ({describe_quantization(model)}): pass its "
            "full-precision checkpoint to quantize it again.")
    convs = {name: module for name, module in model.named_modules()
             if type(module) is nn.Conv2d}
    if not convs:
        raise UserInputError("the model has no Conv2d layer that srcompress could quantize.")
    kept = _full_precision_layers(model, convs, float_output) if scope == "body" else {}
    skipped = {name: type(module).__name__ for name, module in model.named_modules()
               if isinstance(module, _UNSUPPORTED_WEIGHTED) and not _inside(name, kept)}
    if skipped and strict:
        name, kind = next(iter(skipped.items()))
        raise UserInputError(
            f"layer '{name}' ({kind}) cannot be quantized (srcompress quantizes Conv2d layers) "
            "and --strict refuses to leave it in float: drop --strict to quantize the rest.")
    report = QuantizationReport(w_bits, a_bits, scope, target, full_precision=dict(kept),
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
                                    str(decoded.get("target", "onnxruntime")),
                                    quantized=[str(name) for name in decoded["layers"]],
                                    skipped=dict(decoded.get("skipped", {})),
                                    graph=bool(decoded.get("graph", False)))
        eight_bit = decoded.get("eight_bit")
        report.eight_bit = {str(name): str(why) for name, why in dict(eight_bit or {}).items()}
    except (ValueError, KeyError, TypeError) as error:
        raise UserInputError(
            f"the checkpoint's '{METADATA_KEY}' metadata is unreadable ({error}): re-create the "
            "file with `srcompress quantize`.") from error
    if report.target not in QUANTIZATION_TARGETS:
        raise UserInputError(f"the checkpoint's quantization target {report.target!r} is unknown "
                             "to this srcompress: update srcompress or re-create the file.")
    if eight_bit is None and min(report.w_bits, report.a_bits) < 8:
        raise UserInputError(
            f"the checkpoint was quantized to w{report.w_bits}a{report.a_bits} by an earlier "
            "srcompress, whose low-bit layout (every tensor at the low bit-width) this version no "
            "longer builds: quantize its full-precision model again with `srcompress quantize`.")
    modules = dict(model.named_modules())
    for name in report.quantized:
        if type(modules.get(name)) is not nn.Conv2d:
            raise UserInputError(
                f"the checkpoint lists quantized layer '{name}', which is not a Conv2d of this "
                "architecture: the file does not match its architecture metadata.")
    return _build(model, report, graph=report.graph)


def quantization_settings(model: nn.Module) -> dict[str, Any] | None:
    """The bit-widths, quantised layer names and 8-bit layers of a model (None for a float one).

    `w_bits`/`a_bits` are the low bit-widths asked for (the smallest of the layers); `eight_bit`
    names the layers kept at 8 bits below them (head and upsampler, `quantize_model`).
    """
    layers = list(quantized_layers(model))
    if not layers:
        return None
    w_bits = min(layer.w_bits for _, layer in layers)
    a_bits = min(layer.a_bits for _, layer in layers)
    eight_bit = [name for name, layer in layers if (layer.w_bits, layer.a_bits) == (8, 8)
                 and min(w_bits, a_bits) < 8]
    return {"w_bits": w_bits, "a_bits": a_bits, "layers": [name for name, _ in layers],
            "eight_bit": eight_bit}


def describe_quantization(model: nn.Module) -> str:
    settings = quantization_settings(model)
    if settings is None:
        return "full precision"
    text = f"w{settings['w_bits']}a{settings['a_bits']}, {len(settings['layers'])} layers"
    if settings["eight_bit"]:
        text += f" ({len(settings['eight_bit'])} at 8 bits)"
    return text


def _build(model: nn.Module, report: QuantizationReport, graph: bool | None = None) -> nn.Module:
    """Swap the listed convs and insert the activation quantisers; `graph=None` tries fx first.

    A report without `eight_bit` (a new quantisation rather than a file's) gets it from the
    traced graph: below 8 bits the `body` scope keeps the head and the upsampler at 8 bits.
    """
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
            if report.eight_bit is None:
                low_bits = min(report.w_bits, report.a_bits) < 8
                report.eight_bit = (_head_and_upsampler(traced, report.quantized)
                                    if low_bits and report.scope == "body" else {})
            for name in report.quantized:
                conv = traced.get_submodule(name)
                assert isinstance(conv, nn.Conv2d)
                bits = ((8, 8) if name in report.eight_bit else (report.w_bits, report.a_bits))
                _replace(traced, name, QuantConv2d(conv, *bits, int8=report.target == "tensorrt"))
            _insert_quantizers(traced, report)
            report.graph = True
            return traced
    report.eight_bit = report.eight_bit or {}
    for name in report.quantized:
        conv = model.get_submodule(name)
        assert isinstance(conv, nn.Conv2d)
        _replace(model, name, QuantConv2d(conv, report.w_bits, report.a_bits,
                                          owns_quantizers=True,
                                          int8=report.target == "tensorrt"))
    report.graph = False
    return model


def _insert_quantizers(traced: fx.GraphModule, report: QuantizationReport) -> None:
    graph = traced.graph
    modules = dict(traced.named_modules())
    device = next(traced.parameters()).device
    int8 = report.target == "tensorrt"
    quantized: dict[fx.Node, bool] = {}  # node → its output carries a quantiser
    shares: dict[fx.Node, fx.Node] = {}  # rearranged tensor → the tensor whose quantiser it reuses

    def needs_quantizer(node: Any) -> None:
        if isinstance(node, fx.Node) and node not in shares:
            quantized[node] = True

    def is_integer(node: Any) -> bool:
        return isinstance(node, fx.Node) and (quantized.get(node, False) or node in shares)

    image_side = _image_side(graph, modules)
    conv_outputs: set[fx.Node] = set()  # a conv's output, or the ReLU fused after it
    for node in list(graph.nodes):
        module = modules.get(node.target) if node.op == "call_module" else None
        tensors = [arg for arg in _flat_args(node) if isinstance(arg, fx.Node)]
        if isinstance(module, QuantConv2d):
            needs_quantizer(node.args[0])
            quantized[node] = True
            conv_outputs.add(node)
        elif _is_relu(node, modules) and _fusable_conv(tensors[0], modules):
            # Conv → ReLU → Q: the quantiser moves after the ReLU (zero point 0), which the
            # runtime then drops.
            quantized[tensors[0]] = False
            quantized[node] = True
            conv_outputs.add(node)
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

    readers = {node: _readers(node, shares, modules) for node in graph.nodes
               if quantized.get(node, False)}
    low_bit_copies: dict[fx.Node, tuple[int, list[fx.Node]]] = {}
    for node in list(graph.nodes):
        if not quantized.get(node, False):
            continue
        name = node.name
        conv_nodes, others = readers[node]
        conv_bits = {_input_bits(conv, modules) for conv in conv_nodes}
        if node in image_side:
            # The image is 8-bit data: its quantiser keeps 8 bits whatever --a-bits says (at
            # w4a4 a 4-bit image alone cost 1.0 dB on Set5).
            bits = 8
        elif not others and len(conv_bits) == 1:
            bits = conv_bits.pop()  # read by convolutions only: quantised at their bit-width
        else:
            # Read by an Add, a Concat, the skip path...: the residual stream keeps 8 bits, and
            # the low-bit convs among its readers get a low-bit copy (below).
            bits = 8
            low = [conv for conv in conv_nodes if _input_bits(conv, modules) < 8]
            if low:
                low_bit_copies[node] = (min(_input_bits(conv, modules) for conv in low), low)
        quantizer = ActivationQuantizer(bits, int8).to(device)
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
    for node, (bits, conv_nodes) in low_bit_copies.items():
        name = f"{node.name}_conv_input"
        traced.add_submodule(f"{QUANTIZERS}.{name}", ActivationQuantizer(bits, int8).to(device))
        report.activation_quantizers.append(name)
        report.conv_inputs[node.name] = name
        for conv_node in conv_nodes:
            # An Add or Concat is quantised a second time from its float result: the export
            # repeats the operation (one more QLinearAdd, cheaper than re-quantising the 8-bit
            # tensor through float). A conv's output is re-quantised from its 8-bit tensor (the
            # conv itself is too dear to repeat).
            direct = node not in conv_outputs and conv_node.args[0].args[0] is node
            source = node if direct else conv_node.args[0]
            with graph.inserting_before(conv_node):
                copy_node = graph.call_module(f"{QUANTIZERS}.{name}", (source,))
            conv_node.replace_input_with(conv_node.args[0], copy_node)
    _integer_adds(graph, dict(traced.named_modules()))
    _runtime_sigmoids(graph, dict(traced.named_modules()))
    _integer_poolings(traced)
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


def _integer_adds(graph: fx.Graph, modules: Mapping[str, nn.Module]) -> None:
    """Give each quantiser of an Add of two quantised tensors both addends, so that it computes
    what the runtime's QLinearAdd does (`ActivationQuantizer.forward`), and drop the Add."""

    def quantizer(node: Any) -> ActivationQuantizer | None:
        module = (modules.get(str(node.target)) if isinstance(node, fx.Node)
                  and node.op == "call_module" else None)
        return module if isinstance(module, ActivationQuantizer) else None

    for node in list(graph.nodes):
        if not _is_add(node) or len(node.args) != 2 or node.kwargs:
            continue
        addends = [quantizer(arg) for arg in node.args]
        users = [quantizer(user) for user in node.users]
        if None in addends or not users or None in users:
            continue
        for user, module in zip(list(node.users), users, strict=True):
            assert module is not None and addends[0] is not None and addends[1] is not None
            module.link_addends(addends[0], addends[1])
            user.args = tuple(node.args)
        graph.erase_node(node)


def _runtime_sigmoids(graph: fx.Graph, modules: Mapping[str, nn.Module]) -> None:
    """Compute every sigmoid (channel attention's gate) as onnxruntime's kernel does, so the
    float values between two quantisers are the runtime's (see `runtime_sigmoid`)."""
    for node in list(graph.nodes):
        is_sigmoid = ((node.op == "call_module"
                       and isinstance(modules.get(str(node.target)), nn.Sigmoid))
                      or (node.op == "call_function" and node.target in (torch.sigmoid,
                                                                          F.sigmoid))
                      or (node.op == "call_method" and node.target == "sigmoid"))
        if is_sigmoid and len(node.args) == 1 and not node.kwargs:
            with graph.inserting_after(node):
                replacement = graph.call_function(runtime_sigmoid, (node.args[0],))
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)


def _integer_poolings(traced: fx.GraphModule) -> None:
    """Pool a quantised tensor on its integers (channel attention's global average; see
    `IntegerPooling`), so that the runtime's float sum and PyTorch's agree exactly."""
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        pooling = modules.get(str(node.target)) if node.op == "call_module" else None
        source = node.args[0] if node.args else None
        quantizer = (modules.get(str(source.target)) if isinstance(source, fx.Node)
                     and source.op == "call_module" else None)
        if (isinstance(pooling, nn.AdaptiveAvgPool2d) and pooling.output_size in (1, (1, 1))
                and isinstance(quantizer, ActivationQuantizer)):
            _replace(traced, str(node.target), IntegerPooling(pooling, quantizer))


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD) or (
        node.op == "call_method" and node.target in ("add", "add_"))


def _image_side(graph: fx.Graph, modules: Mapping[str, nn.Module]) -> set[fx.Node]:
    """The nodes computed from the input image without a layer between (mean shift, scaling,
    pixel unshuffle): 8-bit data, which a head convolution reads."""
    image_side: set[fx.Node] = set()
    for node in graph.nodes:
        tensors = [arg for arg in _flat_args(node) if isinstance(arg, fx.Node)]
        if node.op in ("placeholder", "get_attr") or (
                node.op != "call_module" and tensors and all(t in image_side for t in tensors)):
            image_side.add(node)
    return image_side


def _readers(node: fx.Node, shares: Mapping[fx.Node, fx.Node],
             modules: Mapping[str, nn.Module]) -> tuple[list[fx.Node], bool]:
    """The quantised convs reading `node` (through rearrangements that share its quantiser), and
    whether anything else reads it."""
    convs: list[fx.Node] = []
    others = False
    pending = list(node.users)
    while pending:
        user = pending.pop(0)
        if user in shares:
            pending.extend(user.users)
        elif user.op == "call_module" and isinstance(modules.get(str(user.target)), QuantConv2d):
            convs.append(user)
        else:
            others = True
    return convs, others


def _input_bits(conv_node: fx.Node, modules: Mapping[str, nn.Module]) -> int:
    conv = modules[str(conv_node.target)]
    assert isinstance(conv, QuantConv2d)
    return conv.a_bits


def _head_and_upsampler(traced: fx.GraphModule, quantized: list[str]) -> dict[str, str]:
    """The quantised convs that stay at 8 bits below 8 bits: the head (it reads the image), the
    upsampler (it feeds a pixel shuffle or an interpolation, or runs after one) and the output
    convolution (the last to run: it writes the image).

    The SR quantization papers (PAMS, DAQ) quantise the body to b bits and keep head and tail in
    full precision; here they stay integer at 8 bits, which costs nothing at run time. Measured
    on the demo teacher at w4a4 (calibrated, Set5): the upsampler's input at 4 bits alone cost
    1.3 dB, the head's weights 0.2 dB (docs/results.md).
    """
    graph = traced.graph
    modules = dict(traced.named_modules())
    image_side = _image_side(graph, modules)
    upsampled: set[fx.Node] = set()  # computed from an upsampling's output
    kept: dict[str, str] = {}
    for node in graph.nodes:
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        tensors = [arg for arg in _flat_args(node) if isinstance(arg, fx.Node)]
        if _upsamples(node, module) or any(tensor in upsampled for tensor in tensors):
            upsampled.add(node)
        if _upsamples(node, module) and tensors:
            producer = tensors[0]
            while _is_unary(producer, modules.get(str(producer.target))
                            if producer.op == "call_module" else None):
                producer = next(arg for arg in _flat_args(producer) if isinstance(arg, fx.Node))
            if producer.op == "call_module" and producer.target in quantized:
                kept.setdefault(str(producer.target), "upsampler (feeds the upsampling)")
        if isinstance(module, nn.Conv2d) and node.target in quantized:
            if tensors and tensors[0] in image_side:
                kept[str(node.target)] = "head (reads the image)"
            elif node in upsampled:
                kept[str(node.target)] = "upsampler (runs on the upsampled features)"
    last = [node for node in graph.nodes if node.op == "call_module"
            and isinstance(modules.get(str(node.target)), nn.Conv2d)][-1:]
    if last and last[0].target in quantized:
        kept[str(last[0].target)] = "output layer (writes the image)"
    return kept


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
    if _is_add(node):
        return any(map(is_integer, tensors))
    if (node.op == "call_function" and node.target in _MUL) or (
            node.op == "call_method" and node.target in ("mul", "mul_")):
        return all(map(is_integer, tensors))
    return False


def _is_unary(node: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return isinstance(module, _UNARY_MODULES)
    return node.op == "call_function" and node.target in _UNARY_FUNCTIONS


def _upsamples(node: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return isinstance(module, (nn.PixelShuffle, nn.Upsample))
    return node.op == "call_function" and node.target in (F.pixel_shuffle, torch.pixel_shuffle,
                                                          F.interpolate, F.upsample)


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


def _full_precision_layers(model: nn.Module, convs: dict[str, nn.Conv2d],
                           float_output: bool) -> dict[str, str]:
    """Channel attention's convolutions (those running on globally pooled 1x1 features) and,
    with `float_output`, the output convolution (the last to run), found by running one small
    forward pass.

    Attention stays float for exactness (see `_UNARY_MODULES`) and costs little: its convs run
    on one pixel. The output conv is quantised by default, as onnxruntime's own post-training
    tool does: it runs at the output resolution, where a small model spends much of its time
    (float, it cost the demo teacher 5 % of its speed, edsr-baseline 0-3 %), and its 8-bit
    output costs about 0.01 dB (docs/results.md). The head reads an 8-bit image,
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
    if float_output:
        kept[order[-1]] = "output layer (last to run; --float-output)"
    return kept


def _inside(name: str, layers: Mapping[str, str]) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in layers)

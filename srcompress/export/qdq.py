"""The quantised part of ONNX export: the fake-quant graph as explicit QuantizeLinear /
DequantizeLinear (QDQ) pairs, in the form ONNX Runtime fuses into integer kernels.

`srcompress.export.onnx` takes this path when `srcompress.quant.is_quantized(module)`:

    with qdq_export_mode(module) as qdq:
        torch.onnx.export(module, ..., dynamo=False, opset_version=QDQ_OPSET)
    counts = qdq.finalize(onnx_path)   # integer weights and bias + DequantizeLinear; metadata

Inside the context every `ActivationQuantizer` emits QuantizeLinear → DequantizeLinear in uint8
(with an integer Clip between them below 8 bits) and every `QuantConv2d` runs on constant weights
and bias equal to its integers times their scales. `finalize` finds those constants by value,
stores the integers (int8 weights per output channel, int32 bias in the unit input step × weight
step, as QLinearConv holds it) and puts a DequantizeLinear in front of each, so the runtime sees
DQ → Conv → Q groups and runs QLinearConv, with QLinearAdd/QLinearMul/QLinearConcat... around
them.

TensorRT consumes explicit Q/DQ too, but only int8 with zero point 0, float biases and nothing
between a QuantizeLinear and its DequantizeLinear. `target="tensorrt"` writes that form: the same
grid shifted by the zero point (uint8 with zero point 2^(b-1) is int8 with zero point 0, exactly),
the b-bit range as a float Clip before each QuantizeLinear, the bias as the float value of its
int32, 8-bit weight containers. It is exact for signed tensors at any bit-width and for
unsigned ones (ReLU outputs, the image input) of at most 127 levels. Since the 8-bit tensors of a
low-bit model (head, stream, conv outputs) are unsigned 8-bit too, only a model quantized on the
int8 grid (`quantize_model(..., target="tensorrt")`) has this form; otherwise the export
refuses.

Weights of 4 bits and fewer are stored packed as INT4 (opset 21) so the file is about half an
8-bit one. ONNX Runtime's CPU integer convolution does not accept INT4 weights (its QDQ selector
only fuses 8-bit ones), so by default each packed tensor goes through a Cast to INT8 that the
runtime folds once when it loads the file (`int4="cast"`): small file, int8 kernels. `int4="dq"`
feeds the INT4 tensor to DequantizeLinear directly (the runtime then runs float convolutions);
`int4="none"` keeps 8-bit containers. The metadata names the form written.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from srcompress.devices import onnx_session
from srcompress.errors import UserInputError, WorkFailedError
from srcompress.files import atomic_path
from srcompress.quant.graph import (
    QUANTIZATION_TARGETS,
    activation_quantizers,
    quantization_settings,
    quantized_layers,
)

QDQ_OPSET = 17
INT4_OPSET = 21
INT4_FORMS = ("cast", "dq", "none")
_INT4_FORM_NOTE = {
    "cast": "INT4 packed weights, cast to INT8 when onnxruntime loads the file (its integer "
            "convolution takes 8-bit weights only)",
    "dq": "INT4 packed weights read by DequantizeLinear (onnxruntime runs these convolutions in "
          "float)",
    "none": "int8 containers holding the b-bit integers",
}


class LayerIntegers:
    """One quantised conv's integers and scales, and the float constants its trace holds."""

    def __init__(self, weight: np.ndarray, weight_scale: np.ndarray, bias: np.ndarray | None,
                 bias_scale: np.ndarray | None, traced_weight: np.ndarray,
                 traced_bias: np.ndarray | None, bits: int) -> None:
        self.weight, self.weight_scale = weight, weight_scale
        self.bias, self.bias_scale = bias, bias_scale
        self.traced_weight, self.traced_bias = traced_weight, traced_bias
        self.bits = bits


class QDQExport:
    """What the QDQ export needs after tracing: each layer's integers and the metadata."""

    def __init__(self, layers: dict[str, LayerIntegers], metadata: dict[str, str],
                 int4: str, target: str) -> None:
        self.layers = layers
        self.metadata = metadata
        self.int4 = int4
        self.target = target

    def finalize(self, path: str | Path) -> dict[str, int]:
        """Rewrite the exported file with integer weights and biases, atomically.

        Returns the QDQ node counts of the final graph. Raises WorkFailedError when a quantised
        layer's constants cannot be found in the traced graph (the export would silently be float).
        """
        path = Path(path)
        proto = onnx.load(str(path))
        missing = store_integer_weights(proto, self.layers,
                                        integer_bias=self.target == "onnxruntime")
        if missing:
            raise WorkFailedError(
                f"the exported graph {path} has no constant weights for quantized layer "
                f"'{missing[0]}': export it with the TorchScript exporter (dynamo=False).")
        repeat_multiply_quantized(proto)
        packed = (self.target == "onnxruntime" and self.int4 != "none"
                  and any(layer.bits <= 4 for layer in self.layers.values()))
        if packed:
            proto = onnx.version_converter.convert_version(proto, INT4_OPSET)
            pack_int4_weights(proto, self.layers, self.int4)
        metadata = dict(self.metadata)
        metadata["quant_weight_storage"] = (_INT4_FORM_NOTE[self.int4] if packed
                                            else "int8 per output channel")
        existing = {entry.key: entry for entry in proto.metadata_props}
        for key, value in metadata.items():
            entry = existing.get(key) or proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        with atomic_path(path) as temporary:
            onnx.save(proto, str(temporary))
        return qdq_node_counts(proto)


@contextmanager
def qdq_export_mode(module: nn.Module, int4: str = "cast",
                    target: str = "onnxruntime") -> Iterator[QDQExport]:
    """Switch the fake-quant layers to their QDQ-emitting forward while the model is traced.

    `target` is "onnxruntime" (uint8 activations, int32 biases, INT4 weights as `int4` says) or
    "tensorrt" (int8 with zero point 0, float biases, int8 weights; see the module docstring).
    Raises UserInputError on a model without quantised layers, an unknown form, or a model the
    TensorRT form cannot hold exactly.
    """
    if int4 not in INT4_FORMS:
        raise UserInputError(f"the INT4 weight form {int4!r} is unknown: use "
                             f"{', '.join(INT4_FORMS)}.")
    if target not in QUANTIZATION_TARGETS:
        raise UserInputError(f"the export target {target!r} is unknown: use "
                             f"{', '.join(QUANTIZATION_TARGETS)}.")
    layers = dict(quantized_layers(module))
    if not layers:
        raise UserInputError("the model is not quantized, so it has no Q/DQ export: export it as "
                             "a float model instead.")
    settings = quantization_settings(module)
    assert settings is not None
    quantizers = dict(activation_quantizers(module))
    if target == "tensorrt":
        _check_int8_grid(quantizers)
    integers: dict[str, LayerIntegers] = {}
    for quantizer in quantizers.values():
        quantizer.export_parameters = (*quantizer.quantization_parameters(),
                                       target == "tensorrt")
    for name, layer in layers.items():
        weight, weight_scale, bias, bias_scale = layer.integer_weights()
        traced_weight = weight.float() * weight_scale.view(-1, 1, 1, 1)
        if bias is not None and bias_scale is not None:
            # In float32, as DequantizeLinear computes it: the TensorRT form's float bias is then
            # the onnxruntime form's dequantised int32 bit for bit.
            traced_bias = bias.float() * bias_scale.float()
        elif layer.bias is not None:
            traced_bias = (layer.bias.detach() * layer.output_multiplier).float()
        else:
            traced_bias = None
        layer.export_constants = (traced_weight, traced_bias)
        integers[name] = LayerIntegers(
            weight.cpu().numpy(), weight_scale.cpu().numpy(),
            bias.cpu().numpy() if bias is not None else None,
            bias_scale.cpu().numpy() if bias_scale is not None else None,
            traced_weight.cpu().numpy(),
            traced_bias.cpu().numpy() if traced_bias is not None else None, layer.w_bits)
    try:
        yield QDQExport(integers, qdq_metadata(settings, len(quantizers), target), int4,
                        target)
    finally:
        for quantizer in quantizers.values():
            quantizer.export_parameters = None
        for layer in layers.values():
            layer.export_constants = None


def _check_int8_grid(quantizers: dict[str, Any]) -> None:
    """Refuse the TensorRT form for a tensor int8 with zero point 0 cannot hold exactly."""
    for name, quantizer in quantizers.items():
        zero_point, top = quantizer.quantization_parameters()[1:]
        if top - zero_point > 127:
            raise UserInputError(
                f"tensor '{name.rpartition('.')[2]}' is on the unsigned 8-bit grid (0..{top}), "
                "which TensorRT's int8 with zero point 0 cannot hold: quantize the model with "
                "--target tensorrt (unsigned tensors on 0..127), or export it for onnxruntime.")


def qdq_metadata(settings: dict[str, Any], quantizers: int,
                 target: str = "onnxruntime") -> dict[str, str]:
    """What the ONNX file says about its quantisation (bits, storage, number of layers)."""
    w_bits, a_bits, layers = settings["w_bits"], settings["a_bits"], settings["layers"]
    bits = f"w{w_bits}a{a_bits}"
    if target == "tensorrt":
        activations = ("int8 activations with zero point 0" if a_bits == 8 else
                       f"int8 activations with zero point 0, the {a_bits}-bit convolution "
                       "inputs a float Clip before their QuantizeLinear")
        storage = f"int8 per-channel weights, float bias, {activations}"
    else:
        activations = ("uint8 activations" if a_bits == 8 else
                       f"uint8 activations, the {a_bits}-bit convolution inputs an integer "
                       "Clip after their QuantizeLinear")
        storage = f"int8 per-channel weights, int32 bias, {activations}"
    metadata = {"quant_format": "qdq", "quant_target": target, "quant_bits": bits,
                "quant_storage": storage, "quant_layers": str(len(layers)),
                "quant_activation_quantizers": str(quantizers)}
    if settings["eight_bit"]:
        metadata["quant_eight_bit_layers"] = ", ".join(settings["eight_bit"])
    return metadata


def store_integer_weights(proto: onnx.ModelProto, layers: dict[str, LayerIntegers],
                          integer_bias: bool = True) -> list[str]:
    """Replace each quantised conv's float weight and bias constants by integers + DQ, in place.

    Constants are matched by value (the traced constant equals the layer's integers times their
    scales bit for bit), which does not depend on how the exporter names nodes. Without
    `integer_bias` the bias stays the float value of its int32 (TensorRT takes float biases).
    Returns the layers whose weights were not found.
    """
    graph = proto.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        attributes = node.attribute
        if node.op_type == "Constant" and len(attributes) == 1 and attributes[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    pending = dict(layers)
    new_nodes = []
    replaced: set[str] = set()
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in constants:
            found = _matching_layer(constants[node.input[1]], pending)
            if found is not None:
                layer = pending.pop(found)
                replaced.add(node.input[1])
                node.input[1] = _add_dequantize(graph, new_nodes, f"{found}.weight", layer.weight,
                                                layer.weight_scale, axis=0)
                has_bias = len(node.input) > 2 and node.input[2] and layer.bias is not None
                if has_bias and not np.array_equal(constants.get(node.input[2]),
                                                   layer.traced_bias):
                    raise WorkFailedError(f"the bias of quantized layer '{found}' in the "
                                          "exported graph is not on its int32 grid.")
                if has_bias and integer_bias:
                    replaced.add(node.input[2])
                    assert layer.bias_scale is not None
                    node.input[2] = _add_dequantize(graph, new_nodes, f"{found}.bias",
                                                    layer.bias, layer.bias_scale, axis=0)
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused(graph, replaced)
    return list(pending)


def repeat_multiply_quantized(proto: onnx.ModelProto) -> int:
    """Give each QuantizeLinear of a tensor quantised twice its own copy of the operation.

    Below 8 bits a residual Add feeds both the 8-bit stream and a low-bit copy for the next
    convolution. ONNX Runtime fuses an operation into its integer kernel (QLinearAdd...) only when
    one QuantizeLinear reads it; repeated, each copy fuses (edsr-baseline w4a4: one more
    QLinearAdd per block instead of the Adds running in float). Returns the copies made.
    """
    graph = proto.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    output_names = {output.name for output in graph.output}
    nodes, copies = [], 0
    for node in graph.node:
        nodes.append(node)
        if len(node.output) != 1 or node.output[0] in output_names:
            continue
        users = readers.get(node.output[0], [])
        if len(users) < 2 or any(user.op_type != "QuantizeLinear" for user in users):
            continue
        for index, user in enumerate(users[1:], start=1):
            repeated = onnx.NodeProto()
            repeated.CopyFrom(node)
            repeated.name = f"{node.name}_repeat{index}"
            repeated.output[0] = f"{node.output[0]}_repeat{index}"
            user.input[0] = repeated.output[0]
            nodes.append(repeated)
            copies += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return copies


def pack_int4_weights(proto: onnx.ModelProto, layers: dict[str, LayerIntegers],
                      form: str) -> None:
    """Store the weights of layers of 4 bits or fewer as INT4 (`form` "cast" or "dq"), in place."""
    graph = proto.graph
    by_name = {init.name: init for init in graph.initializer}
    new_nodes = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith(".weight_int"):
            layer = layers[node.input[0].removesuffix(".weight_int")]
            if layer.bits <= 4:
                packed_name = node.input[0] + "4"
                graph.initializer.remove(by_name[node.input[0]])
                graph.initializer.append(numpy_helper.from_array(
                    layer.weight.astype(ml_dtypes.int4), packed_name))
                zero_name = node.input[2]
                if form == "cast":
                    new_nodes.append(helper.make_node("Cast", [packed_name], [node.input[0]],
                                                      name=f"{packed_name}_Cast",
                                                      to=TensorProto.INT8))
                else:
                    graph.initializer.remove(by_name[zero_name])
                    graph.initializer.append(numpy_helper.from_array(
                        np.zeros(layer.weight_scale.shape, ml_dtypes.int4), zero_name))
                    node.input[0] = packed_name
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)


def _matching_layer(array: np.ndarray, pending: dict[str, LayerIntegers]) -> str | None:
    for name, layer in pending.items():
        if array.shape == layer.traced_weight.shape and np.array_equal(array, layer.traced_weight):
            return name
    return None


def _add_dequantize(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], prefix: str,
                    integers: np.ndarray, scale: np.ndarray, axis: int) -> str:
    zero = np.zeros(scale.shape, integers.dtype)
    graph.initializer.extend([
        numpy_helper.from_array(integers, f"{prefix}_int"),
        numpy_helper.from_array(scale.astype(np.float32), f"{prefix}_scale"),
        numpy_helper.from_array(zero, f"{prefix}_zero_point"),
    ])
    output = f"{prefix}_dequantized"
    nodes.append(helper.make_node("DequantizeLinear",
                                  [f"{prefix}_int", f"{prefix}_scale", f"{prefix}_zero_point"],
                                  [output], name=f"{prefix}_DequantizeLinear", axis=axis))
    return output


def _drop_unused(graph: onnx.GraphProto, names: set[str]) -> None:
    used = {name for node in graph.node for name in node.input}
    stale = {name for name in names if name not in used}
    keep = [init for init in graph.initializer if init.name not in stale]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    keep_nodes = [node for node in graph.node
                  if not (node.op_type == "Constant" and node.output[0] in stale)]
    del graph.node[:]
    graph.node.extend(keep_nodes)


def qdq_node_counts(model: onnx.ModelProto | str | Path) -> dict[str, int]:
    """How many QuantizeLinear and DequantizeLinear nodes an exported graph holds."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for node in proto.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    return counts


_INTEGER_CONVS = {"QLinearConv", "ConvInteger"}
_FLOAT_CONVS = {"Conv", "FusedConv", "ConvTranspose"}
_INTEGER_MATMULS = {"QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "QGemm",
                    "DynamicQuantizeMatMul", "MatMulNBits"}
_FLOAT_MATMULS = {"MatMul", "FusedMatMul", "Gemm"}


def runtime_operator_counts(path: str | Path) -> dict[str, Any]:
    """Convs and matmuls onnxruntime (CPU) runs in integers vs float, read from its optimised graph.

    The file's own nodes say what was asked for; only the graph onnxruntime builds after its QDQ
    fusions says what runs: a DQ → Conv → Q group becomes one QLinearConv, anything it cannot
    fuse stays a float Conv fed by DequantizeLinear.
    """
    with tempfile.TemporaryDirectory() as folder:
        optimized = Path(folder) / "optimized.onnx"
        onnx_session(path, "cpu", optimized_model=optimized)
        nodes = Counter(node.op_type for node in onnx.load(str(optimized),
                                                           load_external_data=False).graph.node)
    return {
        "integer_convs": sum(nodes[op] for op in _INTEGER_CONVS),
        "float_convs": sum(nodes[op] for op in _FLOAT_CONVS),
        "integer_matmuls": sum(nodes[op] for op in _INTEGER_MATMULS),
        "float_matmuls": sum(nodes[op] for op in _FLOAT_MATMULS),
        "integer_ops": {op: count for op, count in sorted(nodes.items())
                        if op.startswith("QLinear")},
        "transposes": nodes["Transpose"],
    }


def runtime_summary(counts: dict[str, Any]) -> str:
    """`runtime_operator_counts` in one line: integer vs float convs and matmuls."""
    text = (f"{counts['integer_convs']} integer / {counts['float_convs']} float convs, "
            f"{counts['integer_matmuls']} integer / {counts['float_matmuls']} float matmuls")
    others = {op: n for op, n in counts["integer_ops"].items() if op != "QLinearConv"}
    if others:
        text += "; also " + ", ".join(f"{n} {op}" for op, n in others.items())
    return text

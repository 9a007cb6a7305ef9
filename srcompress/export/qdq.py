"""The quantised part of ONNX export: fake-quant layers as QuantizeLinear/DequantizeLinear pairs.

`srcompress.export.onnx` takes this path when `srcompress.quant.is_quantized(module)`:

    with qdq_export_mode(module) as qdq:
        torch.onnx.export(module, ..., dynamo=False, opset_version=max(opset, QDQ_MIN_OPSET))
    qdq.finalize(onnx_path)      # int8 weights + DequantizeLinear, metadata; atomic rewrite
    # report qdq.metadata["quant_storage"] and qdq_node_counts(onnx_path) to the user

Inside the context every quantised layer quantises its input with
`torch.fake_quantize_per_tensor_affine`, which the TorchScript exporter (not the dynamo one)
emits as a Q/DQ pair. Its weights are traced as a constant holding the dequantised values (the
exporter folds a weight Q/DQ pair away); `finalize` finds each such constant, stores the integers
as an int8 initialiser and puts a per-channel DequantizeLinear in front of the convolution, so the
file holds int8 weights and onnxruntime can fuse the pattern into integer convolutions.

Bit-widths below 8 use the same 8-bit containers: values are clipped to the b-bit range and the
scale is clip/levels(b), so the stored integers lie exactly on the b-bit grid and the exported
model computes what the fake-quant model computes; the metadata says so, because the file is then
no smaller than an 8-bit one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from torch import nn

from srcompress.errors import UserInputError, WorkFailedError
from srcompress.files import atomic_path
from srcompress.quant.fakequant import quantization_settings, quantized_layers

QDQ_MIN_OPSET = 13


class QDQExport:
    """What the Q/DQ export needs after tracing: the layers' integer weights and the metadata."""

    def __init__(self, weights: dict[str, tuple[np.ndarray, np.ndarray]],
                 metadata: dict[str, str]) -> None:
        self.weights = weights
        self.metadata = metadata

    def finalize(self, path: str | Path) -> dict[str, int]:
        """Rewrite the exported file with int8 weights and the quantisation metadata, atomically.

        Returns the Q/DQ node counts of the final graph. Raises WorkFailedError when a quantised
        layer's weights cannot be found in the traced graph (the export would silently be float).
        """
        path = Path(path)
        proto = onnx.load(str(path))
        missing = store_int8_weights(proto, self.weights)
        if missing:
            raise WorkFailedError(
                f"the exported graph {path} has no constant weights for quantized layer "
                f"'{missing[0]}': export it with the TorchScript exporter (dynamo=False).")
        existing = {entry.key: entry for entry in proto.metadata_props}
        for key, value in self.metadata.items():
            entry = existing.get(key) or proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        with atomic_path(path) as temporary:
            onnx.save(proto, str(temporary))
        return qdq_node_counts(proto)


@contextmanager
def qdq_export_mode(module: nn.Module) -> Iterator[QDQExport]:
    """Switch the fake-quant layers to their Q/DQ-emitting forward while the model is traced.

    Raises UserInputError on a model without quantised layers.
    """
    layers = dict(quantized_layers(module))
    if not layers:
        raise UserInputError("the model is not quantized, so it has no Q/DQ export: export it as "
                             "a float model instead.")
    settings = quantization_settings(module)
    assert settings is not None
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, layer in layers.items():
        dequantized, step = layer.freeze_for_export()
        weights[name] = (dequantized.cpu().numpy(), step.cpu().numpy())
        layer.qdq_export = True
    try:
        yield QDQExport(weights, qdq_metadata(settings))
    finally:
        for layer in layers.values():
            layer.qdq_export = False
            del layer.export_weight, layer.export_bias, layer.export_activation


def qdq_metadata(settings: dict[str, object]) -> dict[str, str]:
    """What the ONNX file says about its quantisation (bits, storage, number of layers)."""
    w_bits, a_bits, layers = settings["w_bits"], settings["a_bits"], settings["layers"]
    assert isinstance(w_bits, list) and isinstance(a_bits, list) and isinstance(layers, list)
    bits = f"w{'/'.join(map(str, w_bits))}a{'/'.join(map(str, a_bits))}"
    if min(w_bits) < 8 or min(a_bits) < 8:
        storage = (f"{bits} values stored exactly in int8/uint8 Q/DQ containers "
                   "(the file is no smaller than an 8-bit one)")
    else:
        storage = "int8 per-channel weights, int8/uint8 activations, as Q/DQ pairs"
    return {"quant_format": "qdq", "quant_bits": bits, "quant_storage": storage,
            "quant_layers": str(len(layers))}


def store_int8_weights(proto: onnx.ModelProto,
                       weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """Replace each quantised layer's float weight constant by int8 + DequantizeLinear, in place.

    Constants are matched by value (the traced constant equals the layer's dequantised weights
    bit for bit), which does not depend on how the exporter names nodes. Returns the layers whose
    weights were not found.
    """
    graph = proto.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        attributes = node.attribute
        if node.op_type == "Constant" and len(attributes) == 1 and attributes[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    pending = dict(weights)
    new_nodes = []
    replaced: set[str] = set()
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in constants:
            found = _matching_layer(constants[node.input[1]], pending)
            if found is not None:
                dequantized, step = pending.pop(found)
                replaced.add(node.input[1])
                node.input[1] = _add_dequantize(graph, new_nodes, found, dequantized, step)
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused(graph, replaced)
    return list(pending)


def _matching_layer(array: np.ndarray,
                    pending: dict[str, tuple[np.ndarray, np.ndarray]]) -> str | None:
    for name, (dequantized, _) in pending.items():
        if array.shape == dequantized.shape and np.array_equal(array, dequantized):
            return name
    return None


def _add_dequantize(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], layer: str,
                    dequantized: np.ndarray, step: np.ndarray) -> str:
    shape = (-1,) + (1,) * (dequantized.ndim - 1)
    integers = np.rint(dequantized / step.reshape(shape)).astype(np.int8)
    if not np.array_equal(integers.astype(np.float32) * step.reshape(shape), dequantized):
        raise WorkFailedError(f"the weights of quantized layer '{layer}' are not on their "
                              "integer grid, so they cannot be stored as int8.")
    prefix = f"{layer}.weight"
    graph.initializer.extend([
        numpy_helper.from_array(integers, f"{prefix}_int8"),
        numpy_helper.from_array(step.astype(np.float32), f"{prefix}_scale"),
        numpy_helper.from_array(np.zeros(step.shape, np.int8), f"{prefix}_zero_point"),
    ])
    output = f"{prefix}_dequantized"
    nodes.append(helper.make_node("DequantizeLinear",
                                  [f"{prefix}_int8", f"{prefix}_scale", f"{prefix}_zero_point"],
                                  [output], name=f"{prefix}_DequantizeLinear", axis=0))
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


"""The fake-quant model is the integer model onnxruntime runs: exactness and fusion per
architecture, on real images.

EDSR is the shipped demo teacher; RCAN and Real-ESRGAN Compact are tiny models fitted for a few
dozen steps on real photographs in the fixture, so their outputs are images (PSNR means something)
while the test stays fast.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from srcompress.data.images import list_images, read_image
from srcompress.data.resize import imresize
from srcompress.errors import UserInputError
from srcompress.export import export_onnx, runtime_operator_counts
from srcompress.export.qdq import qdq_export_mode
from srcompress.export.verify import reference_difference
from srcompress.metrics import psnr, to_uint8
from srcompress.models import LoadedModel, build_model
from srcompress.quant import calibrate, quantize_model

SCALE = 2
TINY = {"rcan": "rcan:num_feat=16,num_group=2,num_block=2,squeeze_factor=4",
        "compact": "compact:num_feat=16,num_conv=4"}


def _fitted(spec: str, shared_data: Path) -> LoadedModel:
    """A tiny model fitted for 60 Adam steps on 48x48 crops of two real photographs."""
    torch.manual_seed(0)
    model = build_model(spec, SCALE)
    photos = [read_image(path)[:, :192, :192] for path in
              list_images(shared_data / "train" / "SunHays80")[2:4]]
    optimizer = torch.optim.Adam(model.module.parameters(), lr=2e-3)
    for step in range(60):
        top, left = (step * 37) % 144, (step * 53) % 144
        hr = torch.stack([photo[:, top:top + 48, left:left + 48] for photo in photos])
        lr = imresize(hr, scale=1 / SCALE)
        loss = (model.module(lr) - hr).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.module.eval().requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def models(trained_edsr: LoadedModel, shared_data: Path) -> dict[str, LoadedModel]:
    return {"edsr": trained_edsr, **{name: _fitted(spec, shared_data)
                                     for name, spec in TINY.items()}}


def _quantized(model: LoadedModel, batch: torch.Tensor, w_bits: int = 8, a_bits: int = 8,
               target: str = "onnxruntime") -> LoadedModel:
    module, report = quantize_model(copy.deepcopy(model.module), w_bits, a_bits, target=target)
    calibrate(module, [batch])
    return LoadedModel(module.eval(), model.arch, model.settings, model.scale,
                       {"quant": report.metadata()}, "quantized in tests")


def _pairs(shared_data: Path, benchmark: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    root = shared_data / "benchmarks" / benchmark
    pairs = []
    for hr_path in list_images(root / "HR"):
        hr = read_image(hr_path)
        hr = hr[:, : hr.shape[1] // SCALE * SCALE, : hr.shape[2] // SCALE * SCALE]
        lr_path = root / "LR_bicubic" / f"X{SCALE}" / f"{hr_path.stem}x{SCALE}.png"
        # Set14 ships HR only: its LR is made by the MATLAB-compatible bicubic, as evaluate does.
        lr = (read_image(lr_path) if lr_path.is_file()
              else to_float(to_uint8(imresize(hr, scale=1 / SCALE))))
        pairs.append((lr, hr))
    return pairs


def to_float(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


# Each fake-quant model and the ONNX forms written from it: onnxruntime's uint8 form, and the
# TensorRT form (int8, zero point 0), exact for models on the int8 grid (`target="tensorrt"`).
FORMS = {"w8a8": (8, 8, "onnxruntime"), "w4a4": (4, 4, "onnxruntime"),
         "w8a8-int8-grid": (8, 8, "tensorrt"), "w4a4-int8-grid": (4, 4, "tensorrt")}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("arch", ["edsr", "rcan", "compact"])
def test_onnxruntime_execution_matches_the_fake_quant_model(
        arch: str, form: str, models: dict[str, LoadedModel], calibration_batch: torch.Tensor,
        shared_data: Path, tmp_path: Path) -> None:
    """At most one grey level apart on 99.9 % of pixels; Set5/Set14 PSNR within 0.01 dB; every
    quantised conv runs as QLinearConv. A TensorRT form computes exactly what the onnxruntime
    form computes (both run node by node, as ONNX defines them)."""
    w_bits, a_bits, grid = FORMS[form]
    quantized = _quantized(models[arch], calibration_batch, w_bits, a_bits, grid)
    path = tmp_path / f"{arch}.onnx"
    export_onnx(quantized, path)
    counts = runtime_operator_counts(path)
    layers = len(quantized.metadata["quant"]["layers"])
    kept = quantized.metadata["quant"]["full_precision"]  # RCAN's attention
    assert counts["integer_convs"] == layers and counts["float_convs"] == len(kept)
    if arch == "rcan":  # every residual Add in integers; channel attention stays float
        assert counts["integer_ops"]["QLinearAdd"] == 4 + 2 + 1 + (3 if a_bits < 8 else 0)
        assert len(kept) == 2 * 2 * 2
    if arch == "edsr":  # one QLinearAdd per residual block and the long skip, few Transposes
        assert counts["integer_ops"]["QLinearAdd"] == 5 + (3 if a_bits < 8 else 0)
        assert counts["transposes"] <= 4
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    benchmarks = ["Set5", "Set14"] if arch == "edsr" and grid == "onnxruntime" else ["Set5"]
    for benchmark in benchmarks:
        within, pixels, torch_psnr, runtime_psnr = 0, 0, [], []
        for lr, hr in _pairs(shared_data, benchmark):
            with torch.inference_mode():
                expected = to_uint8(quantized.module(lr[None])[0])
            got = to_uint8(torch.from_numpy(session.run(None, {"input": lr[None].numpy()})[0][0]))
            within += int((np.abs(expected.astype(int) - got.astype(int)) <= 1).sum())
            pixels += expected.size
            reference = to_uint8(hr)
            torch_psnr.append(psnr(expected, reference, crop_border=SCALE))
            runtime_psnr.append(psnr(got, reference, crop_border=SCALE))
        assert within / pixels >= 0.999, (benchmark, within / pixels)
        assert abs(np.mean(torch_psnr) - np.mean(runtime_psnr)) <= 0.01, benchmark
    if grid == "tensorrt":
        report = export_onnx(quantized, tmp_path / f"{arch}-tensorrt.onnx", target="tensorrt")
        assert report.verified and report.form_difference == 0.0
        _assert_tensorrt_form(onnx.load(report.output))
        inputs = [lr[None] for lr, _ in _pairs(shared_data, "Set5")[:2]]
        assert reference_difference(path, Path(report.output), inputs) == 0.0


def _assert_tensorrt_form(proto: onnx.ModelProto) -> None:
    """What TensorRT's explicit quantization takes: int8 Q/DQ with zero point 0, each
    QuantizeLinear read by its DequantizeLinear only, weights in int8 containers, float biases."""
    graph = proto.graph
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    constants.update({node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t)
                      for node in graph.node if node.op_type == "Constant"})
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    quantizers = [node for node in graph.node if node.op_type == "QuantizeLinear"]
    dequantizers = [node for node in graph.node if node.op_type == "DequantizeLinear"]
    assert quantizers and all(readers[node.output[0]] == ["DequantizeLinear"]
                              for node in quantizers)
    for node in quantizers + dequantizers:
        zero_point = constants[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    assert not [init for init in graph.initializer
                if init.data_type in (onnx.TensorProto.INT32, onnx.TensorProto.INT4,
                                      onnx.TensorProto.UINT8)]
    assert proto.metadata_props and {entry.key: entry.value for entry in proto.metadata_props}[
        "quant_target"] == "tensorrt"


def test_low_bits_clip_integers_after_quantizelinear_and_pack_int4_weights(
        trained_edsr: LoadedModel, calibration_batch: torch.Tensor, tmp_path: Path) -> None:
    w8 = export_onnx(_quantized(trained_edsr, calibration_batch, 8, 8), tmp_path / "w8.onnx")
    model = _quantized(trained_edsr, calibration_batch, 4, 4)
    packed = export_onnx(model, tmp_path / "w4.onnx")
    containers = export_onnx(model, tmp_path / "w4-int8.onnx", int4="none")
    graph = onnx.load(str(tmp_path / "w4.onnx")).graph
    producers = {output: node for node in graph.node for output in node.output}
    clips = [node for node in graph.node if node.op_type == "Clip"]
    # Every 4-bit activation: QuantizeLinear → Clip(uint8 0..15) → DequantizeLinear; no float Clip.
    assert clips and all(producers[node.input[0]].op_type == "QuantizeLinear" for node in clips)
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    constants.update({node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t)
                      for node in graph.node if node.op_type == "Constant"})
    assert all(constants[node.input[2]] == 15 for node in clips)
    int4 = [init for init in graph.initializer if init.data_type == onnx.TensorProto.INT4]
    eight_bit = model.metadata["quant"]["eight_bit"]  # head, upsampler, output: int8 weights
    assert set(eight_bit) == {"conv_first", "upsample.0", "conv_last"}
    assert len(int4) == len(model.metadata["quant"]["layers"]) - len(eight_bit)
    assert packed.metadata["quant_eight_bit_layers"] == "conv_first, upsample.0, conv_last"
    assert "INT4" in packed.metadata["quant_weight_storage"]
    # INT4 weights halve the weight bytes and still run as integer convolutions.
    assert packed.runtime_ops == containers.runtime_ops
    assert packed.runtime_ops["integer_convs"] == len(model.metadata["quant"]["layers"])

    def weight_bytes(path: Path) -> int:
        return sum(len(init.raw_data) for init in onnx.load(str(path)).graph.initializer
                   if init.name.endswith((".weight_int", ".weight_int4")))

    eight_bit_bytes = sum(init.dims[0] * init.dims[1] * init.dims[2] * init.dims[3]
                          for init in graph.initializer if init.name.endswith(".weight_int"))
    four_bit_bytes = weight_bytes(tmp_path / "w4-int8.onnx") - eight_bit_bytes
    assert weight_bytes(tmp_path / "w4.onnx") - eight_bit_bytes == four_bit_bytes // 2
    assert packed.file_bytes < w8.file_bytes
    assert packed.verified and containers.verified


def test_int4_for_a_float_model_is_refused(trained_edsr: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="--int4 applies to quantized models only"):
        export_onnx(trained_edsr, tmp_path / "float.onnx", int4="cast")


def test_a_float_model_has_no_qdq_export(trained_edsr: LoadedModel) -> None:
    with pytest.raises(UserInputError, match="not quantized"), \
            qdq_export_mode(trained_edsr.module):
        pass


def test_tensorrt_form_is_refused_where_int8_cannot_hold_a_relu_output(
        trained_edsr: LoadedModel, calibration_batch: torch.Tensor, tmp_path: Path) -> None:
    """ReLU outputs on the unsigned 8-bit grid (0..255) have no int8 zero-point-0 form; the
    model must be quantized for TensorRT (ReLU outputs on 0..127)."""
    model = _quantized(trained_edsr, calibration_batch, 8, 8)
    with pytest.raises(UserInputError, match=r"'body_0_relu'.*quantize the model with --target "
                                             "tensorrt"):
        export_onnx(model, tmp_path / "w8a8.onnx", target="tensorrt")
    assert not (tmp_path / "w8a8.onnx").exists()
    with pytest.raises(UserInputError, match="drop --int4 cast"):
        export_onnx(model, tmp_path / "w8a8.onnx", target="tensorrt", int4="cast")
    with pytest.raises(UserInputError, match="--target tensorrt chooses the Q/DQ form"):
        export_onnx(trained_edsr, tmp_path / "float.onnx", target="tensorrt")


def _random_model_counts(spec: str | nn.Module, image: torch.Tensor,
                         tmp_path: Path) -> tuple[dict, object]:
    """Runtime op counts of a randomly initialised model's export (fusion does not depend on the
    weights; a random model's output is not an image, hence the loose tolerance)."""
    torch.manual_seed(0)
    model = (build_model(spec, SCALE) if isinstance(spec, str)
             else LoadedModel(spec, "custom", {}, SCALE, {}, "a test module"))
    module, report = quantize_model(model.module, 8, 8)
    calibrate(module, [image])
    quantized = LoadedModel(module.eval(), model.arch, model.settings, SCALE,
                            {"quant": report.metadata()}, "random")
    return export_onnx(quantized, tmp_path / "model.onnx", atol=1.0).runtime_ops, report


def test_rrdb_dense_blocks_run_in_integers(set5_x2: list, tmp_path: Path) -> None:
    counts, report = _random_model_counts("esrgan:num_filters=16,num_blocks=1",
                                          set5_x2[0].lr[:, :32, :32].unsqueeze(0), tmp_path)
    assert report.graph and set(report.folded_multipliers.values()) == {0.2}
    assert counts["integer_convs"] == len(report.quantized) and counts["float_convs"] == 0
    assert {"QLinearLeakyRelu", "QLinearConcat", "QLinearAdd"} <= set(counts["integer_ops"])


def test_window_attention_keeps_integer_convs_and_names_its_float_linears(
        set5_x2: list, tmp_path: Path) -> None:
    counts, report = _random_model_counts(
        "swinir:embed_dim=12,depths=[1],num_heads=[2],window_size=4,img_size=16,mlp_ratio=1,"
        "upsampler=pixelshuffle", set5_x2[0].lr[:, :16, :16].unsqueeze(0), tmp_path)
    assert not report.graph  # torch.fx cannot trace its padding code: per-conv quantizers
    assert report.skipped and set(report.skipped.values()) == {"Linear"}
    assert counts["integer_convs"] == len(report.quantized) and counts["float_matmuls"] > 0


class _GreyConcat(nn.Module):
    """Features concatenated with the image's grey level: a Concat input no conv reads."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.fuse = nn.Conv2d(9, 12, 3, padding=1)
        self.upsample = nn.PixelShuffle(SCALE)
        self.tail = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=1, keepdim=True)
        return self.tail(self.upsample(self.fuse(torch.cat([self.head(x), grey], dim=1))))


def test_a_concat_quantizes_the_inputs_it_joins(set5_x2: list, tmp_path: Path) -> None:
    """The grey channel is read by the Concat only: the Concat's own rule quantises it, so the
    runtime concatenates uint8 (QLinearConcat) instead of dequantising the features."""
    counts, report = _random_model_counts(_GreyConcat(), set5_x2[0].lr[:, :16, :16][None],
                                          tmp_path)
    assert "mean" in report.activation_quantizers
    assert counts["integer_ops"].get("QLinearConcat") == 1
    assert counts["integer_convs"] == 3

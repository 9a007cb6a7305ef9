"""`export_onnx` on tiny students of each family, checked with onnxruntime on real images."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import Tensor, nn

from srcompress._version import __version__
from srcompress.errors import UserInputError, WorkFailedError
from srcompress.export import VerificationFailedError, export_onnx
from srcompress.export.verify import synthetic_texture
from srcompress.models import LoadedModel

Students = Callable[..., LoadedModel]


def run_onnx(path: Path, image: Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: image.numpy()})[0]


def run_torch(model: LoadedModel, image: Tensor) -> np.ndarray:
    model.module.eval()  # fresh students are in training mode, where SwinIR's DropPath is live
    with torch.inference_mode():
        return model.module(image.clone()).numpy()


def folder_listing(folder: Path) -> list[str]:
    """Every entry, hidden temporary files included."""
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.parametrize(("family", "exporter"), [
    ("edsr", "auto"), ("rcan", "auto"), ("swinir", "auto"), ("esrgan", "auto"),
    ("edsr", "dynamo"),  # the fallback exporter (on SwinIR ~40 s here, so not in the suite)
])
def test_one_dynamic_file_matches_pytorch_on_real_images_of_several_sizes(
        tiny_student: Students, family: str, exporter: str, tmp_path: Path, verify_image: Path,
        lr_images: dict[str, Tensor]) -> None:
    model = tiny_student(family)
    output = tmp_path / f"{family}.onnx"
    report = export_onnx(model, output, verify_image=verify_image, exporter=exporter)

    assert report.exporter == ("torchscript" if exporter == "auto" else exporter)
    assert report.verified and report.max_abs_diff is not None
    assert report.max_abs_diff <= 1e-4
    assert report.input_shape == [1, 3, "height", "width"]
    # verified at a size that is not a multiple of 8 and at one that is
    assert report.verification_sizes == [[90, 70], [64, 48]]
    assert report.verification_provider == "CPUExecutionProvider"

    for name, image in lr_images.items():
        onnx_output = run_onnx(output, image)
        torch_output = run_torch(model, image)
        assert onnx_output.shape == (1, 3, 2 * image.shape[2], 2 * image.shape[3])
        difference = float(np.abs(onnx_output - torch_output).max())
        print(f"\n{family} ({report.exporter}) {name} {tuple(image.shape[2:])}: "
              f"max |onnxruntime - PyTorch| = {difference:.2e}")
        assert difference <= 1e-4


def test_the_file_describes_how_to_feed_it(
        tiny_student: Students, tmp_path: Path, verify_image: Path) -> None:
    model = tiny_student("edsr", scale=3)
    model.metadata.update({"method": "dukd", "metrics": {"Set5": {"psnr": 30.1}}})
    output = tmp_path / "student.onnx"
    export_onnx(model, output, verify_image=verify_image)
    metadata = {entry.key: entry.value for entry in onnx.load(str(output)).metadata_props}
    assert metadata["architecture"] == "edsr"
    assert json.loads(metadata["settings"]) == model.settings
    assert metadata["scale"] == "3"
    assert metadata["input_range"] == "[0, 1]"
    assert metadata["channel_order"] == "RGB" and metadata["layout"] == "NCHW"
    assert metadata["precision"] == "fp32"
    assert metadata["srcompress_version"] == __version__
    assert metadata["method"] == "dukd"
    assert json.loads(metadata["metrics"]) == {"Set5": {"psnr": 30.1}}


def test_fp16_file_holds_half_weights_and_is_verified_with_a_looser_default(
        tiny_student: Students, tmp_path: Path, verify_image: Path) -> None:
    model = tiny_student("edsr")
    report = export_onnx(model, tmp_path / "fp16.onnx", fp16=True, verify_image=verify_image)
    full = export_onnx(model, tmp_path / "fp32.onnx", verify_image=verify_image)
    print(f"\nfp16 max diff {report.max_abs_diff}, fp32 {full.max_abs_diff}")
    assert report.precision == "fp16" and report.atol == 1e-2
    # onnxruntime's CPU provider runs this fp16 graph, so it is verified, not skipped
    assert report.verified and report.not_verified_reason is None
    assert report.max_abs_diff is not None and full.max_abs_diff is not None
    # really half precision: visibly further from PyTorch float32 than the fp32 file
    assert 10 * full.max_abs_diff < report.max_abs_diff <= 1e-2
    proto = onnx.load(str(tmp_path / "fp16.onnx"))
    conv_weights = {node.input[1] for node in proto.graph.node if node.op_type == "Conv"}
    types = {init.data_type for init in proto.graph.initializer if init.name in conv_weights}
    assert types == {onnx.TensorProto.FLOAT16}
    # inputs and outputs stay float32 so every consumer feeds the same tensor
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert report.file_bytes < 0.7 * full.file_bytes  # graph overhead weighs on a tiny model


def test_static_export_has_the_requested_size_only(
        tiny_student: Students, tmp_path: Path, verify_image: Path,
        lr_images: dict[str, Tensor]) -> None:
    model = tiny_student("edsr")
    output = tmp_path / "static.onnx"
    report = export_onnx(model, output, dynamic=False, input_size=(37, 45),
                         verify_image=verify_image)
    assert report.input_shape == [1, 3, 37, 45] and report.verification_sizes == [[37, 45]]
    crop = lr_images["woman"][..., :37, :45]
    assert np.abs(run_onnx(output, crop) - run_torch(model, crop)).max() <= 1e-4
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument):
        run_onnx(output, lr_images["woman"])


def test_static_export_needs_an_input_size(tiny_student: Students, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="--static needs --input-size"):
        export_onnx(tiny_student("edsr"), tmp_path / "x.onnx", dynamic=False)


def test_requested_opset_is_the_files_opset(
        tiny_student: Students, tmp_path: Path, verify_image: Path) -> None:
    default = export_onnx(tiny_student("edsr"), tmp_path / "default.onnx",
                          verify_image=verify_image)
    report = export_onnx(tiny_student("edsr"), tmp_path / "opset18.onnx", opset=18,
                         verify_image=verify_image)
    assert default.opset == 17 and report.opset == 18 and report.verified
    proto = onnx.load(str(tmp_path / "opset18.onnx"))
    assert {entry.domain: entry.version for entry in proto.opset_import}[""] == 18


def test_existing_file_is_not_overwritten_without_force(
        tiny_student: Students, tmp_path: Path, verify_image: Path) -> None:
    output = tmp_path / "student.onnx"
    output.write_bytes(b"earlier work")
    with pytest.raises(UserInputError, match=r"already exists: pass --force"):
        export_onnx(tiny_student("edsr"), output, verify_image=verify_image)
    assert output.read_bytes() == b"earlier work"
    export_onnx(tiny_student("edsr"), output, force=True, verify_image=verify_image)
    assert onnx.load(str(output)).graph.node
    assert folder_listing(tmp_path) == ["student.onnx"]


def test_unwritable_output_folder_is_a_user_error(
        tiny_student: Students, tmp_path: Path, verify_image: Path) -> None:
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("a file where the output folder should be")
    with pytest.raises(UserInputError, match="Cannot write to"):
        export_onnx(tiny_student("edsr"), not_a_folder / "student.onnx",
                    verify_image=verify_image)
    assert folder_listing(tmp_path) == ["notes.txt"]


def test_failed_verification_writes_nothing_and_keeps_the_old_file(
        tiny_student: Students, tmp_path: Path, verify_image: Path) -> None:
    output = tmp_path / "student.onnx"
    output.write_bytes(b"earlier export")
    with pytest.raises(VerificationFailedError) as failure:
        export_onnx(tiny_student("edsr"), output, fp16=True, atol=1e-6, force=True,
                    verify_image=verify_image)
    assert isinstance(failure.value, WorkFailedError) and failure.value.exit_code == 1
    message = str(failure.value)
    report = failure.value.report
    print(f"\n{message}")
    assert report.max_abs_diff is not None and report.max_abs_diff > 1e-6
    assert f"{report.max_abs_diff:.3g}" in message and "above --atol 1e-06" in message
    assert output.read_bytes() == b"earlier export"
    assert folder_listing(tmp_path) == ["student.onnx"]


class CumulativeMaxNet(nn.Module):
    """A real (if odd) upscaler whose cumulative max has no ONNX conversion in torch's exporter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(torch.cummax(self.conv(x), dim=3).values)


def test_unexportable_architecture_names_the_operator(tmp_path: Path, verify_image: Path) -> None:
    model = LoadedModel(CumulativeMaxNet().eval(), "cummax-net", {}, 2)
    for exporter in ("auto", "torchscript", "dynamo"):
        with pytest.raises(UserInputError,
                           match=r"no ONNX conversion for operator aten\.cummax"):
            export_onnx(model, tmp_path / "cummax.onnx", verify_image=verify_image,
                        exporter=exporter)
    assert folder_listing(tmp_path) == []


def test_bad_arguments_are_user_errors(tiny_student: Students, tmp_path: Path) -> None:
    model = tiny_student("edsr")
    with pytest.raises(UserInputError, match=r"must end in \.onnx"):
        export_onnx(model, tmp_path / "student.pt")
    with pytest.raises(UserInputError, match="--atol"):
        export_onnx(model, tmp_path / "student.onnx", atol=-1)
    with pytest.raises(UserInputError, match="--opset 99"):
        export_onnx(model, tmp_path / "student.onnx", opset=99)
    with pytest.raises(UserInputError, match="does not exist"):
        export_onnx(model, tmp_path / "student.onnx", verify_image=tmp_path / "missing.png")
    with pytest.raises(UserInputError, match="--exporter onnxruntime is unknown"):
        export_onnx(model, tmp_path / "student.onnx", exporter="onnxruntime")
    assert folder_listing(tmp_path) == []


def test_synthetic_texture_is_deterministic_and_textured() -> None:
    first, second = synthetic_texture(45, 61), synthetic_texture(45, 61)
    assert first.shape == (3, 45, 61) and torch.equal(first, second)
    assert first.min() >= 0 and first.max() <= 1
    # plenty of high-frequency content: neighbouring pixels differ on average by > 5 grey levels
    assert (first[:, :, 1:] - first[:, :, :-1]).abs().mean() > 5 / 255

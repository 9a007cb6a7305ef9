"""`.onnx` files as a MODEL: the ONNX Runtime runner against the PyTorch runner on real images."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from torch import Tensor

from srcompress.data.images import read_image
from srcompress.demo import demo_teacher_path
from srcompress.devices import onnx_providers
from srcompress.errors import UserInputError
from srcompress.export import export_onnx
from srcompress.inference import OnnxRunner, TorchRunner, make_runner
from srcompress.models import LoadedModel, save_model

Students = Callable[..., LoadedModel]


@pytest.fixture(scope="module")
def exported_edsr(tiny_student: Students, verify_image: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, Path]:
    """A tiny EDSR x2 and its dynamic ONNX export, shared by the runner tests."""
    model = tiny_student("edsr")
    model.module.eval()
    path = tmp_path_factory.mktemp("onnx") / "edsr.onnx"
    export_onnx(model, path, verify_image=verify_image)
    return model, path


def test_scale_comes_from_the_file_and_output_matches_pytorch(
        exported_edsr: tuple[LoadedModel, Path], lr_images: dict[str, Tensor]) -> None:
    model, path = exported_edsr
    runner = make_runner(path, device="cpu")
    assert isinstance(runner, OnnxRunner)
    assert runner.scale == 2 and runner.provider == "CPUExecutionProvider"
    reference = TorchRunner(model.module, 2, "cpu")
    for image in lr_images.values():
        assert (runner(image) - reference(image)).abs().max().item() <= 1e-4


def test_tiling_and_self_ensemble_work_as_for_checkpoints(
        exported_edsr: tuple[LoadedModel, Path], lr_images: dict[str, Tensor]) -> None:
    model, path = exported_edsr
    image = lr_images["head"]  # 93×93: tiles of 40 leave ragged edge tiles
    whole = make_runner(path, device="cpu")(image)
    tiled = make_runner(path, device="cpu", tile=40, tile_pad=10)(image)
    torch_tiled = TorchRunner(model.module, 2, "cpu", tile=40, tile_pad=10)(image)
    print(f"\nmax |tiled - whole| {(tiled - whole).abs().max():.2e}, "
          f"|onnx tiled - torch tiled| {(tiled - torch_tiled).abs().max():.2e}")
    # the pad covers the tiny EDSR's receptive field, so tiles reproduce the whole image
    assert (tiled - whole).abs().max().item() <= 1e-5
    assert (tiled - torch_tiled).abs().max().item() <= 1e-4
    crop = image[..., :40, :52]
    ensemble = make_runner(path, device="cpu", self_ensemble=True)(crop)
    torch_ensemble = TorchRunner(model.module, 2, "cpu", self_ensemble=True)(crop)
    assert ensemble.shape == (1, 3, 80, 104)
    assert (ensemble - torch_ensemble).abs().max().item() <= 1e-4
    assert (ensemble - whole[..., :80, :104]).abs().max().item() > 1e-3


def test_static_file_runs_any_image_through_fitting_tiles(
        tiny_student: Students, verify_image: Path, tmp_path: Path,
        lr_images: dict[str, Tensor]) -> None:
    model = tiny_student("edsr")
    model.module.eval()
    path = tmp_path / "static.onnx"
    export_onnx(model, path, dynamic=False, input_size=(48, 48), verify_image=verify_image)
    runner = make_runner(path, device="cpu")
    assert runner.static_size == (48, 48) and runner.tile == 28 and runner.tile_pad == 10
    image = lr_images["head"]
    output = runner(image)
    reference = TorchRunner(model.module, 2, "cpu", tile=28, tile_pad=10)(image)
    assert output.shape == (1, 3, 186, 186)
    # tiles smaller than the file's size are padded by edge replication: exact inside the image,
    # close at its borders
    assert (output - reference)[..., 20:-20, 20:-20].abs().max().item() <= 1e-4
    assert (output - reference).abs().mean().item() <= 1e-3
    with pytest.raises(UserInputError, match="takes 48x48 inputs only"):
        make_runner(path, device="cpu", tile=40, tile_pad=10)


def test_wrong_uses_are_user_errors(exported_edsr: tuple[LoadedModel, Path],
                                    tmp_path: Path) -> None:
    _, path = exported_edsr
    with pytest.raises(UserInputError, match="upscales x2 but --scale is 4"):
        make_runner(path, scale=4, device="cpu")
    with pytest.raises(UserInputError, match="--fp16 does not apply"):
        make_runner(path, fp16=True, device="cpu")
    with pytest.raises(UserInputError, match="--device cuda asks for a GPU"):
        make_runner(path, device="cuda")
    with pytest.raises(UserInputError, match="not a device"):
        onnx_providers("tpu")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserInputError, match="is not a loadable ONNX model"):
        make_runner(broken, device="cpu")
    with pytest.raises(UserInputError, match="does not exist"):
        make_runner(tmp_path / "missing.onnx", device="cpu")


def _student_checkpoint(kind: str, tiny_student: Students, folder: Path) -> Path:
    if kind == "trained demo teacher":
        path = demo_teacher_path(2)
        if not path.is_file():
            pytest.skip(f"the demo teacher {path} is not built yet")
        return path
    return save_model(folder / "student.safetensors", tiny_student("edsr"))


@pytest.mark.parametrize("kind", ["tiny EDSR student", "trained demo teacher"])
def test_evaluate_onnx_gives_the_checkpoints_psnr(
        cli, kind: str, tiny_student: Students, shared_data: Path, verify_image: Path,
        tmp_path: Path) -> None:
    checkpoint = _student_checkpoint(kind, tiny_student, tmp_path)
    exported = cli("export", checkpoint, "--onnx", "--output", tmp_path / "student.onnx",
                   "--verify-image", verify_image)
    assert exported.exit_code == 0, exported.stderr
    scores = {}
    for model in (checkpoint, tmp_path / "student.onnx"):
        result = cli("evaluate", model, "--benchmark", "Set5", "--data-root",
                     shared_data / "benchmarks", "--device", "cpu", "--json", "-")
        assert result.exit_code == 0, result.stderr
        (scores[model.suffix],) = json.loads(result.stdout)["results"]
    print(f"\n{kind}: Set5 x2 PSNR checkpoint {scores['.safetensors']['psnr']:.4f} dB, "
          f"onnx {scores['.onnx']['psnr']:.4f} dB")
    assert scores[".onnx"]["images"] == 5
    assert abs(scores[".onnx"]["psnr"] - scores[".safetensors"]["psnr"]) <= 0.01
    assert abs(scores[".onnx"]["ssim"] - scores[".safetensors"]["ssim"]) <= 1e-4


def test_upscale_with_the_onnx_file_writes_the_checkpoints_images(
        cli, exported_edsr: tuple[LoadedModel, Path], set5: Path, tmp_path: Path) -> None:
    model, path = exported_edsr
    checkpoint = save_model(tmp_path / "student.safetensors", model)
    image = set5 / "LR_bicubic" / "X4" / "womanx4.png"
    for source, folder in ((path, tmp_path / "onnx"), (checkpoint, tmp_path / "torch")):
        result = cli("upscale", source, image, "-o", folder, "--tile", "32", "--device", "cpu")
        assert result.exit_code == 0, result.stderr
    from_onnx = read_image(tmp_path / "onnx" / "womanx4_x2.png")
    from_torch = read_image(tmp_path / "torch" / "womanx4_x2.png")
    assert from_onnx.shape == (3, 172, 114)
    # 8-bit files: at most one grey level apart where a value sits on a rounding boundary
    assert (from_onnx - from_torch).abs().max().item() <= 1 / 255 + 1e-6

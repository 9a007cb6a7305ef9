"""`evaluate()` as a library: LR made from HR only, the results schema, live training modules."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from srcompress import metrics
from srcompress.data.images import read_image, write_image
from srcompress.data.resize import imresize
from srcompress.errors import UserInputError
from srcompress.evaluation import evaluate, quantise
from srcompress.metrics.niqe import niqe
from srcompress.models import build_model, save_model
from srcompress.models.edsr import EDSR


def test_lr_made_from_hr_agrees_with_matlab_lr_files(shared_data: Path, tmp_path: Path) -> None:
    shutil.copytree(shared_data / "benchmarks" / "Set5" / "HR", tmp_path / "Set5")
    from_files = evaluate("bicubic", ["Set5"], scale=4, data_root=shared_data / "benchmarks")
    from_hr = evaluate("bicubic", [tmp_path / "Set5"], scale=4)
    files_psnr, hr_psnr = from_files["results"][0]["psnr"], from_hr["results"][0]["psnr"]
    print(f"\nbicubic Set5 x4: MATLAB LR files {files_psnr:.4f} dB, our LR {hr_psnr:.4f} dB")
    assert from_hr["results"][0]["benchmark"] == "Set5"
    assert abs(files_psnr - hr_psnr) < 0.02


def test_schema_and_live_module_left_as_it_was(shared_data: Path) -> None:
    module = EDSR(scale=2, num_feat=8, num_block=1).train()
    report = evaluate(module, ["Set5"], scale=2, data_root=shared_data / "benchmarks",
                      device="cpu", crop_border=3, y_channel=False)
    assert module.training
    assert set(report) == {"model", "scale", "y_channel", "crop_border", "no_reference",
                           "reference_model", "results"}
    assert (report["scale"], report["crop_border"], report["y_channel"]) == (2, 3, False)
    (result,) = report["results"]
    assert set(result) == {"benchmark", "images", "psnr", "ssim", "niqe", "psnr_to_reference",
                           "ssim_to_reference", "niqe_skipped", "seconds", "per_image"}
    assert result["niqe"] is None and result["psnr_to_reference"] is None
    assert len(result["per_image"]) == 5 and result["seconds"] > 0
    assert result["psnr"] == pytest.approx(
        sum(row["psnr"] for row in result["per_image"]) / 5)


def _paired_set5_without_usable_hr(shared_data: Path, folder: Path) -> Path:
    """Set5's MATLAB LR files next to HR images that could not be evaluated (4x4 pixels)."""
    shutil.copytree(shared_data / "benchmarks" / "Set5" / "LR_bicubic", folder / "LR_bicubic")
    for path in (shared_data / "benchmarks" / "Set5" / "HR").glob("*.png"):
        write_image(folder / "HR" / path.name, torch.zeros(3, 4, 4))
    return folder


def test_no_reference_scores_niqe_of_the_outputs_and_ignores_hr(shared_data: Path,
                                                                 tmp_path: Path) -> None:
    folder = _paired_set5_without_usable_hr(shared_data, tmp_path / "Set5")
    with pytest.raises(UserInputError):
        evaluate("bicubic", [folder], scale=4)
    report = evaluate("bicubic", [folder], scale=4, no_reference=True)
    (result,) = report["results"]
    assert report["no_reference"] and result["psnr"] is None and result["ssim"] is None
    lr = read_image(folder / "LR_bicubic" / "X4" / "birdx4.png")
    expected = niqe(metrics.to_uint8(imresize(lr, scale=4)))
    (bird,) = [row for row in result["per_image"] if row["name"] == "bird"]
    assert bird["niqe"] == pytest.approx(expected, abs=1e-9)
    assert result["niqe"] == pytest.approx(
        sum(row["niqe"] for row in result["per_image"]) / 5)


def test_a_bare_folder_without_reference_holds_the_lr_inputs(shared_data: Path,
                                                             tmp_path: Path) -> None:
    shutil.copytree(shared_data / "benchmarks" / "Set5" / "LR_bicubic" / "X2", tmp_path / "lr")
    with_lr = evaluate("bicubic", [tmp_path / "lr"], scale=2, no_reference=True)
    from_paired = evaluate("bicubic", ["Set5"], scale=2, data_root=shared_data / "benchmarks",
                           no_reference=True)
    assert with_lr["results"][0]["niqe"] == pytest.approx(from_paired["results"][0]["niqe"])


def test_reference_model_psnr_is_against_its_outputs(shared_data: Path) -> None:
    torch.manual_seed(0)
    module = EDSR(scale=2, num_feat=8, num_block=1).eval()
    report = evaluate(module, ["Set5"], scale=2, data_root=shared_data / "benchmarks",
                      device="cpu", reference_model="bicubic", with_niqe=True)
    (result,) = report["results"]
    assert report["reference_model"] == "bicubic"
    lr = read_image(shared_data / "benchmarks" / "Set5" / "LR_bicubic" / "X2" / "headx2.png")
    with torch.no_grad():
        sr = module(lr[None])[0]
    teacher = quantise(imresize(lr, scale=2))
    (head,) = [row for row in result["per_image"] if row["name"] == "head"]
    assert head["psnr_to_reference"] == pytest.approx(
        metrics.psnr(metrics.to_uint8(sr), metrics.to_uint8(teacher), 2), abs=1e-9)
    assert head["psnr"] is not None and head["niqe"] is not None
    assert head["psnr_to_reference"] != pytest.approx(head["psnr"], abs=0.01)


def test_reference_model_of_another_scale_is_refused(shared_data: Path, tmp_path: Path) -> None:
    save_model(tmp_path / "x4.safetensors", build_model("edsr:num_feat=8,num_block=1", 4))
    with pytest.raises(UserInputError, match=r"reference model .* upscales x4"):
        evaluate("bicubic", ["Set5"], scale=2, data_root=shared_data / "benchmarks",
                 reference_model=tmp_path / "x4.safetensors")


def test_niqe_leaves_out_small_outputs_and_refuses_when_none_is_large(shared_data: Path,
                                                                     tmp_path: Path) -> None:
    lr_folder = shared_data / "benchmarks" / "Set5" / "LR_bicubic" / "X4"
    shutil.copytree(lr_folder, tmp_path / "mixed")
    write_image(tmp_path / "mixed" / "thumb.png", read_image(lr_folder / "babyx4.png")[:, :20, :20])
    report = evaluate("bicubic", [tmp_path / "mixed"], scale=4, no_reference=True)
    (result,) = report["results"]
    assert result["niqe_skipped"] == ["thumb"] and result["images"] == 6
    assert result["niqe"] == pytest.approx(
        sum(row["niqe"] for row in result["per_image"] if row["niqe"] is not None) / 5)
    write_image(tmp_path / "small" / "thumb.png", read_image(lr_folder / "babyx4.png")[:, :20, :20])
    with pytest.raises(UserInputError, match="96x96"):
        evaluate("bicubic", [tmp_path / "small"], scale=4, no_reference=True)

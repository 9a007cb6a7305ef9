"""`evaluate()` as a library: LR made from HR only, the results schema, live training modules."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from srcompress.evaluation import evaluate
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
    assert set(report) == {"model", "scale", "y_channel", "crop_border", "results"}
    assert (report["scale"], report["crop_border"], report["y_channel"]) == (2, 3, False)
    (result,) = report["results"]
    assert set(result) == {"benchmark", "images", "psnr", "ssim", "seconds", "per_image"}
    assert len(result["per_image"]) == 5 and result["seconds"] > 0
    assert result["psnr"] == pytest.approx(
        sum(row["psnr"] for row in result["per_image"]) / 5)

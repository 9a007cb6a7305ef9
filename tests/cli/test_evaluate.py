"""`srcompress evaluate`, `upscale` and `datasets` end to end, on real images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srcompress.data.images import read_image
from srcompress.models import build_model, save_model

TINY_EDSR = "edsr:num_feat=8,num_block=1"


def evaluate_json(cli, *args: object) -> dict:
    result = cli("evaluate", *args, "--json", "-")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(("scale", "psnr", "ssim"), [(4, 28.43, 0.8113), (2, 33.68, 0.9305)])
def test_bicubic_set5_matches_the_published_protocol(cli, shared_data: Path, scale: int,
                                                     psnr: float, ssim: float) -> None:
    report = evaluate_json(cli, "bicubic", "--benchmark", "Set5", "--scale", scale,
                           "--data-root", shared_data / "benchmarks")
    assert report["scale"] == scale and report["crop_border"] == scale and report["y_channel"]
    (result,) = report["results"]
    print(f"\nbicubic Set5 x{scale}: {result['psnr']:.4f} dB / {result['ssim']:.5f}")
    assert result["benchmark"] == "Set5" and result["images"] == 5
    assert abs(result["psnr"] - psnr) <= 0.01
    assert abs(result["ssim"] - ssim) <= 0.0005
    assert [row["name"] for row in result["per_image"]] == [
        "baby", "bird", "butterfly", "head", "woman"]


@pytest.mark.slow
def test_bicubic_set14_from_hr_only_with_its_greyscale_image(cli, shared_data: Path) -> None:
    report = evaluate_json(cli, "bicubic", "--benchmark", "Set14", "--scale", "4",
                           "--data-root", shared_data / "benchmarks")
    (result,) = report["results"]
    print(f"\nbicubic Set14 x4 (LR made from HR): {result['psnr']:.4f} dB / {result['ssim']:.5f}")
    assert result["images"] == 14 and "bridge" in [row["name"] for row in result["per_image"]]
    assert abs(result["psnr"] - 26.09) <= 0.01


def test_table_verbose_rows_and_saved_images(cli, shared_data: Path, tmp_path: Path) -> None:
    result = cli("evaluate", "bicubic", "--benchmark", "Set5", "--scale", "4", "--data-root",
                 shared_data / "benchmarks", "-v", "--save-images", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert "28.43 dB" in result.stdout and "0.8113" in result.stdout
    assert "butterfly" in result.stdout and "22.10 dB" in result.stdout
    saved = tmp_path / "out" / "Set5"
    assert read_image(saved / "baby_x4.png").shape == (3, 512, 512)
    comparison = read_image(saved / "baby_x4_compare.png")
    assert comparison.shape == (3, 160, 3 * 160 + 2 * 4)


def test_rgb_and_crop_border_flags(cli, shared_data: Path) -> None:
    report = evaluate_json(cli, "bicubic", "--benchmark", "Set5", "--scale", "4",
                           "--data-root", shared_data / "benchmarks", "--rgb",
                           "--crop-border", "0")
    assert not report["y_channel"] and report["crop_border"] == 0
    assert 25 < report["results"][0]["psnr"] < 28.43


def odd_images_folder(folder: Path) -> Path:
    """A folder benchmark with RGBA, 16-bit greyscale, palette images and a stray text file."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    smooth = np.kron(rng.integers(0, 256, (10, 12, 3)), np.ones((6, 6, 1))).astype(np.uint8)
    Image.fromarray(np.dstack([smooth, np.full(smooth.shape[:2], 255, np.uint8)])).save(
        folder / "rgba.png")
    Image.fromarray(smooth[..., 0].astype(np.uint16) * 257).save(folder / "grey16.png")
    Image.fromarray(smooth).quantize(16).save(folder / "palette.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_model_checkpoint_on_a_folder_with_tiles(cli, tmp_path: Path) -> None:
    model = save_model(tmp_path / "tiny.safetensors", build_model(TINY_EDSR, 2))
    folder = odd_images_folder(tmp_path / "odd")
    whole = evaluate_json(cli, model, "--benchmark", folder, "--device", "cpu")
    tiled = evaluate_json(cli, model, "--benchmark", folder, "--device", "cpu", "--tile", "16",
                          "--tile-pad", "8")
    assert whole["model"] == str(model) and whole["scale"] == 2
    assert [row["name"] for row in whole["results"][0]["per_image"]] == [
        "grey16", "palette", "rgba"]
    for plain, in_tiles in zip(whole["results"][0]["per_image"],
                               tiled["results"][0]["per_image"], strict=True):
        assert abs(plain["psnr"] - in_tiles["psnr"]) < 1e-3


def test_bad_inputs_exit_2_with_one_sentence(cli, shared_data: Path, tmp_path: Path) -> None:
    result = cli("evaluate", "bicubic", "--benchmark", "Urban100", "--scale", "4",
                 "--data-root", tmp_path)
    assert result.exit_code == 2
    assert "srcompress datasets fetch Urban100" in result.stderr
    assert str(tmp_path / "Urban100") in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "empty").mkdir()
    result = cli("evaluate", "bicubic", "--benchmark", tmp_path / "empty", "--scale", "2")
    assert result.exit_code == 2 and "contains no images" in result.stderr
    (tmp_path / "small").mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "small" / "tiny.png")
    result = cli("evaluate", "bicubic", "--benchmark", tmp_path / "small", "--scale", "4")
    assert result.exit_code == 2 and "tiny.png" in result.stderr and "too small" in result.stderr
    result = cli("evaluate", "bicubic", "--benchmark", "Set5")
    assert result.exit_code == 2 and "--scale" in result.stderr
    model = save_model(tmp_path / "tiny.safetensors", build_model(TINY_EDSR, 2))
    result = cli("evaluate", model, "--scale", "4", "--data-root", shared_data / "benchmarks")
    assert result.exit_code == 2 and "x2 but --scale is 4" in result.stderr


def test_upscale_writes_outputs_next_to_nothing_else(cli, shared_data: Path,
                                                    tmp_path: Path) -> None:
    model = save_model(tmp_path / "tiny.safetensors", build_model(TINY_EDSR, 2))
    lr_folder = shared_data / "benchmarks" / "Set5" / "LR_bicubic" / "X4"
    result = cli("upscale", model, lr_folder / "birdx4.png", lr_folder / "headx4.png", "-o",
                 tmp_path / "out", "--tile", "32", "--device", "cpu", "--json", "-")
    assert result.exit_code == 0, result.stderr
    outputs = json.loads(result.stdout)["outputs"]
    assert [Path(entry["output"]).name for entry in outputs] == ["birdx4_x2.png", "headx4_x2.png"]
    assert read_image(tmp_path / "out" / "birdx4_x2.png").shape == (3, 144, 144)
    result = cli("upscale", "bicubic", lr_folder, "-o", tmp_path / "bicubic", "--scale", "4")
    assert result.exit_code == 0, result.stderr
    assert len(list((tmp_path / "bicubic").iterdir())) == 5
    assert cli("upscale", "bicubic", lr_folder, "-o", tmp_path / "x").exit_code == 2
    missing = cli("upscale", model, tmp_path / "nope.png", "-o", tmp_path / "y")
    assert missing.exit_code == 2 and "nope.png" in missing.stderr


def test_datasets_list_and_unverified_fetch_refusal(cli, shared_data: Path,
                                                   tmp_path: Path) -> None:
    listing = json.loads(cli("datasets", "list", "--data-root", shared_data / "benchmarks",
                             "--json", "-").stdout)
    rows = {row["name"]: row for row in listing["benchmarks"]}
    assert rows["Set5"]["lr_scales"] == [2, 3, 4] and rows["Set14"]["images"] == 14
    assert rows["Urban100"]["folder"] is None
    result = cli("datasets", "fetch", "Set5", "--data-root", tmp_path)
    assert result.exit_code == 2 and "--sha256" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_datasets_degrade_makes_a_reproducible_paired_set(cli, shared_data: Path,
                                                          tmp_path: Path) -> None:
    made = cli("datasets", "degrade", shared_data / "benchmarks" / "Set5", "--degradation",
               "realesrgan", "--seed", "3", "--output", tmp_path / "a", "--json", "-")
    assert made.exit_code == 0, made.stderr
    report = json.loads(made.stdout)
    assert report["images"] == 5 and report["degradation"]["name"] == "realesrgan"
    lr_folder = tmp_path / "a" / "LR_realesrgan" / "X4"
    assert Path(report["lr_folder"]) == lr_folder
    assert read_image(lr_folder / "birdx4.png").shape == (3, 72, 72)
    assert json.loads((tmp_path / "a" / "degradation.json").read_text())["seed"] == 3
    again = cli("datasets", "degrade", shared_data / "benchmarks" / "Set5", "--seed", "3",
                "--output", tmp_path / "b")
    other = cli("datasets", "degrade", shared_data / "benchmarks" / "Set5", "--seed", "4",
                "--output", tmp_path / "c")
    assert again.exit_code == 0 and other.exit_code == 0
    same = (tmp_path / "b" / "LR_realesrgan" / "X4" / "birdx4.png").read_bytes()
    assert same == (lr_folder / "birdx4.png").read_bytes()
    assert same != (tmp_path / "c" / "LR_realesrgan" / "X4" / "birdx4.png").read_bytes()
    paired = evaluate_json(cli, "bicubic", "--benchmark", tmp_path / "a", "--scale", "4")
    lr_only = evaluate_json(cli, "bicubic", "--benchmark", lr_folder, "--scale", "4",
                            "--no-reference")
    (with_gt,), (without,) = paired["results"], lr_only["results"]
    assert 15 < with_gt["psnr"] < 27 and without["psnr"] is None and without["niqe"] > 0
    refused = cli("datasets", "degrade", shared_data / "benchmarks" / "Set5", "--seed", "3",
                  "--output", tmp_path / "a")
    assert refused.exit_code == 2 and "already exists" in refused.stderr


def test_a_degraded_set_under_the_data_root_is_evaluated_by_its_name(
        cli, shared_data: Path, tmp_path: Path) -> None:
    made = cli("datasets", "degrade", shared_data / "benchmarks" / "Set5", "--degradation",
               "bicubic", "--scale", "2", "--data-root", tmp_path)
    assert made.exit_code == 0, made.stderr
    (folder,) = tmp_path.iterdir()
    assert f"--benchmark {folder.name}," in " ".join(made.stdout.split())
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    by_name = evaluate_json(cli, "bicubic", "--benchmark", folder.name, "--data-root", tmp_path,
                            "--scale", "2")
    by_path = evaluate_json(cli, "bicubic", "--benchmark", folder, "--scale", "2")
    assert by_name["results"][0]["psnr"] == by_path["results"][0]["psnr"] > 30


def test_datasets_degrade_refuses_a_bad_degradation_file(cli, shared_data: Path,
                                                         tmp_path: Path) -> None:
    settings = tmp_path / "bad.toml"
    settings.write_text("jpeg_range = [10, 120]\n")
    result = cli("datasets", "degrade", "Set5", "--data-root", shared_data / "benchmarks",
                 "--degradation", settings, "--output", tmp_path / "out")
    assert result.exit_code == 2
    assert "jpeg_range" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    a_file = tmp_path / "bad.toml"
    for flags in (["--output", a_file / "out"], ["--scale", "0", "--output", tmp_path / "x"]):
        result = cli("datasets", "degrade", "Set5", "--data-root", shared_data / "benchmarks",
                     *flags)
        assert result.exit_code == 2 and "internal error" not in result.stderr, result.stderr


def test_evaluate_no_reference_json_and_small_image_warning(cli, shared_data: Path,
                                                            tmp_path: Path) -> None:
    lr_folder = shared_data / "benchmarks" / "Set5" / "LR_bicubic" / "X4"
    for path in lr_folder.glob("*.png"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    Image.new("RGB", (16, 16)).save(tmp_path / "thumb.png")
    result = cli("evaluate", "bicubic", "--benchmark", tmp_path, "--scale", "4",
                 "--no-reference", "--reference-model", "bicubic", "--json", "-")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["no_reference"] and report["reference_model"] == "bicubic"
    (benchmark,) = report["results"]
    assert benchmark["niqe_skipped"] == ["thumb"] and benchmark["psnr"] is None
    assert "NIQE left out 1 image(s)" in result.stderr and "thumb" in result.stderr
    table = cli("evaluate", "bicubic", "--benchmark", tmp_path, "--scale", "4", "--no-reference")
    assert "NIQE" in table.stdout and "PSNR" not in table.stdout

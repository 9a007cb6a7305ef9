"""The command line's shared behaviour: version, help, models listing, info's cost figures."""

from __future__ import annotations

import json

from srcompress import __version__
from srcompress.models import build_model, save_model


def test_version_and_help(cli):
    result = cli("--version")
    assert result.exit_code == 0 and __version__ in result.stdout
    result = cli("info", "--help")
    assert result.exit_code == 0 and "Example: srcompress info" in result.stdout


def test_help_lists_the_commands_in_the_order_of_the_job(cli):
    result = cli("--help")
    assert result.exit_code == 0
    commands = result.stdout.split("Commands")[1]
    listed = [line.split()[1] for line in commands.splitlines()
              if line.startswith("│ ") and not line.startswith("│  ")]
    assert listed == ["distill", "quantize", "evaluate", "export", "upscale", "info", "models",
                      "datasets"], listed


def test_unknown_command_is_a_usage_error(cli):
    assert cli("distil-typo").exit_code == 2


def test_models_lists_presets_and_architectures(cli):
    result = cli("models", "--json", "-")
    assert result.exit_code == 0
    listing = json.loads(result.stdout)
    assert listing["presets"]["edsr-c64b32"]["settings"]["num_block"] == 32
    assert {"edsr", "rcan", "swinir", "esrgan", "hat"} <= set(listing["architectures"])


def test_info_reports_parameters_and_macs(tmp_path, cli):
    path = save_model(tmp_path / "m.safetensors", build_model("edsr:num_feat=16,num_block=2", 2))
    report = json.loads(cli("info", path, "--json", "-").stdout)
    assert report["parameters"] == sum(p.numel() for p in build_model(
        "edsr:num_feat=16,num_block=2", 2).module.parameters())
    # Convolution MACs by hand at 256x256 (LR side; the last conv runs at 512x512).
    lr, hr = 256 * 256, 512 * 512
    per_pixel = 3 * 16 * 9 + 2 * 2 * 16 * 16 * 9 + 16 * 16 * 9 + 16 * 64 * 9
    assert report["macs_256x256"] == lr * per_pixel + hr * 16 * 3 * 9

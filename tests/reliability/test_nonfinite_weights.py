"""A model with NaN or infinite weights is refused at load (issue 12, item 1).

Before, `evaluate` reported 7.63 dB with exit 0, `upscale` wrote black images and `distill`
blamed the learning rate. Every command that loads a model now names the file and the tensor.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import assert_one_sentence

from srcompress import models


@pytest.mark.parametrize(("value", "kind"), [(math.nan, "NaN"), (math.inf, "infinite")])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_every_command_refuses_a_model_with_non_finite_weights(
        cli, tmp_path: Path, tiny_model: Path, real_images: Path, tiny_run: list[str],
        value: float, kind: str, suffix: str) -> None:
    loaded = models.load_model(tiny_model)
    with torch.no_grad():
        loaded.module.body[0].conv2.weight[3, 1, 0, 2] = value
    broken = tmp_path / f"broken{suffix}"
    if suffix == ".safetensors":
        models.save_model(broken, loaded)
    else:  # a third-party BasicSR-style file, detected from its weights
        torch.save({"params_ema": loaded.module.state_dict()}, broken)
    fragments = (str(broken), kind, "body.0.conv2.weight")
    assert_one_sentence(cli("info", broken), 2, *fragments)
    assert_one_sentence(cli("evaluate", broken, "--benchmark", real_images, "--device", "cpu"),
                        2, *fragments)
    out = tmp_path / "out"
    assert_one_sentence(cli("upscale", broken, real_images / "bird.png", "-o", out,
                            "--device", "cpu"), 2, *fragments)
    assert not out.exists()
    distilled = cli("distill", broken, *tiny_run, "--iters", "1", "--output", tmp_path / "run")
    assert "--lr" not in assert_one_sentence(distilled, 2, *fragments)
    assert not (tmp_path / "run").exists()

"""SPEC strings and --arch overrides (issue 12, items 3, 7 and 8).

Every setting is checked before a model is built: wrong types, zero or negative sizes, NaN,
weights that cannot fit in memory (refused from the parameter count, before any allocation),
weights of a shape srcompress cannot run, and an --arch that contradicts the file.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_STUDENT, assert_one_sentence

from srcompress import models


@pytest.fixture(scope="module")
def plain_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A third-party EDSR x2 state dict (8 features, 1 block): no metadata, detected."""
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("plain") / "edsr_x2.pth"
    torch.save(models.build_model(TINY_STUDENT, 2).module.state_dict(), path)
    return path


@pytest.mark.parametrize(("spec", "named"), [
    ("edsr:num_block=-1", "num_block=-1"),
    ("edsr:num_feat=0", "num_feat=0"),
    ("edsr:num_feat=abc", "num_feat='abc'"),
    ("edsr:num_feat=1.5", "num_feat=1.5"),
    ("edsr:res_scale=nan", "res_scale='nan'"),
    ("edsr:num_in_ch=4", "num_in_ch=4"),
    ("swinir:depths=[]", "depths=[]"),
    ("edsr:scale=5", "scale=5"),
])
def test_a_student_spec_with_a_bad_value_is_refused_before_anything_is_built(
        cli, tmp_path: Path, tiny_model: Path, tiny_run: list[str], spec: str, named: str) -> None:
    run = [*tiny_run[:tiny_run.index("--student")], *tiny_run[tiny_run.index("--student") + 2:]]
    result = cli("distill", tiny_model, *run, "--student", spec, "--iters", "1",
                 "--output", tmp_path / "run")
    assert_one_sentence(result, 2, named)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("spec", ["edsr:num_feat=60000", "rcan:num_group=60000,num_block=60000",
                                  "swinir:embed_dim=60000"])
def test_a_model_too_large_for_memory_is_refused_from_its_parameter_count(spec: str) -> None:
    started = time.perf_counter()
    with pytest.raises(Exception, match="would have over") as refused:
        models.build_model(spec, 2)
    assert type(refused.value).__name__ == "UserInputError"
    assert time.perf_counter() - started < 30, "the weights were built before being counted"


def test_weights_srcompress_cannot_run_are_refused(cli, tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = models.build_model("edsr:num_feat=32,num_block=1", 2).module.state_dict()
    state["conv_first.weight"] = torch.zeros(32, 5, 3, 3)  # a 5-channel input
    odd = tmp_path / "five_channels.pth"
    torch.save(state, odd)
    assert_one_sentence(cli("info", odd), 2, "num_in_ch=5", "must be 3")


@pytest.mark.parametrize(("arch", "named"), [
    ("swinir", "contradicts"),
    ("edsr:num_feat=abc", "num_feat='abc'"),
    ("edsr:num_feat=0", "num_feat=0"),
    ("edsr:num_feat=1.5", "num_feat=1.5"),
    ("edsr:res_scale=nan", "res_scale='nan'"),
    ("edsr:num_feat=100000", "num_feat=100000"),
    ("edsr:num_feat=60000", "parameters"),
    ("edsr:scale=4", "x4"),
])
def test_a_bad_arch_override_is_one_sentence(cli, plain_weights: Path, arch: str,
                                             named: str) -> None:
    assert_one_sentence(cli("info", plain_weights, "--arch", arch), 2, "--arch", named)


def test_an_arch_override_changes_only_what_it_names(cli, plain_weights: Path) -> None:
    loaded = models.load_model(plain_weights, arch="edsr:res_scale=0.1")
    assert loaded.settings["num_feat"] == 8 and loaded.settings["res_scale"] == 0.1
    assert loaded.module.body[0].res_scale == 0.1


def test_arch_contradicting_a_file_srcompress_wrote_is_refused(cli, tiny_model: Path) -> None:
    assert_one_sentence(cli("info", tiny_model, "--arch", "rcan"), 2, "--arch rcan",
                        "contradicts", "drop --arch")
    assert_one_sentence(cli("info", tiny_model, "--arch", "edsr:num_feat=16"), 2,
                        "num_feat=16", "contradicts")
    assert cli("info", tiny_model, "--arch", "edsr:num_feat=8").exit_code == 0


def test_a_student_larger_than_its_teacher_is_a_warning(cli, tmp_path: Path, tiny_model: Path,
                                                        tiny_run: list[str]) -> None:
    run = [*tiny_run[:tiny_run.index("--student")], *tiny_run[tiny_run.index("--student") + 2:]]
    result = cli("distill", tiny_model, *run, "--student", "edsr:num_feat=16,num_block=1",
                 "--iters", "1", "--output", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert "Warning: the student has" in " ".join(result.stdout.split())


def test_quantize_does_not_call_its_quantizer_ranges_a_larger_student(cli, tmp_path: Path,
                                                                      tiny_model: Path) -> None:
    result = cli("quantize", tiny_model, "--iters", "0", "--batch-size", "2", "--patch-size",
                 "16", "--workers", "0", "--device", "cpu", "--no-validation",
                 "--output", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert "the student has" not in " ".join((result.stdout + result.stderr).split())

"""Student SPEC strings, presets and files."""

from __future__ import annotations

import pytest

from srcompress.errors import UserInputError
from srcompress.models import build_model, default_student_spec, parse_spec


def test_spec_string_with_lists_and_types():
    spec = parse_spec("swinir:embed_dim=60,depths=[6,6,6,6],num_heads=[6,6,6,6],"
                      "upsampler=pixelshuffle,ape=false")
    assert spec.arch == "swinir"
    assert spec.settings["depths"] == [6, 6, 6, 6] and spec.settings["ape"] is False
    assert spec.settings["upsampler"] == "pixelshuffle"


def test_preset_with_override_and_paper_sizes():
    spec = parse_spec("edsr-c64b32:num_block=16")
    assert spec.arch == "edsr" and spec.settings["num_block"] == 16
    assert spec.settings["res_scale"] == 0.1
    assert build_model("edsr-c64b32", 4).parameters == pytest.approx(2.7e6, rel=0.01)
    assert build_model("rcan-c64g10b6", 4).parameters == pytest.approx(5.2e6, rel=0.01)
    assert build_model("swinir-c60s24", 4).parameters == pytest.approx(1.2e6, rel=0.03)


def test_unknown_key_names_it_and_lists_valid_ones():
    with pytest.raises(UserInputError, match=r"'num_feats'.*valid settings: num_feat, num_block"):
        parse_spec("edsr:num_feats=64")


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(UserInputError, match=r"Unknown architecture 'edsrr'.*edsr"):
        parse_spec("edsrr")


def test_spec_files(tmp_path):
    toml = tmp_path / "student.toml"
    toml.write_text('preset = "edsr-baseline"\nnum_block = 4\n')
    assert parse_spec(str(toml)).settings["num_block"] == 4
    json_file = tmp_path / "student.json"
    json_file.write_text('{"arch": "rcan", "num_group": 2, "num_block": 2}')
    assert parse_spec(str(json_file)).settings["num_group"] == 2
    broken = tmp_path / "broken.toml"
    broken.write_text("arch = ")
    with pytest.raises(UserInputError, match="Cannot parse"):
        parse_spec(str(broken))


def test_scale_in_spec_must_match_run():
    with pytest.raises(UserInputError, match="x3 but the run is x4"):
        build_model("edsr:scale=3", 4)


def test_default_students_are_about_a_tenth():
    for teacher_spec in ("edsr-c256b32", "edsr:num_feat=64,num_block=16"):
        teacher = build_model(teacher_spec, 4)
        student = build_model(default_student_spec(teacher), 4)
        assert 0.04 < student.parameters / teacher.parameters < 0.15


def test_real_world_families_get_compact_students():
    """RRDBNet teachers (Real-ESRGAN x4plus) get SRVGGNetCompact, Compact teachers a smaller
    Compact, real-world SwinIR keeps its nearest+conv upsampler; all well below the teacher."""
    x4plus = build_model("esrgan:num_filters=64,num_blocks=23", 4)
    spec = default_student_spec(x4plus)
    assert spec == "compact:num_feat=64,num_conv=32"
    student = build_model(spec, 4)
    assert student.parameters < x4plus.parameters / 10
    compact = build_model("compact:num_feat=64,num_conv=32", 4)
    smaller = build_model(default_student_spec(compact), 4)
    assert smaller.arch == "compact" and smaller.settings["num_conv"] < 32
    assert 0.04 < smaller.parameters / compact.parameters < 0.15
    swinir = build_model("swinir:embed_dim=60,depths=[2,2],num_heads=[6,6],window_size=8,"
                         "upsampler=nearest+conv", 4)
    assert build_model(default_student_spec(swinir), 4).settings["upsampler"] == "nearest+conv"

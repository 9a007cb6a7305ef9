"""The typed run settings: every key's type is checked wherever the value comes from, and the
declarations, the library functions and the command-line flags agree."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from srcompress.cli.distill import distill_command
from srcompress.cli.quantize import quantize_command
from srcompress.errors import UserInputError
from srcompress.train.distill import DistillSettings, distill
from srcompress.train.quantize import QuantizeSettings, quantize

# Issue 12 item 10: values of the wrong type in a --config file, each with the key the message
# must name and the type it must ask for.
WRONG_TYPES = [
    ("train_data = 5", "train_data", "a list of path strings"),
    ("method_options = 7", "method_options", "a table"),
    ("student = 5", "student", "a string"),
    ("data_root = 3", "data_root", "a path string"),
    ("val_benchmarks = [1, 2]", "val_benchmarks", "a list of strings"),
    ('amp = "yes"', "amp", "true or false"),
    ("lr = true", "lr", "a number"),
    ("iters = 2.5", "iters", "a whole number"),
]


@pytest.mark.parametrize(("line", "key", "expected"), WRONG_TYPES)
def test_config_value_of_a_wrong_type_exits_2_naming_the_key(
        line: str, key: str, expected: str, cli, tiny_teacher: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(line + "\n")
    result = cli("distill", tiny_teacher, "--config", config, "--output", tmp_path / "run")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"The config file {config} sets {key} to" in result.stderr
    assert f"but {key} must be {expected}" in result.stderr
    assert not (tmp_path / "run").exists()


def test_quantize_checks_the_types_of_its_own_keys(tiny_teacher: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('w_bits = "4"\n')
    with pytest.raises(UserInputError, match=r"sets w_bits to \"4\", but w_bits must be a whole "
                                             r"number"):
        quantize(tiny_teacher, config=config, output=tmp_path / "run")
    with pytest.raises(UserInputError, match=r"The setting amp is \"yes\", but amp must be true "
                                             r"or false"):
        quantize(tiny_teacher, amp="yes", output=tmp_path / "run")  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()


def test_library_arguments_are_checked_like_config_values(tiny_teacher: Path,
                                                          tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"The setting val_benchmarks is \[1, 2\], but "
                                             r"val_benchmarks must be a list of strings"):
        distill(tiny_teacher, val_benchmarks=[1, 2], output=tmp_path / "run")  # type: ignore[list-item]
    assert not (tmp_path / "run").exists()


def test_values_of_the_right_type_are_converted_as_the_run_needs_them(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('lr = 1\ntrain_data = "photos"\ndata_root = "benchmarks"\n')
    values = DistillSettings.read_config(config)
    assert values["lr"] == 1.0 and isinstance(values["lr"], float)
    assert values["train_data"] == [Path("photos").resolve()]
    assert values["data_root"] == Path("benchmarks").resolve()


@pytest.mark.parametrize(("settings", "function", "command"), [
    (DistillSettings, distill, distill_command),
    (QuantizeSettings, quantize, quantize_command),
])
def test_each_declared_key_is_an_argument_and_a_flag(settings, function, command) -> None:
    """Adding a key is one declaration plus the library argument; this names what is missing."""
    arguments = set(inspect.signature(function).parameters) - {"config", "resume", "reporter",
                                                                 "force"}
    assert arguments == set(settings.key_names())
    flags = set(inspect.signature(command).parameters)
    for key in settings.key_names():
        if settings.declaration(key).help is not None:
            assert key in flags, f"{key} declares a help text but has no flag"

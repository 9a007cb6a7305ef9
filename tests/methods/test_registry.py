"""The method registry: names, declared options, checked and converted values."""

from __future__ import annotations

import pytest

from srcompress.errors import UserInputError
from srcompress.methods import METHODS, create_method, method_options
from srcompress.methods.dukd import DUKD
from srcompress.methods.kd import KD
from srcompress.methods.scratch import Scratch


def test_registry_names_the_methods() -> None:
    assert {"scratch": Scratch, "kd": KD, "dukd": DUKD}.items() <= METHODS.items()
    assert all(name == method.name for name, method in METHODS.items())
    assert isinstance(create_method("dukd"), DUKD)
    assert not Scratch.needs_teacher and KD.needs_teacher and DUKD.needs_teacher


def test_unknown_method_lists_the_valid_ones() -> None:
    with pytest.raises(UserInputError,
                       match=r"Unknown method 'dukdd'; choose one of: scratch, kd, dukd"):
        create_method("dukdd")
    with pytest.raises(UserInputError, match="Unknown method 'nope'"):
        method_options("nope")


def test_options_describe_type_default_and_help() -> None:
    dukd = method_options("dukd")
    assert {name: (option.type, option.default) for name, option in dukd.items()} == {
        "w_rec": (float, 5.0), "w_kd": (float, 1.0), "w_upcycled": (float, 1.0),
        "n_sub": (int, 1), "lcr_prob": (float, 0.3), "zoom_out": (bool, True),
        "same_order_inverse": (bool, False), "two_step": (bool, False)}
    assert all(option.help for option in dukd.values())
    kd = method_options("kd")
    assert {name: option.default for name, option in kd.items()} == {"w_rec": 1.0, "w_kd": 1.0}
    assert method_options("scratch") == {}


def test_values_are_converted_from_strings_and_numbers() -> None:
    method = create_method("dukd", n_sub="2", lcr_prob=0, zoom_out="off", two_step=True,
                           w_rec="2.5", w_kd=3.0)
    options = method.options
    assert (options.n_sub, options.lcr_prob, options.zoom_out, options.two_step) == (2, 0.0, False,
                                                                                      True)
    assert isinstance(options.lcr_prob, float) and isinstance(options.n_sub, int)
    assert (options.w_rec, options.w_kd, options.w_upcycled) == (2.5, 3.0, 1.0)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("dukd", {"lamda": 1.0}, r"no option 'lamda'; its options are: w_rec, w_kd, w_upcycled"),
    ("scratch", {"w_kd": 1.0}, r"no option 'w_kd'; its options are: none"),
    ("dukd", {"n_sub": 0}, r"'n_sub' of method 'dukd' must be at least 1, got 0"),
    ("dukd", {"n_sub": 1.5}, r"'n_sub' of method 'dukd' must be int"),
    ("dukd", {"lcr_prob": 1.2}, r"'lcr_prob' of method 'dukd' must be between 0.0 and 1.0"),
    ("dukd", {"zoom_out": "maybe"}, r"'zoom_out' of method 'dukd' must be bool"),
    ("dukd", {"two_step": 1}, r"'two_step' of method 'dukd' must be bool"),
    ("kd", {"w_kd": -1}, r"'w_kd' of method 'kd' must be at least 0.0"),
    ("kd", {"w_kd": True}, r"'w_kd' of method 'kd' must be float"),
    ("kd", {"w_rec": "nan"}, r"'w_rec' of method 'kd' must be a finite number"),
])
def test_bad_option_values_name_the_option(name: str, options: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        create_method(name, **options)

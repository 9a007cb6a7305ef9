"""Training methods by name, and their options in a form the CLI and TOML config can expose.

Each method declares its options as a frozen dataclass (`Method.Options`); `method_options`
describes them (type, default, help) so the training command can generate one flag and one TOML
key per option without knowing any method, and `create_method` checks and converts the values a
user gave, naming the bad one.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, NamedTuple

from srcompress.errors import UserInputError
from srcompress.methods.base import Batch, Method, StepFn, run_teacher
from srcompress.methods.dukd import DUKD
from srcompress.methods.fakd import FAKD
from srcompress.methods.fitnet import FitNet
from srcompress.methods.kd import KD
from srcompress.methods.mkd import DUKDMKD, MKD
from srcompress.methods.scratch import Scratch

METHODS: dict[str, type[Method]] = {
    method.name: method for method in (Scratch, KD, DUKD, FitNet, FAKD, MKD, DUKDMKD)}

_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


class MethodOption(NamedTuple):
    type: type
    default: Any
    help: str


def method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise UserInputError(
            f"Unknown method '{name}'; choose one of: {', '.join(METHODS)}.") from None


def method_options(name: str) -> dict[str, MethodOption]:
    """The options of method `name`: type (bool, int or float), default and one-line help."""
    options_class = method_class(name).Options
    types = typing.get_type_hints(options_class)
    return {
        field.name: MethodOption(types[field.name], field.default, field.metadata.get("help", ""))
        for field in dataclasses.fields(options_class)
    }


def create_method(name: str, **options: Any) -> Method:
    """A fresh `Method`; option values may be typed or strings (as from a `key=value` flag)."""
    cls = method_class(name)
    known = method_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        valid = ", ".join(known) if known else "none"
        raise UserInputError(
            f"Method '{name}' has no option '{unknown[0]}'; its options are: {valid}.")
    fields = {field.name: field for field in dataclasses.fields(cls.Options)}
    values = {key: _checked(name, key, value, known[key].type, fields[key].metadata)
              for key, value in options.items()}
    return cls(cls.Options(**values))


def _checked(method: str, key: str, value: Any, kind: type,
             limits: typing.Mapping[str, Any]) -> Any:
    """`value` converted to `kind` and within the field's `min`/`max`, or a UserInputError."""
    where = f"Option '{key}' of method '{method}'"
    converted = _converted(value, kind)
    if converted is None:
        raise UserInputError(f"{where} must be {kind.__name__}, got {value!r}.")
    if kind is float and not math.isfinite(converted):
        raise UserInputError(f"{where} must be a finite number, got {value!r}.")
    low, high = limits.get("min"), limits.get("max")
    if (low is not None and converted < low) or (high is not None and converted > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UserInputError(f"{where} must be {bounds}, got {value!r}.")
    return converted


def _converted(value: Any, kind: type) -> Any:
    if kind is str:  # module names keep their case
        return value.strip() if isinstance(value, str) else None
    if isinstance(value, str):
        text = value.strip().lower()
        if kind is bool:
            return True if text in _TRUE_WORDS else False if text in _FALSE_WORDS else None
        try:
            return kind(text)
        except ValueError:
            return None
    if isinstance(value, bool):
        return value if kind is bool else None
    if kind is float and isinstance(value, int | float):
        return float(value)
    if kind is int and isinstance(value, int):
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return None


__all__ = [
    "METHODS",
    "Batch",
    "Method",
    "MethodOption",
    "StepFn",
    "create_method",
    "method_class",
    "method_options",
    "run_teacher",
]

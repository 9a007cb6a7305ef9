"""Student SPEC strings: `ARCH[:key=value,...]`, a preset name (optionally with overrides), or a
TOML/JSON file holding the same (`arch = "edsr"` or `preset = "..."`, plus settings).

Parsing validates every key against the architecture's constructor so a typo fails at once with
the list of valid keys, instead of after an hour of training the wrong model.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srcompress.errors import UserInputError
from srcompress.models.registry import PRESETS, get_architecture

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


@dataclass(frozen=True)
class Spec:
    """`settings` are complete (defaults, preset, then the text's own); `given` are the text's
    own only, which is what an `--arch` override changes in detected settings."""

    arch: str
    settings: dict[str, Any]
    scale: int | None = None
    given: dict[str, Any] = field(default_factory=dict)


def parse_spec(text: str) -> Spec:
    """Parse a SPEC into the architecture name, its full settings and an optional scale."""
    path = Path(text)
    if path.suffix.lower() in {".toml", ".json"}:
        return _spec_from_file(path)
    head, _, tail = text.partition(":")
    overrides = _parse_assignments(tail, text) if tail else {}
    return _resolve(head.strip(), overrides, text)


def _resolve(name: str, overrides: dict[str, Any], origin: str) -> Spec:
    if name.lower() in PRESETS:
        arch_name, preset = PRESETS[name.lower()]
    else:
        arch_name, preset = get_architecture(name).name, {}
    arch = get_architecture(arch_name)
    scale = overrides.pop("scale", None)
    if scale is not None and (type(scale) is not int or scale not in (2, 3, 4, 8)):
        raise UserInputError(f"scale={scale} in '{origin}' must be 2, 3, 4 or 8.")
    _check_keys(arch_name, overrides, origin)
    return Spec(arch_name, {**arch.defaults, **preset, **overrides}, scale,
                {**preset, **overrides})


def _check_keys(arch_name: str, settings: dict[str, Any], origin: str) -> None:
    valid = get_architecture(arch_name).setting_names()
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise UserInputError(
            f"Unknown setting '{unknown[0]}' for architecture '{arch_name}' in '{origin}'; "
            f"valid settings: {', '.join(valid)}."
        )


def _parse_assignments(text: str, origin: str) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for item in _split_top_level(text):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"Cannot read '{item}' in student spec '{origin}': use key=value.")
        settings[key.strip()] = _parse_value(raw.strip())
    return settings


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets, so `depths=[6,6,6,6]` stays one item."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item for item in [*items, current] if item.strip()]


def _parse_value(raw: str) -> Any:
    """JSON where the text is JSON (numbers, lists), else the text itself (`pixelshuffle`);
    `nan` and `inf` stay text here and are refused by the setting's checks, not read as numbers."""
    lowered = raw.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError):
        return raw


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _spec_from_file(path: Path) -> Spec:
    if not path.is_file():
        raise UserInputError(f"Student spec file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise UserInputError(f"Cannot parse student spec file {path}: {error}.") from error
    if not isinstance(data, dict):
        raise UserInputError(f"Student spec file {path} must hold a table of settings with an "
                             "'arch' or 'preset' key.")
    name = data.pop("preset", None) or data.pop("arch", None) or data.pop("architecture", None)
    if not isinstance(name, str):
        raise UserInputError(f"Student spec file {path} needs an 'arch' or 'preset' key.")
    return _resolve(name, dict(data), str(path))

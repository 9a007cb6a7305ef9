"""The settings of the Real-ESRGAN degradation: x4plus defaults, TOML overrides, validation.

The keys are Real-ESRGAN's own option names (`options/train_realesrgan_x4plus.yml`), so a user
who trained with Real-ESRGAN can copy values across; a name ending in `2` is the second
degradation's. The defaults are the published x4plus values (also those of RealESRNet x4plus, the
PSNR-oriented stage). Every key can be overridden in a TOML file given as `--degradation FILE.toml`;
keys left out keep their default. A file with an unknown key or an out-of-range value is refused
with one sentence naming the key, before any work starts.

The settings are a frozen dataclass of plain tuples: hashable, comparable and serialisable
(`as_dict`), so a run's config and a teacher-output cache can key on them.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srcompress.errors import UserInputError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso",
                "plateau_aniso")
_X4PLUS_KERNEL_PROB = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
_PROBABILITY_TOLERANCE = 1e-6


def _option(default: Any, check: str, help_text: str, low: float = -math.inf,
            high: float = math.inf) -> Any:
    """A field with its validation rule: `check` names the kind, `low`/`high` the allowed span."""
    return field(default=default, metadata={"check": check, "help": help_text, "low": low,
                                            "high": high})


@dataclass(frozen=True)
class RealESRGANOptions:
    """Real-ESRGAN's second-order degradation; defaults are the published x4plus values."""

    # The first degradation: blur, resize, noise, JPEG.
    kernel_list: tuple[str, ...] = _option(KERNEL_TYPES, "kernel_list", "blur kernel families")
    kernel_prob: tuple[float, ...] = _option(_X4PLUS_KERNEL_PROB, "distribution",
                                             "probability of each kernel family")
    sinc_prob: float = _option(0.1, "probability", "probability of a sinc kernel instead")
    blur_sigma: tuple[float, float] = _option((0.2, 3.0), "range", "Gaussian σ (HR pixels)",
                                              low=1e-6)
    betag_range: tuple[float, float] = _option((0.5, 4.0), "range",
                                               "shape β of generalised Gaussians", low=1e-6)
    betap_range: tuple[float, float] = _option((1.0, 2.0), "range", "shape β of plateau kernels",
                                               low=1e-6)
    resize_prob: tuple[float, float, float] = _option((0.2, 0.7, 0.1), "distribution",
                                                      "probability of up, down, keep")
    resize_range: tuple[float, float] = _option((0.15, 1.5), "resize_range",
                                                "resize factor span (down below 1, up above)",
                                                low=1e-3, high=16.0)
    gaussian_noise_prob: float = _option(0.5, "probability", "Gaussian (else Poisson) noise")
    noise_range: tuple[float, float] = _option((1.0, 30.0), "range",
                                               "Gaussian noise σ on the 0-255 scale", low=0.0)
    poisson_scale_range: tuple[float, float] = _option((0.05, 3.0), "range",
                                                       "Poisson noise scale", low=0.0)
    gray_noise_prob: float = _option(0.4, "probability", "noise equal in all channels")
    jpeg_range: tuple[int, int] = _option((30, 95), "jpeg", "JPEG quality", low=1, high=100)

    # The second degradation (blur only with `second_blur_prob`).
    second_blur_prob: float = _option(0.8, "probability", "probability of the second blur")
    kernel_list2: tuple[str, ...] = _option(KERNEL_TYPES, "kernel_list", "blur kernel families")
    kernel_prob2: tuple[float, ...] = _option(_X4PLUS_KERNEL_PROB, "distribution",
                                              "probability of each kernel family")
    sinc_prob2: float = _option(0.1, "probability", "probability of a sinc kernel instead")
    blur_sigma2: tuple[float, float] = _option((0.2, 1.5), "range", "Gaussian σ", low=1e-6)
    betag_range2: tuple[float, float] = _option((0.5, 4.0), "range",
                                                "shape β of generalised Gaussians", low=1e-6)
    betap_range2: tuple[float, float] = _option((1.0, 2.0), "range",
                                                "shape β of plateau kernels", low=1e-6)
    resize_prob2: tuple[float, float, float] = _option((0.3, 0.4, 0.3), "distribution",
                                                       "probability of up, down, keep")
    resize_range2: tuple[float, float] = _option((0.3, 1.2), "resize_range",
                                                 "resize factor span around the LR size",
                                                 low=1e-3, high=16.0)
    gaussian_noise_prob2: float = _option(0.5, "probability", "Gaussian (else Poisson) noise")
    noise_range2: tuple[float, float] = _option((1.0, 25.0), "range",
                                                "Gaussian noise σ on the 0-255 scale", low=0.0)
    poisson_scale_range2: tuple[float, float] = _option((0.05, 2.5), "range",
                                                        "Poisson noise scale", low=0.0)
    gray_noise_prob2: float = _option(0.4, "probability", "noise equal in all channels")
    jpeg_range2: tuple[int, int] = _option((30, 95), "jpeg", "JPEG quality", low=1, high=100)

    # The last step: resize to the LR size with a sinc filter, and JPEG, in random order.
    final_sinc_prob: float = _option(0.8, "probability", "probability of the final sinc filter")
    kernel_range: tuple[int, int] = _option((7, 21), "kernel_range",
                                            "odd kernel sizes drawn (smallest, largest)",
                                            low=3, high=51)

    def as_dict(self) -> dict[str, Any]:
        """Plain lists and numbers, for TOML, JSON and cache keys."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str) -> RealESRGANOptions:
        """Defaults overridden by `values`; `source` names the file (or flag) in messages."""
        known = {option.name: option for option in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserInputError(
                f"{source} has an unknown degradation key '{unknown[0]}': valid keys are "
                f"{', '.join(known)}.")
        checked = {key: _checked(key, value, known[key].metadata, source)
                   for key, value in values.items()}
        options = cls(**checked)
        for suffix in ("", "2"):
            types, probabilities = (getattr(options, f"kernel_list{suffix}"),
                                    getattr(options, f"kernel_prob{suffix}"))
            if len(types) != len(probabilities):
                raise UserInputError(
                    f"{source}: kernel_prob{suffix} has {len(probabilities)} values but "
                    f"kernel_list{suffix} names {len(types)} kernel families; give one "
                    "probability per family.")
        return options


def read_options(path: str | Path) -> RealESRGANOptions:
    """The Real-ESRGAN settings of a TOML file: x4plus defaults, overridden by its keys."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"The degradation file {path} does not exist: check "
                             "--degradation.") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UserInputError(f"The degradation file {path} is not valid TOML ({error}): fix it "
                             "or use --degradation realesrgan.") from None
    return RealESRGANOptions.from_mapping(values, f"The degradation file {path}")


def _checked(key: str, value: Any, rule: Mapping[str, Any], source: str) -> Any:
    """`value` converted to the field's type, or a `UserInputError` naming `key`."""
    check, low, high = rule["check"], rule["low"], rule["high"]

    def refuse(wanted: str) -> UserInputError:
        return UserInputError(f"{source}: {key} must be {wanted}, got {value!r}.")

    if check == "probability":
        if not _is_number(value) or not 0 <= value <= 1:
            raise refuse("a probability from 0 to 1")
        return float(value)
    if check == "kernel_list":
        if (not isinstance(value, list) or not value
                or not all(isinstance(name, str) and name in KERNEL_TYPES for name in value)):
            raise refuse(f"a list of kernel families among {', '.join(KERNEL_TYPES)}")
        return tuple(value)
    if not isinstance(value, list) or not all(_is_number(item) for item in value):
        raise refuse("a list of numbers")
    if check == "distribution":
        if (any(item < 0 for item in value) or not value
                or abs(sum(value) - 1) > _PROBABILITY_TOLERANCE):
            raise refuse("probabilities of 0 or more that sum to 1")
        if key.startswith("resize_prob") and len(value) != 3:
            raise refuse("three probabilities (up, down, keep)")
        return tuple(float(item) for item in value)
    if len(value) != 2 or value[0] > value[1]:
        raise refuse("a [smallest, largest] pair")
    if value[0] < low or value[1] > high:
        raise refuse(f"a span within {low:g} to {high:g}")
    if check == "resize_range" and not value[0] <= 1 <= value[1]:
        raise refuse("a span around 1 (down-scaling below it, up-scaling above it)")
    if check in ("jpeg", "kernel_range"):
        if not all(isinstance(item, int) for item in value):
            raise refuse("a pair of whole numbers")
        if check == "kernel_range" and not all(item % 2 == 1 for item in value):
            raise refuse("a pair of odd kernel sizes")
        return (int(value[0]), int(value[1]))
    return (float(value[0]), float(value[1]))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

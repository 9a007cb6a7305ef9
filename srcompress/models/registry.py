"""The architecture registry: the entry type, lookup by name, and detection order.

Each entry (`Architecture`) knows how to build its module from plain settings (so a checkpoint's
metadata alone rebuilds it), how to recognise its weights in a third-party state dict, and how to
propose a student about a tenth of a teacher's cost. One module per architecture holds its entry
and registers it (`edsr.py`, `rcan.py`); `spandrel_bridge.py` registers every architecture spandrel
recognises; `srcompress.models` imports them, ours first.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from srcompress.errors import UserInputError
from srcompress.models.limits import check_settings, check_size

StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class Detection:
    """What detection learned from a state dict: settings, scale, and the weights in our layout."""

    arch: str
    settings: dict[str, Any]
    scale: int
    state_dict: StateDict
    layout: str


@dataclass(frozen=True)
class Architecture:
    """A registry entry. `module_class` is resolved lazily so listing entries imports nothing."""

    name: str
    summary: str
    module_class: Callable[[], type[nn.Module]]
    defaults: Mapping[str, Any]
    detect: Callable[[StateDict], Detection | None]
    smaller_student: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The architecture `smaller_student`'s settings are for, when it is not this one (an RRDBNet
    # teacher gets Real-ESRGAN's own fast architecture, SRVGGNetCompact).
    student_arch: str | None = None

    def build(self, settings: Mapping[str, Any], scale: int, origin: str = "the settings"
              ) -> nn.Module:
        """The module with `settings` at `scale`, after `limits` checked every setting and the
        size of the weights (`origin` says where the settings came from, for the messages)."""
        cls = self.module_class()
        check_settings(self.name, cls, settings, origin)
        arguments = dict(settings)
        scale_argument = scale_argument_of(cls)
        if scale_argument is not None:
            arguments[scale_argument] = scale

        def construct() -> nn.Module:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return cls(**arguments)

        check_size(construct, self.name, origin)
        try:
            return construct()
        except (TypeError, ValueError, RuntimeError, AssertionError, ZeroDivisionError,
                IndexError, KeyError) as error:
            # Settings of the right types that do not go together (e.g. an embedding width
            # that the heads do not divide): the constructor's own words, in one sentence.
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise UserInputError(f"The {self.name} settings in {origin} do not make a model "
                                 f"({reason}): check them against `srcompress models`.") from None

    def setting_names(self) -> list[str]:
        """Settings the constructor accepts (the scale excluded: it is always separate)."""
        cls = self.module_class()
        parameters = inspect.signature(cls.__init__).parameters
        return [name for name, parameter in parameters.items()
                if name not in {"self", scale_argument_of(cls)}
                and parameter.kind is not inspect.Parameter.VAR_KEYWORD]


def scale_argument_of(cls: type[nn.Module]) -> str | None:
    """The constructor argument that sets the upscaling factor (its name varies by project)."""
    parameters = inspect.signature(cls.__init__).parameters
    return next((name for name in ("scale", "upscale", "upscaling_factor") if name in parameters),
                None)


ARCHITECTURES: dict[str, Architecture] = {}
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {}

# Detection tries these first, in this order, then every other registered architecture in
# registration order (spandrel's, in spandrel's own order). Ours come first because they also read
# the official EDSR-PyTorch and RCAN layouts, and spandrel would claim EDSR's weights too.
DETECTION_ORDER = ("edsr", "rcan")


def register(arch: Architecture) -> Architecture:
    """Adds `arch` and its presets; a name can be registered once."""
    if arch.name in ARCHITECTURES:
        raise ValueError(f"architecture {arch.name!r} is registered twice")
    ARCHITECTURES[arch.name] = arch
    for preset, settings in arch.presets.items():
        PRESETS[preset] = (arch.name, dict(settings))
    return arch


def get_architecture(name: str) -> Architecture:
    key = name.lower()
    if key not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UserInputError(f"Unknown architecture '{name}'; known architectures: {known}.")
    return ARCHITECTURES[key]


def detect_architecture(state: StateDict) -> Detection | None:
    """The first architecture in detection order whose detector recognises `state`, or None."""
    first = [ARCHITECTURES[name] for name in DETECTION_ORDER if name in ARCHITECTURES]
    rest = [arch for name, arch in ARCHITECTURES.items() if name not in DETECTION_ORDER]
    for arch in first + rest:
        found = arch.detect(state)
        if found is not None:
            return found
    return None

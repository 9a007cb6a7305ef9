"""What an architecture's settings may be, checked before anything is built.

Settings reach a constructor from a SPEC the user typed, from a checkpoint's metadata, or from
detection; a wrong one used to fail deep inside PyTorch (`num_feat=abc`, `num_feat=1.5`), build a
nonsense model silently (`num_block=-1`, `res_scale=nan`), or try to allocate hundreds of
gigabytes (`num_feat=100000`). `check_settings` refuses every such value with one sentence, and
`check_size` refuses a model whose weights alone cannot fit in memory, from its parameter count,
before allocating them.

The rules come from each constructor's own defaults, since most architectures (spandrel's) carry
no type annotations: a setting whose default is a whole number must be a whole number of at least
1 (or 0, when 0 is its default) and at most `MAX_WHOLE_NUMBER`; a number must be finite (and not
negative when its default is not); a flag must be true or false; a text must be text; a list must
hold what its default holds. Image channel counts must be 3: every srcompress runner feeds RGB.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from srcompress.devices import available_memory
from srcompress.errors import UserInputError

# No setting of an SR architecture comes near this (widths of 512, 200 blocks, 1024-pixel
# windows); a larger whole number is a typo, and building that many layers would take minutes.
MAX_WHOLE_NUMBER = 65_536
# Input and output channel settings, by the names the architectures we build use.
CHANNEL_SETTINGS = frozenset({"num_in_ch", "num_out_ch", "in_chans", "in_nc", "out_nc",
                              "in_ch", "out_ch", "in_channels", "out_channels"})
_BYTES_PER_PARAMETER = 4  # float32
# Weight tensors a model may have: the deepest SR models have a few hundred to 1628 (RCAN);
# counting stops here, since constructing a million layers would itself take minutes.
MAX_WEIGHT_TENSORS = 8_000


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(
        value, bool) else str(value)


def _problem(name: str, value: Any, default: Any) -> str | None:
    """What is wrong with `value` for a setting whose default is `default`, or None."""
    if name in CHANNEL_SETTINGS:
        ok = isinstance(value, int) and not isinstance(value, bool) and value == 3
        return None if ok else "must be 3 (srcompress runs RGB models)"
    if default is None or default is inspect.Parameter.empty:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, int):
        low = 0 if default == 0 else 1
        whole = isinstance(value, int) and not isinstance(value, bool)
        if whole and low <= value <= MAX_WHOLE_NUMBER:
            return None
        return f"must be a whole number from {low} to {MAX_WHOLE_NUMBER}"
    if isinstance(default, float):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and math.isfinite(value) and (default < 0 or value >= 0):
            return None
        return "must be a finite number" + ("" if default < 0 else " of 0 or more")
    if isinstance(default, str):
        return None if isinstance(value, str) else "must be text"
    if isinstance(default, list | tuple):
        if not isinstance(value, list | tuple) or not value:
            return "must be a non-empty list"
        element = default[0] if default else None
        problems = [_problem("", item, element) for item in value]
        return next((f"must be a list whose items each {problem.removeprefix('must be ')}"
                     .replace("each a ", "are each a ") for problem in problems if problem), None)
    return None


def check_settings(arch: str, module_class: type[nn.Module], settings: Mapping[str, Any],
                   origin: str) -> None:
    """Refuse any setting its constructor's default says is wrong (see the module docstring)."""
    parameters = inspect.signature(module_class.__init__).parameters
    for name, value in settings.items():
        default = parameters[name].default if name in parameters else None
        problem = _problem(name, value, default)
        if problem is not None:
            raise UserInputError(f"{arch} setting {name}={_describe(value)} in {origin} "
                                 f"{problem}.")


class _TooLarge(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.rand,
                        torch.randn, torch.randint})


def _requested_elements(func: Callable[..., Any], args: Any, kwargs: Mapping[str, Any]) -> int:
    """How many elements a factory call asks for, read from its size arguments."""
    size = kwargs.get("size", args[:-1] if func is torch.full else args)
    if func is torch.randint:  # randint(high, size) or randint(low, high, size)
        size = kwargs.get("size", next((arg for arg in args if isinstance(arg, tuple | list)),
                                       ()))
    if len(size) == 1 and isinstance(size[0], tuple | list | torch.Size):
        size = size[0]
    return math.prod(int(dimension) for dimension in size)


class _WeightsOnMeta(TorchFunctionMode):
    """Counts the elements of every tensor a constructor asks a factory for, before it is made,
    and stops the build as soon as the count passes `limit`; `torch.empty` tensors (how layers
    allocate their weights) are made on the meta device, so they cost no memory.

    Other tensors (masks, index tables, `linspace(...).item()` in SwinIR's constructor) stay on
    the CPU, where constructors compute with them; `torch.device("meta")` would put those on meta
    too and break such constructors.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.elements = 0
        self.tensors = 0

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in _FACTORIES:
            self.elements += _requested_elements(func, args, kwargs)
            self.tensors += 1
            if self.elements > self.limit:
                raise _TooLarge(f"over {self.limit / 1e9:.1f} billion parameters")
            if self.tensors > MAX_WEIGHT_TENSORS:
                raise _TooLarge(f"over {MAX_WEIGHT_TENSORS} weight tensors")
            if func is torch.empty:
                kwargs["device"] = "meta"
        return func(*args, **kwargs)


def check_size(build: Callable[[], nn.Module], label: str, origin: str,
               memory: int | None = None) -> None:
    """Refuse a model whose float32 weights need more than `memory` bytes (default: what the
    machine has available), or that has more than `MAX_WEIGHT_TENSORS` weight tensors, counted
    without allocating them. A constructor that cannot run with
    its weights on the meta device is let through: the real build then decides."""
    memory = available_memory() if memory is None else memory
    limit = memory // _BYTES_PER_PARAMETER
    mode = _WeightsOnMeta(limit)
    try:
        with torch.no_grad(), mode:
            build()
    except _TooLarge as too_large:
        raise UserInputError(
            f"{label} in {origin} would have {too_large.reason}, more than the "
            f"{memory / 2**30:.1f} GiB of memory available can hold or any SR model has: choose "
            "smaller settings.") from None
    except Exception:
        return  # e.g. a constructor that computes with its weights: the real build decides

"""The settings of a training run: one typed declaration per key, shared by distill and quantize.

A run's settings come from three layers, later ones winning: the declared defaults, a TOML file
(`config=`, the same keys as the arguments), and the arguments that are not None. The resolved
settings are written to the run folder's `config.toml`, which is itself a valid `config=` file, so
a run can be repeated.

Each key is declared once, as a field of a settings dataclass made with `setting()`: its type (the
annotation), its default, its command-line flag and help (from which the CLI generates the flag),
and what may happen to it on resume. `TrainingSettings` holds the keys every training command
shares; `DistillSettings` and `QuantizeSettings` (beside `distill()` and `quantize()`) add their
own and may re-declare a shared key with another default or help. Adding a key is one declaration
here plus the keyword argument of the library function (a test checks that they agree).

Every value is checked against its declared type wherever it comes from (a TOML file, an
argument), with one sentence naming the key, before anything else happens; `check()` then refuses
out-of-range values.

On resume the run folder's `config.toml` is the run: a key declared `Resume.FIXED` (the default)
must not change, since that would silently produce a run that is neither the old one nor a new
one; `Resume.CHANGES` keys (how long, where, on what hardware) take the given value; `Resume.KEPT`
keys (input files, which may be passed by another path) keep the saved value. `iters` may be raised
to train longer (the schedule then follows the new total).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from srcompress.data.degradation import degradation_setting
from srcompress.errors import UserInputError
from srcompress.train.loop import SCHEDULES, TrainSettings
from srcompress.train.state import CONFIG_HEADER, RunFolder

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

Settings = TypeVar("Settings", bound="TrainingSettings")


class Resume(enum.Enum):
    """What a key's given value does when a run is resumed."""

    FIXED = "must equal the run's value"
    CHANGES = "replaces the run's value"
    KEPT = "is ignored; the run's value stays"


@dataclasses.dataclass(frozen=True)
class Declaration:
    """A key's declaration besides its type and default (kept in the field's metadata)."""

    flag: str | None  # the command-line flag, as error messages name it
    help: str | None  # None: the command declares its flag itself (an argument, a special flag)
    resume: Resume
    metavar: str | None
    normalise: Callable[[Any], Any] | None  # applied to a checked value, e.g. absolute paths


def setting(default: Any, *, help: str | None = None, flag: str | None = None,
            resume: Resume = Resume.FIXED, metavar: str | None = None,
            normalise: Callable[[Any], Any] | None = None) -> Any:
    """A settings field: `default`, and the `Declaration` of the key (see the module docstring).

    `flag` defaults to `--` + the key with dashes; a key with `help` gets that flag generated on
    every command whose settings have the key.
    """
    declaration = Declaration(flag, help, resume, metavar, normalise)
    metadata = {"declaration": declaration}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def absolute_path(path: Path | None) -> Path | None:
    return None if path is None else path.resolve()


def _absolute_folders(folders: list[Path] | None) -> list[Path] | None:
    return None if folders is None else [folder.resolve() for folder in folders]


def _absolute_benchmark_folders(names: list[str]) -> list[str]:
    """A benchmark given as a folder is kept as its absolute path, a name as it is."""
    return [str(Path(name).resolve()) if Path(name).is_dir() else name for name in names]


@dataclasses.dataclass
class TrainingSettings:
    """The keys every training command shares; a command's subclass adds its own."""

    method: str = setting("dukd")
    train_data: list[Path] | None = setting(
        None, flag="--train-data", metavar="DIR", normalise=_absolute_folders,
        help="Folder of HR images, or HR/ + LR_bicubic/X<s>/ (repeatable; default: the demo "
        "images shipped with srcompress).")
    val_benchmarks: list[str] = setting(
        ["Set5"], flag="--val-benchmark", metavar="NAME", normalise=_absolute_benchmark_folders,
        help="Validation benchmark name or folder (repeatable; default: Set5).")
    val_every: int = setting(
        5000, resume=Resume.CHANGES,
        help="Iterations between validations (default: 5000, and at the end).")
    data_root: Path | None = setting(
        None, resume=Resume.CHANGES, normalise=absolute_path,
        help="Where benchmarks live (default: $SRCOMPRESS_DATA, else "
        "~/.cache/srcompress/datasets).")
    scale: int | None = setting(None, help="Upscaling factor.")
    degradation: str | dict[str, Any] | None = setting(
        None, metavar="NAME|FILE", normalise=degradation_setting,
        help="How LR inputs are made from HR patches: bicubic, realesrgan (Real-ESRGAN's "
        "second-order pipeline, x4plus settings) or a TOML file of Real-ESRGAN settings "
        "(default: the task the teacher was trained for, else bicubic).")
    iters: int = setting(250_000, resume=Resume.CHANGES, help="Training iterations.")
    batch_size: int = setting(16, help="Patches per iteration and process (default: 16).")
    patch_size: int = setting(48, help="LR patch side in pixels (default: 48).")
    lr: float = setting(1e-4, help="Adam learning rate (default: 1e-4).")
    schedule: str = setting(
        "multistep", help="multistep (x gamma at each milestone) or cosine (default: multistep).")
    milestones: list[float] = setting(
        [0.4, 0.8], metavar="F,F",
        help="Multistep milestones as fractions of --iters (default: 0.4,0.8).")
    gamma: float = setting(0.1, help="Multistep factor (default: 0.1).")
    grad_clip: float = setting(
        0.0, help="Clip the gradient norm to this value, 0 = off (default: 0).")
    seed: int = setting(0, help="Random seed (default: 0).")
    device: str = setting("auto", resume=Resume.CHANGES,
                          help="auto, cpu, cuda or cuda:N (default: auto).")
    amp: bool = setting(True, resume=Resume.CHANGES,
                        help="bf16/fp16 mixed precision on CUDA (default: on).")
    ema: float = setting(0.999, help="EMA decay of the weights, 0 = off (default: 0.999).")
    workers: int = setting(2, resume=Resume.CHANGES, help="Data loader processes (default: 2).")
    output: Path | None = setting(None, resume=Resume.CHANGES, help="Run folder.")
    save_every: int = setting(
        1000, resume=Resume.CHANGES,
        help="Iterations between resumable checkpoints (default: 1000).")
    log_every: int = setting(
        100, resume=Resume.CHANGES,
        help="Iterations between loss entries in metrics.json (default: 100).")
    method_options: dict[str, Any] = setting({}, flag="the method options")

    # The line at the top of config.toml that repeats the run (set by each command).
    COMMAND: typing.ClassVar[str] = ""
    # The fewest iterations a run may ask for (quantize allows 0: calibration only).
    MIN_ITERS: typing.ClassVar[int] = 1

    @classmethod
    def key_names(cls) -> list[str]:
        """The keys, the command's own first (as --help and config.toml list them), then the
        shared ones in declaration order."""
        shared = {field.name for field in dataclasses.fields(TrainingSettings)}
        names = [field.name for field in dataclasses.fields(cls)]
        return [name for name in names if name not in shared] + [
            name for name in names if name in shared]

    @classmethod
    def declaration(cls, key: str) -> Declaration:
        return _fields(cls)[key].metadata["declaration"]

    @classmethod
    def flag(cls, key: str) -> str:
        """The command-line flag of a key, so that error messages name what the user typed."""
        return cls.declaration(key).flag or "--" + key.replace("_", "-")

    @classmethod
    def key_types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The declared keys of a library function's `arguments` (its `locals()`) that are not
        None, checked."""
        given = {key: arguments[key] for key in cls.key_names() if arguments.get(key) is not None}
        return cls._checked_values(given, "")

    @classmethod
    def read_config(cls, path: str | Path) -> dict[str, Any]:
        """The settings of a `--config` TOML file, checked; a key not declared is refused, since
        a typo would otherwise be ignored silently."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserInputError(f"The config file {path} does not exist: check --config.") \
                from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise UserInputError(f"The config file {path} is not valid TOML ({error}): fix it or "
                                 "drop --config.") from None
        unknown = sorted(set(data) - set(cls.key_names()))
        if unknown:
            raise UserInputError(
                f"The config file {path} has an unknown key '{unknown[0]}': valid keys are "
                f"{', '.join(sorted(cls.key_names()))}.")
        return cls._checked_values(data, f"The config file {path} sets ")

    @classmethod
    def resolve(cls: type[Settings], given: Mapping[str, Any], resume: bool) -> Settings:
        """Defaults ← `given` (checked values), or on resume the run's own config ← the changes
        its keys' `Resume` declarations allow; then `check()`ed."""
        if not resume:
            return cls(**given).check()
        if given.get("output") is None:
            raise UserInputError("--resume needs --output: the folder of the run to continue.")
        saved_path = RunFolder(given["output"]).config
        if not saved_path.is_file():
            raise UserInputError(
                f"--resume found no run configuration at {saved_path}: pass the --output folder "
                "of the run to continue, or drop --resume to start a new run.")
        saved = cls(**cls.read_config(saved_path))
        changes = {}
        for key, value in given.items():
            rule = cls.declaration(key).resume
            if rule is Resume.CHANGES:
                changes[key] = value
            elif rule is Resume.FIXED and value != getattr(saved, key) and not (
                    key == "method_options" and _options_agree(value, saved.method_options)):
                raise UserInputError(
                    f"{cls.flag(key)} {show(value)} differs from the run being resumed "
                    f"({show(getattr(saved, key))}): drop it, or start a new run without "
                    "--resume.")
        return dataclasses.replace(saved, **changes).check()

    @classmethod
    def _checked_values(cls, values: Mapping[str, Any], source: str) -> dict[str, Any]:
        """`values` converted to their keys' declared types and normalised; a value of another
        type is refused with one sentence naming the key (`source` says where it was set)."""
        kinds = cls.key_types()
        checked = {}
        for key, value in values.items():
            try:
                typed = _typed(value, kinds[key])
            except _WrongType as wrong:
                written = json.dumps(_plain(value), default=str)
                subject = (f"{source}{key} to {written}" if source
                           else f"The setting {key} is {written}")
                raise UserInputError(f"{subject}, but {key} must be {wrong.expected}: fix the "
                                     "value or leave it out.") from None
            normalise = cls.declaration(key).normalise
            checked[key] = normalise(typed) if normalise is not None else typed
        return checked

    def check(self: Settings) -> Settings:
        """Refuses out-of-range values before any work starts; a command's subclass adds its
        own checks. Returns the settings."""
        if self.iters < self.MIN_ITERS:
            raise UserInputError(f"--iters must be a whole number of at least {self.MIN_ITERS}, "
                                 f"got {self.iters}.")
        for key in ("batch_size", "patch_size", "val_every", "save_every", "log_every"):
            if getattr(self, key) < 1:
                raise UserInputError(f"{self.flag(key)} must be a whole number of at least 1, got "
                                     f"{show(getattr(self, key))}.")
        ranges = {"lr": (False, math.inf, "above 0"), "gamma": (False, math.inf, "above 0"),
                  "ema": (True, 1.0, "from 0 (off) up to, not including, 1"),
                  "grad_clip": (True, math.inf, "of 0 (off) or more")}
        for key, (zero_allowed, high, wanted) in ranges.items():
            value = getattr(self, key)
            if not ((value >= 0.0 if zero_allowed else value > 0.0) and value < high):
                raise UserInputError(f"{self.flag(key)} must be a number {wanted}, got "
                                     f"{show(value)}.")
        if self.schedule not in SCHEDULES:
            raise UserInputError(f"--schedule must be one of {', '.join(SCHEDULES)}, got "
                                 f"{self.schedule!r}.")
        if not all(0 < milestone < 1 for milestone in self.milestones):
            raise UserInputError("--milestones must be fractions of --iters between 0 and 1, got "
                                 f"{show(self.milestones)}.")
        if self.workers < 0:
            raise UserInputError(f"--workers must be 0 or more, got {self.workers}.")
        if self.seed < 0:
            raise UserInputError(f"--seed must be a whole number of 0 or more, got {self.seed}.")
        if self.scale is not None and self.scale not in (2, 3, 4, 8):
            raise UserInputError(f"--scale must be 2, 3, 4 or 8, got {self.scale}.")
        return self

    def loop_settings(self) -> TrainSettings:
        """The part of the run settings that the training loop itself needs."""
        return TrainSettings(
            iters=self.iters, lr=self.lr, schedule=self.schedule,
            milestones=tuple(self.milestones), gamma=self.gamma, ema=self.ema,
            grad_clip=self.grad_clip, amp=self.amp, seed=self.seed, workers=self.workers,
            val_every=self.val_every, save_every=self.save_every, log_every=self.log_every)

    def config_toml(self) -> str:
        """The settings as a `--config` file, headed by the command line that repeats the run
        (None values are left out: TOML has no null)."""
        name = self.COMMAND.split()[0]
        header = (f"{CONFIG_HEADER}{name}: every setting of this run; repeat it with\n"
                  f"# srcompress {self.COMMAND} --config config.toml --output NEW_FOLDER\n")
        plain = {key: _plain(getattr(self, key))
                 for key in self.key_names() if getattr(self, key) is not None}
        return header + tomli_w.dumps(plain)


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {field.name: field for field in dataclasses.fields(cls)}


class _WrongType(Exception):
    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


_DESCRIPTIONS = {bool: "true or false", int: "a whole number", float: "a number",
                 str: "a string", Path: "a path string"}


def _typed(value: Any, kind: Any) -> Any:
    """`value` as the declared `kind` (str, int, float, bool, Path, list[...], dict[str, ...],
    a union of them, tried in order, optionally `| None`), accepting only what means the same:
    an int for a float, a string for a path and a path for a string, one path for a list of
    paths. Raises `_WrongType`
    otherwise."""
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        expected = []
        for option in [argument for argument in arguments if argument is not type(None)]:
            try:
                return _typed(value, option)
            except _WrongType as wrong:
                expected.append(wrong.expected)
        raise _WrongType(" or ".join(expected))
    if origin is list:
        (item,) = arguments
        expected = f"a list of {_DESCRIPTIONS[item].removeprefix('a ')}s"
        if item is Path and isinstance(value, str | os.PathLike):
            value = [value]
        if not isinstance(value, list | tuple):
            raise _WrongType(expected)
        try:
            return [_typed(element, item) for element in value]
        except _WrongType:
            raise _WrongType(expected) from None
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _WrongType("a table of key = value pairs")
        return dict(value)
    if kind is Path and isinstance(value, str | os.PathLike):
        return Path(value)
    if kind is str and isinstance(value, os.PathLike):  # a SPEC or degradation file
        return os.fspath(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise _WrongType(_DESCRIPTIONS[kind])


def _plain(value: Any) -> Any:
    """A setting's value as TOML can write it (paths as strings)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(element) for element in value]
    return value


def _options_agree(given: Mapping[str, Any], saved: Mapping[str, Any]) -> bool:
    """Method options compare as text too: a TOML file and a flag may spell a value differently."""
    return all(saved.get(key) == value or str(saved.get(key)).lower() == str(value).lower()
               for key, value in given.items())


def show(value: Any) -> str:
    """A setting's value as the user would write it in a message (lists and tables as JSON)."""
    value = _plain(value)
    return json.dumps(value) if isinstance(value, list | dict) else str(value)

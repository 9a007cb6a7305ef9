"""The run settings that every training command (`distill`, `quantize`) shares.

A run's settings come from three layers, later ones winning: the command's defaults, a TOML file
(`config=`, the same keys as the arguments), and the arguments that are not None. The resolved
settings are written to the run folder's `config.toml`, which is itself a valid `config=` file, so
a run can be repeated. Keeping this machinery in one place means both commands read, check, resume
and record their settings the same way; each command adds only its own keys on top of
`TRAINING_DEFAULTS` and its own checks on top of `check_training_settings`.

On resume the run folder's `config.toml` is the run: arguments may change only what does not alter
the training itself (`RESUMABLE_CHANGES`); any other difference is refused rather than silently
producing a run that is neither the old one nor a new one. `iters` may be raised to train longer
(the schedule then follows the new total).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tomli_w
import torch
from torch import nn

from srcompress.errors import UserInputError
from srcompress.train import distributed
from srcompress.train.loop import SCHEDULES, TrainSettings, ValidationResults
from srcompress.train.state import RunFolder

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

TRAINING_DEFAULTS: dict[str, Any] = {
    "method": "dukd",
    "train_data": None,  # None: the demo images shipped with srcompress
    "val_benchmarks": ["Set5"],
    "val_every": 5000,
    "data_root": None,
    "scale": None,
    "iters": 250_000,
    "batch_size": 16,
    "patch_size": 48,
    "lr": 1e-4,
    "schedule": "multistep",
    "milestones": [0.4, 0.8],
    "gamma": 0.1,
    "grad_clip": 0.0,
    "seed": 0,
    "device": "auto",
    "amp": True,
    "ema": 0.999,
    "workers": 2,
    "output": None,
    "save_every": 1000,
    "log_every": 100,
    "method_options": {},
}

RESUMABLE_CHANGES = frozenset({"iters", "workers", "device", "amp", "data_root", "output",
                               "save_every", "val_every", "log_every"})

_POSITIVE_INTS = ("iters", "batch_size", "patch_size", "val_every", "save_every", "log_every")

# Settings whose command-line flag is not simply `--` + the key with dashes.
_FLAG_NAMES = {"val_benchmarks": "--val-benchmark", "train_data": "--train-data",
               "method_options": "the method options", "scope": "--quantize-all"}

WeightWriter = Callable[[str, nn.Module, Mapping[str, Any]], None]


def read_config(path: str | Path, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a `--config` TOML file; a key not in `defaults` is refused, since a typo
    would otherwise be ignored silently."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"The config file {path} does not exist: check --config.") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UserInputError(f"The config file {path} is not valid TOML ({error}): fix it or "
                             "drop --config.") from None
    unknown = sorted(set(data) - set(defaults))
    if unknown:
        raise UserInputError(
            f"The config file {path} has an unknown key '{unknown[0]}': valid keys are "
            f"{', '.join(sorted(defaults))}.")
    return data


def resolve_settings(given: Mapping[str, Any], resume: bool, defaults: Mapping[str, Any], *,
                     replaced_on_resume: frozenset[str] = RESUMABLE_CHANGES,
                     kept_on_resume: frozenset[str] = frozenset()) -> dict[str, Any]:
    """`defaults` ← `given`, or on resume the run's own config ← the allowed changes.

    On resume a given key in `replaced_on_resume` overrides the saved value; a key in
    `kept_on_resume` is not compared (an input file may be passed by another path) and the saved
    value stays; any other given key must equal the saved value. The result is not yet checked
    (see `check_training_settings`), so that each command can add its own checks.
    """
    given = normalised(given)
    if not resume:
        return {**defaults, **given}
    if given.get("output") is None:
        raise UserInputError("--resume needs --output: the folder of the run to continue.")
    saved_path = RunFolder(given["output"]).config
    if not saved_path.is_file():
        raise UserInputError(
            f"--resume found no run configuration at {saved_path}: pass the --output folder of "
            "the run to continue, or drop --resume to start a new run.")
    saved = normalised({**defaults, **read_config(saved_path, defaults)})
    for key, value in given.items():
        if key in replaced_on_resume or key in kept_on_resume or value == saved.get(key):
            continue
        if key == "method_options" and _options_agree(value, saved["method_options"]):
            continue
        raise UserInputError(
            f"{flag_name(key)} {show(value)} differs from the run being resumed "
            f"({show(saved.get(key))}): drop it, or start a new run without --resume.")
    changes = {key: value for key, value in given.items() if key in replaced_on_resume}
    return {**saved, **changes}


def _options_agree(given: Mapping[str, Any], saved: Mapping[str, Any]) -> bool:
    """Method options compare as text too: a TOML file and a flag may spell a value differently."""
    return all(saved.get(key) == value or str(saved.get(key)).lower() == str(value).lower()
               for key, value in given.items())


def flag_name(key: str) -> str:
    """The command-line flag of a setting, so that error messages name what the user typed."""
    return _FLAG_NAMES.get(key, "--" + key.replace("_", "-"))


def show(value: Any) -> str:
    """A setting's value as the user would write it in a message (lists and tables as JSON)."""
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def normalised(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Absolute paths as strings and sequences as lists, so that settings compare equal to
    their TOML form and a config file works from any folder."""
    result = dict(settings)
    for key in ("model", "teacher", "output"):
        if result.get(key) is not None:
            result[key] = str(result[key])
    if result.get("data_root") is not None:
        result["data_root"] = str(Path(result["data_root"]).resolve())
    for key in ("train_data", "val_benchmarks", "milestones"):
        if result.get(key) is not None:
            if isinstance(result[key], str | Path):
                result[key] = [result[key]]
            result[key] = list(result[key])
    if result.get("train_data") is not None:
        result["train_data"] = [str(Path(folder).resolve()) for folder in result["train_data"]]
    if result.get("val_benchmarks") is not None:
        result["val_benchmarks"] = [str(Path(name).resolve()) if Path(name).is_dir() else name
                                    for name in result["val_benchmarks"]]
    if "method_options" in result:
        result["method_options"] = dict(result["method_options"])
    return result


def check_training_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Refuses out-of-range training settings before any work starts, and gives the numbers the
    types the trainer expects (a TOML `lr = 1` is an int). Returns `settings`, updated."""
    for key in _POSITIVE_INTS:
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserInputError(f"{flag_name(key)} must be a whole number of at least 1, got "
                                 f"{show(value)}.")
    ranges = {"lr": (0.0, False, math.inf, "above 0"), "gamma": (0.0, False, math.inf, "above 0"),
              "ema": (0.0, True, 1.0, "from 0 (off) up to, not including, 1"),
              "grad_clip": (0.0, True, math.inf, "of 0 (off) or more")}
    for key, (low, low_allowed, high, wanted) in ranges.items():
        value = settings[key]
        in_range = (isinstance(value, int | float) and not isinstance(value, bool)
                    and (low <= value if low_allowed else low < value) and value < high)
        if not in_range:
            raise UserInputError(f"{flag_name(key)} must be a number {wanted}, got {show(value)}.")
    if settings["schedule"] not in SCHEDULES:
        raise UserInputError(f"--schedule must be one of {', '.join(SCHEDULES)}, got "
                             f"{settings['schedule']!r}.")
    if not all(isinstance(m, int | float) and 0 < m < 1 for m in settings["milestones"]):
        raise UserInputError("--milestones must be fractions of --iters between 0 and 1, got "
                             f"{show(settings['milestones'])}.")
    if not isinstance(settings["workers"], int) or settings["workers"] < 0:
        raise UserInputError(f"--workers must be 0 or more, got {show(settings['workers'])}.")
    if not isinstance(settings["seed"], int) or settings["seed"] < 0:
        raise UserInputError(f"--seed must be a whole number of 0 or more, got "
                             f"{show(settings['seed'])}.")
    if settings["scale"] is not None and settings["scale"] not in (2, 3, 4, 8):
        raise UserInputError(f"--scale must be 2, 3, 4 or 8, got {show(settings['scale'])}.")
    if not settings["val_benchmarks"]:
        settings["val_benchmarks"] = []
    settings["lr"], settings["gamma"] = float(settings["lr"]), float(settings["gamma"])
    settings["ema"], settings["grad_clip"] = float(settings["ema"]), float(settings["grad_clip"])
    return settings


def resolve_device(requested: str) -> torch.device:
    """This process's training device (its own GPU under torchrun), refused with a clear message
    when the machine does not have it, rather than failing inside the first training step."""
    try:
        device = distributed.rank_device(requested)
    except RuntimeError:
        raise UserInputError(f"--device {requested} is not a device: use auto, cpu, cuda or "
                             "cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"--device {requested} asks for CUDA, which this machine does not "
                             "have: use --device cpu.")
    if device.type not in ("cpu", "cuda"):
        raise UserInputError(f"--device {requested} is not supported: use auto, cpu, cuda or "
                             "cuda:N.")
    return device


def train_settings(settings: Mapping[str, Any]) -> TrainSettings:
    """The part of the run settings that the training loop itself needs."""
    return TrainSettings(
        iters=settings["iters"], lr=settings["lr"], schedule=settings["schedule"],
        milestones=tuple(settings["milestones"]), gamma=settings["gamma"], ema=settings["ema"],
        grad_clip=settings["grad_clip"], amp=settings["amp"], seed=settings["seed"],
        workers=settings["workers"], val_every=settings["val_every"],
        save_every=settings["save_every"], log_every=settings["log_every"])


def config_toml(settings: Mapping[str, Any], command: str) -> str:
    """The settings as a `--config` file, headed by the `command` line that repeats the run
    (None values are left out: TOML has no null)."""
    name = command.split()[0]
    header = (f"# srcompress {name}: every setting of this run; repeat it with\n"
              f"# srcompress {command} --config config.toml --output NEW_FOLDER\n")
    plain = {key: value for key, value in settings.items() if value is not None}
    return header + tomli_w.dumps(plain)


def weight_writer(template: Any, settings: Mapping[str, Any], **metadata: Any) -> WeightWriter:
    """Saves a trained module with `template`'s architecture (a `LoadedModel`), the command's
    `metadata`, the metrics measured so far and the run's seed and length, so that a weights file
    says how it was made; the trainer calls it for the best and the final weights."""
    def write(path: str, module: nn.Module, measured: Mapping[str, Any]) -> None:
        from srcompress import models

        models.save_model(path, dataclasses.replace(template, module=module), **metadata,
                          metrics=dict(measured), seed=settings["seed"],
                          iterations=settings["iters"])

    return write


def validator(settings: Mapping[str, Any], scale: int,
              device: torch.device) -> Callable[[nn.Module], ValidationResults]:
    """Y-PSNR/SSIM on the validation benchmarks, with the project's evaluation protocol.

    The benchmarks are located now, so a missing one stops the run before training, not after.
    """
    from srcompress.data.benchmarks import find_benchmark
    from srcompress.evaluation import evaluate

    benchmarks = list(settings["val_benchmarks"])
    data_root = settings["data_root"]
    for name in benchmarks:
        find_benchmark(name, data_root, scale)

    def validate(module: nn.Module) -> ValidationResults:
        report = evaluate(module, benchmarks=benchmarks, scale=scale, data_root=data_root,
                          device=str(device))
        return {result["benchmark"]: {"psnr": result["psnr"], "ssim": result["ssim"]}
                for result in report["results"]}

    return validate

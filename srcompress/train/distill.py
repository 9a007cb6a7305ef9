"""`distill()`: train a small student from a big teacher; the library API of `srcompress distill`.

Settings come from three layers, later ones winning: `DEFAULTS`, a TOML file (`config=`, the same
keys as the arguments), and the arguments that are not None. The resolved settings are written to
the run folder's `config.toml`, which is itself a valid `config=` file, so a run can be repeated.

On `resume=True` the run folder's `config.toml` is the run: arguments may change only what does
not alter the training itself (`RESUMABLE_CHANGES`); any other difference is refused rather than
silently producing a run that is neither the old one nor a new one. `iters` may be raised to
train longer (the schedule then follows the new total).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w
import torch
from torch import nn

from srcompress.data.training import PatchBatches, load_training_images, memory_bytes
from srcompress.errors import UserInputError
from srcompress.methods import create_method
from srcompress.train import distributed
from srcompress.train.loop import SCHEDULES, Reporter, Trainer, TrainSettings, ValidationResults
from srcompress.train.state import RunFolder

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

DEMO_PACKAGE = "srcompress.demo"

DEFAULTS: dict[str, Any] = {
    "teacher": None,
    "student": None,
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


@dataclass(frozen=True)
class DistillResult:
    """Where the run wrote its files, and what it measured."""

    output: Path
    student: Path
    best: Path | None
    metrics: dict[str, Any]
    completed: bool


def demo_data_folder() -> Path:
    """The demo training images shipped with srcompress (public-domain/CC0 photographs)."""
    return Path(str(resources.files(DEMO_PACKAGE) / "train"))


def demo_teacher_path(scale: int = 2) -> Path:
    return Path(str(resources.files(DEMO_PACKAGE) / f"teacher_x{scale}.safetensors"))


def distill(
    teacher: str | Path | None = None,
    student: str | None = None,
    method: str | None = None,
    train_data: Sequence[str | Path] | None = None,
    val_benchmarks: Sequence[str] | None = None,
    scale: int | None = None,
    iters: int | None = None,
    batch_size: int | None = None,
    patch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    amp: bool | None = None,
    ema: float | None = None,
    workers: int | None = None,
    output: str | Path | None = None,
    save_every: int | None = None,
    resume: bool = False,
    method_options: Mapping[str, Any] | None = None,
    data_root: str | Path | None = None,
    val_every: int | None = None,
    schedule: str | None = None,
    milestones: Sequence[float] | None = None,
    gamma: float | None = None,
    grad_clip: float | None = None,
    log_every: int | None = None,
    config: str | Path | None = None,
    reporter: Reporter | None = None,
) -> DistillResult:
    """Distill `teacher` into `student` (a SPEC; default about 1/10 of the teacher's cost).

    Every argument left as None takes its value from `config` (a TOML file) or `DEFAULTS`.
    Returns when the run finishes or is stopped by Ctrl-C (`completed` False; the checkpoint in
    the run folder continues it with `resume=True`). Raises `UserInputError` for bad inputs.
    """
    given = {key: value for key, value in {
        "teacher": teacher, "student": student, "method": method, "train_data": train_data,
        "val_benchmarks": val_benchmarks, "scale": scale, "iters": iters, "batch_size": batch_size,
        "patch_size": patch_size, "lr": lr, "seed": seed, "device": device, "amp": amp, "ema": ema,
        "workers": workers, "output": output, "save_every": save_every,
        "method_options": method_options, "data_root": data_root, "val_every": val_every,
        "schedule": schedule, "milestones": milestones, "gamma": gamma, "grad_clip": grad_clip,
        "log_every": log_every,
    }.items() if value is not None}
    if config is not None:
        given = {**read_config(config), **given}
    settings = resolve_settings(given, resume)
    return _run(settings, resume, reporter)


def read_config(path: str | Path) -> dict[str, Any]:
    """The settings of a `--config` TOML file, checked against the known keys."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"The config file {path} does not exist: check --config.") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UserInputError(f"The config file {path} is not valid TOML ({error}): fix it or "
                             "drop --config.") from None
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise UserInputError(
            f"The config file {path} has an unknown key '{unknown[0]}': valid keys are "
            f"{', '.join(sorted(DEFAULTS))}.")
    return data


def resolve_settings(given: Mapping[str, Any], resume: bool) -> dict[str, Any]:
    """Defaults ← given values, or on resume the run's own config ← the allowed changes."""
    given = _normalised(given)
    if not resume:
        return _checked({**DEFAULTS, **given})
    if given.get("output") is None:
        raise UserInputError("--resume needs --output: the folder of the run to continue.")
    saved_path = RunFolder(given["output"]).config
    if not saved_path.is_file():
        raise UserInputError(
            f"--resume found no run configuration at {saved_path}: pass the --output folder of "
            "the run to continue, or drop --resume to start a new run.")
    saved = _normalised({**DEFAULTS, **read_config(saved_path)})
    for key, value in given.items():
        if key not in RESUMABLE_CHANGES and key != "teacher" and value != saved.get(key):
            if key == "method_options" and _options_agree(value, saved["method_options"]):
                continue
            raise UserInputError(
                f"{_flag(key)} {_show(value)} differs from the run being resumed "
                f"({_show(saved.get(key))}): drop it, or start a new run without --resume.")
    changes = {key: value for key, value in given.items() if key in RESUMABLE_CHANGES}
    return _checked({**saved, **changes, "teacher": given.get("teacher", saved["teacher"])})


def _options_agree(given: Mapping[str, Any], saved: Mapping[str, Any]) -> bool:
    return all(saved.get(key) == value or str(saved.get(key)).lower() == str(value).lower()
               for key, value in given.items())


def _flag(key: str) -> str:
    names = {"val_benchmarks": "--val-benchmark", "train_data": "--train-data",
             "method_options": "the method options"}
    return names.get(key, "--" + key.replace("_", "-"))


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _normalised(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Absolute paths as strings and sequences as lists, so that settings compare equal to
    their TOML form and a config file works from any folder."""
    result = dict(settings)
    for key in ("teacher", "output"):
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


def _checked(settings: dict[str, Any]) -> dict[str, Any]:
    for key in _POSITIVE_INTS:
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserInputError(f"{_flag(key)} must be a whole number of at least 1, got "
                                 f"{_show(value)}.")
    ranges = {"lr": (0.0, False, math.inf, "above 0"), "gamma": (0.0, False, math.inf, "above 0"),
              "ema": (0.0, True, 1.0, "from 0 (off) up to, not including, 1"),
              "grad_clip": (0.0, True, math.inf, "of 0 (off) or more")}
    for key, (low, low_allowed, high, wanted) in ranges.items():
        value = settings[key]
        in_range = (isinstance(value, int | float) and not isinstance(value, bool)
                    and (low <= value if low_allowed else low < value) and value < high)
        if not in_range:
            raise UserInputError(f"{_flag(key)} must be a number {wanted}, got {_show(value)}.")
    if settings["schedule"] not in SCHEDULES:
        raise UserInputError(f"--schedule must be one of {', '.join(SCHEDULES)}, got "
                             f"{settings['schedule']!r}.")
    if not all(isinstance(m, int | float) and 0 < m < 1 for m in settings["milestones"]):
        raise UserInputError("--milestones must be fractions of --iters between 0 and 1, got "
                             f"{_show(settings['milestones'])}.")
    if not isinstance(settings["workers"], int) or settings["workers"] < 0:
        raise UserInputError(f"--workers must be 0 or more, got {_show(settings['workers'])}.")
    if not isinstance(settings["seed"], int) or settings["seed"] < 0:
        raise UserInputError(f"--seed must be a whole number of 0 or more, got "
                             f"{_show(settings['seed'])}.")
    if settings["scale"] is not None and settings["scale"] not in (2, 3, 4, 8):
        raise UserInputError(f"--scale must be 2, 3, 4 or 8, got {_show(settings['scale'])}.")
    if not settings["val_benchmarks"]:
        settings["val_benchmarks"] = []
    settings["lr"], settings["gamma"] = float(settings["lr"]), float(settings["gamma"])
    settings["ema"], settings["grad_clip"] = float(settings["ema"]), float(settings["grad_clip"])
    return settings


def _device(requested: str) -> torch.device:
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


def _run(settings: dict[str, Any], resume: bool, reporter: Reporter | None) -> DistillResult:
    from srcompress import models

    device = _device(settings["device"])
    method = create_method(settings["method"], **settings["method_options"])
    teacher = _teacher(models, settings, method.needs_teacher)
    scale = settings["scale"] if settings["scale"] is not None else teacher.scale
    if teacher is not None and teacher.scale != scale:
        raise UserInputError(
            f"The teacher {settings['teacher']} upscales x{teacher.scale} but --scale is "
            f"{scale}: drop --scale or use a x{scale} teacher.")
    settings["scale"] = scale
    if settings["student"] is None:
        settings["student"] = models.default_student_spec(teacher)
    settings["method_options"] = dataclasses.asdict(method.options)
    if settings["train_data"] is None:
        settings["train_data"] = [str(demo_data_folder())]

    if settings["output"] is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        stem = Path(settings["teacher"]).stem if teacher is not None else "student"
        settings["output"] = str(Path("runs") / f"{stem}-{settings['method']}-{stamp}")
    if teacher is not None:
        settings["teacher"] = str(Path(settings["teacher"]).resolve())

    torch.manual_seed(settings["seed"])
    student = models.build_model(settings["student"], scale)
    method.reseed(settings["seed"])
    data = load_training_images(settings["train_data"], scale, settings["patch_size"])
    validate = _validator(settings, scale, device) if settings["val_benchmarks"] else None
    save_weights = _weight_writer(models, student, settings)

    place = distributed.setup(device)
    run = RunFolder(settings["output"])
    try:
        if place.is_main:
            run.prepare(resume)
            if not resume:
                run.write_config(config_toml(settings))
        place.barrier()
        if data.skipped and place.is_main and reporter is not None:
            reporter.message(f"Skipped {len(data.skipped)} training image(s) smaller than one "
                             f"patch: {', '.join(data.skipped)}.")
        if reporter is not None and place.is_main:
            reporter.message(
                f"{len(data.images)} training images ({memory_bytes(data) / 2**20:.0f} MiB in "
                f"memory), student {settings['student']}, method {settings['method']}, "
                f"output {run.root}")
        trainer = Trainer(
            student.module, teacher.module if teacher is not None else None, method,
            PatchBatches(data, settings["patch_size"], settings["batch_size"], settings["seed"],
                         rank=place.rank),
            _train_settings(settings), device, run, place, validate=validate,
            save_weights=save_weights, reporter=reporter)
        if resume:
            trainer.load_state(run.load_checkpoint())
        try:
            completed = trainer.train()
        finally:
            trainer.close()
        if completed and place.is_main:
            last = trainer.record.validations[-1] if trainer.record.validations else {}
            save_weights(str(run.student), trainer.final_module,
                         {"iteration": trainer.iteration, **last})
        place.barrier()
    finally:
        distributed.teardown(place)
    metrics = trainer.record.as_dict(trainer.iteration)
    best = run.best if run.best.exists() else None
    return DistillResult(run.root, run.student, best, metrics, completed)


def _teacher(models: Any, settings: Mapping[str, Any], needed: bool) -> Any:
    """The loaded teacher; a method without a teacher term may train from a spec and scale."""
    if settings["teacher"] is not None:
        return models.load_model(settings["teacher"], device="cpu")
    if needed:
        raise UserInputError(f"Method {settings['method']} needs a teacher: pass the TEACHER "
                             "checkpoint.")
    if settings["student"] is None or settings["scale"] is None:
        raise UserInputError("Training without a teacher needs --student and --scale.")
    return None


def _train_settings(settings: Mapping[str, Any]) -> TrainSettings:
    return TrainSettings(
        iters=settings["iters"], lr=settings["lr"], schedule=settings["schedule"],
        milestones=tuple(settings["milestones"]), gamma=settings["gamma"], ema=settings["ema"],
        grad_clip=settings["grad_clip"], amp=settings["amp"], seed=settings["seed"],
        workers=settings["workers"], val_every=settings["val_every"],
        save_every=settings["save_every"], log_every=settings["log_every"])


def config_toml(settings: Mapping[str, Any]) -> str:
    """The settings as a `--config` file (None values are left out: TOML has no null)."""
    header = ("# srcompress distill: every setting of this run; repeat it with\n"
              "# srcompress distill --config config.toml --output NEW_FOLDER\n")
    plain = {key: value for key, value in settings.items() if value is not None}
    return header + tomli_w.dumps(plain)


def _weight_writer(models: Any, student: Any, settings: Mapping[str, Any]):
    """Saves a module with the student's architecture and the run's metadata (rank 0 only)."""
    def write(path: str, module: nn.Module, measured: Mapping[str, Any]) -> None:
        loaded = dataclasses.replace(student, module=module)
        teacher = Path(settings["teacher"]).name if settings["teacher"] is not None else "none"
        models.save_model(path, loaded, method=settings["method"], teacher=teacher,
                          metrics=dict(measured), seed=settings["seed"],
                          iterations=settings["iters"])

    return write


def _validator(settings: Mapping[str, Any], scale: int, device: torch.device):
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

"""`distill()`: train a small student from a big teacher; the library API of `srcompress distill`.

Settings resolve as described in `srcompress.train.settings`: `DEFAULTS` (the shared training keys
plus the teacher and student) ← a TOML file (`config=`) ← the arguments that are not None, and on
`resume=True` the run folder's `config.toml` is the run, of which only `RESUMABLE_CHANGES` (and the
teacher's path) may change.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from srcompress.data.training import PatchBatches, load_training_images, memory_bytes
from srcompress.errors import UserInputError
from srcompress.methods import create_method
from srcompress.train import distributed
from srcompress.train import settings as run_settings
from srcompress.train.loop import Reporter, Trainer
from srcompress.train.runs import open_run_folder, train_to_end
from srcompress.train.settings import RESUMABLE_CHANGES, TRAINING_DEFAULTS
from srcompress.train.state import RunFolder

DEMO_PACKAGE = "srcompress.demo"

DEFAULTS: dict[str, Any] = {"teacher": None, "student": None, **TRAINING_DEFAULTS}

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
    return run_settings.read_config(path, DEFAULTS)


def resolve_settings(given: Mapping[str, Any], resume: bool) -> dict[str, Any]:
    """Defaults ← given values, or on resume the run's own config ← the allowed changes.

    The teacher may be given again on resume by another path (or after moving it): it is not
    compared with the saved one, and the given path is used.
    """
    settings = run_settings.resolve_settings(
        given, resume, DEFAULTS, replaced_on_resume=RESUMABLE_CHANGES | {"teacher"})
    return run_settings.check_training_settings(settings)


def _run(settings: dict[str, Any], resume: bool, reporter: Reporter | None) -> DistillResult:
    from srcompress import models

    device = run_settings.resolve_device(settings["device"])
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
    validate = (run_settings.validator(settings, scale, device) if settings["val_benchmarks"]
                else None)
    save_weights = run_settings.weight_writer(
        student, settings, method=settings["method"],
        teacher=Path(settings["teacher"]).name if settings["teacher"] is not None else "none")

    place = distributed.setup(device)
    run = RunFolder(settings["output"])
    try:
        open_run_folder(run, place, resume, config_toml(settings))
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
            run_settings.train_settings(settings), device, run, place, validate=validate,
            save_weights=save_weights, reporter=reporter)
        completed = train_to_end(trainer, run, place, resume, save_weights)
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


def config_toml(settings: Mapping[str, Any]) -> str:
    """The settings as a `--config` file (None values are left out: TOML has no null)."""
    return run_settings.config_toml(settings, "distill")

"""`distill()`: train a small student from a big teacher; the library API of `srcompress distill`.

Settings resolve as described in `srcompress.train.settings` (`DistillSettings` ← a TOML file
(`config=`) ← the arguments that are not None; on `resume=True` the run folder's `config.toml` is
the run); the run itself is `srcompress.train.run.run_training` with `DistillJob`.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srcompress.errors import UserInputError
from srcompress.methods import METHODS, Method
from srcompress.models import (
    LoadedModel,
    build_model,
    default_student_spec,
    load_model,
    model_task,
)
from srcompress.train.loop import Reporter
from srcompress.train.run import Job, RunResult, run_training, task_defaults
from srcompress.train.settings import Resume, TrainingSettings, setting


@dataclass
class DistillSettings(TrainingSettings):
    # The teacher may be given again on resume by another path (or after moving it): it is not
    # compared with the saved one, and the given path is used.
    teacher: Path | None = setting(None, resume=Resume.CHANGES)
    method: str = setting("dukd", help=f"Training method: {', '.join(METHODS)} (default: dukd).")
    student: str | None = setting(
        None, metavar="SPEC",
        help="Student SPEC, preset or file (default: about 1/10 of the teacher's cost).")
    scale: int | None = setting(None, help="Upscaling factor (default: the teacher's).")
    iters: int = setting(250_000, resume=Resume.CHANGES,
                         help="Training iterations (default: 250000, the paper's).")
    ema: float = setting(0.999, help="EMA decay of the student's weights, 0 = off "
                         "(default: 0.999).")
    output: Path | None = setting(
        None, resume=Resume.CHANGES,
        help="Run folder (default: runs/<teacher-stem>-<method>-<date>).")

    COMMAND: typing.ClassVar[str] = "distill"


@dataclass(frozen=True)
class DistillResult(RunResult):
    """Where the run wrote its files (`student` is the final weights), and what it measured."""

    @property
    def student(self) -> Path:
        return self.weights


def distill(
    teacher: str | Path | None = None,
    student: str | None = None,
    method: str | None = None,
    train_data: Sequence[str | Path] | None = None,
    val_benchmarks: Sequence[str] | None = None,
    scale: int | None = None,
    degradation: str | Path | Mapping[str, Any] | None = None,
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

    Every argument left as None takes its value from `config` (a TOML file) or the defaults of
    `DistillSettings`. Returns when the run finishes or is stopped by Ctrl-C (`completed` False;
    the checkpoint in the run folder continues it with `resume=True`). Raises `UserInputError`
    for bad inputs.
    """
    given = DistillSettings.from_arguments(locals())
    if config is not None:
        given = {**DistillSettings.read_config(config), **given}
    settings = DistillSettings.resolve(given, resume)
    result = run_training(settings, DistillJob(), resume, reporter)
    return DistillResult(**vars(result))


class DistillJob(Job[DistillSettings]):
    """A student built from its SPEC, taught by a loaded teacher (or by none, for the methods
    without a teacher term)."""

    weights_name = "student.safetensors"

    def load(self, settings: DistillSettings, method: Method) -> None:
        teacher = self._load_teacher(settings, method.needs_teacher)
        scale = settings.scale if settings.scale is not None else teacher.scale
        if teacher is not None and teacher.scale != scale:
            raise UserInputError(
                f"The teacher {settings.teacher} upscales x{teacher.scale} but --scale is "
                f"{scale}: drop --scale or use a x{scale} teacher.")
        settings.scale = scale
        if settings.student is None:
            settings.student = default_student_spec(teacher)
        if settings.teacher is not None:
            settings.teacher = settings.teacher.resolve()
        if teacher is not None:
            self.warnings = task_defaults(settings, model_task(teacher), "teacher")
        self.teacher = teacher.module if teacher is not None else None

    @staticmethod
    def _load_teacher(settings: DistillSettings, needed: bool) -> LoadedModel | None:
        """The loaded teacher; a method without a teacher term may train from a spec and scale."""
        if settings.teacher is not None:
            return load_model(settings.teacher, device="cpu")
        if needed:
            raise UserInputError(f"Method {settings.method} needs a teacher: pass the TEACHER "
                                 "checkpoint.")
        if settings.student is None or settings.scale is None:
            raise UserInputError("Training without a teacher needs --student and --scale.")
        return None

    def student(self, settings: DistillSettings) -> LoadedModel:
        return build_model(settings.student, settings.scale)

    def output_name(self, settings: DistillSettings) -> str:
        stem = settings.teacher.stem if settings.teacher is not None else "student"
        return f"{stem}-{settings.method}"

    def summary(self, settings: DistillSettings) -> str:
        return f"student {settings.student}"

    def weights_metadata(self, settings: DistillSettings) -> dict[str, Any]:
        return {"method": settings.method,
                "teacher": settings.teacher.name if settings.teacher is not None else "none"}

"""`distill()`: train a small student from a big teacher; the library API of `srcompress distill`.

Settings resolve as described in `srcompress.train.settings` (`DistillSettings` ← a TOML file
(`config=`) ← the arguments that are not None; on `resume=True` the run folder's `config.toml` is
the run); the run itself is `srcompress.train.run.run_training` with `DistillJob`.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from srcompress.data.training import TrainingImages
from srcompress.errors import UserInputError
from srcompress.methods import METHODS, Method
from srcompress.methods.base import CachedTargets
from srcompress.models import (
    LoadedModel,
    build_model,
    default_student_spec,
    load_model,
    model_task,
)
from srcompress.train.distributed import Distributed
from srcompress.train.loop import Reporter
from srcompress.train.run import Job, RunResult, run_training, task_defaults
from srcompress.train.settings import Resume, TrainingSettings, absolute_path, setting
from srcompress.train.teacher_cache import open_teacher_cache, require_cacheable
from srcompress.train.warm_start import WarmStart, warm_start

# From docs/results.md ("When DUKD pays"): dukd tied kd at equal iterations at 0.2 passes per LR
# pixel and beat it at 4 and 17, always at about twice kd's cost per iteration; below 1 pass a
# dukd run is told so.
DUKD_MIN_PASSES = 1.0


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
    teacher_cache: Path | None = setting(
        None, metavar="DIR", normalise=absolute_path,
        help="Store the teacher's outputs on the training images here once (built if missing, "
        "reused by runs with the same teacher, images and scale) and train kd/dukd from them "
        "instead of running the teacher every step.")
    init: Path | None = setting(
        None, metavar="CHECKPOINT", normalise=absolute_path, resume=Resume.KEPT,
        help="Start the student from these weights (layers of matching name and shape; the "
        "upsampler is re-initialised when the scale differs).")

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
    teacher_cache: str | Path | None = None,
    init: str | Path | None = None,
    force: bool = False,
) -> DistillResult:
    """Distill `teacher` into `student` (a SPEC; default about 1/10 of the teacher's cost).

    Every argument left as None takes its value from `config` (a TOML file) or the defaults of
    `DistillSettings`. `teacher_cache` is a folder where the teacher's outputs on the training
    images are stored once and read back instead of running the teacher
    (`srcompress.train.teacher_cache`); `init` a checkpoint the student starts from
    (`srcompress.train.warm_start`). Returns when the run finishes or is stopped by Ctrl-C
    (`completed` False; the checkpoint in the run folder continues it with `resume=True`). Raises
    `UserInputError` for bad inputs, and `RunDivergedError` (its files kept) when the run ends
    worse than it started. `force` writes into an `output` folder of other files, and resumes
    with a teacher whose content differs from the run's.
    """
    given = DistillSettings.from_arguments(locals())
    if config is not None:
        given = {**DistillSettings.read_config(config), **given}
    settings = DistillSettings.resolve(given, resume)
    result = run_training(settings, DistillJob(resuming=resume), resume, reporter, force)
    return DistillResult(**vars(result))


class DistillJob(Job[DistillSettings]):
    """A student built from its SPEC, taught by a loaded teacher (or by none, for the methods
    without a teacher term)."""

    def __init__(self, resuming: bool = False) -> None:
        # A resumed run's student comes from its checkpoint: --init is not read again (its file
        # may be gone by then) and not announced again.
        self.resuming = resuming

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
        self.loaded_teacher = teacher
        self.teacher = teacher.module if teacher is not None else None
        self.warm: WarmStart | None = None
        self.cached_parts = [part for part in method.cached_parts
                             if part != "zoom_out" or getattr(method.options, "zoom_out", False)]
        if settings.teacher_cache is not None and (not self.cached_parts or teacher is None):
            reads = ("reads the teacher's features, which a teacher cache does not hold"
                     if method.needs_teacher else "has no teacher")
            raise UserInputError(
                f"--method {settings.method} {reads}: drop --teacher-cache, or use --method kd "
                "or dukd.")
        if settings.teacher_cache is not None and settings.degradation is not None:
            require_cacheable(settings.degradation if isinstance(settings.degradation, str)
                              else "(Real-ESRGAN settings)")

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
        student = build_model(settings.student, settings.scale)
        # Only distillation: quantize's student is the model itself plus its quantizers' ranges.
        if self.teacher is not None:
            teacher_size = sum(parameter.numel() for parameter in self.teacher.parameters())
            if student.parameters > teacher_size:
                self.warnings = (*self.warnings, (
                    f"the student has {student.parameters:,} parameters, more than the teacher's "
                    f"{teacher_size:,}; distillation is meant to make a smaller model."))
        if settings.init is not None and not self.resuming:
            self.warm = warm_start(student.module, student.arch, settings.scale, settings.init)
        return student

    def cached_targets(self, settings: DistillSettings, data: TrainingImages,
                       device: torch.device, place: Distributed, reporter: Reporter | None
                       ) -> tuple[Callable[[torch.Tensor], CachedTargets] | None, str]:
        """With --teacher-cache: the cache opened (and built where parts are missing) for the
        parts the method reads, and what it holds, for the run's first line."""
        if settings.teacher_cache is None:
            return None, ""
        teacher = self.loaded_teacher
        assert teacher is not None  # checked by `load`
        plan = open_teacher_cache(
            settings.teacher_cache, teacher.module, teacher.arch, teacher.settings, data,
            self.cached_parts, settings.patch_size, device, place,
            degradation=str(settings.degradation or "bicubic"),
            message=reporter.message if reporter is not None else lambda text: None,
            progress=(lambda done, total: reporter.preparing("teacher cache", done, total))
            if reporter is not None else None)
        patch_size, parts = settings.patch_size, plan.used

        def crops(placements: torch.Tensor) -> CachedTargets:
            return plan.cache.batch(placements, patch_size, parts, device)

        return crops, plan.describe()

    def notes(self, settings: DistillSettings, passes: float) -> list[str]:
        notes = [self.warm.describe()] if self.warm is not None else []
        if settings.method.startswith("dukd") and passes < DUKD_MIN_PASSES:
            notes.append(
                f"Hint: at {passes:.2g} passes per LR pixel dukd measured only a tie with kd at "
                "equal iterations, at twice kd's cost per iteration (docs/results.md, When DUKD "
                "pays): --method kd, or more --iters, may serve you better.")
        return notes

    def output_name(self, settings: DistillSettings) -> str:
        stem = settings.teacher.stem if settings.teacher is not None else "student"
        return f"{stem}-{settings.method}"

    def summary(self, settings: DistillSettings) -> str:
        return f"student {settings.student}"

    def teacher_file(self, settings: DistillSettings) -> Path | None:
        return settings.teacher

    def weights_metadata(self, settings: DistillSettings) -> dict[str, Any]:
        return {"method": settings.method,
                "teacher": settings.teacher.name if settings.teacher is not None else "none"}

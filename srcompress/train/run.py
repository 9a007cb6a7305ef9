"""The one run skeleton of every training command (`distill`, `quantize`).

`run_training` does what every run does, in this order: the device, the method, the models (the
command's `Job`), the settings the run fills in itself (the degradation defaults to bicubic
when the job found no recorded task), the seeded student, the data, the
validation, the run folder with its `config.toml`, the Trainer, training to the end (or to Ctrl-C)
and the result. What differs between the commands is a `Job`: how the student and the teacher are
prepared (`load`, `student`, `before_training`) and which weights file is written, with which
metadata (`weights_name`, `weights_metadata`).

The run folder and its `config.toml` exist before training starts, so a run stopped at any point
can be repeated from its config; on resume the trainer continues from the folder's checkpoint; and
only a completed run gets its final weights. Rank 0 prints and writes, and every rank waits at the
same points, so that no process reads a file another is still writing.

The order of the random draws is part of the contract: nothing draws from torch's generator
between `torch.manual_seed(seed)` and the student's initialisation except the student itself, so
a seed gives the same student (and `config.toml` repeats a run bit-exactly).
"""

from __future__ import annotations

import dataclasses
import datetime
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor, nn

from srcompress.data.benchmarks import find_benchmark
from srcompress.data.degradation import (
    BicubicDegradation,
    Degradation,
    degradation_setting,
    resolve_degradation,
)
from srcompress.data.training import (
    PatchBatches,
    TrainingImages,
    iteration_seed,
    load_training_images,
    memory_bytes,
)
from srcompress.demo import demo_data_folder
from srcompress.devices import resolve_device
from srcompress.errors import UserInputError, WorkFailedError
from srcompress.evaluation import evaluate
from srcompress.files import sha256_of_file
from srcompress.methods import Method, create_method
from srcompress.methods.base import CachedTargets
from srcompress.metrics import psnr, ssim, to_uint8
from srcompress.models import LoadedModel, Task, save_model
from srcompress.train import distributed
from srcompress.train.distributed import Distributed
from srcompress.train.loop import Reporter, Trainer, ValidationResults, training_batch
from srcompress.train.settings import TrainingSettings
from srcompress.train.state import RunFolder

Settings = TypeVar("Settings", bound=TrainingSettings)
WeightWriter = Callable[[str, nn.Module, Mapping[str, Any]], None]

# `patch_validator`: how many LR patches, of which side at most, from which random stream (the
# training batches use streams 0-2), and the name its results go by in metrics.json.
VALIDATION_PATCHES = 32
VALIDATION_PATCH = 48
VALIDATION_STREAM = 7
TRAINING_PATCHES = "training patches"
MAX_PATCH_PSNR = 100.0  # a flat patch reproduced exactly has an infinite PSNR
SSIM_WINDOW = 11


@dataclass(frozen=True)
class RunResult:
    """Where the run wrote its files, and what it measured."""

    output: Path
    weights: Path  # the final weights (student.safetensors, quantized.safetensors)
    best: Path | None
    metrics: dict[str, Any]
    completed: bool


class Job(ABC, Generic[Settings]):
    """What a training command does differently from the others; see the module docstring."""

    weights_name: ClassVar[str]  # the final weights file in the run folder
    method_names: ClassVar[Mapping[str, str] | None] = None  # the command's method → registry

    # The student starts from a trained model (quantization): the run validates it at iteration 0
    # and, without validation benchmarks, on fixed patches of the training images
    # (`patch_validator`), so best.safetensors is never worse than what the run started from.
    starts_trained: ClassVar[bool] = False

    teacher: nn.Module | None = None
    warnings: tuple[str, ...] = ()  # what `load` found worth telling the user

    @abstractmethod
    def load(self, settings: Settings, method: Method) -> None:
        """Loads what the run starts from (before seeding: loading draws random numbers), sets
        `teacher`, and fills in the settings that depend on it (`scale`, a default student)."""

    @abstractmethod
    def student(self, settings: Settings) -> LoadedModel:
        """The model to train; called right after `torch.manual_seed(seed)`."""

    @abstractmethod
    def output_name(self, settings: Settings) -> str:
        """The default run folder's name, before its date."""

    @abstractmethod
    def summary(self, settings: Settings) -> str:
        """What is trained, for the line that starts the run."""

    def before_training(self, settings: Settings, module: nn.Module, batches: PatchBatches,
                        device: torch.device) -> None:
        """Prepares a new run's model on its first batches (not on resume); nothing by default."""

    def cached_targets(self, settings: Settings, data: TrainingImages, device: torch.device,
                       place: Distributed, reporter: Reporter | None
                       ) -> tuple[Callable[[Tensor], CachedTargets] | None, str]:
        """Where the method reads teacher outputs from instead of running the teacher (given a
        batch's placements), and what that is, for the run's first line; none by default."""
        return None, ""

    def notes(self, settings: Settings, passes: float) -> list[str]:
        """Lines printed after the run's first line (`passes`: per LR pixel); none by default."""
        return []

    @abstractmethod
    def weights_metadata(self, settings: Settings) -> dict[str, Any]:
        """The metadata written in the weights files, besides architecture, metrics and seed."""

    def teacher_file(self, settings: Settings) -> Path | None:
        """The file the teacher was loaded from, whose content a resumed run must keep."""
        return None


class RunDivergedError(WorkFailedError):
    """The run finished but ended worse than it started; its files are kept as written."""


def run_training(settings: Settings, job: Job[Settings], resume: bool,
                 reporter: Reporter | None, force: bool = False) -> RunResult:
    """Trains as `settings` say, the `job`'s way; returns when the run finishes or Ctrl-C stops
    it (`completed` False; `resume=True` continues it).

    `force` lets a new run write into a folder of other files, and a resumed run continue with
    a teacher whose content differs from the one it started with. A run that ends worse than it
    started raises `RunDivergedError` after writing its files."""
    device = resolve_device(settings.device, distributed.from_environment().local_rank)
    names = job.method_names or {}
    method = create_method(names.get(settings.method, settings.method), **settings.method_options)
    job.load(settings, method)
    if settings.degradation is None:
        settings.degradation = BicubicDegradation.name
    degradation = resolve_degradation(settings.degradation)
    settings.method_options = dataclasses.asdict(method.options)
    if settings.train_data is None:
        settings.train_data = [demo_data_folder()]
    if settings.output is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        settings.output = Path("runs") / f"{job.output_name(settings)}-{stamp}"

    teacher_file = job.teacher_file(settings)
    teacher_sha256 = sha256_of_file(teacher_file) if teacher_file is not None else None

    torch.manual_seed(settings.seed)
    student = job.student(settings)
    method.reseed(settings.seed)
    data = load_training_images(settings.train_data, student.scale, settings.patch_size)
    if settings.val_benchmarks:
        validate = validator(settings, student.scale, device)
    elif job.starts_trained:
        validate = patch_validator(data, settings.seed, degradation, device)
    else:
        validate = None
    save_weights = weight_writer(student, settings, degradation=settings.degradation,
                                 **job.weights_metadata(settings))

    place = distributed.setup(device)
    run = RunFolder(settings.output, job.weights_name)
    batches = PatchBatches(data, settings.patch_size, settings.batch_size, settings.seed,
                           rank=place.rank)
    try:
        checkpoint = open_run_folder(run, place, resume, force, settings,
                                     (teacher_file, teacher_sha256))
        run.identity = {"teacher_sha256": teacher_sha256}
        speaking = reporter if place.is_main else None
        cached_targets, cached = job.cached_targets(settings, data, device, place, speaking)
        if speaking is not None:
            if data.skipped:
                speaking.message(f"Skipped {len(data.skipped)} training image(s) smaller than "
                                 f"one patch: {', '.join(data.skipped)}.")
            for warning in job.warnings:
                speaking.message(f"Warning: {warning}")
            passes = passes_per_lr_pixel(settings, data, place.world_size)
            speaking.message(
                f"{len(data.images)} training images ({memory_bytes(data) / 2**20:.0f} MiB in "
                f"memory, {passes:.2g} passes per LR pixel), {degradation.name} inputs, "
                f"{job.summary(settings)}, method {settings.method}, output {run.root}"
                + (f"; {cached}" if cached else ""))
            if degradation.name != BicubicDegradation.name and settings.val_benchmarks:
                speaking.message(
                    f"Note: validation on {', '.join(settings.val_benchmarks)} uses those "
                    "benchmarks' own LR inputs; to validate on the real-world task, pass "
                    "--val-benchmark with a set made by `srcompress datasets degrade`.")
            for note in job.notes(settings, passes):
                speaking.message(note)
        if not resume:
            job.before_training(settings, student.module, batches, device)
        loop_settings = dataclasses.replace(settings.loop_settings(),
                                            validate_start=job.starts_trained)
        trainer = Trainer(student.module, job.teacher, method, batches, loop_settings, device,
                          run, place, validate=validate, save_weights=save_weights,
                          reporter=reporter, degradation=on_device_degradation(degradation),
                          cached_targets=cached_targets)
        completed = train_to_end(trainer, run, place, checkpoint, save_weights)
    finally:
        run.unlock()
        distributed.teardown(place)
    best = run.best if run.best.exists() else None
    diverged = trainer.divergence() if completed and place.is_main else None
    if diverged is not None:
        # A run that validated its start keeps that start in best.safetensors when nothing beat
        # it: only the final weights are then worse than where the run started.
        worse = (f"{run.weights.name} is worse than where it started and {best.name} holds the "
                 "best validated weights, the start included" if job.starts_trained and best
                 else "its files are worse than where it started")
        kept = ", ".join(path.name for path in (run.weights, best) if path is not None)
        raise RunDivergedError(
            f"The run in {run.root} diverged: {diverged}. Its files ({kept}) are kept as written; "
            f"{worse}: train again with a lower --lr (it was {settings.lr:g}) or with "
            "--grad-clip.")
    return RunResult(run.root, run.weights, best, trainer.record.as_dict(trainer.iteration),
                     completed)


def task_defaults(settings: TrainingSettings, task: Task, role: str) -> tuple[str, ...]:
    """Sets the run's degradation to the task recorded for the `role` model (teacher, model) when
    none was given, and returns the warning for a real-world architecture that would otherwise
    be trained on bicubic inputs without the user having chosen them."""
    if settings.degradation is not None:
        return ()
    if task.degradation is not None:
        settings.degradation = degradation_setting(task.degradation)
        return ()
    if not task.real_world:
        return ()
    return (f"the {role} is {task.why}, but no --degradation was given, so the student learns "
            "from clean bicubic inputs it will not see in real photos. Pass --degradation "
            "realesrgan (or a TOML file of the teacher's degradation settings) to train on "
            "real-world inputs, or --degradation bicubic to keep bicubic inputs and silence "
            "this warning.",)


def on_device_degradation(degradation: Degradation) -> Degradation | None:
    """The degradation the trainer applies to HR patches, or None when the data's own bicubic LR
    patches are the inputs (the classical task, bit-identical to runs before degradations)."""
    return None if isinstance(degradation, BicubicDegradation) else degradation


def passes_per_lr_pixel(settings: TrainingSettings, data: TrainingImages,
                        world_size: int = 1) -> float:
    """How often training visits each LR pixel: iterations × batch × patch² / LR pixels.

    The DUKD paper's budget (DIV2K, 250k iterations, batch 16, patch 48) is about 17 at x2 and 67
    at x4; whether DUKD beats kd depends on it (docs/results.md, "When DUKD pays").
    """
    pixels = sum(image.lr.shape[1] * image.lr.shape[2] for image in data.images)
    return settings.iters * settings.batch_size * world_size * settings.patch_size**2 / pixels


def validator(settings: TrainingSettings, scale: int,
              device: torch.device) -> Callable[[nn.Module], ValidationResults]:
    """Y-PSNR/SSIM on the validation benchmarks, with the project's evaluation protocol.

    The benchmarks are located now, so a missing one stops the run before training, not after.
    """
    benchmarks = list(settings.val_benchmarks)
    data_root = settings.data_root
    for name in benchmarks:
        find_benchmark(name, data_root, scale)

    def validate(module: nn.Module) -> ValidationResults:
        report = evaluate(module, benchmarks=benchmarks, scale=scale, data_root=data_root,
                          device=str(device))
        return {result["benchmark"]: {"psnr": result["psnr"], "ssim": result["ssim"]}
                for result in report["results"]}

    return validate


def patch_validator(data: TrainingImages, seed: int, degradation: Degradation,
                    device: torch.device) -> Callable[[nn.Module], ValidationResults]:
    """Y-PSNR/SSIM on fixed LR/HR patches of the training images, for runs without benchmarks.

    The patches (and their degradation, in a real-world run) come from their own random stream,
    not any iteration's batch, without flips, so they are the same at every validation and on
    resume; they are cut from the training images, so they measure how well the model fits its
    data rather than how it generalises, which is what deciding "never worse than the start"
    needs.
    """
    side = min(VALIDATION_PATCH, *(min(image.lr.shape[1:]) for image in data.images))
    validation_seed = iteration_seed(seed, 0, 0, stream=VALIDATION_STREAM)
    clean_lr, hr, _ = PatchBatches(data, side, VALIDATION_PATCHES, validation_seed,
                                   augment=False)[0]
    batch = training_batch(clean_lr.to(device), hr.to(device), data.scale,
                           on_device_degradation(degradation), validation_seed, 0, 0)
    lr_patches, hr_patches = batch.lr, batch.hr.cpu()
    scale = data.scale
    with_ssim = (side - 2) * scale >= SSIM_WINDOW  # tiny patches: PSNR only

    @torch.no_grad()
    def validate(module: nn.Module) -> ValidationResults:
        psnrs, ssims = [], []
        for lr, targets in zip(lr_patches.split(8), hr_patches.split(8), strict=True):
            outputs = module(lr).float().cpu()
            for output, target in zip(outputs, targets, strict=True):
                sr, truth = to_uint8(output), to_uint8(target)
                psnrs.append(min(psnr(sr, truth, crop_border=scale), MAX_PATCH_PSNR))
                if with_ssim:
                    ssims.append(ssim(sr, truth, crop_border=scale))
        results = {"psnr": sum(psnrs) / len(psnrs)}
        if with_ssim:
            results["ssim"] = sum(ssims) / len(ssims)
        return {TRAINING_PATCHES: results}

    return validate


def weight_writer(template: LoadedModel, settings: TrainingSettings,
                  **metadata: Any) -> WeightWriter:
    """Saves a trained module with `template`'s architecture, the command's `metadata`, the
    metrics measured so far and the run's seed and length, so that a weights file says how it was
    made; the trainer calls it for the best and the final weights."""
    def write(path: str, module: nn.Module, measured: Mapping[str, Any]) -> None:
        save_model(path, dataclasses.replace(template, module=module), **metadata,
                   metrics=dict(measured), seed=settings.seed, iterations=settings.iters)

    return write


def open_run_folder(run: RunFolder, place: Distributed, resume: bool, force: bool,
                    settings: TrainingSettings, teacher: tuple[Path | None, str | None]
                    ) -> dict[str, Any] | None:
    """Locks and checks the run folder on rank 0 (`RunFolder.lock`, `prepare`); on resume reads
    its checkpoint (returned) and refuses what would rewrite the run instead of continuing it;
    then writes `config.toml`, again on resume, so that it stays true after accepted changes
    (`--iters`, the teacher's path). Every rank waits for rank 0 before going on."""
    if place.is_main:
        run.lock()
        run.prepare(resume, force)
    checkpoint = run.load_checkpoint() if resume else None
    if checkpoint is not None:
        reached = int(checkpoint["iteration"])
        if settings.iters < reached:
            raise UserInputError(
                f"--iters {settings.iters} is below the {reached} iterations the run in "
                f"{run.root} has already trained: resume with --iters {reached} or more, or "
                "start a new run.")
        teacher_file, teacher_sha256 = teacher
        saved = checkpoint.get("teacher_sha256")
        if saved is not None and teacher_sha256 is not None and saved != teacher_sha256 \
                and not force:
            raise UserInputError(
                f"The teacher {teacher_file} is not the one the run in {run.root} "
                f"started with (its content differs: sha256 {teacher_sha256[:12]}... instead of "
                f"{saved[:12]}...): pass the original teacher, or --force to continue with this "
                "one.")
    if place.is_main:
        run.write_config(settings.config_toml())
    place.barrier()
    return checkpoint


def train_to_end(trainer: Trainer, run: RunFolder, place: Distributed,
                 checkpoint: dict[str, Any] | None, save_weights: WeightWriter) -> bool:
    """Trains (from `checkpoint`, on resume) and writes the final weights to `run.weights` with
    the last validation; False when Ctrl-C stopped the run first."""
    if checkpoint is not None:
        trainer.load_state(checkpoint)
    try:
        completed = trainer.train()
    finally:
        trainer.close()
    if completed and place.is_main:
        last = trainer.record.validations[-1] if trainer.record.validations else {}
        with trainer.naming_last_checkpoint():
            save_weights(str(run.weights), trainer.final_module,
                         {"iteration": trainer.iteration, **last})
    place.barrier()
    return completed

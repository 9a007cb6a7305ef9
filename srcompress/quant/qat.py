"""`quantize()`: quantization-aware training guided by distillation (`srcompress quantize`).

The model's convolutions are replaced by fake-quant ones (`quantize_modules`), their activation
ranges calibrated on a few training batches, and the model is then fine-tuned by the distillation
engine: the same Trainer, run folder, progress, validation and resume as `distill`, with the
full-precision model (or `teacher`) as the frozen teacher. `method="dukd"` (default) trains on
DUKD's upcycled data too, `"kd"` on the pairs only, `"none"` with the plain L1 loss.

Settings resolve as in `distill` (see `srcompress.train.settings`: defaults ← `config` TOML ←
arguments; on resume the run's own `config.toml` wins and only `RESUMABLE_CHANGES` may differ).
The run folder holds `quantized.safetensors` (the final, EMA, weights with their quantisation
parameters and the `quant` metadata that `load_model` rebuilds them from) instead of
`student.safetensors`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from srcompress.data.training import PatchBatches, load_training_images, memory_bytes
from srcompress.errors import UserInputError
from srcompress.methods import create_method
from srcompress.quant.calibration import calibrate
from srcompress.quant.fakequant import (
    QuantizationReport,
    check_bits,
    describe_quantization,
    is_quantized,
    quantize_modules,
)
from srcompress.train import distributed
from srcompress.train import settings as run_settings
from srcompress.train.distill import demo_data_folder
from srcompress.train.loop import Reporter, Trainer
from srcompress.train.runs import open_run_folder, train_to_end
from srcompress.train.settings import TRAINING_DEFAULTS
from srcompress.train.state import RunFolder

# `none` is the comparison without a teacher: the student's own L1 loss (the `scratch` method).
QAT_METHODS = {"dukd": "dukd", "kd": "kd", "none": "scratch"}

DEFAULTS: dict[str, Any] = {
    **TRAINING_DEFAULTS,
    "model": None,
    "teacher": None,  # None: a frozen copy of the model's own full-precision weights
    "w_bits": 8,
    "a_bits": 8,
    "scope": "body",
    "calibration_batches": 8,
    # Fine-tuning starts from a trained model, so it needs far fewer iterations than distillation.
    "iters": 30_000,
}
QUANTIZED_FILE = "quantized.safetensors"


@dataclass(frozen=True)
class QuantizeResult:
    """Where the run wrote its files, what was quantised, and what it measured."""

    output: Path
    quantized: Path
    best: Path | None
    report: QuantizationReport
    metrics: dict[str, Any]
    completed: bool


class QuantRunFolder(RunFolder):
    """The distill run folder, with the final weights in `quantized.safetensors`."""

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.student = self.root / QUANTIZED_FILE


def quantize(
    model: str | Path,
    teacher: str | Path | None = None,
    method: str | None = None,
    w_bits: int | None = None,
    a_bits: int | None = None,
    scope: str | None = None,
    calibration_batches: int | None = None,
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
) -> QuantizeResult:
    """Quantise `model` to `w_bits`/`a_bits` and fine-tune it, distilling from `teacher`.

    Every argument left as None takes its value from `config` (a TOML file) or `DEFAULTS`.
    Returns when the run finishes or is stopped by Ctrl-C (`completed` False; `resume=True`
    continues it). Raises `UserInputError` for bad inputs, including bit-widths outside 2..8, a
    model that is already quantized, or an unsupported layer inside the quantised scope.
    """
    given = {key: value for key, value in {
        "model": model, "teacher": teacher, "method": method, "w_bits": w_bits,
        "a_bits": a_bits, "scope": scope, "calibration_batches": calibration_batches,
        "train_data": train_data, "val_benchmarks": val_benchmarks, "scale": scale, "iters": iters,
        "batch_size": batch_size, "patch_size": patch_size, "lr": lr, "seed": seed,
        "device": device, "amp": amp, "ema": ema, "workers": workers, "output": output,
        "save_every": save_every, "method_options": method_options, "data_root": data_root,
        "val_every": val_every, "schedule": schedule, "milestones": milestones, "gamma": gamma,
        "grad_clip": grad_clip, "log_every": log_every,
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

    On resume MODEL (required on the command line) and the teacher are not compared with the
    saved ones, which the run keeps: the checkpoint continues the quantised model it was made from.
    """
    settings = run_settings.resolve_settings(given, resume, DEFAULTS,
                                             kept_on_resume=frozenset({"model", "teacher"}))
    return _checked(settings)


def _checked(settings: dict[str, Any]) -> dict[str, Any]:
    if settings["model"] is None:
        raise UserInputError("quantize needs a MODEL: the full-precision checkpoint to quantize.")
    if settings["method"] not in QAT_METHODS:
        raise UserInputError(f"--method {settings['method']} is not a quantization method: use "
                             f"{', '.join(QAT_METHODS)}.")
    check_bits(settings["w_bits"], "--w-bits")
    check_bits(settings["a_bits"], "--a-bits")
    if settings["scope"] not in ("body", "all"):
        raise UserInputError(f"the quantization scope {settings['scope']!r} is unknown: use "
                             "'body' (default) or 'all' (--quantize-all).")
    batches = settings["calibration_batches"]
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise UserInputError(f"--calibration-batches must be a whole number of at least 1, got "
                             f"{run_settings.show(batches)}.")
    return run_settings.check_training_settings(settings)


def _run(settings: dict[str, Any], resume: bool, reporter: Reporter | None) -> QuantizeResult:
    from srcompress import models

    device = run_settings.resolve_device(settings["device"])
    method = create_method(QAT_METHODS[settings["method"]], **settings["method_options"])
    loaded = models.load_model(settings["model"], device="cpu")
    if is_quantized(loaded.module):
        raise UserInputError(
            f"{settings['model']} is already quantized ({describe_quantization(loaded.module)}): "
            "pass its full-precision checkpoint to quantize it again.")
    scale = loaded.scale
    if settings["scale"] is not None and settings["scale"] != scale:
        raise UserInputError(f"--scale {settings['scale']} differs from the model's x{scale}: "
                             "drop --scale.")
    settings["scale"] = scale
    teacher = _teacher(models, settings, loaded, method.needs_teacher)
    report = quantize_modules(loaded.module, settings["w_bits"], settings["a_bits"],
                              settings["scope"])
    settings["method_options"] = dataclasses.asdict(method.options)
    if settings["train_data"] is None:
        settings["train_data"] = [str(demo_data_folder())]
    if settings["output"] is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        bits = f"w{settings['w_bits']}a{settings['a_bits']}"
        settings["output"] = str(Path("runs") / f"{Path(settings['model']).stem}-{bits}-"
                                 f"{settings['method']}-{stamp}")
    settings["model"] = str(Path(settings["model"]).resolve())
    if settings["teacher"] is not None:
        settings["teacher"] = str(Path(settings["teacher"]).resolve())

    torch.manual_seed(settings["seed"])
    method.reseed(settings["seed"])
    data = load_training_images(settings["train_data"], scale, settings["patch_size"])
    place = distributed.setup(device)
    run = QuantRunFolder(settings["output"])
    batches = PatchBatches(data, settings["patch_size"], settings["batch_size"], settings["seed"],
                           rank=place.rank)
    try:
        open_run_folder(run, place, resume, config_toml(settings))
        if reporter is not None and place.is_main:
            reporter.message(
                f"{len(data.images)} training images ({memory_bytes(data) / 2**20:.0f} MiB), "
                f"w{settings['w_bits']}a{settings['a_bits']} on {len(report.quantized)} layers "
                f"({len(report.full_precision)} kept in full precision), method "
                f"{settings['method']}, output {run.root}")
        if not resume:
            _calibrate(loaded.module, batches, settings["calibration_batches"], device)
        validate = (run_settings.validator(settings, scale, device) if settings["val_benchmarks"]
                    else None)
        save_weights = _weight_writer(loaded, settings, report)
        trainer = Trainer(
            loaded.module, teacher, method, batches, run_settings.train_settings(settings),
            device, run, place, validate=validate, save_weights=save_weights, reporter=reporter)
        completed = train_to_end(trainer, run, place, resume, save_weights)
    finally:
        distributed.teardown(place)
    metrics = trainer.record.as_dict(trainer.iteration)
    best = run.best if run.best.exists() else None
    return QuantizeResult(run.root, run.student, best, report, metrics, completed)


def _teacher(models: Any, settings: Mapping[str, Any], loaded: Any,
             needed: bool) -> nn.Module | None:
    """The frozen teacher: `--teacher`, else the model's own full-precision weights."""
    if not needed:
        if settings["teacher"] is not None:
            raise UserInputError(f"--method {settings['method']} trains without a teacher, so "
                                 "--teacher would be ignored: drop it or use --method kd/dukd.")
        return None
    if settings["teacher"] is None:
        return copy.deepcopy(loaded.module).eval().requires_grad_(False)
    teacher = models.load_model(settings["teacher"], device="cpu")
    if is_quantized(teacher.module):
        raise UserInputError(f"the teacher {settings['teacher']} is quantized: pass a "
                             "full-precision teacher (or none, to use the model's own weights).")
    if teacher.scale != loaded.scale:
        raise UserInputError(f"the teacher {settings['teacher']} upscales x{teacher.scale} but "
                             f"the model x{loaded.scale}: use a x{loaded.scale} teacher.")
    return teacher.module


def _calibrate(module: nn.Module, batches: PatchBatches, count: int,
               device: torch.device) -> None:
    """Activation ranges from the LR patches of the run's first `count` batches."""
    module.to(device)
    calibrate(module, (batches[iteration][0].to(device) for iteration in range(count)))


def config_toml(settings: Mapping[str, Any]) -> str:
    """The settings as a `--config` file (None values are left out: TOML has no null)."""
    return run_settings.config_toml(settings, "quantize MODEL")


def _weight_writer(loaded: Any, settings: Mapping[str, Any],
                   report: QuantizationReport) -> run_settings.WeightWriter:
    """Saves a fake-quant module with its `quant` metadata and the run's (rank 0 only)."""
    teacher = (Path(settings["teacher"]).name if settings["teacher"] is not None
               else f"{Path(settings['model']).name} (full precision)")
    return run_settings.weight_writer(
        loaded, settings, quant=report.metadata(), quant_method=settings["method"],
        quant_teacher=teacher, quantized_from=Path(settings["model"]).name)

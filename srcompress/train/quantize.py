"""`quantize()`: quantization-aware training guided by distillation (`srcompress quantize`).

The model becomes its fake-quant integer graph (`srcompress.quant.quantize_model`), its
activation ranges are calibrated on a few training batches, and the model is then fine-tuned by
the distillation run (`srcompress.train.run.run_training`, with `QuantizeJob`): the same
Trainer, run folder, progress, validation and resume as `distill`, with the full-precision model
(or `teacher`) as the frozen teacher. `method="dukd"` (default) trains on DUKD's upcycled data
too, `"kd"` on the pairs only, `"none"` with the plain L1 loss.

Post-training quantization is the same run with no iterations (`iters=0`, or `method="ptq"`):
calibrate, validate, write `quantized.safetensors`. Every run validates its calibrated start at
iteration 0 (`Job.starts_trained`; on fixed patches of the training images when there are no
validation benchmarks), so `best.safetensors` is never worse than post-training quantization
would have been. `trainable="ranges"` trains only the clipping ranges and leaves the float
weights as they are.

Settings resolve as in `distill` (see `srcompress.train.settings`). The run folder holds
`quantized.safetensors` (the final, EMA, weights with their quantisation parameters and the
`quant` metadata that `load_model` rebuilds them from) instead of `student.safetensors`.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from srcompress.data.degradation import resolve_degradation
from srcompress.data.training import PatchBatches
from srcompress.errors import UserInputError
from srcompress.methods import Method
from srcompress.models import LoadedModel, load_model, model_task
from srcompress.quant import (
    QUANTIZATION_TARGETS,
    QuantizationReport,
    calibrate,
    check_bits,
    describe_quantization,
    is_quantized,
    quantize_model,
)
from srcompress.train.loop import Reporter, training_batch
from srcompress.train.run import (
    Job,
    RunResult,
    on_device_degradation,
    run_training,
    task_defaults,
)
from srcompress.train.settings import Resume, TrainingSettings, setting

# `none` is the comparison without a teacher: the student's own L1 loss (the `scratch` method).
QAT_METHODS = {"dukd": "dukd", "kd": "kd", "none": "scratch"}
# `ptq` calibrates only (post-training quantization, the same as --iters 0); it trains nothing,
# so it needs no teacher, like `scratch`.
PTQ = "ptq"
QUANTIZE_METHODS = {**QAT_METHODS, PTQ: "scratch"}
TRAINABLE = ("all", "ranges")
# QAT's default learning rate by bit-width (see `default_learning_rate`): measured at 8, 6, 4 and
# 2 bits, interpolated on a log scale at 7 and 5.
DEFAULT_LEARNING_RATES = {8: 1e-5, 7: 1.8e-5, 6: 3.2e-5, 5: 1e-4, 4: 3.2e-4, 3: 3.2e-4, 2: 3.2e-4}
QUANTIZED_FILE = "quantized.safetensors"


@dataclass
class QuantizeSettings(TrainingSettings):
    # MODEL (required on the command line) and the teacher are not compared on resume, and the
    # run keeps the saved ones: the checkpoint continues the quantised model it was made from.
    model: Path | None = setting(None, flag="MODEL", resume=Resume.KEPT)
    teacher: Path | None = setting(
        None, resume=Resume.KEPT,
        help="Full-precision teacher (default: a frozen copy of MODEL's own weights).")
    w_bits: int = setting(8, help="Weight bits, 2 to 8, per output channel (default: 8).")
    a_bits: int = setting(8, help="Activation bits, 2 to 8, with learned clipping ranges "
                          "(default: 8).")
    scope: str = setting("body", flag="--quantize-all")
    float_output: bool = setting(
        False, help="Keep the output convolution in float (default: quantized, as onnxruntime's "
        "quantize_static does; float is about 0.01 dB closer to the float model and up to 5 % "
        "slower).")
    target: str = setting(
        "onnxruntime", metavar="onnxruntime|tensorrt",
        help="Runtime whose integer grid training simulates: onnxruntime (ReLU outputs on "
        "uint8 0..255; default) or tensorrt (int8 with zero point 0, ReLU outputs on 0..127, so "
        "`export --target tensorrt` is exact at 8 bits).")
    strict: bool = setting(
        False, help="Exit 2 when a layer cannot be quantized (default: keep it in float and "
        "name it in the run's first line).")
    calibration_batches: int = setting(
        8, help="Training batches that set the initial activation ranges (default: 8).")
    method: str = setting(
        "dukd", help="dukd (upcycled data + KD), kd, none (plain L1), or ptq (calibrate only, "
        "no training: the same as --iters 0) (default: dukd).")
    trainable: str = setting(
        "all", help="What QAT trains: all (weights and quantization ranges) or ranges (only "
        "the clipping ranges; the float weights stay as they are) (default: all).")
    scale: int | None = setting(
        None, help="Upscaling factor; must be the model's (default: the model's).")
    # None: chosen by bit-width (`default_learning_rate`), written resolved into config.toml.
    lr: float | None = setting(
        None, help="Adam learning rate (default: by the coarser of --w-bits/--a-bits: 1e-5 at "
        "8 bits, 3.2e-5 at 6, 3.2e-4 at 4 and below; measured in docs/results.md).")
    # Fine-tuning starts from a trained model, so it needs far fewer iterations than distillation.
    iters: int = setting(30_000, resume=Resume.CHANGES,
                         help="Training iterations; 0 calibrates only (post-training "
                         "quantization) (default: 30000).")
    output: Path | None = setting(
        None, resume=Resume.CHANGES,
        help="Run folder (default: runs/<model-stem>-w<W>a<A>-<method>-<date>).")

    COMMAND: typing.ClassVar[str] = "quantize MODEL"
    MIN_ITERS: typing.ClassVar[int] = 0

    def check(self) -> QuantizeSettings:
        if self.model is None:
            raise UserInputError("quantize needs a MODEL: the full-precision checkpoint to "
                                 "quantize.")
        if self.method not in QUANTIZE_METHODS:
            raise UserInputError(f"--method {self.method} is not a quantization method: use "
                                 f"{', '.join(QUANTIZE_METHODS)}.")
        if self.method == PTQ and self.iters != 0:
            raise UserInputError(f"--method ptq calibrates only, so --iters {self.iters} would be "
                                 "ignored: drop --iters, or choose dukd, kd or none to train.")
        if self.trainable not in TRAINABLE:
            raise UserInputError(f"--trainable {self.trainable} is unknown: use "
                                 f"{' or '.join(TRAINABLE)}.")
        check_bits(self.w_bits, "--w-bits")
        check_bits(self.a_bits, "--a-bits")
        if self.scope not in ("body", "all"):
            raise UserInputError(f"the quantization scope {self.scope!r} is unknown: use "
                                 "'body' (default) or 'all' (--quantize-all).")
        if self.target not in QUANTIZATION_TARGETS:
            raise UserInputError(f"--target {self.target} is unknown: use "
                                 f"{', '.join(QUANTIZATION_TARGETS)}.")
        if self.calibration_batches < 1:
            raise UserInputError(f"--calibration-batches must be a whole number of at least 1, "
                                 f"got {self.calibration_batches}.")
        if self.lr is None:
            self.lr = default_learning_rate(self.w_bits, self.a_bits)
        return super().check()


def default_learning_rate(w_bits: int, a_bits: int) -> float:
    """QAT's learning rate when none is given, by the coarser of the two grids (it dominates the
    error): `DEFAULT_LEARNING_RATES`, measured in docs/results.md (benchmarks/qat_defaults.py).

    Adam moves every weight by about the learning rate at each step, whatever its gradient. A
    converged model calibrated at 8 bits is already close to its float self: twenty steps of 1e-4
    (distillation's rate) cost a converged EDSR 0.22 dB below its calibrated start, while 1e-5
    keeps it there and gains slowly. At 4 and 2 bits calibration loses decibels and the grid is 16
    to 64 times coarser; 1e-5 recovers a fraction of what 3.2e-4 does in the same iterations.
    """
    return DEFAULT_LEARNING_RATES[min(w_bits, a_bits)]


@dataclass(frozen=True)
class QuantizeResult(RunResult):
    """Where the run wrote its files (`quantized` is the final weights), what was quantised, and
    what it measured."""

    report: QuantizationReport | None = None

    @property
    def quantized(self) -> Path:
        return self.weights


def quantize(
    model: str | Path,
    teacher: str | Path | None = None,
    method: str | None = None,
    w_bits: int | None = None,
    a_bits: int | None = None,
    scope: str | None = None,
    float_output: bool | None = None,
    target: str | None = None,
    strict: bool | None = None,
    calibration_batches: int | None = None,
    trainable: str | None = None,
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
    force: bool = False,
) -> QuantizeResult:
    """Quantise `model` to `w_bits`/`a_bits` and fine-tune it, distilling from `teacher`.

    Every argument left as None takes its value from `config` (a TOML file) or the defaults of
    `QuantizeSettings`. Returns when the run finishes or is stopped by Ctrl-C (`completed` False;
    `resume=True` continues it). Raises `UserInputError` for bad inputs, including bit-widths
    outside 2..8, a model that is already quantized, or (with `strict`) a layer srcompress
    cannot quantise; `RunDivergedError` (its files kept) when the run ends worse than it started.
    `force` writes into an `output` folder of other files, and resumes with a teacher whose
    content differs from the run's.
    """
    given = QuantizeSettings.from_arguments(locals())
    if config is not None:
        given = {**QuantizeSettings.read_config(config), **given}
    if given.get("method") == PTQ and "iters" not in given:
        given["iters"] = 0
    settings = QuantizeSettings.resolve(given, resume)
    job = QuantizeJob()
    result = run_training(settings, job, resume, reporter, force)
    return QuantizeResult(**vars(result), report=job.report)


class QuantizeJob(Job[QuantizeSettings]):
    """MODEL with fake-quant layers, calibrated before training, taught by its own full-precision
    weights (or `--teacher`)."""

    weights_name = QUANTIZED_FILE
    method_names = QUANTIZE_METHODS
    starts_trained = True

    def __init__(self) -> None:
        self.loaded: LoadedModel | None = None
        self.report: QuantizationReport | None = None

    def load(self, settings: QuantizeSettings, method: Method) -> None:
        loaded = load_model(settings.model, device="cpu")
        if is_quantized(loaded.module):
            raise UserInputError(
                f"{settings.model} is already quantized ({describe_quantization(loaded.module)}):"
                " pass its full-precision checkpoint to quantize it again.")
        if settings.scale is not None and settings.scale != loaded.scale:
            raise UserInputError(f"--scale {settings.scale} differs from the model's "
                                 f"x{loaded.scale}: drop --scale.")
        settings.scale = loaded.scale
        self.warnings = task_defaults(settings, model_task(loaded), "model")
        self.teacher = self._teacher(settings, loaded, method.needs_teacher)
        float_parameters = list(loaded.module.parameters())
        loaded.module, self.report = quantize_model(loaded.module, settings.w_bits,
                                                    settings.a_bits, settings.scope,
                                                    strict=settings.strict,
                                                    target=settings.target,
                                                    float_output=settings.float_output)
        if settings.trainable == "ranges":
            _freeze(float_parameters, loaded.module)
        self.loaded = loaded
        settings.model = settings.model.resolve()
        if settings.teacher is not None:
            settings.teacher = settings.teacher.resolve()

    @staticmethod
    def _teacher(settings: QuantizeSettings, loaded: LoadedModel,
                 needed: bool) -> nn.Module | None:
        """The frozen teacher: `--teacher`, else the model's own full-precision weights."""
        if not needed:
            if settings.teacher is not None:
                does = ("calibrates only" if settings.method == PTQ
                        else "trains without a teacher")
                raise UserInputError(f"--method {settings.method} {does}, so --teacher would be "
                                     "ignored: drop it or use --method kd/dukd.")
            return None
        if settings.teacher is None:
            return copy.deepcopy(loaded.module).eval().requires_grad_(False)
        teacher = load_model(settings.teacher, device="cpu")
        if is_quantized(teacher.module):
            raise UserInputError(f"the teacher {settings.teacher} is quantized: pass a "
                                 "full-precision teacher (or none, to use the model's own "
                                 "weights).")
        if teacher.scale != loaded.scale:
            raise UserInputError(f"the teacher {settings.teacher} upscales x{teacher.scale} but "
                                 f"the model x{loaded.scale}: use a x{loaded.scale} teacher.")
        return teacher.module

    def student(self, settings: QuantizeSettings) -> LoadedModel:
        assert self.loaded is not None, "load() comes first"
        return self.loaded

    def output_name(self, settings: QuantizeSettings) -> str:
        method = PTQ if settings.iters == 0 else settings.method
        return f"{settings.model.stem}-w{settings.w_bits}a{settings.a_bits}-{method}"

    def summary(self, settings: QuantizeSettings) -> str:
        report = self.report
        skipped = f"{report.skipped_sentence()}; " if report.skipped else ""
        trained = ("calibration only (post-training quantization)" if settings.iters == 0
                   else f"training {settings.trainable}")
        return (f"{skipped}w{settings.w_bits}a{settings.a_bits} on {len(report.quantized)} "
                f"layers ({len(report.full_precision)} kept in full precision), {trained}")

    def before_training(self, settings: QuantizeSettings, module: nn.Module,
                        batches: PatchBatches, device: torch.device) -> None:
        """Activation ranges from the inputs of the run's first calibration batches (degraded as
        training degrades them)."""
        module.to(device)
        degradation = on_device_degradation(resolve_degradation(settings.degradation))

        def inputs(iteration: int) -> torch.Tensor:
            lr, hr, _ = batches[iteration]
            return training_batch(lr.to(device), hr.to(device), batches.scale, degradation,
                                  settings.seed, iteration, batches.rank).lr

        calibrate(module, (inputs(iteration) for iteration in range(settings.calibration_batches)))

    def teacher_file(self, settings: QuantizeSettings) -> Path | None:
        if self.teacher is None:
            return None
        return settings.teacher if settings.teacher is not None else settings.model

    def weights_metadata(self, settings: QuantizeSettings) -> dict[str, Any]:
        if settings.iters == 0:
            method, teacher = PTQ, "none (calibration only)"
        else:
            method = settings.method
            teacher = (settings.teacher.name if settings.teacher is not None
                       else f"{settings.model.name} (full precision)")
        return {"quant": self.report.metadata(), "quant_method": method,
                "quant_teacher": teacher, "quantized_from": settings.model.name}


def _freeze(float_parameters: list[nn.Parameter], module: nn.Module) -> None:
    """Trains only what quantization added (the clipping ranges): the float model's own
    parameters, which the quantized layers keep as they are, stop receiving gradients."""
    for parameter in float_parameters:
        parameter.requires_grad_(False)
    if not any(parameter.requires_grad for parameter in module.parameters()):
        raise UserInputError("--trainable ranges found no quantization range to train in this "
                             "model: use --trainable all.")

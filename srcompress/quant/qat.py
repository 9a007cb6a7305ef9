"""`quantize()`: quantization-aware training guided by distillation (`srcompress quantize`).

The model's convolutions are replaced by fake-quant ones (`quantize_modules`), their activation
ranges calibrated on a few training batches, and the model is then fine-tuned by the distillation
engine: the same Trainer, run folder, progress, validation and resume as `distill`, with the
full-precision model (or `teacher`) as the frozen teacher. `method="dukd"` (default) trains on
DUKD's upcycled data too, `"kd"` on the pairs only, `"none"` with the plain L1 loss.

Settings resolve as in `distill` (defaults ← `config` TOML ← arguments; on resume the run's own
`config.toml` wins and only `RESUMABLE_CHANGES` may differ). The run folder holds
`quantized.safetensors` (the final, EMA, weights with their quantisation parameters and the `quant`
metadata that `load_model` rebuilds them from) instead of `student.safetensors`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
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
from srcompress.train import distill as distill_api
from srcompress.train import distributed
from srcompress.train.loop import Reporter, Trainer, ValidationResults
from srcompress.train.state import RunFolder

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# `none` is the comparison without a teacher: the student's own L1 loss (the `scratch` method).
QAT_METHODS = {"dukd": "dukd", "kd": "kd", "none": "scratch"}

DEFAULTS: dict[str, Any] = {
    **{key: value for key, value in distill_api.DEFAULTS.items()
       if key not in ("teacher", "student")},
    "model": None,
    "teacher": None,  # None: a frozen copy of the model's own full-precision weights
    "method": "dukd",
    "w_bits": 8,
    "a_bits": 8,
    "scope": "body",
    "calibration_batches": 8,
    # Fine-tuning starts from a trained model, so it needs far fewer iterations than distillation.
    "iters": 30_000,
}
RESUMABLE_CHANGES = distill_api.RESUMABLE_CHANGES
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
    saved_path = QuantRunFolder(given["output"]).config
    if not saved_path.is_file():
        raise UserInputError(
            f"--resume found no run configuration at {saved_path}: pass the --output folder of "
            "the run to continue, or drop --resume to start a new run.")
    saved = _normalised({**DEFAULTS, **read_config(saved_path)})
    for key, value in given.items():
        if key in RESUMABLE_CHANGES or key in ("model", "teacher") or value == saved.get(key):
            continue
        if key == "method_options" and all(str(saved[key].get(k)).lower() == str(v).lower()
                                           for k, v in value.items()):
            continue
        raise UserInputError(
            f"{_flag(key)} {_show(value)} differs from the run being resumed "
            f"({_show(saved.get(key))}): drop it, or start a new run without --resume.")
    changes = {key: value for key, value in given.items() if key in RESUMABLE_CHANGES}
    return _checked({**saved, **changes})


def _flag(key: str) -> str:
    names = {"val_benchmarks": "--val-benchmark", "train_data": "--train-data",
             "method_options": "the method options", "scope": "--quantize-all"}
    return names.get(key, "--" + key.replace("_", "-"))


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _normalised(settings: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(settings)
    for key in ("model", "teacher", "output", "data_root"):
        if result.get(key) is not None:
            result[key] = str(result[key])
    for key in ("train_data", "val_benchmarks", "milestones"):
        if result.get(key) is not None:
            if isinstance(result[key], str | Path):
                result[key] = [result[key]]
            result[key] = [str(item) if isinstance(item, Path) else item for item in result[key]]
    if "method_options" in result:
        result["method_options"] = dict(result["method_options"])
    return result


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
                             f"{_show(batches)}.")
    training = {key: value for key, value in settings.items() if key in distill_api.DEFAULTS}
    return {**settings, **distill_api._checked(training)}


def _run(settings: dict[str, Any], resume: bool, reporter: Reporter | None) -> QuantizeResult:
    from srcompress import models

    device = distill_api._device(settings["device"])
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
        settings["train_data"] = [str(distill_api.demo_data_folder())]
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
        if place.is_main:
            run.prepare(resume)
            if not resume:
                run.write_config(config_toml(settings))
        place.barrier()
        if reporter is not None and place.is_main:
            reporter.message(
                f"{len(data.images)} training images ({memory_bytes(data) / 2**20:.0f} MiB), "
                f"w{settings['w_bits']}a{settings['a_bits']} on {len(report.quantized)} layers "
                f"({len(report.full_precision)} kept in full precision), method "
                f"{settings['method']}, output {run.root}")
        if not resume:
            _calibrate(loaded.module, batches, settings["calibration_batches"], device)
        validate = (_validator(settings, scale, device) if settings["val_benchmarks"] else None)
        trainer = Trainer(
            loaded.module, teacher, method, batches, distill_api._train_settings(settings),
            device, run, place, validate=validate,
            save_weights=_weight_writer(models, loaded, settings, report), reporter=reporter)
        if resume:
            trainer.load_state(run.load_checkpoint())
        try:
            completed = trainer.train()
        finally:
            trainer.close()
        if completed and place.is_main:
            last = trainer.record.validations[-1] if trainer.record.validations else {}
            _weight_writer(models, loaded, settings, report)(
                str(run.student), trainer.final_module,
                {"iteration": trainer.iteration, **last})
        place.barrier()
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


def _validator(settings: Mapping[str, Any], scale: int, device: torch.device):
    """Y-PSNR/SSIM on the validation benchmarks, with the project's evaluation protocol."""
    from srcompress.evaluation import evaluate

    benchmarks = list(settings["val_benchmarks"])

    def validate(module: nn.Module) -> ValidationResults:
        results = evaluate(module, benchmarks=benchmarks, scale=scale,
                           data_root=settings["data_root"], device=str(device))
        return {result["benchmark"]: {"psnr": result["psnr"], "ssim": result["ssim"]}
                for result in results["results"]}

    return validate


def config_toml(settings: Mapping[str, Any]) -> str:
    """The settings as a `--config` file (None values are left out: TOML has no null)."""
    header = ("# srcompress quantize: every setting of this run; repeat it with\n"
              "# srcompress quantize MODEL --config config.toml --output NEW_FOLDER\n")
    plain = {key: value for key, value in settings.items() if value is not None}
    return header + tomli_w.dumps(plain)


def _weight_writer(models: Any, loaded: Any, settings: Mapping[str, Any],
                   report: QuantizationReport):
    """Saves a fake-quant module with its `quant` metadata and the run's (rank 0 only)."""
    def write(path: str, module: nn.Module, measured: Mapping[str, Any]) -> None:
        quantized = dataclasses.replace(loaded, module=module)
        teacher = (Path(settings["teacher"]).name if settings["teacher"] is not None
                   else f"{Path(settings['model']).name} (full precision)")
        models.save_model(path, quantized, quant=report.metadata(),
                          quant_method=settings["method"], quant_teacher=teacher,
                          quantized_from=Path(settings["model"]).name, metrics=dict(measured),
                          seed=settings["seed"], iterations=settings["iters"])

    return write

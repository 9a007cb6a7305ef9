"""ONNX export that is checked against PyTorch before the file is allowed to exist.

Which of torch's two exporters: by default the TorchScript one (`dynamo=False`), with the dynamo
one (`torch.export`) as the fallback for models the TorchScript exporter cannot convert. Measured
with torch 2.14 on a shared 2-core CPU, export of the SwinIR-light student (`swinir-c60s24`) took
521 s with dynamo and 23-36 s with TorchScript, ESRGAN c32b6 10.8 s vs 3.9 s, RCAN c64g10b6
14.0 s vs 11.0 s, and both files matched PyTorch within 4e-7 at every size tried. Both handle
spandrel's SwinIR, which pads its input to a multiple of its window and builds its attention
masks from the padded size: the traced shape arithmetic stays symbolic. Quantized models always
take the TorchScript exporter, the one that emits Q/DQ pairs (see `srcompress.export.qdq`).

The batch axis is fixed at 1: spandrel's window transformers turn the batch size into a constant
while tracing (`int(windows.shape[0] / ...)`), so a dynamic batch would silently compute wrong
results for other batch sizes; runners feed one image or tile at a time anyway.

fp16 files are converted after export by onnxruntime's own float16 converter with float32 inputs
and outputs kept, so every consumer feeds the same [0, 1] float32 RGB tensor whatever the
precision; converting the graph rather than exporting `module.half()` also works for models whose
eager code mixes dtypes (SwinIR builds its masks in float32).

Every export is verified before the file is renamed into place (`srcompress.export.verify`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from srcompress._version import __version__
from srcompress.devices import import_onnxruntime
from srcompress.errors import UserInputError, WorkFailedError
from srcompress.export.qdq import (
    INT4_FORMS,
    QDQ_OPSET,
    QUANTIZATION_TARGETS,
    qdq_export_mode,
    runtime_operator_counts,
)
from srcompress.export.verify import (
    DEFAULT_ATOL,
    crop_or_resize,
    onnxruntime_difference,
    reference_difference,
    torch_outputs,
    verification_image,
    verification_sizes,
)
from srcompress.files import atomic_path
from srcompress.models import LoadedModel
from srcompress.quant import is_quantized

# The TorchScript exporter's default: new enough for every op these models use, old enough for
# TensorRT and older onnxruntime builds.
_TORCHSCRIPT_OPSET = 17
EXPORTERS = ("auto", "torchscript", "dynamo")
# Pad with reflection and Resize as SR models use them need opset 11.
_OLDEST_OPSET = 11
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "torch.__trace",
                  "onnxscript")

ProgressCallback = Callable[[str], None]


@dataclass
class ExportReport:
    """What an export produced and how well onnxruntime reproduced PyTorch (`--json` schema)."""

    output: str
    architecture: str
    scale: int
    precision: str
    exporter: str
    opset: int
    dynamic: bool
    input_shape: list[int | str]
    verified: bool
    max_abs_diff: float | None
    p99_abs_diff: float | None
    atol: float
    verification_provider: str | None
    verification_image: str
    verification_sizes: list[list[int]]
    not_verified_reason: str | None = None
    export_seconds: float = 0.0
    verify_seconds: float = 0.0
    file_bytes: int = 0
    qdq_nodes: dict[str, int] | None = None
    runtime_ops: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    # The TensorRT form: verification runs its onnxruntime form (the same model in uint8, which
    # onnxruntime fuses into the kernels QAT simulates) against PyTorch, and this is the largest
    # difference between the two files with every graph optimisation off (0: the same results).
    form_difference: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# TensorRT's form keeps 8-bit weight containers; onnxruntime's packs INT4 and casts it at load.
_DEFAULT_INT4 = {"onnxruntime": "cast", "tensorrt": "none"}


class VerificationFailedError(WorkFailedError):
    """onnxruntime's output is further from PyTorch's than `atol`; nothing was written."""

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message)
        self.report = report


def export_onnx(model: LoadedModel, output: str | Path, opset: int | None = None,
                dynamic: bool = True, input_size: tuple[int, int] | None = None,
                fp16: bool = False, force: bool = False, atol: float | None = None,
                verify_image: str | Path | None = None, exporter: str = "auto",
                int4: str | None = None, target: str = "onnxruntime",
                progress: ProgressCallback | None = None) -> ExportReport:
    """Export `model` to `output` (.onnx) and verify it with onnxruntime against PyTorch.

    `atol` defaults by precision (1e-4 fp32, 1e-2 fp16, one grey level on 99 % of values for
    quantized models). With `dynamic`, height and
    width are symbolic and `input_size` (h, w) only sets the traced and verified size; static
    exports need it. `exporter` is `auto` (TorchScript, else dynamo), `torchscript` or `dynamo`.
    `int4` chooses how a quantized model's weights of 4 bits or fewer are stored (see
    `srcompress.export.qdq`; default "cast"); a float model refuses it. `target` is the runtime
    a quantized model's Q/DQ nodes are written for: "onnxruntime" (uint8, fused by its CPU
    kernels) or "tensorrt" (int8 with zero point 0 and float biases, still verified here with
    onnxruntime, which runs that form too).
    Raises UserInputError for bad arguments, an existing output without `force`, an unwritable
    folder or an architecture that cannot be exported (naming the operator), and
    VerificationFailedError (a WorkFailedError) when the file does not reproduce PyTorch; in
    every failure the target path is left as it was.
    """
    output = Path(output)
    notify = progress or (lambda _message: None)
    quantized = _is_quantized(model)
    precision = "int8" if quantized else "fp16" if fp16 else "fp32"
    tolerance = DEFAULT_ATOL[precision] if atol is None else atol
    _check_arguments(output, opset, dynamic, input_size, fp16, quantized, force, tolerance,
                     exporter, int4, target)
    image, image_label = verification_image(verify_image)
    sizes = verification_sizes(image, dynamic, input_size)
    inputs = [crop_or_resize(image, size)[None] for size in sizes]
    module = copy.deepcopy(model.module).cpu().float().eval()

    with atomic_path(output) as temporary:
        notify(f"exporting {model.arch} x{model.scale} to ONNX ({precision})")
        started = time.perf_counter()
        if quantized:
            proto, qdq_nodes = _export_quantized(module, inputs[0], temporary, opset, dynamic,
                                                 model.arch, int4 or _DEFAULT_INT4[target],
                                                 target)
            exporter_used = "torchscript"
        else:
            proto, exporter_used = _export_float(module, inputs[0], opset, dynamic, model.arch,
                                                 exporter)
            qdq_nodes = None
        actual_opset = _default_opset(proto)
        if opset is not None and actual_opset != opset:
            raise UserInputError(
                f"--opset {opset} is not available for {model.arch}: torch's exporter produced "
                f"opset {actual_opset}; use --opset {actual_opset} or leave --opset out.")
        if dynamic:
            _check_dynamic(proto, model.arch)
        if fp16:
            proto = _to_fp16(proto)
        metadata = _metadata(model, precision, dynamic, proto)
        _set_metadata(proto, metadata)
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(temporary))
        export_seconds = time.perf_counter() - started

        notify(f"verifying with onnxruntime on {image_label} at "
               + ", ".join(f"{h}x{w}" for h, w in sizes))
        started = time.perf_counter()
        references = torch_outputs(module, inputs)
        form_difference = None
        if target == "tensorrt":
            with tempfile.TemporaryDirectory() as folder:
                runtime_form = Path(folder) / "onnxruntime.onnx"
                _export_quantized(module, inputs[0], runtime_form, opset, dynamic, model.arch,
                                  "none", "onnxruntime")
                differences, provider, reason = onnxruntime_difference(
                    runtime_form, inputs, references, precision)
                form_difference = reference_difference(temporary, runtime_form, inputs)
        else:
            differences, provider, reason = onnxruntime_difference(temporary, inputs, references,
                                                                    precision)
        worst, p99 = differences if differences else (None, None)
        runtime_ops = runtime_operator_counts(temporary) if quantized else None
        difference = p99 if quantized else worst
        criterion = "99 % of values" if quantized else "up to"
        report = ExportReport(
            output=str(output), architecture=model.arch, scale=model.scale, precision=precision,
            exporter=exporter_used, opset=actual_opset, dynamic=dynamic,
            input_shape=_input_shape(proto),
            verified=(difference is not None and difference <= tolerance
                      and form_difference in (None, 0.0)),
            max_abs_diff=worst, p99_abs_diff=p99, atol=tolerance, verification_provider=provider,
            verification_image=image_label, verification_sizes=[list(size) for size in sizes],
            not_verified_reason=reason, export_seconds=round(export_seconds, 3),
            verify_seconds=round(time.perf_counter() - started, 3),
            file_bytes=temporary.stat().st_size, qdq_nodes=qdq_nodes, runtime_ops=runtime_ops,
            metadata={entry.key: entry.value for entry in proto.metadata_props},
            form_difference=form_difference)
        if form_difference not in (None, 0.0):
            raise VerificationFailedError(
                f"Verification failed: the TensorRT form differs from the onnxruntime form by up "
                f"to {form_difference:.3g} under ONNX's reference semantics; {output} was not "
                "written.", report)
        if difference is not None and not difference <= tolerance:
            raise VerificationFailedError(
                f"Verification failed: onnxruntime ({provider}) differs from PyTorch by "
                f"{criterion} {difference:.3g} on {image_label}, above --atol {tolerance:g}; "
                f"{output} was not "
                f"written{_other_exporter_hint(exporter, exporter_used, quantized)}.", report)
    return report


def default_output(model_path: str | Path, fp16: bool = False) -> Path:
    """`student.safetensors` → `student.onnx` (or `student-fp16.onnx`), next to the model."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ("-fp16" if fp16 else "") + ".onnx")


def parse_input_size(text: str) -> tuple[int, int]:
    """`64` or `64x48` (height x width) → (h, w); the `--input-size` syntax."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[x×,]\s*(\d+))?\s*", text)
    if not match:
        raise UserInputError(
            f"--input-size {text!r} is not a size: write HEIGHTxWIDTH (e.g. 64x48) or one number.")
    height = int(match.group(1))
    width = int(match.group(2)) if match.group(2) else height
    if height < 1 or width < 1:
        raise UserInputError(f"--input-size {text} must be positive.")
    return height, width


def check_output(output: Path, force: bool) -> None:
    """Refuse a bad or existing `--output` before any (slow) model loading or export."""
    if output.suffix.lower() != ".onnx":
        raise UserInputError(f"--output {output} must end in .onnx.")
    if output.is_dir():
        raise UserInputError(f"--output {output} is a folder: give a file name ending in .onnx.")
    if output.exists() and not force:
        raise UserInputError(f"{output} already exists: pass --force to overwrite it.")


def _is_quantized(model: LoadedModel) -> bool:
    return bool(model.metadata.get("quant")) or is_quantized(model.module)


def _check_arguments(output: Path, opset: int | None, dynamic: bool,
                     input_size: tuple[int, int] | None, fp16: bool, quantized: bool,
                     force: bool, atol: float, exporter: str, int4: str | None,
                     target: str) -> None:
    if int4 is not None and not quantized:
        raise UserInputError("--int4 applies to quantized models only, and this one is float: "
                             "quantize it with `srcompress quantize --w-bits 4` first.")
    if int4 is not None and int4 not in INT4_FORMS:
        raise UserInputError(f"--int4 {int4} is unknown: use {', '.join(INT4_FORMS)}.")
    if target not in QUANTIZATION_TARGETS:
        raise UserInputError(f"--target {target} is unknown: use "
                             f"{', '.join(QUANTIZATION_TARGETS)}.")
    if target != "onnxruntime" and not quantized:
        raise UserInputError(f"--target {target} chooses the Q/DQ form of a quantized model, and "
                             "this one is float (its ONNX file runs on any runtime): drop "
                             "--target.")
    if target == "tensorrt" and int4 not in (None, "none"):
        raise UserInputError("--target tensorrt keeps 8-bit weight containers (TensorRT takes "
                             "INT4 weights only for weight-only matrix products, not "
                             f"convolutions): drop --int4 {int4}.")
    if exporter not in EXPORTERS:
        raise UserInputError(f"--exporter {exporter} is unknown: use {', '.join(EXPORTERS)}.")
    if quantized and exporter == "dynamo":
        raise UserInputError("a quantized model is exported by the TorchScript exporter (the one "
                             "that writes Q/DQ nodes): drop --exporter dynamo.")
    check_output(output, force)
    if not dynamic and input_size is None:
        raise UserInputError("--static needs --input-size HEIGHTxWIDTH (the LR input size).")
    if opset is not None and not _OLDEST_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise UserInputError(f"--opset {opset} is not an opset srcompress exports to: use "
                             f"{_OLDEST_OPSET} to {onnx.defs.onnx_opset_version()}.")
    if fp16 and quantized:
        raise UserInputError("--fp16 does not apply to a quantized model, whose ONNX file holds "
                             "int8 Q/DQ nodes: drop --fp16.")
    if not atol >= 0 or math.isinf(atol):
        raise UserInputError(f"--atol must be a finite number of zero or more, got {atol}.")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporters log progress, warnings and version-conversion tracebacks; the CLI reports.

    The TorchScript exporter also dumps its whole IR graph to the process's stdout when it fails
    (its logging switch is always on in torch 2.14: it tests a function object for truth), which
    would bury the one-sentence error, so its C++ logger is replaced for the duration.
    """
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    onnx_log = getattr(torch._C, "_jit_onnx_log", None)
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        if onnx_log is not None:
            torch._C._jit_onnx_log = lambda *_arguments: None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if onnx_log is not None:
            torch._C._jit_onnx_log = onnx_log


def _export_float(module: nn.Module, sample: Tensor, opset: int | None, dynamic: bool,
                  arch: str, exporter: str) -> tuple[onnx.ModelProto, str]:
    """The graph and the exporter that made it; `auto` falls back to dynamo on a failure."""
    if exporter == "dynamo":
        return _export_dynamo(module, sample, opset, dynamic, arch), "dynamo"
    try:
        return _export_torchscript(module, sample, opset, dynamic), "torchscript"
    except Exception as error:
        if exporter == "torchscript":
            raise _export_error(error, arch, opset or _TORCHSCRIPT_OPSET, dynamic) from error
        first_error = error
    try:
        return _export_dynamo(module, sample, opset, dynamic, arch), "dynamo"
    except UserInputError as error:
        if _operator_in(error.__cause__) is None and _operator_in(first_error) is not None:
            raise _export_error(first_error, arch, opset or _TORCHSCRIPT_OPSET,
                                dynamic) from first_error
        raise


def _export_torchscript(module: nn.Module, sample: Tensor, opset: int | None,
                        dynamic: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with _quiet_exporter():
        torch.onnx.export(module, (sample,), buffer, dynamo=False, input_names=["input"],
                          output_names=["output"], opset_version=opset or _TORCHSCRIPT_OPSET,
                          dynamic_axes=_torchscript_dynamic_axes(dynamic))
    return onnx.load_from_string(buffer.getvalue())


def _torchscript_dynamic_axes(dynamic: bool) -> dict[str, dict[int, str]] | None:
    if not dynamic:
        return None
    return {"input": {2: "height", 3: "width"}, "output": {2: "output_height", 3: "output_width"}}


def _export_dynamo(module: nn.Module, sample: Tensor, opset: int | None, dynamic: bool,
                   arch: str) -> onnx.ModelProto:
    dynamic_shapes = None
    if dynamic:
        dynamic_shapes = ({2: torch.export.Dim("height"), 3: torch.export.Dim("width")},)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module, (sample,), None, dynamo=True, verbose=False, input_names=["input"],
                output_names=["output"], opset_version=opset, dynamic_shapes=dynamic_shapes,
                optimize=True)
    except Exception as error:
        raise _export_error(error, arch, opset, dynamic) from error
    assert program is not None
    return program.model_proto


def _export_quantized(module: nn.Module, sample: Tensor, temporary: Path, opset: int | None,
                      dynamic: bool, arch: str, int4: str,
                      target: str) -> tuple[onnx.ModelProto, dict[str, int]]:
    opset_version = max(opset or QDQ_OPSET, QDQ_OPSET)
    try:
        with _quiet_exporter(), qdq_export_mode(module, int4, target) as qdq:
            torch.onnx.export(module, (sample,), str(temporary), dynamo=False,
                              input_names=["input"], output_names=["output"],
                              opset_version=opset_version,
                              dynamic_axes=_torchscript_dynamic_axes(dynamic))
    except (UserInputError, WorkFailedError):
        raise
    except Exception as error:
        raise _export_error(error, arch, opset_version, dynamic) from error
    counts = qdq.finalize(temporary)
    return onnx.load(str(temporary)), counts


_OPERATOR_PATTERNS = (r"No ONNX function found for <OpOverload\(op='([\w.]+)'",
                      r"target=torch\.ops\.([\w.]+)",
                      r"[Ee]xporting the operator '?([\w:.]+)'? to ONNX",
                      r"Unsupported: ONNX export of operator ([\w:.]+)")


def _error_chain(error: BaseException | None) -> list[BaseException]:
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _operator_in(error: BaseException | None) -> str | None:
    """The PyTorch operator an exporter error is about (`aten.cummax`), if it names one."""
    text = "\n".join(str(item) for item in _error_chain(error))
    for pattern in _OPERATOR_PATTERNS:
        match = re.search(pattern, text)
        if match:
            return match.group(1).replace("::", ".").removesuffix(".default")
    return None


def _export_error(error: BaseException, arch: str, opset: int | None,
                  dynamic: bool) -> UserInputError:
    """One sentence out of the exporter's multi-page error: the operator, or the first cause."""
    operator = _operator_in(error)
    if operator is not None:
        opset_text = f"opset {opset}" if opset else "the default opset"
        return UserInputError(
            f"{arch} cannot be exported to ONNX: PyTorch has no ONNX conversion for operator "
            f"{operator} at {opset_text}; replace that operation in the model or try another "
            "--opset.")
    chain = _error_chain(error)
    text = "\n".join(str(item) for item in chain)
    if dynamic and re.search(r"[Cc]onstraints? violated|specializ", text):
        return UserInputError(
            f"{arch} cannot be exported with dynamic height and width (its code fixes the input "
            "size while tracing); export it with --static --input-size HEIGHTxWIDTH.")
    summary = next((line.strip() for item in reversed(chain) for line in str(item).splitlines()
                    if line.strip() and not line.startswith(("Failed to", "-"))), repr(error))
    return UserInputError(f"{arch} cannot be exported to ONNX: {summary[:300]}")


def _other_exporter_hint(requested: str, used: str, quantized: bool) -> str:
    if quantized or requested != "auto":
        return ""
    other = "dynamo" if used == "torchscript" else "torchscript"
    return f" (the {used} exporter made it; --exporter {other} may do better)"


def _default_opset(proto: onnx.ModelProto) -> int:
    return next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


def _input_shape(proto: onnx.ModelProto) -> list[int | str]:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return [dim.dim_param or dim.dim_value for dim in dims]


def _check_dynamic(proto: onnx.ModelProto, arch: str) -> None:
    shape = _input_shape(proto)
    if len(shape) != 4 or isinstance(shape[2], int) or isinstance(shape[3], int):
        raise UserInputError(
            f"{arch} cannot be exported with dynamic height and width (the exporter fixed the "
            f"input to {shape}); export it with --static --input-size HEIGHTxWIDTH.")


def _to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Float16 weights and arithmetic behind float32 inputs and outputs.

    onnxruntime's converter appends the float32 input/output casts at the end of the node list;
    the stable topological sort puts them back in order so the file passes the ONNX checker."""
    # Imported here: onnxruntime is optional (see srcompress.devices), and onnxscript adds about
    # 0.4 s to every command's start (python -X importtime) while only fp16 export needs it.
    import_onnxruntime()  # one sentence when neither onnxruntime package is installed
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxscript import ir

    with _quiet_exporter():
        converted = ir.from_proto(convert_float_to_float16(proto, keep_io_types=True))
    converted.graph.sort()
    return ir.to_proto(converted)


def _metadata(model: LoadedModel, precision: str, dynamic: bool,
              proto: onnx.ModelProto) -> dict[str, str]:
    """What a consumer needs to feed the file correctly, plus the checkpoint's own record."""
    inherited = {key: value if isinstance(value, str) else json.dumps(value)
                 for key, value in model.metadata.items()
                 if key not in {"architecture", "settings", "scale", "srcompress_format",
                                "srcompress_version"}}
    shape = _input_shape(proto)
    return {
        **inherited,
        "architecture": model.arch,
        "settings": json.dumps(model.settings, sort_keys=True),
        "scale": str(model.scale),
        "input_range": "[0, 1]",
        "output_range": "[0, 1], not clamped",
        "channel_order": "RGB",
        "layout": "NCHW",
        "input_shape": "x".join(str(dim) for dim in shape),
        "dynamic_axes": "height,width" if dynamic else "none",
        "precision": precision,
        "io_dtype": "float32",
        "srcompress_version": __version__,
    }


def _set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    existing = {entry.key: entry for entry in proto.metadata_props}
    for key, value in metadata.items():
        entry = existing.get(key) or proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (f"srcompress {metadata['architecture']} x{metadata['scale']}: "
                        "RGB NCHW float32 in [0, 1] → x scale, not clamped")

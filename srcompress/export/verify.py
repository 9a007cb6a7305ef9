"""Verification of an exported ONNX file: onnxruntime must reproduce PyTorch before it exists.

Every export is verified: the file is written to a temporary name in the target folder, run with
onnxruntime on a real image (cropped to a size that is not a multiple of 8, and for dynamic files
at a multiple of 16 as well) and compared with PyTorch in float32; only then is it renamed into
place. Tracing specialises Python-level decisions (e.g. `if pad:`) to the traced input, so only
running sizes on both sides of such decisions shows that one file is right for every size. The
default image is the validation photograph shipped in `srcompress/demo/val`; without it, a
deterministic synthetic texture (gratings, edges and seeded noise) stands in.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from srcompress.data.images import read_image
from srcompress.data.resize import imresize
from srcompress.devices import onnx_session
from srcompress.errors import UserInputError, WorkFailedError

# Quantized graphs are compared on the 99th percentile of |difference| instead of the maximum:
# integer kernels round a few activations to the neighbouring level, which moves single pixels by
# a few grey levels, so the criterion is "99 % of values within one grey level".
DEFAULT_ATOL = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1 / 255}
# Verification crops are at most this large: big enough to cover real receptive fields and
# window padding, small enough that a full-size teacher verifies in seconds on a CPU.
_VERIFY_HEIGHT, _VERIFY_WIDTH = 90, 70
_SMALLEST_VERIFY_SIDE = 24


def verification_image(path: str | Path | None) -> tuple[Tensor, str]:
    """The image to verify on, and how the report names it."""
    if path is not None:
        image = read_image(path)
        label = str(path)
    else:
        demo = Path(str(resources.files("srcompress.demo")))
        shipped = sorted((demo / "val").glob("*.png")) + sorted((demo / "train").glob("*.png"))
        if shipped:
            image, label = read_image(shipped[0]), f"demo image {shipped[0].name}"
        else:
            image, label = synthetic_texture(_VERIFY_HEIGHT, _VERIFY_WIDTH), "synthetic texture"
    if min(image.shape[-2:]) < _SMALLEST_VERIFY_SIDE:
        raise UserInputError(
            f"--verify-image {path} is {image.shape[-2]}x{image.shape[-1]}: verification needs at "
            f"least {_SMALLEST_VERIFY_SIDE}x{_SMALLEST_VERIFY_SIDE} pixels.")
    return image, label


def synthetic_texture(height: int, width: int) -> Tensor:
    """A deterministic 3×h×w image with what SR models react to: gratings, edges and noise."""
    rows = np.arange(height, dtype=np.float64)[:, None]
    columns = np.arange(width, dtype=np.float64)[None, :]
    chirp = 0.5 + 0.5 * np.cos(0.0025 * math.pi * (rows**2 + columns**2))
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * (0.11 * rows + 0.07 * columns))
    blocks = ((rows // 9 + columns // 13) % 2).astype(np.float64)
    noise = np.random.default_rng(0).random((3, height, width))
    channels = np.stack([chirp, stripes, blocks]) * 0.8 + noise * 0.2
    return torch.from_numpy(channels.astype(np.float32))


def _not_multiple_of_8(side: int) -> int:
    return side - 1 if side % 8 == 0 else side


def verification_sizes(image: Tensor, dynamic: bool,
                        input_size: tuple[int, int] | None) -> list[tuple[int, int]]:
    """One size for a static file; two for a dynamic one.

    The first (also the traced one) is not a multiple of 8, so models that pad to their window
    run their padding path; the second is a multiple of 16, the path without padding (for windows
    of 2, 4, 8 and 16). The exporter may turn a size test such as `if pad:` into either branch,
    and only running both kinds of size shows the file is right for every size.
    """
    if input_size is not None:
        first = input_size
    else:
        height, width = image.shape[-2:]
        first = (_not_multiple_of_8(min(height, _VERIFY_HEIGHT)),
                 _not_multiple_of_8(min(width, _VERIFY_WIDTH)))
    if not dynamic:
        return [first]
    second = (max(16, (first[0] - 13) // 16 * 16), max(16, (first[1] - 13) // 16 * 16))
    if second == first:
        second = (second[0] + 16, second[1])
    return [first, second]


def crop_or_resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """A centre crop of `size`, or the image resized to it when it is smaller."""
    height, width = image.shape[-2:]
    target_h, target_w = size
    if target_h <= height and target_w <= width:
        top, left = (height - target_h) // 2, (width - target_w) // 2
        return image[:, top:top + target_h, left:left + target_w].contiguous()
    return imresize(image, size=(target_h, target_w)).clamp(0, 1)


def torch_outputs(module: nn.Module, inputs: list[Tensor]) -> list[np.ndarray]:
    """PyTorch float32 on CPU, on copies (some models modify their input in place)."""
    with torch.inference_mode():
        return [module(batch.clone()).float().numpy() for batch in inputs]


def onnxruntime_difference(path: Path, inputs: list[Tensor], references: list[np.ndarray],
                            precision: str,
                            ) -> tuple[tuple[float, float] | None, str | None, str | None]:
    """Max and 99th percentile of |onnxruntime - PyTorch| over all inputs, the provider used, or
    why it was not run.

    An fp16 graph that no available provider can load is reported as not verified rather than
    failed; any other load or run error is a failed export.
    """
    try:
        # The CPU is the reference provider for float32 and int8; fp16 runs on a GPU when present.
        session = onnx_session(path, "auto" if precision == "fp16" else "cpu", tensorrt=False)
    except UserInputError:
        raise
    except Exception as error:
        if precision == "fp16" and "NOT_IMPLEMENTED" in str(error):
            return None, None, ("no available onnxruntime provider runs this fp16 graph "
                                f"({str(error).splitlines()[0][:200]})")
        raise WorkFailedError(
            f"onnxruntime cannot load the exported model ({str(error).splitlines()[0][:300]}); "
            "nothing was written.") from error
    provider = session.get_providers()[0]
    input_name = session.get_inputs()[0].name
    differences = []
    for batch, reference in zip(inputs, references, strict=True):
        try:
            result = session.run(None, {input_name: batch.numpy()})[0]
        except Exception as error:
            size = "x".join(map(str, batch.shape[-2:]))
            raise WorkFailedError(
                f"onnxruntime fails to run the exported model on a {size} input "
                f"({str(error).splitlines()[0][:300]}); nothing was written.") from error
        if result.shape != reference.shape:
            raise WorkFailedError(
                f"the exported model turns a {batch.shape[-2]}x{batch.shape[-1]} input into "
                f"{tuple(result.shape)} where PyTorch gives {tuple(reference.shape)}; nothing "
                "was written.")
        differences.append(np.abs(result.astype(np.float64) - reference).ravel())
    everything = np.concatenate(differences)
    return (float(everything.max()), float(np.percentile(everything, 99))), provider, None


def reference_difference(first: Path, second: Path, inputs: list[Tensor]) -> float:
    """Largest |difference| between two ONNX files run with onnxruntime's graph optimisations
    off (each node as ONNX defines it) on the same inputs: 0 when they compute the same thing.

    It shows that the TensorRT form of a quantized model (int8, zero point 0, float biases) is
    the onnxruntime form written differently, which ONNX Runtime's own int8 execution cannot:
    it fuses the two forms into different kernels.
    """
    sessions = [onnx_session(path, "cpu", tensorrt=False, reference=True)
                for path in (first, second)]
    largest = 0.0
    for batch in inputs:
        outputs = [session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
                   for session in sessions]
        largest = max(largest, float(np.abs(outputs[0].astype(np.float64) - outputs[1]).max()))
    return largest

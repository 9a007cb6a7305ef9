"""Where a model runs: the one rule set for `--device`, for PyTorch and for ONNX Runtime.

Every command takes the same `--device` words: `auto` (the GPU when there is one, else the CPU),
`cpu`, `cuda`, `cuda:N` and, for PyTorch models, `mps`. `resolve_device` turns them into a torch
device and refuses a device the machine does not have before any work starts; `onnx_session` is
the one place that opens an ONNX Runtime session, with the providers `onnx_providers` chooses.

onnxruntime is imported only when an ONNX model is opened: it comes from one of two packages
(`onnxruntime` or `onnxruntime-gpu`, chosen with the `srcompress[cpu]` or `srcompress[gpu]`
extra), and without either, everything but ONNX export and inference still works.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from types import ModuleType
from typing import Any

import torch

from srcompress.errors import UserInputError

DEVICE_WORDS = "auto, cpu, cuda, cuda:N or mps"

Provider = str | tuple[str, dict[str, object]]


def resolve_device(requested: str | torch.device, local_rank: int = 0) -> torch.device:
    """The torch device for `--device`: `auto` is CUDA when present, else the CPU; `cuda` without
    an index is GPU `local_rank` (this process's GPU under torchrun). A device this machine does
    not have is refused with one sentence."""
    if isinstance(requested, torch.device):
        return requested
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserInputError(f"--device {requested} is not a device: use {DEVICE_WORDS}.") \
            from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserInputError(f"--device {requested} is not supported: use {DEVICE_WORDS}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"--device {requested} asks for CUDA, which this machine does not "
                             "have: use --device cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserInputError(f"--device {requested} asks for Apple's MPS, which this machine "
                             "does not have: use --device cpu.")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def available_memory(device: torch.device | None = None) -> int:
    """Bytes `device` can still give: free CUDA memory, else the machine's available memory
    (Linux `MemAvailable`, which counts reclaimable caches, else the free pages)."""
    if device is not None and device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def import_onnxruntime() -> ModuleType:
    """The onnxruntime module, or one sentence saying which package to install."""
    try:
        import onnxruntime
    except ImportError:
        raise UserInputError(
            "ONNX Runtime is not installed: pip install 'srcompress[cpu]' (CPU) or "
            "'srcompress[gpu]' (NVIDIA GPUs), not both.") from None
    return onnxruntime


def onnx_providers(device: str, tensorrt: bool = True) -> list[Provider]:
    """onnxruntime providers for `--device`: TensorRT (unless `tensorrt` is False), then CUDA,
    then the CPU for `auto`/`cuda[:N]`.

    What counts is what the installed onnxruntime offers (onnxruntime-gpu brings CUDA and
    TensorRT), not what PyTorch sees; the CPU provider always closes the list as the fallback
    for nodes a GPU provider does not take.
    """
    if device == "cpu":
        return ["CPUExecutionProvider"]
    index = 0
    if device.startswith("cuda:"):
        suffix = device.removeprefix("cuda:")
        if not suffix.isdigit():
            raise UserInputError(f"--device {device} is not a device: use {DEVICE_WORDS}.")
        index = int(suffix)
    elif device not in ("auto", "cuda"):
        raise UserInputError(
            f"--device {device} is not a device for ONNX models: use auto, cpu, cuda or cuda:N.")
    available = set(import_onnxruntime().get_available_providers())
    names = ("TensorrtExecutionProvider", "CUDAExecutionProvider") if tensorrt else (
        "CUDAExecutionProvider",)
    gpu: list[Provider] = [(name, {"device_id": index}) for name in names if name in available]
    if not gpu and device != "auto":
        raise UserInputError(
            f"--device {device} asks for a GPU, but this onnxruntime has no CUDA or TensorRT "
            "provider: install srcompress[gpu] (onnxruntime-gpu) or use --device cpu.")
    return [*gpu, "CPUExecutionProvider"]


def onnx_session(path: str | os.PathLike[str], device: str = "auto",
                 tensorrt: bool = True,
                 optimized_model: str | os.PathLike[str] | None = None,
                 reference: bool = False) -> Any:
    """An onnxruntime `InferenceSession` of `path` on `--device` (see `onnx_providers`), with
    onnxruntime's own log quiet below errors. Loading errors are the caller's to word.

    `optimized_model` names a file where onnxruntime writes the graph it built (after its
    fusions), to read what it really runs. `reference` turns every graph optimisation off, so
    each node runs as ONNX defines it (a Q/DQ graph in float between its Q/DQ pairs)."""
    onnxruntime = import_onnxruntime()
    _warn_if_both_packages()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if reference:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_model is not None:
        options.optimized_model_filepath = os.fspath(optimized_model)
    return onnxruntime.InferenceSession(os.fspath(path), options,
                                        providers=onnx_providers(device, tensorrt))


def _warn_if_both_packages() -> None:
    """onnxruntime and onnxruntime-gpu install the same `onnxruntime` module over each other, so
    with both present which one runs depends on the install order."""
    installed = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            importlib.metadata.version(name)
            installed.append(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    if len(installed) == 2:
        warnings.warn("both onnxruntime and onnxruntime-gpu are installed and overwrite each "
                      "other: uninstall both, then install srcompress[cpu] or srcompress[gpu].",
                      stacklevel=3)

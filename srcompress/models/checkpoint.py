"""Reading any SR checkpoint people have, and writing ours.

Ours are `.safetensors` files whose metadata (architecture, settings, scale, method, teacher,
metrics, version) rebuilds the model with no other flag. Third-party files are `.safetensors`,
`.pth`, `.pt` or `.ckpt`, possibly wrapped (`params_ema`, `params`, `state_dict`, `model`...) and
prefixed by `module.`; their architecture and scale are detected from the weights. Pickles are
only ever opened with `weights_only=True`: a file that would run code is refused, unread.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from srcompress._version import __version__
from srcompress.errors import UserInputError
from srcompress.files import write_bytes_atomically
from srcompress.models.registry import (
    Detection,
    StateDict,
    detect_architecture,
    get_architecture,
)
from srcompress.models.spec import parse_spec
from srcompress.quant import restore_quantization

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")
FORMAT_KEY = "srcompress_format"
FORMAT_VERSION = "1"
# Wrapper keys of BasicSR (`params_ema` preferred: the EMA weights are the ones papers report),
# PyTorch Lightning and common training scripts.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g", "generator")


@dataclass
class LoadedModel:
    """A model and everything needed to rebuild it; what `load_model` returns."""

    module: nn.Module
    arch: str
    settings: dict[str, Any]
    scale: int
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def read_state_dict(path: str | os.PathLike[str]) -> tuple[StateDict, dict[str, str]]:
    """The tensors of a checkpoint file (unwrapped, `module.` stripped) and its metadata."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{path} is a folder, not a model file: name the checkpoint in it "
                             "(e.g. student.safetensors of a run folder).")
    if not path.is_file():
        raise UserInputError(f"Model file {path} does not exist.")
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise UserInputError(
            f"{path} is not a checkpoint: expected one of {', '.join(CHECKPOINT_SUFFIXES)}."
        )
    if path.stat().st_size == 0:
        raise UserInputError(f"Model file {path} is empty.")
    if path.suffix.lower() == ".safetensors":
        state, metadata = _read_safetensors(path)
    else:
        state, metadata = _unwrap(_read_pickle(path), path), {}
    _check_finite(state, path)
    return state, metadata


def _check_finite(state: StateDict, path: Path) -> None:
    """Refuse weights holding NaN or infinity: such a model runs, and gives black images and
    meaningless PSNRs with no error, so it is stopped at the door, naming the tensor."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = tensor[~torch.isfinite(tensor)]
            kind = "NaN" if bool(bad.isnan().any()) else "infinite"
            raise UserInputError(
                f"{path} holds {kind} values in its weights (first in '{key}', {bad.numel()} of "
                f"{tensor.numel()}), so it cannot give meaningful results: use a checkpoint "
                "saved before training diverged.")


def _read_safetensors(path: Path) -> tuple[StateDict, dict[str, str]]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise UserInputError(
            f"{path} is not a readable safetensors file ({error}); it may be truncated or corrupt."
        ) from error
    return state, metadata


def _read_pickle(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols before refusing; our sentence says it all.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only load failed" not in str(error).lower():  # damaged, not refused
            raise UserInputError(f"{path} is not a readable PyTorch checkpoint; it may be "
                                 "truncated or corrupt.") from None
        raise UserInputError(
            f"Refused to load {path}: it contains Python objects beyond plain weights, which could "
            "run code; convert it to .safetensors in a trusted environment."
        ) from error
    except Exception as error:
        # A damaged file makes torch's unpickler fail in whatever way its bytes lead it to
        # (EOFError, KeyError of a memo, struct.error...): each means the file is unreadable.
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise UserInputError(f"{path} is not a readable PyTorch checkpoint ({reason}); it may "
                             "be truncated or corrupt.") from None


def _unwrap(content: Any, path: Path) -> StateDict:
    """Find the state dict inside common training wrappers and strip DDP's `module.` prefix."""
    for _ in range(3):
        if not isinstance(content, dict):
            break
        if all(isinstance(value, Tensor) for value in content.values()) and content:
            break
        inner = next((content[key] for key in WRAPPER_KEYS if isinstance(content.get(key), dict)),
                     None)
        if inner is None:
            break
        content = inner
    if not isinstance(content, dict):
        raise UserInputError(f"{path} holds no state dict of weights.")
    state = {key: value for key, value in content.items() if isinstance(value, Tensor)}
    if not state:
        raise UserInputError(f"{path} holds no weight tensors.")
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def load_model(source: str | os.PathLike[str], arch: str | None = None,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint into a plain, trainable module (in eval mode, on `device`).

    `arch` is a SPEC that overrides detection, for weights whose settings cannot be read from
    their shapes (e.g. EDSR's residual scaling).
    """
    state, metadata = read_state_dict(source)
    if metadata.get(FORMAT_KEY):
        loaded = _from_metadata(state, metadata, source)
        if arch is not None:
            _check_override_agrees(arch, loaded, source)
    else:
        loaded = _from_detection(state, arch, source)
    loaded.module.eval()
    loaded.module.to(device)
    return loaded


def _decode_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for key, value in metadata.items():
        try:
            decoded[key] = json.loads(value)
        except json.JSONDecodeError:
            decoded[key] = value
    return decoded


def _from_metadata(state: StateDict, metadata: dict[str, str], source: Any) -> LoadedModel:
    decoded = _decode_metadata(metadata)
    arch_name, settings, scale = (decoded.get("architecture"), decoded.get("settings"),
                                  decoded.get("scale"))
    if not (isinstance(arch_name, str) and isinstance(settings, dict)
            and isinstance(scale, int) and not isinstance(scale, bool) and 2 <= scale <= 8):
        raise UserInputError(
            f"{source} has incomplete or invalid srcompress metadata (architecture "
            f"{arch_name!r}, scale {scale!r}); it may have been edited or damaged.")
    module = get_architecture(arch_name).build(settings, scale, f"the metadata of {source}")
    if "quant" in decoded:
        if not (isinstance(decoded["quant"], dict) and decoded["quant"]):
            raise UserInputError(f"{source} has invalid quantization metadata "
                                 f"({decoded['quant']!r}); it may have been edited or damaged.")
        try:
            module = restore_quantization(module, decoded["quant"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
            raise UserInputError(f"{source} has quantization metadata srcompress cannot read "
                                 f"({type(error).__name__}: {error}).") from None
    _load_weights(module, state, source, arch_name)
    return LoadedModel(module, arch_name, settings, scale, decoded, str(source))


def _check_override_agrees(arch_spec: str, loaded: LoadedModel, source: Any) -> None:
    """`--arch` on a file srcompress wrote may only repeat what its metadata says: the metadata
    rebuilt the model, so a different SPEC would be silently ignored otherwise."""
    spec = parse_spec(arch_spec)
    differs = [f"{key}={value}" for key, value in spec.given.items()
               if loaded.settings.get(key) != value]
    if spec.arch != loaded.arch or differs or spec.scale not in (None, loaded.scale):
        wanted = f" ({', '.join(differs)})" if differs and spec.arch == loaded.arch else ""
        raise UserInputError(
            f"--arch {arch_spec}{wanted} contradicts {source}, which srcompress wrote as "
            f"{loaded.arch} x{loaded.scale} (its metadata rebuilds it): drop --arch.")


def _detect(state: StateDict, source: Any) -> Detection | None:
    try:
        return detect_architecture(state)
    except (KeyError, ValueError, IndexError, RuntimeError, TypeError, AssertionError,
            AttributeError, ZeroDivisionError) as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise UserInputError(
            f"The weights in {source} look like a known architecture but are incomplete or "
            f"malformed ({reason}); check the file, or pass --arch SPEC.") from None


def _from_detection(state: StateDict, arch_spec: str | None, source: Any) -> LoadedModel:
    detection = _detect(state, source)
    if arch_spec is not None:
        spec = parse_spec(arch_spec)
        if detection is not None and detection.arch != spec.arch:
            raise UserInputError(
                f"--arch {arch_spec} contradicts the weights in {source}, which are "
                f"{detection.arch}: drop --arch, or give {detection.arch} settings.")
        if detection is not None and spec.scale not in (None, detection.scale):
            raise UserInputError(
                f"--arch {arch_spec} says x{spec.scale}, but the weights in {source} upscale "
                f"x{detection.scale}: drop scale= from --arch.")
        scale = spec.scale or (detection.scale if detection else None)
        if scale is None:
            raise UserInputError(f"Cannot tell the scale of {source}; add scale=N to --arch.")
        # Settings the weights show stay; the SPEC changes what they cannot show (res_scale).
        settings = {**detection.settings, **spec.given} if detection else spec.settings
        weights = detection.state_dict if detection else state
        detection = Detection(spec.arch, settings, scale, weights, "override")
        origin = f"--arch {arch_spec}"
    else:
        origin = f"the weights of {source}"
    if detection is None:
        raise UserInputError(
            f"Cannot recognise the architecture of {source} from its weights; pass --arch SPEC "
            "(see `srcompress models`)."
        )
    if detection.scale < 2:
        raise UserInputError(
            f"{source} is a {detection.arch} model of scale {detection.scale}, not a "
            "super-resolution model."
        )
    module = get_architecture(detection.arch).build(detection.settings, detection.scale, origin)
    _load_weights(module, detection.state_dict, source, detection.arch)
    metadata = {"layout": detection.layout}
    return LoadedModel(module, detection.arch, detection.settings, detection.scale, metadata,
                       str(source))


def _load_weights(module: nn.Module, state: StateDict, source: Any, arch: str) -> None:
    """Load strictly: every weight must be used and every parameter filled, with matching shapes."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(key for key in set(expected) & set(state)
                        if expected[key].shape != state[key].shape)
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if mismatched:
        key = mismatched[0]
        problems.append(f"shape of {key} is {tuple(state[key].shape)}, the {arch} model needs "
                        f"{tuple(expected[key].shape)} ({len(mismatched)} such)")
    if problems:
        raise UserInputError(
            f"The weights in {source} do not fit the detected {arch} model: "
            f"{'; '.join(problems)}."
        )
    module.load_state_dict(state, strict=True)


def _few(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} and {len(keys) - limit} more" if len(keys) > limit else shown


def save_model(path: str | os.PathLike[str], model: LoadedModel, **metadata: Any) -> Path:
    """Write `model` as `.safetensors` whose metadata alone rebuilds it; atomic.

    Extra keyword arguments (method, teacher, metrics, quant...) are stored JSON-encoded next to
    the model's own description; `model.metadata` entries are carried over unless overridden.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserInputError(f"Output {path} must end in .safetensors.")
    inherited = {key: value for key, value in model.metadata.items()
                 if key not in {FORMAT_KEY, "architecture", "settings", "scale", "layout"}}
    fields = {**inherited, **metadata, "architecture": model.arch, "settings": model.settings,
              "scale": model.scale, "srcompress_version": __version__}
    encoded = {key: value if isinstance(value, str) else json.dumps(value)
               for key, value in fields.items()}
    encoded[FORMAT_KEY] = FORMAT_VERSION
    tensors = {key: value.detach().to("cpu").contiguous().clone()
               for key, value in model.module.state_dict().items()}
    # Serialised in memory and written by Python, so a full disk fails as an OSError we name.
    write_bytes_atomically(path, safetensors.torch.save(tensors, metadata=encoded))
    return path

"""Property-based fuzzing of every loader (issue 12, the reliability suite).

Each loader gets inputs made by hypothesis from real files (mutated bytes) and from structures
(state dicts, metadata, SPEC strings, TOML tables, archive entries) a user or an adversary could
hand it, through the command line as a user would call it. The property: the only outcomes are
success, or exit 2 with one sentence (no traceback, no "internal error", no crash), and nothing is
written outside the place the command was told to write.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import TINY_STUDENT, assert_one_sentence
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save as safetensors_bytes

from srcompress import models
from srcompress.files import is_partial_file


def run_quietly(cli, *args: object):
    """`cli(*args)`, failing on any Python warning it shows (pytest would hide them otherwise);
    srcompress's own alpha-channel notice is the one warning a user may see."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cli(*args)
    shown = [str(warning.message) for warning in caught
             if "alpha channel is ignored" not in str(warning.message)]
    assert shown == [], shown
    return result


def assert_success_or_one_sentence(result) -> None:
    if result.exit_code != 0:
        assert_one_sentence(result, 2)


def scratch(tmp_path: Path) -> Path:
    """A fresh folder per hypothesis example (fixtures are set up once per test)."""
    return Path(tempfile.mkdtemp(dir=tmp_path))


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` truncated, with bytes flipped, a span deleted or repeated, or random bytes spliced."""
    kind = draw(st.sampled_from(["truncate", "flip", "delete", "repeat", "splice"]))
    size = len(data)
    if kind == "truncate":
        return data[:draw(st.integers(0, size - 1))]
    if kind == "flip":
        out = bytearray(data)
        for index, value in draw(st.lists(st.tuples(st.integers(0, size - 1),
                                                    st.integers(0, 255)), min_size=1,
                                          max_size=8)):
            out[index] = value
        return bytes(out)
    start = draw(st.integers(0, size - 1))
    end = draw(st.integers(start, min(size, start + 64)))
    if kind == "delete":
        return data[:start] + data[end:]
    if kind == "repeat":
        return data[:end] + data[start:end] * draw(st.integers(1, 4)) + data[end:]
    return data[:start] + draw(st.binary(min_size=1, max_size=64)) + data[end:]


# -- checkpoints ----------------------------------------------------------------------------------

def _tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return models.build_model(TINY_STUDENT, 2).module.state_dict()


TINY_STATE = _tiny_state()
KEYS = sorted(TINY_STATE)
SAFETENSORS = safetensors_bytes(TINY_STATE, metadata={
    "srcompress_format": "1", "architecture": "edsr", "scale": "2",
    "settings": json.dumps({"num_feat": 8, "num_block": 1, "res_scale": 1.0, "num_in_ch": 3,
                            "num_out_ch": 3})})
_PICKLE = io.BytesIO()
torch.save({"params_ema": TINY_STATE}, _PICKLE)
PICKLE = _PICKLE.getvalue()

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) | st.sampled_from([1.5, 0.1, -1.0])
    | st.sampled_from(["edsr", "rcan", "swinir", "nan", "abc", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["num_feat", "num_block", "res_scale", "num_in_ch", "x"]), inner,
        max_size=3), max_leaves=6)


@st.composite
def state_dicts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    """The real state dict with tensors dropped, added, reshaped, retyped or made non-finite."""
    state = dict(TINY_STATE)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(KEYS) | st.text(min_size=1, max_size=12))
        action = draw(st.sampled_from(["drop", "shape", "dtype", "value"]))
        if action == "drop":
            state.pop(key, None)
            continue
        shape = draw(st.lists(st.integers(0, 5), max_size=4)) if action == "shape" else list(
            state.get(key, torch.zeros(2)).shape)
        dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.int64, torch.uint8,
                                      torch.bool])) if action == "dtype" else torch.float32
        value = draw(st.sampled_from([0.0, 1.0, math.nan, math.inf, -1e30]))
        state[key] = torch.full(shape, value if dtype.is_floating_point else 1).to(dtype)
    return state


@given(data=st.data())
def test_fuzzed_checkpoint_files(cli, tmp_path: Path, data: st.DataObject) -> None:
    folder = scratch(tmp_path)
    kind = data.draw(st.sampled_from(["safetensors-bytes", "pickle-bytes", "safetensors-state",
                                      "pickle-state", "metadata"]))
    if kind == "safetensors-bytes":
        path, content = folder / "m.safetensors", data.draw(mutated(SAFETENSORS))
    elif kind == "pickle-bytes":
        path, content = folder / "m.pth", data.draw(mutated(PICKLE))
    elif kind == "safetensors-state":
        path, content = folder / "m.safetensors", safetensors_bytes(
            {key: value.contiguous() for key, value in data.draw(state_dicts()).items()})
    elif kind == "pickle-state":
        buffer = io.BytesIO()
        wrapper = data.draw(st.sampled_from([None, "params_ema", "state_dict", "model"]))
        state = data.draw(state_dicts())
        torch.save(state if wrapper is None else {wrapper: state}, buffer)
        path, content = folder / "m.pt", buffer.getvalue()
    else:
        metadata = {"srcompress_format": "1", "architecture": "edsr", "scale": "2",
                    "settings": json.dumps({"num_feat": 8, "num_block": 1})}
        for key in data.draw(st.lists(st.sampled_from(["architecture", "scale", "settings",
                                                       "quant"]), min_size=1, max_size=3)):
            metadata[key] = json.dumps(data.draw(JSON_VALUES))
        path, content = folder / "m.safetensors", safetensors_bytes(TINY_STATE, metadata=metadata)
    path.write_bytes(content)
    arch = data.draw(st.none() | st.sampled_from(["edsr", "edsr:res_scale=0.1", "rcan"]))
    result = run_quietly(cli, "info", path, *(["--arch", arch] if arch else []))
    assert_success_or_one_sentence(result)


# -- images ---------------------------------------------------------------------------------------

def _real_image_bytes(real: Path, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(real).convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


@given(data=st.data())
def test_fuzzed_images(cli, tmp_path: Path, real_images: Path, data: st.DataObject) -> None:
    folder = scratch(tmp_path)
    fmt = data.draw(st.sampled_from(["PNG", "JPEG", "BMP", "TIFF", "WEBP"]))
    original = _real_image_bytes(real_images / "bird.png", fmt)
    (folder / f"x.{fmt.lower()}").write_bytes(data.draw(mutated(original)))
    result = run_quietly(cli, "evaluate", "bicubic", "--scale", "2", "--benchmark", folder,
                         "--device", "cpu")
    assert_success_or_one_sentence(result)


# -- TOML config ----------------------------------------------------------------------------------

TOML_VALUES = st.recursive(
    st.booleans() | st.integers(-2, 10**9) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3), max_leaves=6)
# Keys whose values the flags below fix, so that a valid config trains one tiny iteration.
FIXED_BY_FLAGS = {"output", "iters", "batch_size", "patch_size", "workers", "device", "teacher"}


@given(data=st.data())
def test_fuzzed_config_files(cli, tmp_path: Path, tiny_model: Path, data: st.DataObject) -> None:
    from srcompress.train.distill import DistillSettings

    folder = scratch(tmp_path)
    config = folder / "run.toml"
    keys = [key for key in DistillSettings.key_names() if key not in FIXED_BY_FLAGS]
    if data.draw(st.booleans()):
        table = data.draw(st.dictionaries(st.sampled_from([*keys, "typo"]), TOML_VALUES,
                                          max_size=4))
        config.write_text(tomli_w.dumps(table))
    else:
        valid = tomli_w.dumps({"method": "kd", "lr": 0.0001, "student": TINY_STUDENT,
                               "val_benchmarks": []}).encode()
        config.write_bytes(data.draw(mutated(valid)))
    result = run_quietly(cli, "distill", tiny_model, "--config", config, "--iters", "1",
                         "--batch-size", "2", "--patch-size", "16", "--workers", "0",
                         "--device", "cpu", "--output", folder / "run")
    assert_success_or_one_sentence(result)
    outside = [path for path in folder.iterdir() if path.name not in ("run.toml", "run")]
    assert outside == []


# -- SPEC strings ---------------------------------------------------------------------------------

SPEC_VALUES = st.sampled_from(["0", "-1", "1", "2", "3", "8", "64", "1.5", "nan", "inf", "abc",
                               "true", "[]", "[6,6]", "[0]", "100000", "1e12", '"x"', ""])
SPEC_KEYS = st.sampled_from(["num_feat", "num_block", "res_scale", "num_in_ch", "scale",
                             "num_group", "squeeze_factor", "embed_dim", "depths", "num_heads",
                             "window_size", "num_filters", "num_conv", "upsampler", "bogus"])


@st.composite
def specs(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(["edsr", "rcan", "swinir", "esrgan", "compact", "edsr-c64b32",
                                 "rcan-c64g10b6", "nosuch", ""]))
    items = draw(st.lists(st.tuples(SPEC_KEYS, SPEC_VALUES), max_size=3))
    text = ",".join(f"{key}={value}" for key, value in items)
    return f"{name}:{text}" if text or draw(st.booleans()) else name


@pytest.fixture(scope="module")
def plain_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plain") / "edsr_x2.pth"
    torch.save(TINY_STATE, path)
    return path


@given(spec=specs())
def test_fuzzed_arch_specs(cli, plain_weights: Path, spec: str) -> None:
    assert_success_or_one_sentence(run_quietly(cli, "info", plain_weights, "--arch", spec))


@given(spec=specs())
def test_fuzzed_student_specs(spec: str) -> None:
    from srcompress.errors import UserInputError

    try:
        models.build_model(spec, 2)
    except UserInputError as error:
        assert "\n" not in str(error) and str(error).endswith(".")


# -- archives -------------------------------------------------------------------------------------

ENTRY_NAMES = st.sampled_from(["Set5/HR/a.png", "Set5/HR/b.png", "Set5/", "a.png", "../up.png",
                               "/abs.png", "Set5/../../up.png", "C:/win.png", "Set5\\..\\..\\w",
                               "", ".", "Set5/HR/.hidden.png"])


@st.composite
def archives(draw: st.DrawFn, image: bytes) -> bytes:
    kind = draw(st.sampled_from(["zip", "tar", "tar.gz"]))
    entries = draw(st.lists(st.tuples(ENTRY_NAMES, st.sampled_from(["file", "dir", "symlink",
                                                                    "hardlink"]),
                                      st.sampled_from([image, b"", b"not an image"])),
                            min_size=1, max_size=4))
    buffer = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buffer, "w") as bundle, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate names are part of the fuzz
            for name, _, content in entries:
                if name:
                    bundle.writestr(name, content)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz" if kind == "tar.gz" else "w") as bundle:
            for name, entry, content in entries:
                info = tarfile.TarInfo(name)
                info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE,
                             "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[entry]
                info.linkname = "/etc/passwd" if entry in ("symlink", "hardlink") else ""
                info.size = len(content) if entry == "file" else 0
                bundle.addfile(info, io.BytesIO(content) if entry == "file" else None)
    archive = buffer.getvalue()
    return draw(mutated(archive)) if draw(st.booleans()) and archive else archive


@given(data=st.data())
def test_fuzzed_archives(cli, tmp_path: Path, real_images: Path, data: st.DataObject) -> None:
    folder = scratch(tmp_path)
    archive = folder / "bench.archive"
    archive.write_bytes(data.draw(archives((real_images / "bird.png").read_bytes())))
    root = folder / "root"
    result = run_quietly(cli, "datasets", "fetch", "Set5", "--url", archive.as_uri(),
                         "--no-verify", "--data-root", root)
    assert_success_or_one_sentence(result)
    assert sorted(path.name for path in folder.iterdir()) in (["bench.archive"],
                                                              ["bench.archive", "root"])
    if root.exists():
        installed = list(root.iterdir())
        assert installed in ([], [root / "Set5"]), installed
        assert not any(path.is_symlink() or is_partial_file(path) for path in root.rglob("*"))

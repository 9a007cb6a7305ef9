"""The image reading policy (grey, alpha, 16-bit, palette, bad files) and atomic writing."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srcompress.data.images import list_images, read_image, write_image
from srcompress.errors import UserInputError

RNG = np.random.default_rng(7)


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG written by hand: Pillow cannot write 16-bit RGB."""
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_rgb_png_reads_exactly(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.shape == (3, 9, 11) and image.dtype == torch.float32
    np.testing.assert_array_equal((image * 255).round().byte().permute(1, 2, 0).numpy(), pixels)


def test_greyscale_becomes_three_identical_channels(benchmarks_root: Path) -> None:
    bridge = benchmarks_root / "Set14" / "HR" / "bridge.png"
    if not bridge.exists():
        pytest.skip(f"{bridge} not found")
    assert Image.open(bridge).mode == "L"
    image = read_image(bridge)
    assert image.shape[0] == 3
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    expected = np.asarray(Image.open(bridge), dtype=np.float32) / 255
    np.testing.assert_array_equal(image[0].numpy(), expected)


def test_sixteen_bit_png_keeps_full_precision(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    write_png16(tmp_path / "rgb16.png", rgb)
    image = read_image(tmp_path / "rgb16.png")
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), rgb / 65535, rtol=0, atol=1e-7)
    grey = RNG.integers(0, 65536, (5, 6, 1), dtype=np.uint16)
    write_png16(tmp_path / "grey16.png", grey)
    image = read_image(tmp_path / "grey16.png")
    np.testing.assert_allclose(image[1].numpy(), grey[..., 0] / 65535, rtol=0, atol=1e-7)


def test_alpha_is_dropped_and_warned_only_when_transparent(tmp_path: Path) -> None:
    colour = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    opaque = np.dstack([colour, np.full((4, 5), 255, np.uint8)])
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_image(tmp_path / "opaque.png")
    np.testing.assert_array_equal((image * 255).round().byte().permute(1, 2, 0).numpy(), colour)
    seethrough = opaque.copy()
    seethrough[0, 0, 3] = 0
    Image.fromarray(seethrough).save(tmp_path / "seethrough.png")
    with pytest.warns(UserWarning, match="alpha"):
        image = read_image(tmp_path / "seethrough.png")
    np.testing.assert_array_equal((image * 255).round().byte().permute(1, 2, 0).numpy(), colour)
    rgba16 = RNG.integers(0, 65536, (3, 3, 4), dtype=np.uint16)
    rgba16[..., 3] = 65535
    write_png16(tmp_path / "rgba16.png", rgba16)
    assert read_image(tmp_path / "rgba16.png").shape == (3, 3, 3)


def test_palette_image_expands_to_rgb(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).quantize(8).save(tmp_path / "palette.png")
    expected = np.asarray(Image.open(tmp_path / "palette.png").convert("RGB"))
    image = read_image(tmp_path / "palette.png")
    np.testing.assert_array_equal((image * 255).round().byte().permute(1, 2, 0).numpy(), expected)


def test_jpeg_reads_through_pillow(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    image = read_image(tmp_path / "a.jpg")
    expected = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB"))
    np.testing.assert_array_equal((image * 255).round().byte().permute(1, 2, 0).numpy(), expected)


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(UserInputError, match=r"notes\.png"):
        read_image(tmp_path / "notes.png")
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:300])
    with pytest.raises(UserInputError, match=r"cut\.png"):
        read_image(tmp_path / "cut.png")
    write_png16(tmp_path / "whole16.png", RNG.integers(0, 65536, (8, 8, 3), dtype=np.uint16))
    (tmp_path / "cut16.png").write_bytes((tmp_path / "whole16.png").read_bytes()[:60])
    with pytest.raises(UserInputError, match=r"cut16\.png"):
        read_image(tmp_path / "cut16.png")
    with pytest.raises(UserInputError, match=r"missing\.png"):
        read_image(tmp_path / "missing.png")


def test_write_image_round_trips_and_leaves_no_temporary(tmp_path: Path) -> None:
    image = torch.rand(3, 10, 12)
    target = write_image(tmp_path / "out" / "x.png", image)
    assert [path.name for path in target.parent.iterdir()] == ["x.png"]
    back = read_image(target)
    torch.testing.assert_close(back, (image * 255).round() / 255, rtol=0, atol=1e-6)
    write_image(target, torch.zeros(3, 4, 4))
    assert read_image(target).shape == (3, 4, 4)


def test_list_images_sorts_and_skips_other_files(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", "c.bmp"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / ".hidden.png").write_text("x")
    (tmp_path / "sub.png").mkdir()
    assert [path.name for path in list_images(tmp_path)] == ["a.JPG", "b.png", "c.bmp"]


def test_list_images_refuses_empty_or_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(UserInputError, match="contains no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(UserInputError, match="not a folder"):
        list_images(tmp_path / "nowhere")

"""Images that lie about their size, are corrupt, or are simply huge (issue 12, items 9, 13, 14).

A few hundred bytes of PNG can claim 100000x100000 pixels; a corrupt file in a folder of photos
must not stop the others; a large but legal image must be tiled to fit memory, and Ctrl-C must
still stop it between tiles.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch
from conftest import assert_one_sentence

from srcompress.data.images import read_image
from srcompress.errors import UserInputError
from srcompress.inference import TorchRunner
from srcompress.models import build_model


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and header claiming `width`x`height`, with no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_a_png_claiming_100000x100000_is_refused_by_every_command(cli, tmp_path: Path,
                                                                   tiny_model: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    bomb = png_header_only(folder / "bomb.png", 100_000, 100_000)
    assert bomb.stat().st_size < 100
    evaluated = cli("evaluate", "bicubic", "--scale", "2", "--benchmark", folder)
    assert_one_sentence(evaluated, 2, "bomb.png", "100000x100000", "--max-pixels")
    distilled = cli("distill", tiny_model, "--train-data", folder, "--iters", "1",
                    "--no-validation", "--device", "cpu", "--output", tmp_path / "run")
    assert_one_sentence(distilled, 2, "bomb.png", "--max-pixels")
    upscaled = cli("upscale", "bicubic", "--scale", "2", bomb, "-o", tmp_path / "out")
    assert upscaled.exit_code == 1 and "internal error" not in upscaled.stderr
    assert "bomb.png is 100000x100000" in upscaled.stderr


def test_the_pixel_limit_is_a_flag(cli, tmp_path: Path, real_images: Path) -> None:
    bird = real_images / "bird.png"  # 72x72
    refused = cli("--max-pixels", "5000", "evaluate", "bicubic", "--scale", "2",
                  "--benchmark", real_images)
    assert_one_sentence(refused, 2, "above the limit")
    with pytest.raises(UserInputError, match="above the limit"):
        read_image(bird, max_pixels=72 * 72 - 1)
    assert read_image(bird, max_pixels=72 * 72).shape == (3, 72, 72)
    big = png_header_only(tmp_path / "big.png", 13_000, 13_000)  # 169 MP: refused by default
    with pytest.raises(UserInputError, match="13000x13000"):
        read_image(big)


def _tiny_edsr(width: int = 8, blocks: int = 1):
    torch.manual_seed(0)
    return build_model(f"edsr:num_feat={width},num_block={blocks}", 2).module


def test_an_image_too_large_for_the_memory_budget_is_tiled_with_the_same_result(
        real_images: Path) -> None:
    lr = read_image(real_images / "butterfly.png")[None]
    whole = TorchRunner(_tiny_edsr(), 2, "cpu")
    expected = whole(lr)
    assert whole.last_tile is None  # a small image on a machine with gigabytes: not tiled
    per_pixel = whole.activation_bytes_per_pixel()
    # The largest activation of this EDSR is its x2 sub-pixel conv: 4*8 floats per input pixel.
    assert per_pixel == pytest.approx(3 * 32 * 4)
    budget = int(per_pixel * 40 * 40)  # room for 40x40-pixel forward passes only
    tiled = TorchRunner(_tiny_edsr(), 2, "cpu", memory_budget=budget)
    result = tiled(lr)
    assert tiled.last_tile == 40 - 2 * tiled.tile_pad
    # Its receptive field is smaller than the 10-pixel tile margin: tiles change nothing.
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-5)


def test_ctrl_c_stops_a_large_image_between_tiles(real_images: Path) -> None:
    lr = read_image(real_images / "butterfly.png")[None].repeat(1, 1, 24, 24)  # 1536x1536
    model = _tiny_edsr(width=16, blocks=2)
    runner = TorchRunner(model, 2, "cpu", memory_budget=int(
        TorchRunner(model, 2, "cpu").activation_bytes_per_pixel() * 148 * 148))
    calls = 0
    second_call = threading.Event()

    def count(*_: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first tile (the first call is the memory probe)
            second_call.set()

    model.register_forward_hook(count)
    sent: list[float] = []
    finished = threading.Event()

    def interrupt() -> None:  # Ctrl-C as soon as the first tile has run
        while not finished.is_set():
            if second_call.wait(0.01):
                sent.append(time.perf_counter())
                os.kill(os.getpid(), signal.SIGINT)
                return

    # A shell that starts pytest in the background ignores SIGINT for it; Ctrl-C is what is tested.
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    thread = threading.Thread(target=interrupt)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            runner(lr)
        stopped = time.perf_counter()
    finally:
        finished.set()
        thread.join()
        signal.signal(signal.SIGINT, previous_handler)
    assert runner.tile is None and stopped - sent[0] < 2.0
    tiles = (1536 // 128) ** 2
    assert calls < tiles // 4, f"{calls} of {tiles} tiles ran after Ctrl-C"


def test_upscale_goes_on_past_a_corrupt_image_and_says_which(cli, tmp_path: Path,
                                                            real_images: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in real_images.iterdir():
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    out = tmp_path / "out"
    result = cli("upscale", "bicubic", "--scale", "2", folder, "-o", out)
    assert result.exit_code == 1, result.stderr
    assert sorted(path.name for path in out.iterdir()) == [
        "baby_x2.png", "bird_x2.png", "butterfly_x2.png"]
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "broken.png" in failed[0] and "BytesIO" not in failed[0]
    assert_one_sentence(result, 1, "1 of 4 images could not be upscaled", "broken.png")

    stopped = cli("upscale", "bicubic", "--scale", "2", folder, "-o", tmp_path / "fast",
                  "--fail-fast")
    assert_one_sentence(stopped, 2, "broken.png", "--fail-fast", "2 earlier output(s)",
                        "1 later image(s) were not processed")
    assert sorted(path.name for path in (tmp_path / "fast").iterdir()) == [
        "baby_x2.png", "bird_x2.png"]


def test_small_input_mistakes_are_named_for_what_they_are(cli, tmp_path: Path,
                                                          real_images: Path,
                                                          tiny_model: Path) -> None:
    folder_as_model = cli("info", tiny_model.parent)
    assert_one_sentence(folder_as_model, 2, "is a folder, not a model file")
    file_as_data = cli("distill", tiny_model, "--train-data", real_images / "bird.png",
                       "--iters", "1", "--no-validation", "--device", "cpu",
                       "--output", tmp_path / "run")
    assert_one_sentence(file_as_data, 2, "--train-data", "is a file")
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "bird.png").write_bytes((real_images / "bird.png").read_bytes())
    border = cli("evaluate", "bicubic", "--scale", "2", "--benchmark", tmp_path / "set",
                 "--crop-border", "10000")
    assert_one_sentence(border, 2, "--crop-border 10000", "use a smaller --crop-border")
    (tmp_path / "set" / "notes.png").write_text("not an image")
    corrupt = cli("evaluate", "bicubic", "--scale", "2", "--benchmark", tmp_path / "set")
    assert "BytesIO" not in assert_one_sentence(corrupt, 2, "notes.png")

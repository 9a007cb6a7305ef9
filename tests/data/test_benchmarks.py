"""Benchmark layouts, lookup errors, and `fetch` against a local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srcompress.data.benchmarks import (
    default_data_root,
    fetch,
    find_benchmark,
    installed_benchmarks,
)
from srcompress.errors import UserInputError, WorkFailedError


def png_bytes(seed: int, size: int = 12) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(path: Path, seed: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(seed, size))


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving the returned folder; yields (base URL, folder)."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def make_zip(path: Path, entries: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_good_archive_installs_and_is_found(server, tmp_path: Path) -> None:
    base, served = server
    checksum = make_zip(served / "bench.zip", {
        "benchmark/Set5/HR/bird.png": png_bytes(1, 16),
        "benchmark/Set5/LR_bicubic/X2/birdx2.png": png_bytes(2, 8),
        "benchmark/Set14/HR/other.png": png_bytes(3),
    })
    root = tmp_path / "root"
    seen: list[int] = []
    result = fetch("set5", root, url=f"{base}/bench.zip", sha256=checksum,
                   progress=lambda done, total: seen.append(done))
    assert result.folder == root / "Set5" and result.sha256 == checksum
    assert seen and seen[-1] == (served / "bench.zip").stat().st_size
    assert sorted(path.name for path in root.iterdir()) == ["Set5"]
    benchmark = find_benchmark("Set5", root, 2)
    assert benchmark.layout == "HR+LR_bicubic" and benchmark.lr_source == "files"
    assert [(pair.name, pair.lr_path.name) for pair in benchmark.pairs] == [("bird", "birdx2.png")]
    assert fetch("Set5", root, url=f"{base}/bench.zip", sha256=checksum).already_installed


def test_bad_checksum_is_refused_leaving_nothing(server, tmp_path: Path) -> None:
    base, served = server
    make_zip(served / "bench.zip", {"Set5/HR/bird.png": png_bytes(1)})
    root = tmp_path / "root"
    with pytest.raises(WorkFailedError, match="sha256"):
        fetch("Set5", root, url=f"{base}/bench.zip", sha256="0" * 64)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_entries_escaping_the_target_are_refused(server, tmp_path: Path, kind: str) -> None:
    base, served = server
    archive = served / f"evil.{kind}"
    if kind == "zip":
        make_zip(archive, {"Set5/HR/bird.png": png_bytes(1), "../escaped.png": png_bytes(2)})
    else:
        with tarfile.open(archive, "w") as bundle:
            data = png_bytes(2)
            info = tarfile.TarInfo("Set5/../../escaped.png")
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    checksum = hashlib.sha256(archive.read_bytes()).hexdigest()
    root = tmp_path / "root"
    with pytest.raises(UserInputError, match="unsafe entry"):
        fetch("Set5", root, url=f"{base}/{archive.name}", sha256=checksum)
    assert list(root.iterdir()) == []
    assert not (tmp_path / "escaped.png").exists() and not (root.parent / "escaped.png").exists()


def test_links_in_tar_archives_are_refused(server, tmp_path: Path) -> None:
    base, served = server
    archive = served / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as bundle:
        link = tarfile.TarInfo("Set5/HR/passwd.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        bundle.addfile(link)
    checksum = hashlib.sha256(archive.read_bytes()).hexdigest()
    root = tmp_path / "root"
    with pytest.raises(UserInputError, match="link"):
        fetch("Set5", root, url=f"{base}/link.tar.gz", sha256=checksum)
    assert list(root.iterdir()) == []


def test_unknown_checksum_needs_an_explicit_choice(server, tmp_path: Path) -> None:
    base, served = server
    with tarfile.open(served / "div2k.tar.gz", "w:gz") as bundle:
        for index in range(2):
            data = png_bytes(index)
            info = tarfile.TarInfo(f"DIV2K_valid_HR/080{index + 1}.png")
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    root = tmp_path / "root"
    with pytest.raises(UserInputError, match="--sha256"):
        fetch("DIV2K-val", root, url=f"{base}/div2k.tar.gz")
    result = fetch("DIV2K-val", root, url=f"{base}/div2k.tar.gz", verify=False)
    assert result.sha256 == hashlib.sha256((served / "div2k.tar.gz").read_bytes()).hexdigest()
    benchmark = find_benchmark("div2k", root, 4)
    assert benchmark.layout == "folder" and benchmark.lr_source == "bicubic"
    assert [pair.name for pair in benchmark.pairs] == ["0801", "0802"]


def test_download_failure_is_reported(server, tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(WorkFailedError, match=r"missing\.zip"):
        fetch("Set5", tmp_path / "root", url=f"{base}/missing.zip", sha256="0" * 64)
    assert list((tmp_path / "root").iterdir()) == []


def test_real_set5_layout(benchmarks_root: Path) -> None:
    benchmark = find_benchmark("Set5", benchmarks_root, 4)
    assert benchmark.name == "Set5" and len(benchmark.pairs) == 5
    assert all(pair.lr_path and pair.lr_path.name == f"{pair.name}x4.png"
               for pair in benchmark.pairs)
    assert find_benchmark("Set5", benchmarks_root, 8).lr_source == "bicubic"
    rows = {row.entry.name: row for row in installed_benchmarks(benchmarks_root)}
    assert rows["Set5"].images == 5 and rows["Set5"].lr_scales == (2, 3, 4)
    assert rows["B100"].folder is None


def test_basicsr_and_bare_layouts(tmp_path: Path) -> None:
    save_png(tmp_path / "Set14" / "GTmod12" / "comic.png", 1, 24)
    save_png(tmp_path / "Set14" / "LRbicx3" / "comic.png", 2, 8)
    benchmark = find_benchmark("Set14", tmp_path, 3)
    assert benchmark.layout == "GTmod12+LRbicx"
    assert benchmark.pairs[0].lr_path == tmp_path / "Set14" / "LRbicx3" / "comic.png"
    save_png(tmp_path / "mine" / "a.png", 3)
    (tmp_path / "mine" / "notes.txt").write_text("x")
    bare = find_benchmark(str(tmp_path / "mine"), tmp_path, 2)
    assert bare.name == "mine" and bare.layout == "folder" and len(bare.pairs) == 1
    save_png(tmp_path / "BSD100" / "HR" / "1.png", 4)
    assert find_benchmark("B100", tmp_path, 2).name == "B100"


def test_lookup_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"datasets fetch Urban100") as error:
        find_benchmark("urban100", tmp_path, 4)
    assert str(tmp_path / "Urban100") in str(error.value)
    with pytest.raises(UserInputError, match=r"manga109\.org"):
        find_benchmark("Manga109", tmp_path, 4)
    with pytest.raises(UserInputError, match="Unknown benchmark"):
        find_benchmark("Set6", tmp_path, 4)
    with pytest.raises(UserInputError, match="does not exist"):
        find_benchmark(str(tmp_path / "nowhere"), tmp_path, 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="contains no images"):
        find_benchmark(str(tmp_path / "empty"), tmp_path, 4)


def test_partial_lr_folder_is_an_error(tmp_path: Path) -> None:
    save_png(tmp_path / "Set5" / "HR" / "a.png", 1, 8)
    save_png(tmp_path / "Set5" / "HR" / "b.png", 2, 8)
    save_png(tmp_path / "Set5" / "LR_bicubic" / "X2" / "ax2.png", 3, 4)
    with pytest.raises(UserInputError, match=r"no LR image for b\.png"):
        find_benchmark("Set5", tmp_path, 2)


def test_default_data_root_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SRCOMPRESS_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("SRCOMPRESS_DATA")
    assert default_data_root() == Path.home() / ".cache" / "srcompress" / "datasets"


def test_lr_folders_of_other_degradations(tmp_path: Path) -> None:
    """`LR_realesrgan/X4` (datasets degrade) is read when it is the only LR folder of its scale;
    LR_bicubic wins when both are there; two others are ambiguous."""
    save_png(tmp_path / "rw" / "HR" / "a.png", 1, 8)
    save_png(tmp_path / "rw" / "LR_realesrgan" / "X2" / "ax2.png", 2, 4)
    benchmark = find_benchmark(str(tmp_path / "rw"), tmp_path, 2)
    assert benchmark.pairs[0].lr_path == tmp_path / "rw" / "LR_realesrgan" / "X2" / "ax2.png"
    save_png(tmp_path / "rw" / "LR_bicubic" / "X2" / "ax2.png", 3, 4)
    benchmark = find_benchmark(str(tmp_path / "rw"), tmp_path, 2)
    assert benchmark.pairs[0].lr_path == tmp_path / "rw" / "LR_bicubic" / "X2" / "ax2.png"
    save_png(tmp_path / "two" / "HR" / "a.png", 1, 8)
    save_png(tmp_path / "two" / "LR_mild" / "X2" / "ax2.png", 2, 4)
    save_png(tmp_path / "two" / "LR_unknown" / "X2" / "ax2.png", 2, 4)
    with pytest.raises(UserInputError, match="several x2 LR folders"):
        find_benchmark(str(tmp_path / "two"), tmp_path, 2)

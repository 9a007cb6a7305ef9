"""`datasets fetch` of archives that expand far beyond their size (issue 12, items 12 and 14).

The archives are served from files (`file://` URLs): fetching reads them exactly as it reads a
download. Each bomb is a few kilobytes of zip or tar.gz that would expand to megabytes; the
limits are checked on the sizes the archive declares, before one byte is unpacked.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import assert_one_sentence

BOMB_BYTES = 8 * 2**20  # zeros: deflate packs them about a thousand to one


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def zip_bomb(path: Path, image: bytes) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("Set5/HR/bird.png", image)
        bundle.writestr("Set5/HR/zeros.bin", bytes(BOMB_BYTES))
    return path


def tar_bomb(path: Path, image: bytes) -> Path:
    with tarfile.open(path, "w:gz") as bundle:
        for name, data in (("Set5/HR/bird.png", image), ("Set5/HR/zeros.bin", bytes(BOMB_BYTES))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("make", [zip_bomb, tar_bomb], ids=["zip", "tar.gz"])
def test_an_archive_expanding_a_thousand_times_is_refused_before_unpacking(
        cli, tmp_path: Path, real_images: Path, make) -> None:
    archive = make(tmp_path / "bomb.archive", (real_images / "bird.png").read_bytes())
    assert archive.stat().st_size < BOMB_BYTES / 200
    root = tmp_path / "root"
    url = archive.as_uri()
    refused = cli("datasets", "fetch", "Set5", "--url", url, "--sha256", sha256(archive),
                  "--data-root", root)
    assert_one_sentence(refused, 2, url, "times", "--max-ratio", "nothing was installed")
    assert list(root.iterdir()) == []  # not even the temporary workspace is left
    too_big = cli("datasets", "fetch", "Set5", "--url", url, "--sha256", sha256(archive),
                  "--data-root", root, "--max-ratio", "100000", "--max-expanded-gib", "0.001")
    assert_one_sentence(too_big, 2, url, "GiB", "--max-expanded-gib")
    assert list(root.iterdir()) == []
    trusted = cli("datasets", "fetch", "Set5", "--url", url, "--sha256", sha256(archive),
                  "--data-root", root, "--max-ratio", "100000")
    assert trusted.exit_code == 0, trusted.stderr
    assert (root / "Set5" / "HR" / "zeros.bin").stat().st_size == BOMB_BYTES


def test_archive_errors_name_the_url(cli, tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../escaped.png", b"x")
    url = archive.as_uri()
    result = cli("datasets", "fetch", "Set5", "--url", url, "--sha256", sha256(archive),
                 "--data-root", tmp_path / "root")
    message = assert_one_sentence(result, 2, url, "unsafe entry")
    assert "Archive archive" not in message

"""Output locations that cannot be written (issue 12, items 11 and 14).

An existing file where a folder is wanted, a name that is not UTF-8, a read-only place: each is
one sentence naming the path, exit 2, before any work. Outputs get the permissions of any file
the user creates.
"""

from __future__ import annotations

import collections
import os
import pickle
import stat
import warnings
from pathlib import Path

import pytest
from conftest import assert_one_sentence


def test_an_existing_file_as_output_folder_is_refused(cli, tmp_path: Path, tiny_model: Path,
                                                      tiny_run: list[str],
                                                      real_images: Path) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    distilled = cli("distill", tiny_model, *tiny_run, "--iters", "1", "--output", existing)
    assert_one_sentence(distilled, 2, str(existing), "existing file")
    upscaled = cli("upscale", "bicubic", "--scale", "2", real_images / "bird.png",
                   "-o", existing / "sub")
    assert_one_sentence(upscaled, 2, str(existing / "sub"), "Not a directory")
    assert existing.read_text() == "mine"


def test_a_name_that_is_not_utf8_is_refused(cli, tmp_path: Path, tiny_model: Path,
                                            tiny_run: list[str]) -> None:
    name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run\xff")
    distilled = cli("distill", tiny_model, *tiny_run, "--iters", "1", "--output", name)
    assert_one_sentence(distilled, 2, "--output", "not valid UTF-8")
    assert not os.path.exists(name)


def test_a_read_only_location_is_refused(cli, tmp_path: Path, tiny_model: Path,
                                         tiny_run: list[str]) -> None:
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only file system
        location = Path("/sys/srcompress-run")
        if not Path("/sys").is_dir():
            pytest.skip("running as root with no /sys: no read-only place to write into")
    else:
        (tmp_path / "locked").mkdir(mode=0o555)
        location = tmp_path / "locked" / "run"
    distilled = cli("distill", tiny_model, *tiny_run, "--iters", "1", "--output", location)
    assert_one_sentence(distilled, 2, str(location))


def test_outputs_follow_the_umask(cli, tmp_path: Path, tiny_model: Path,
                                  tiny_run: list[str]) -> None:
    previous = os.umask(0o027)
    try:
        result = cli("distill", tiny_model, *tiny_run, "--iters", "1", "--output",
                     tmp_path / "run")
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.stderr
    for name in ("student.safetensors", "config.toml", "metrics.json", "checkpoints/last.pt"):
        mode = stat.S_IMODE((tmp_path / "run" / name).stat().st_mode)
        assert mode == 0o640, (name, oct(mode))


def test_a_raw_pickle_gets_one_sentence_and_no_torch_warning(cli, tmp_path: Path) -> None:
    raw = tmp_path / "net.pth"  # a plain pickle (protocol 5), not torch.save's format
    raw.write_bytes(pickle.dumps({"net": collections.Counter(conv=1)}, protocol=5))
    with warnings.catch_warnings(record=True) as caught:  # (pytest would hide them otherwise)
        warnings.simplefilter("always")
        result = cli("info", raw)
    assert_one_sentence(result, 2, str(raw), "could run code")
    assert [str(warning.message) for warning in caught] == []

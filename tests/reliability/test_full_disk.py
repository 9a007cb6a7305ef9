"""A run whose disk fills up (issue 12, item 11 and the suite's disk-full run).

Two ways to fill it, both real: a 160 KiB tmpfs mounted in a private mount namespace (`unshare`,
where the kernel permits it; else skipped with the reason), which holds one checkpoint but not
the second copy an atomic write needs; and a per-process file-size limit (RLIMIT_FSIZE, always
permitted), which no checkpoint fits. Either way the run stops with exit 1 and one sentence that
says the disk is full, names the file being written and the last good checkpoint, and leaves
that checkpoint whole, so `--resume` finishes the run once there is room.
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _srcompress(*args: object) -> list[str]:
    return [sys.executable, "-m", "srcompress", *map(str, args)]


def _unshare_permitted() -> str | None:
    """None when a private tmpfs can be mounted here, else why not."""
    if shutil.which("unshare") is None:
        return "the unshare tool is not installed"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True, check=False)
    return None if probe.returncode == 0 else f"mounting a tmpfs is not permitted here " \
        f"({probe.stderr.strip()[:120]})"


def _error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def test_a_full_disk_stops_the_run_naming_the_last_good_checkpoint(
        tmp_path: Path, tiny_model: Path, tiny_run: list[str]) -> None:
    reason = _unshare_permitted()
    if reason:
        pytest.skip(reason)
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    command = shlex.join(_srcompress("distill", tiny_model, *tiny_run, "--iters", "4",
                                     "--save-every", "2", "--output", disk / "run"))
    # The run folder lives and dies with the namespace: copy what it left before it goes.
    script = (f"mount -t tmpfs -o size=160k tmpfs {disk} && {{ {command}; code=$?; "
              f"cp -a {disk}/run {kept}; exit $code; }}")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=ENV,
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 1, result.stderr
    message = _error_line(result.stderr)
    assert "the disk is full" in message and "checkpoints/last.pt" in message
    assert "(iteration 2)" in message and "--resume" in message
    assert not any(path.name.endswith(".tmp") for path in kept.rglob("*"))
    state = torch.load(kept / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 2
    resumed = subprocess.run(_srcompress("distill", tiny_model, *tiny_run, "--iters", "4",
                                         "--output", kept, "--resume"),
                             env=ENV, capture_output=True, text=True, check=False, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert (kept / "student.safetensors").is_file()


def test_a_file_size_limit_stops_the_run_in_one_sentence(tmp_path: Path, tiny_model: Path,
                                                         tiny_run: list[str]) -> None:
    def limit_file_size() -> None:  # config.toml fits, a checkpoint (~90 KiB) does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))

    run = tmp_path / "run"
    result = subprocess.run(_srcompress("distill", tiny_model, *tiny_run, "--iters", "2",
                                        "--save-every", "1", "--output", run),
                            env=ENV, capture_output=True, text=True, check=False, timeout=300,
                            preexec_fn=limit_file_size)
    assert result.returncode == 1, result.stderr
    message = _error_line(result.stderr)
    assert "file-size limit" in message and str(run / "checkpoints" / "last.pt") in message
    assert "no checkpoint had been written yet" in message
    assert sorted(path.name for path in run.rglob("*")) == ["checkpoints", "config.toml"]

"""Fixtures shared by the whole suite: the real images in ../shared/data and an in-process CLI."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (Set5 with MATLAB LR files, Set14, training photographs), or skip."""
    if not (SHARED_DATA / "benchmarks" / "Set5" / "HR").is_dir():
        pytest.skip(f"real test images not found at {SHARED_DATA} (see docs: ../shared/data)")
    return SHARED_DATA


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run `srcompress ARGS...` in this process through `main()`, exit-code handling included."""
    from srcompress.cli import main

    def run(*args: object) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["srcompress", *map(str, args)])
        for name in ("SRCOMPRESS_DEBUG", "SRCOMPRESS_MAX_PIXELS"):  # global options set these
            monkeypatch.setenv(name, "")  # (set first so that the test's end restores them)
            monkeypatch.delenv(name)
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run

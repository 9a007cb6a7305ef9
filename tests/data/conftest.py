"""Fixtures for the data tests: the project's shared real images, skipped when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="session")
def benchmarks_root() -> Path:
    root = SHARED_DATA / "benchmarks"
    if not (root / "Set5" / "HR").is_dir():
        pytest.skip(f"real benchmark images not found at {root} (see ../shared/data/README.md)")
    return root

"""Fixtures for the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def benchmarks_root(shared_data: Path) -> Path:
    """../shared/data/benchmarks (Set5 with MATLAB LR files, Set14 HR), or skip."""
    return shared_data / "benchmarks"

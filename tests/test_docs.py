"""Documents show paths relative to the repository, so anyone can rerun their commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
# An absolute path of a machine: /work/..., /home/..., /tmp/..., C:\... (not a URL's //host/).
MACHINE_PATH = re.compile(r"(?<![\w:/.~-])(?:/(?:work|home|root|tmp|Users|mnt|opt|data)/|"
                          r"[A-Z]:\\)")


@pytest.mark.parametrize("document", ["README.md", "CHANGELOG.md", "docs/results.md",
                                      "docs/architecture.md", "docs/reliability.md",
                                      "examples/README.md"])
def test_documents_hold_no_absolute_paths(document: str) -> None:
    lines = (REPOSITORY / document).read_text(encoding="utf-8").splitlines()
    found = [f"{document}:{number}: {line.strip()[:120]}" for number, line in
             enumerate(lines, 1) if MACHINE_PATH.search(line)]
    assert not found, "use repository-relative paths (../shared/data/..., runs/...):\n" + \
        "\n".join(found)

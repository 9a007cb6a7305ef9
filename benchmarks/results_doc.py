"""docs/results.md is written by several benchmark scripts; each owns one marked section of it.

Re-running a script replaces its own section and keeps everything else (other scripts' tables,
hand-written notes), so the file can be regenerated piece by piece. Paths in a section are shown
relative to the repository root (`../shared/data/...` for the shared data), never as the absolute
paths of the machine that ran it, so that anyone can rerun the command from a checkout.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from srcompress.files import atomic_path

REPOSITORY = Path(__file__).absolute().parents[1]
SHARED = REPOSITORY.parent / "shared"  # `../shared` from every checkout (a link in worktrees)


def shown_path(path: str | os.PathLike[str]) -> str:
    """`path` as a results document shows it: relative to the repository root when it is
    absolute (`../shared/...` for the shared data); a relative path, typed from the repository
    root, as it is."""
    if not os.path.isabs(path):
        return str(path)
    real = Path(path).resolve()
    for root, prefix in ((REPOSITORY.resolve(), ""), (SHARED.resolve(), "../shared/")):
        if real.is_relative_to(root):
            return prefix + real.relative_to(root).as_posix()
    return os.path.relpath(real, REPOSITORY.resolve())


def shown_command(arguments: Sequence[str]) -> str:
    """A command line for a results document: absolute paths made repository-relative."""
    return " ".join(shlex.quote(shown_path(part) if os.path.isabs(part) else part)
                    for part in arguments)


def replace_section(path: Path, name: str, body: str) -> None:
    """Put `body` between `<!-- name:begin -->` and `<!-- name:end -->` (appended if absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Results\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")

"""docs/results.md is written by several benchmark scripts; each owns one marked section of it.

Re-running a script replaces its own section and keeps everything else (other scripts' tables,
hand-written notes), so the file can be regenerated piece by piece.
"""

from __future__ import annotations

from pathlib import Path

from srcompress.files import atomic_path


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

"""Atomic file writes: a reader (or a killed run) never sees a half-written file.

Everything srcompress writes goes through `atomic_path`: the content is written to a temporary
file in the target's own folder (so the rename stays on one file system) and moved into place
only when complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from srcompress.errors import UserInputError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it replaces `target`, else vanishes."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        raise UserInputError(
            f"Cannot write to {target.parent}: {error.strerror or error}; choose another output."
        ) from error
    os.close(handle)
    temporary = Path(name)
    # mkstemp creates 0600 files; outputs are deliverables, so give them the usual umask mode.
    umask = os.umask(0)
    os.umask(umask)
    temporary.chmod(0o666 & ~umask)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)

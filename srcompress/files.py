"""Atomic file writes: a reader (or a killed run) never sees a half-written file.

Everything srcompress writes goes through `atomic_path`: the content is written to a temporary
file in the target's own folder (so the rename stays on one file system) and moved into place
only when complete. The temporary file's name, `.NAME.<random>.tmp`, is srcompress's own pattern
(`is_partial_file`): cleanup after a killed run removes exactly such files and nothing else.

A write that fails because the disk (or the process's file-size limit) is full raises
`DiskFullError` naming the file; other write failures (read-only place, a file where a folder
should be) are bad output choices and raise `UserInputError`. Writers that report failures in
their own words (`torch.save`, safetensors) serialise to memory first and write the bytes
through Python, so that every failure reaches us as an `OSError` with its errno.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from srcompress.errors import UserInputError, WorkFailedError

_PARTIAL_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # mkstemp adds 8 random characters
_FULL = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
         errno.EFBIG: "the file-size limit is reached"}


class DiskFullError(WorkFailedError):
    """No room to write `path`: the work failed (exit 1), nothing the user typed was wrong."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def check_output_path(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse an output path that cannot be recorded as text (bytes that are not UTF-8 end up in
    `config.toml` and metadata) before any work is done; `what` names the flag."""
    path = Path(path)
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raise UserInputError(
            f"{what} {os.fsencode(path)!r} is not valid UTF-8 text, which srcompress must record "
            "in its output files: choose a UTF-8 name.") from None
    return path


def make_folder(folder: str | os.PathLike[str], what: str) -> Path:
    """Create `folder` (and its parents), refusing with one sentence when that is impossible."""
    folder = check_output_path(folder, what)
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"{what} {folder} is an existing file, not a folder: choose another "
                             "path.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_error(folder, error) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserInputError(f"Cannot write into {folder} (permission denied): choose another "
                             f"{what}.")
    return folder


def make_temporary_folder(parent: Path, prefix: str, what: str) -> Path:
    """A new folder inside `parent` (made as `make_folder` does) to be renamed into place once
    whole, with the mode of any new folder under the umask: mkdtemp's 0700 would otherwise
    become the delivered folder's."""
    make_folder(parent, what)
    try:
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as error:
        raise _write_error(parent, error) from None
    folder.chmod(0o777 & ~_current_umask())
    return folder


def is_partial_file(path: Path) -> bool:
    """True for the temporary files `atomic_path` creates (and a killed process leaves)."""
    return bool(_PARTIAL_NAME.match(path.name))


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it replaces `target`, else vanishes."""
    target = check_output_path(target, "The output")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        raise _write_error(target, error) from None
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        # mkstemp makes 0600 files and some writers recreate the file; outputs are deliverables,
        # so they get the mode any new file gets under the user's umask.
        temporary.chmod(0o666 & ~_current_umask())
        os.replace(temporary, target)
    except OSError as error:
        raise _write_error(target, error) from None
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomically(target: str | os.PathLike[str], data: bytes | memoryview) -> Path:
    """Write `data` to `target` through `atomic_path`."""
    target = Path(target)
    with atomic_path(target) as temporary, temporary.open("wb") as file:
        file.write(data)
    return target


def _write_error(target: Path, error: OSError) -> WorkFailedError | UserInputError:
    reason = error.strerror or str(error)
    if error.errno in _FULL:
        return DiskFullError(f"Writing {target} failed: {_FULL[error.errno]} ({reason}).", target)
    return UserInputError(f"Cannot write to {target} ({reason}): choose another output location.")


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def sha256_of_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's content, read in chunks (teachers can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

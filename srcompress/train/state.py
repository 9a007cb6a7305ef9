"""The run folder of a training run and its resumable checkpoints.

Layout of `--output`:

    student.safetensors     final weights (EMA weights when EMA is on), rebuildable from the file
                            (`quantize` names them quantized.safetensors)
    best.safetensors        the weights with the best mean validation PSNR so far
    metrics.json            training log, validations and the best one, kept current as it runs
    config.toml             every setting of the run, enough to repeat it with `--config`
    checkpoints/last.pt     the resumable state (see `save_checkpoint`)
    .srcompress.lock        while a run owns the folder (see `RunFolder.lock`)

A new run writes only into a new or empty folder, a folder of an earlier srcompress run it may
not overwrite without `--resume`, or (with `--force`) a folder of the user's own files, whose
names it never deletes.

Every file is written through `srcompress.files.atomic_path` (a hidden `.NAME.*.tmp` file in the
same folder, moved into place when complete), so a reader or a killed run only ever sees a
complete old or a complete new file. A run killed with SIGKILL while writing leaves that hidden
temporary file behind; `RunFolder.remove_partial_files` deletes such files (that name pattern
only, `srcompress.files.is_partial_file`) when the run is resumed.

Checkpoints are written with `torch.save` and read with `torch.load(weights_only=True)`: they hold
only tensors, numbers, strings, lists and dicts, so loading one never runs code.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from filelock import SoftFileLock, Timeout

from srcompress.errors import UserInputError
from srcompress.files import atomic_path, is_partial_file, make_folder, write_bytes_atomically

CHECKPOINT_FORMAT = "srcompress-train-checkpoint"
CHECKPOINT_VERSION = 1
CONFIG_HEADER = "# srcompress "  # how every config.toml srcompress writes begins
LOCK_NAME = ".srcompress.lock"
# A live owner is refused at once; the wait only lets filelock take over a dead owner's lock.
_LOCK_WAIT_SECONDS = 1.0


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


class RunFolder:
    """Paths and writes of one run's output folder."""

    def __init__(self, root: str | Path, weights_name: str = "student.safetensors") -> None:
        self.root = Path(root)
        self.weights = self.root / weights_name
        self.best = self.root / "best.safetensors"
        self.metrics = self.root / "metrics.json"
        self.config = self.root / "config.toml"
        self.checkpoint = self.root / "checkpoints" / "last.pt"
        self._lock: SoftFileLock | None = None
        # Written into every checkpoint: what the run must not change on resume (the teacher).
        self.identity: dict[str, Any] = {}

    def lock(self) -> None:
        """Make the folder and own it for this process until `unlock`: a second run on the same
        folder would mix its files with ours. The lock (filelock's `SoftFileLock`) records our
        PID, so the refusal can name the owner, and a lock left by a process that died (SIGKILL,
        a crash) is taken over."""
        make_folder(self.root, "--output")
        lock = SoftFileLock(self.root / LOCK_NAME, timeout=_LOCK_WAIT_SECONDS)
        try:
            lock.acquire()
        except Timeout:
            owner = lock.pid
            raise UserInputError(
                f"The run folder {self.root} is in use by another srcompress process (PID "
                f"{owner if owner is not None else 'unknown'}): wait for it to end, or choose "
                "another --output.") from None
        self._lock = lock

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def prepare(self, resume: bool, force: bool = False) -> None:
        """Check the (locked) folder: refuse to overwrite an earlier run unless it is being
        resumed, and to write into a folder of other files unless `force`; then remove the
        temporary files a killed write left."""
        if resume:
            if not self.checkpoint.is_file():
                raise UserInputError(
                    f"--resume found no checkpoint at {self.checkpoint}: pass the --output folder "
                    "of the run to continue, or drop --resume to start a new run.")
        elif self.checkpoint.exists() or self.weights.exists():
            raise UserInputError(
                f"The output folder {self.root} already holds a run: pass --resume to continue it "
                "or choose another --output.")
        elif not force and not self.is_run_folder():
            foreign = sorted(path.name for path in self.root.iterdir()
                             if path.name != LOCK_NAME and not is_partial_file(path))
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more"
                                                  if len(foreign) > 3 else "")
                raise UserInputError(
                    f"The output folder {self.root} holds files srcompress did not write "
                    f"({shown}): choose a new or empty --output, or pass --force to write the "
                    "run's files among them.")
        make_folder(self.root, "--output")
        self.remove_partial_files()

    def is_run_folder(self) -> bool:
        """A folder a run of srcompress made: a checkpoint, or a config.toml it wrote."""
        if self.checkpoint.is_file():
            return True
        try:
            with self.config.open(encoding="utf-8") as config:
                return config.readline().startswith(CONFIG_HEADER)
        except (OSError, UnicodeDecodeError):
            return False

    def remove_partial_files(self) -> None:
        """Delete the temporary files a killed write left; only srcompress's own name pattern."""
        for folder in (self.root, self.checkpoint.parent):
            if folder.is_dir():
                for path in folder.iterdir():
                    if is_partial_file(path) and path.is_file():
                        path.unlink(missing_ok=True)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_text(self.metrics, json.dumps(metrics, indent=2) + "\n")

    def write_config(self, toml_text: str) -> None:
        atomic_write_text(self.config, toml_text)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **self.identity,
                   **state}
        buffer = io.BytesIO()  # serialised first: a full disk then fails as an OSError we name
        torch.save(payload, buffer)
        write_bytes_atomically(self.checkpoint, buffer.getbuffer())

    def load_checkpoint(self) -> dict[str, Any]:
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as error:
            raise UserInputError(
                f"The checkpoint {self.checkpoint} cannot be read ({error}): start a new run "
                "without --resume.") from error
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise UserInputError(f"{self.checkpoint} is not a srcompress training checkpoint: "
                                 "start a new run without --resume.")
        if state.get("version") != CHECKPOINT_VERSION:
            raise UserInputError(
                f"The checkpoint {self.checkpoint} has format version {state.get('version')}, "
                f"this srcompress reads version {CHECKPOINT_VERSION}: resume it with the "
                "srcompress version that wrote it.")
        return state

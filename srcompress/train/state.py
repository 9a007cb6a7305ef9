"""The run folder of a training run and its resumable checkpoints.

Layout of `--output`:

    student.safetensors     final weights (EMA weights when EMA is on), rebuildable from the file
                            (`quantize` names them quantized.safetensors)
    best.safetensors        the weights with the best mean validation PSNR so far
    metrics.json            training log, validations and the best one, kept current as it runs
    config.toml             every setting of the run, enough to repeat it with `--config`
    checkpoints/last.pt     the resumable state (see `save_checkpoint`)

Every file is written through `srcompress.files.atomic_path` (a hidden `.NAME.*.tmp` file in the
same folder, moved into place when complete), so a reader or a killed run only ever sees a
complete old or a complete new file. A run killed with SIGKILL while writing leaves that hidden
temporary file behind; `RunFolder.remove_partial_files` deletes such files when the run is resumed.

Checkpoints are written with `torch.save` and read with `torch.load(weights_only=True)`: they hold
only tensors, numbers, strings, lists and dicts, so loading one never runs code.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from srcompress.errors import UserInputError
from srcompress.files import atomic_path, is_partial_file, make_folder, write_bytes_atomically

CHECKPOINT_FORMAT = "srcompress-train-checkpoint"
CHECKPOINT_VERSION = 1


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

    def prepare(self, resume: bool) -> None:
        """Create the folder; refuse to overwrite an earlier run unless it is being resumed."""
        if resume:
            if not self.checkpoint.is_file():
                raise UserInputError(
                    f"--resume found no checkpoint at {self.checkpoint}: pass the --output folder "
                    "of the run to continue, or drop --resume to start a new run.")
        elif self.checkpoint.exists() or self.weights.exists():
            raise UserInputError(
                f"The output folder {self.root} already holds a run: pass --resume to continue it "
                "or choose another --output.")
        make_folder(self.root, "--output")
        self.remove_partial_files()

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
        payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
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

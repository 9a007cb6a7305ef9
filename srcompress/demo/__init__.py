"""Demo data shipped with srcompress: a few public-domain/CC0 images and a small teacher.

Sources and licences: examples/README.md.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def demo_data_folder() -> Path:
    """The demo training images shipped with srcompress (public-domain/CC0 photographs); the
    default `train_data` of every training command."""
    return Path(str(resources.files(__name__) / "train"))


def demo_teacher_path(scale: int = 2) -> Path:
    return Path(str(resources.files(__name__) / f"teacher_x{scale}.safetensors"))

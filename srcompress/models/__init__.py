"""Models: architectures, the registry, checkpoint reading/writing and student specs."""

from __future__ import annotations

from typing import Any

from srcompress.errors import UserInputError
from srcompress.models import edsr, rcan  # noqa: F401 (each registers its architecture)
from srcompress.models.checkpoint import LoadedModel, load_model, read_state_dict, save_model
from srcompress.models.cost import count_macs
from srcompress.models.registry import ARCHITECTURES, PRESETS, Architecture, get_architecture
from srcompress.models.spandrel_bridge import register_spandrel_architectures
from srcompress.models.spec import Spec, parse_spec
from srcompress.models.task import Task, model_task

# After our own architectures: spandrel's of the same name become `<name>-spandrel`.
register_spandrel_architectures()


def build_model(spec: str, scale: int) -> LoadedModel:
    """A freshly initialised model from a SPEC (architecture, preset or file) at `scale`."""
    parsed = parse_spec(spec)
    if parsed.scale is not None and parsed.scale != scale:
        raise UserInputError(
            f"Student spec '{spec}' is for scale x{parsed.scale} but the run is x{scale}; "
            "drop scale= from the spec or change --scale."
        )
    module = get_architecture(parsed.arch).build(parsed.settings, scale, f"'{spec}'")
    return LoadedModel(module, parsed.arch, dict(parsed.settings), scale, {}, spec)


def default_student_spec(teacher: LoadedModel) -> str:
    """A student about a tenth of the teacher's cost, by the architecture's own rule (which may
    choose another architecture, `Architecture.student_arch`)."""
    arch = get_architecture(teacher.arch)
    if arch.smaller_student is None:
        raise UserInputError(
            f"There is no default student for {teacher.arch} teachers; choose one with --student "
            "(see `srcompress models`)."
        )
    student = get_architecture(arch.student_arch or arch.name)
    settings: dict[str, Any] = arch.smaller_student(teacher.settings)
    changed = {key: value for key, value in settings.items()
               if student.defaults.get(key) != value}
    items = ",".join(f"{key}={_format(value)}" for key, value in changed.items())
    return f"{student.name}:{items}" if items else student.name


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_format(item) for item in value) + "]"
    return str(value)


__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "Architecture",
    "LoadedModel",
    "Spec",
    "Task",
    "build_model",
    "count_macs",
    "default_student_spec",
    "get_architecture",
    "load_model",
    "model_task",
    "parse_spec",
    "read_state_dict",
    "save_model",
]

"""Intermediate features of a teacher and a student, taken with forward hooks at named positions.

Feature distillation (FitNet, FAKD, MKD) compares what two networks compute inside their bodies,
so it needs those tensors without editing any model's code. `FeatureTaps` registers forward hooks
only while a `capture()` session is open and removes them when the last session closes: the
student file, its EMA copy and validation never carry hooks, and nothing holds a feature past the
step that made it.

Default positions (methods.md §3): the body of a super-resolution network is a stack of repeated
blocks; the taps sit after blocks round(n/3) and round(2n/3) and at the body's end. The body's end
is its tail conv when it has one (`conv_after_body` in BasicSR's layout, or a trailing non-block
child of the stack in the original EDSR/RCAN layouts), else its last block. For RCAN with 10
groups that is groups 3 and 7 and the body tail; for EDSR with 16 blocks, blocks 5 and 11 and the
tail; for SwinIR, each third of its residual Swin layers, ending at its tail conv. The body is
found without knowing the architecture: the `nn.Sequential`/`nn.ModuleList` with the most
parameters whose children are mostly one block type (stacks of composite blocks first, then
stacks of at least three single layers; this finds ESRGAN's RRDB trunk, ending at its trunk
conv). The option
`feature_layers` (`--feature-layers`) overrides the positions by module name.

Token-shaped outputs (B×L×C, from transformer layers called as `layer(x, (H, W))`) are turned into
B×C×H×W maps, so every method sees image-shaped features at LR resolution.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from srcompress.errors import UserInputError
from srcompress.methods.base import Batch, Method, require_teacher, run_teacher

FLAG = "--feature-layers"
BODY_TAIL = "conv_after_body"
PROBE_SIZE = 16


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel or `torch.compile` wrapper."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _parameter_count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def find_body(model: nn.Module) -> tuple[str, list[str]] | None:
    """(name of the body stack, names of its blocks in order), or None if there is no stack.

    Stacks of composite blocks (residual blocks, groups, transformer layers) win over stacks of
    single layers, which are more often a whole network written as one `nn.Sequential`.
    """
    best: tuple[tuple[bool, int], str, list[str]] | None = None
    for name, module in unwrap(model).named_modules():
        if not isinstance(module, nn.Sequential | nn.ModuleList) or not name:
            continue
        children = list(module.named_children())
        kinds = Counter(type(child) for _, child in children)
        if not kinds:
            continue
        kind, count = kinds.most_common(1)[0]
        blocks = [f"{name}.{child_name}" for child_name, child in children if type(child) is kind]
        composite = any(True for _ in next(c for _, c in children if type(c) is kind).children())
        if count < (1 if composite else 3) or 2 * count < len(children):
            continue
        score = (composite, _parameter_count(module))
        if best is None or score > best[0]:
            best = (score, name, blocks)
    return None if best is None else (best[1], best[2])


def default_positions(model: nn.Module) -> list[tuple[str, float]]:
    """The default taps of `model` with their depth in the body (fraction of its blocks, tail 1).

    Three positions, fewer for a body of one or two blocks.
    """
    plain = unwrap(model)
    found = find_body(plain)
    if found is None:
        raise UserInputError(
            f"{type(plain).__name__} has no stack of repeated blocks to take features from; "
            f"name the modules with {FLAG} (e.g. {FLAG} body.3,body.7,conv_after_body).")
    body_name, blocks = found
    modules = dict(plain.named_modules())
    last_child = f"{body_name}.{list(modules[body_name].named_children())[-1][0]}"
    parent = body_name.rpartition(".")[0]
    sibling_tail = f"{parent}.{BODY_TAIL}" if parent else BODY_TAIL
    if last_child not in blocks:
        tail = last_child
    elif sibling_tail in modules:
        tail = sibling_tail
    else:
        tail = blocks[-1]
    count = len(blocks)
    picks = sorted({max(1, round(count * third / 3)) for third in (1, 2)})
    return [(blocks[pick - 1], pick / count) for pick in picks
            if blocks[pick - 1] != tail] + [(tail, 1.0)]


def default_feature_layers(model: nn.Module) -> list[str]:
    return [name for name, _ in default_positions(model)]


def feature_layers_option() -> Any:
    """The `feature_layers` option every feature method declares (a fresh dataclass field each)."""
    return field(default="", metadata={
        "help": "tap positions: module names, comma-separated, STUDENT=TEACHER where they "
                "differ (default: thirds of the body)"})


def parse_feature_layers(text: str) -> tuple[list[str], list[str]] | None:
    """Student and teacher module names from the option text, or None when it is empty.

    The text is a comma-separated list; an item `S=T` names a student and a teacher module, a
    bare item names a module both networks have.
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        return None
    student, teacher = [], []
    for item in items:
        left, sep, right = item.partition("=")
        if sep and (not left.strip() or not right.strip()):
            raise UserInputError(
                f"{FLAG} item '{item}' is incomplete: write STUDENT_MODULE=TEACHER_MODULE or one "
                "module name both networks have.")
        student.append(left.strip())
        teacher.append(right.strip() if sep else left.strip())
    return student, teacher


def feature_layer_pairs(student: nn.Module, teacher: nn.Module,
                        text: str = "") -> tuple[list[str], list[str]]:
    """Matched tap positions of the student and the teacher: from `text`, else the defaults."""
    given = parse_feature_layers(text)
    if given is not None:
        return given
    student_positions = default_positions(student)
    teacher_positions = default_positions(teacher)
    if len(student_positions) == len(teacher_positions):
        return ([name for name, _ in student_positions],
                [name for name, _ in teacher_positions])
    # A body too short for three taps (e.g. two blocks): each of its taps is paired with the
    # other network's tap at the nearest depth, the deeper one on a tie.
    short, long = sorted((student_positions, teacher_positions), key=len)
    available = list(long)
    matched = []
    for _, depth in short:
        nearest = min(available, key=lambda position: (abs(position[1] - depth), -position[1]))
        available.remove(nearest)
        matched.append(nearest)
    matched.sort(key=lambda position: position[1])
    pairs = ([name for name, _ in short], [name for name, _ in matched])
    return pairs if short is student_positions else (pairs[1], pairs[0])


def _as_image(output: Any, inputs: tuple[Any, ...], name: str) -> Tensor:
    """The module output as B×C×H×W (first tensor of a tuple; tokens reshaped by x_size)."""
    if isinstance(output, tuple | list):
        output = next((item for item in output if isinstance(item, Tensor)), None)
    if isinstance(output, Tensor) and output.dim() == 3:
        size = next((item for item in inputs[1:] if isinstance(item, tuple | list)
                     and len(item) == 2 and all(isinstance(v, int) for v in item)), None)
        if size is not None and output.shape[1] == size[0] * size[1]:
            return output.transpose(1, 2).reshape(output.shape[0], output.shape[2], *size)
    if not isinstance(output, Tensor) or output.dim() != 4:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise UserInputError(
            f"module '{name}' gives {shape}, not an image-shaped feature map; choose other "
            f"modules with {FLAG}.")
    return output


class FeatureTaps:
    """Forward hooks on named modules of one network, recording only inside `capture()`.

    Sessions nest: the innermost open session receives the features (a `paused()` session
    receives none), so a look-ahead forward inside a step does not add to the step's record.
    Each forward call appends one entry per layer; `record[name][call]` is a B×C×H×W tensor,
    copied at hook time so a later in-place operation of the model cannot change it.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        plain = unwrap(model)
        modules = dict(plain.named_modules())
        for name in layers:
            if name not in modules:
                known = [n for n in modules if n][:8]
                raise UserInputError(
                    f"{FLAG}: {type(plain).__name__} has no module '{name}' (it has e.g. "
                    f"{', '.join(known)}); use names from the model's state dict keys.")
        self.layers = list(layers)
        self._modules = [modules[name] for name in self.layers]
        self._sessions: list[dict[str, list[Tensor]] | None] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            session = self._sessions[-1] if self._sessions else None
            if session is not None:
                session[name].append(_as_image(output, inputs, name).clone())
        return record

    @contextlib.contextmanager
    def _session(self, record: dict[str, list[Tensor]] | None) -> Iterator[None]:
        if not self._sessions:
            self._handles = [module.register_forward_hook(self._hook(name))
                             for name, module in zip(self.layers, self._modules, strict=True)]
        self._sessions.append(record)
        try:
            yield
        finally:
            self._sessions.pop()
            if not self._sessions:
                for handle in self._handles:
                    handle.remove()
                self._handles = []

    @contextlib.contextmanager
    def capture(self) -> Iterator[dict[str, list[Tensor]]]:
        """Record the features of every forward call made inside the block."""
        record: dict[str, list[Tensor]] = {name: [] for name in self.layers}
        with self._session(record):
            yield record

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forward calls inside the block record nothing (not even into an enclosing capture)."""
        with self._session(None):
            yield

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def features(self, record: dict[str, list[Tensor]], rows: int | None = None,
                 call: int = 0) -> list[Tensor]:
        """The features of forward call `call`, optionally only its first `rows` samples."""
        missing = [name for name in self.layers if len(record[name]) <= call]
        if missing:
            raise RuntimeError(f"no feature was recorded at {missing[0]} (call {call})")
        return [record[name][call][:rows] if rows is not None else record[name][call]
                for name in self.layers]


def feature_channels(model: nn.Module, layers: Sequence[str]) -> list[int]:
    """Channels of the features at `layers`, from one small forward pass.

    The pass runs in eval mode under `no_grad` and restores the mode, so it draws no random
    numbers (no dropout or drop-path) and leaves no trace in the run.
    """
    plain = unwrap(model)
    parameter = next(plain.parameters())
    probe = torch.rand(1, 3, PROBE_SIZE, PROBE_SIZE, generator=torch.Generator().manual_seed(0))
    probe = probe.to(parameter.device, parameter.dtype)
    taps = FeatureTaps(plain, layers)
    was_training = plain.training
    plain.eval()
    try:
        with torch.no_grad(), taps.capture() as record:
            plain(probe)
    finally:
        plain.train(was_training)
    silent = [name for name in layers if not record[name]]
    if silent:
        raise UserInputError(
            f"{FLAG}: module '{silent[0]}' of {type(plain).__name__} is never called as a module "
            "in a forward pass; choose modules that are.")
    return [feature.shape[1] for feature in taps.features(record)]


def as_constant(feature: Tensor) -> Tensor:
    """A teacher feature usable in a student's loss: outside inference mode, without a graph.

    Autograd may not save inference tensors (an MSE or Charbonnier saves its target), so those
    are copied once, outside inference mode.
    """
    return feature.clone() if feature.is_inference() else feature.detach()


def crop_to_common(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Both features over their common top-left area.

    Window-based networks pad their input to a multiple of the window at the bottom and right;
    two such networks with different windows give maps of different sizes whose top-left parts
    both cover the real image.
    """
    height = min(student.shape[-2], teacher.shape[-2])
    width = min(student.shape[-1], teacher.shape[-1])
    return student[..., :height, :width], teacher[..., :height, :width]


def adapter(in_channels: int, out_channels: int) -> nn.Module:
    """A 1×1 conv between channel counts, or the identity when they are equal."""
    if in_channels == out_channels:
        return nn.Identity()
    return nn.Conv2d(in_channels, out_channels, 1)


@contextlib.contextmanager
def helper_initialisation() -> Iterator[None]:
    """Random initialisation of a method's helpers that leaves the run's random stream as it was.

    Adding adapters or KRNets therefore does not change the data or the student a seed gives, so
    methods compared at the same seed start from the same student.
    """
    seed = torch.initial_seed()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((seed + 0x5EED) % 2**63)
        yield


class TapPair:
    """The student's and the teacher's taps at matched positions, with their channel counts."""

    def __init__(self, student: nn.Module, teacher: nn.Module, feature_layers: str = "") -> None:
        student_layers, teacher_layers = feature_layer_pairs(student, teacher, feature_layers)
        self.student = FeatureTaps(student, student_layers)
        self.teacher = FeatureTaps(teacher, teacher_layers)
        self.student_channels = feature_channels(student, student_layers)
        self.teacher_channels = feature_channels(teacher, teacher_layers)

    @property
    def positions(self) -> int:
        return len(self.student.layers)

    def describe(self) -> str:
        return ", ".join(f"{s}→{t}" for s, t in zip(self.student.layers, self.teacher.layers,
                                                      strict=True))


class FeatureDistillation(Method):
    """A reconstruction term plus a feature term at matched taps (FitNet, FAKD).

    `prepare` finds the taps and builds the method's helpers; `feature_loss` compares one
    position's student and teacher features (already on a common area).
    """

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.taps: TapPair | None = None

    def prepare(self, student: nn.Module, teacher: nn.Module | None) -> None:
        teacher = require_teacher(self.name, teacher)
        self.taps = TapPair(student, teacher, self.options.feature_layers)
        with helper_initialisation():
            self.build_helpers(self.taps)
        parameter = next(unwrap(student).parameters())
        self.to(parameter.device, parameter.dtype)

    def build_helpers(self, taps: TapPair) -> None:
        """Create trainable helpers (e.g. adapters); none by default."""

    def feature_loss(self, position: int, student: Tensor, teacher: Tensor) -> Tensor:
        raise NotImplementedError

    def prepared_taps(self) -> TapPair:
        if self.taps is None:
            raise RuntimeError(f"call prepare(student, teacher) on the '{self.name}' method "
                               "before training with it")
        return self.taps

    def losses(self, batch: Batch, student: nn.Module,
               teacher: nn.Module | None) -> dict[str, Tensor]:
        taps = self.prepared_taps()
        with taps.teacher.capture() as teacher_record:
            run_teacher(require_teacher(self.name, teacher), [batch.lr])
        teacher_features = [as_constant(f) for f in taps.teacher.features(teacher_record)]
        with taps.student.capture() as student_record:
            sr = student(batch.lr)
        student_features = taps.student.features(student_record)
        feature_term = sum(self.feature_loss(position, *crop_to_common(s, t))
                           for position, (s, t) in enumerate(zip(student_features,
                                                                 teacher_features, strict=True)))
        return {"rec": self.options.w_rec * F.l1_loss(sr, batch.hr),
                "feat": self.options.w_feat * feature_term}

"""The interface every training method implements.

A method turns one training batch into named loss terms, given the student being trained and the
frozen teacher. The training loop knows nothing about any particular method: it asks the method
for a `train_step`, hands it a `StepFn` that performs one optimiser step, and logs the terms the
method returns. Methods that need more than one optimiser step per iteration (DUKD's two-step
schedule, MKD's meta step) override `train_step`; all others only write `losses`.

Methods are `nn.Module`s so that trainable helpers (feature adapters, KRNets) live inside them,
move with `.to(device)` and are saved in resumable checkpoints, but never in the student file.
The same state dict carries the method's random generator, so a resumed run draws the same
zoom-in tiles and augmentations as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from srcompress.data.degradation import Degradation, DegradationRandom
from srcompress.errors import UserInputError


class CachedTargets(Protocol):
    """The teacher's outputs for one batch, read from a teacher-output cache (`--teacher-cache`)
    instead of running the teacher; each method returns None for a part the cache does not hold,
    which the method then computes online.

    A cached target is the teacher's output on the whole training image, cropped to the patch and
    flipped as the patch was: the teacher saw the patch's surroundings, not zero padding.
    """

    def pairs(self) -> Tensor | None:
        """T(x) for the LR patches, B×3×(s·h)×(s·h)."""

    def zoom_out_input(self) -> Tensor | None:
        """x↓, the LR patches shrunk once more (cut from the whole shrunk image), B×3×h/s×h/s."""

    def zoom_out(self) -> Tensor | None:
        """T(x↓), B×3×h×h."""

    def zoom_in(self, tiles: Tensor) -> Tensor | None:
        """T(z) for HR tiles `tiles[b, j]` (grid cell row·s + column of patch b), stacked
        sample-major: (B·n)×3×(s·h)×(s·h)."""


@dataclass
class Batch:
    """Aligned training patches, RGB in [0, 1]: `lr` (B×3×h×h) is the input both networks see,
    `hr` (B×3×(s·h)×(s·h)) the clean ground truth.

    For the classical task `lr` is the bicubic LR of the patch. With a real-world degradation
    (`Batch.degraded`) `lr` is `hr` degraded on the device, `clean_lr` is the patch's clean
    bicubic LR, and `degrade` turns other clean images at HR scale into inputs like `lr`
    (DUKD's upcycled inputs), continuing the same reproducible random stream.

    `cached` holds the teacher's outputs for the patches when the run has a teacher cache.
    """

    lr: Tensor
    hr: Tensor
    scale: int
    clean_lr: Tensor | None = None
    degrade: Callable[[Tensor], Tensor] | None = None
    cached: CachedTargets | None = None

    @classmethod
    def degraded(cls, clean_lr: Tensor, hr: Tensor, scale: int, degradation: Degradation,
                 random: DegradationRandom) -> Batch:
        """The batch whose input is `hr` degraded by `degradation` with `random`."""
        def degrade(images: Tensor) -> Tensor:
            return degradation.degrade(images, scale, random).to(
                memory_format=_memory_format(images))

        return cls(degrade(hr), hr, scale, clean_lr, degrade)
    cached: CachedTargets | None = None

    def to(self, device: torch.device | str) -> Batch:
        clean_lr = (None if self.clean_lr is None
                    else self.clean_lr.to(device, non_blocking=True))
        return Batch(self.lr.to(device, non_blocking=True), self.hr.to(device, non_blocking=True),
                     self.scale, clean_lr, self.degrade, self.cached)


def _memory_format(images: Tensor) -> torch.memory_format:
    """channels_last when `images` use it (the CUDA training path), else contiguous."""
    channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


class StepFn(Protocol):
    """One optimiser step on `loss`, provided by the training loop (AMP scaling, clipping, DDP).

    `clear_grad=False` leaves the gradients accumulated for the next step, as the DUKD authors'
    two-step schedule does.
    """

    def __call__(self, loss: Tensor, *, clear_grad: bool = True) -> None: ...


@dataclass(frozen=True)
class NoOptions:
    """Options of a method that has none."""


def run_teacher(teacher: nn.Module, inputs: Sequence[Tensor]) -> list[Tensor]:
    """Teacher outputs for `inputs`, with one forward call per distinct input shape.

    The teacher dominates the cost of distillation, so inputs of the same spatial size are
    concatenated on the batch axis and run together. The forward runs under inference mode; the
    outputs are then copied outside it, because inference tensors may not be saved by autograd
    (a loss such as MSE or Charbonnier saves its target). They are constants for the student's
    loss: `requires_grad` is False and they have no `grad_fn`.
    """
    if teacher.training:
        raise RuntimeError("the teacher must be in eval mode during distillation")
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, tensor in enumerate(inputs):
        groups.setdefault(tuple(tensor.shape[1:]), []).append(index)
    results: list[tuple[list[int], Tensor]] = []
    with torch.inference_mode():
        for indices in groups.values():
            merged = torch.cat([inputs[i] for i in indices])
            results.append((indices, teacher(merged)))
    outputs: dict[int, Tensor] = {}
    for indices, result in results:
        sizes = [inputs[i].shape[0] for i in indices]
        for i, part in zip(indices, result.clone().split(sizes), strict=True):
            outputs[i] = part
    return [outputs[i] for i in range(len(inputs))]


def require_teacher(method: str, teacher: nn.Module | None) -> nn.Module:
    if teacher is None:
        raise UserInputError(
            f"Method '{method}' distils from a teacher but none was given; pass a teacher model "
            f"or use --method scratch.")
    return teacher


class Method(nn.Module):
    """A distillation (or baseline) objective.

    Subclasses set `name`, `Options` (a frozen dataclass whose fields, defaults and
    `metadata["help"]` become CLI flags and TOML keys), declare whether they use a teacher, and
    implement `losses`. Loss terms are returned already weighted, so their sum is the objective;
    the loop logs each of them.

    Random draws (zoom-in tiles, augmentations) come from `self.generator`, a CPU generator
    seeded from `torch.initial_seed()` at construction, so a run is reproducible from the seed the
    loop gives `torch.manual_seed`; `reseed` gives data-parallel ranks their own streams.
    """

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = True
    Options: ClassVar[type] = NoOptions
    # The teacher outputs the method can read from a teacher cache ("pairs", "zoom_out",
    # "zoom_in"); none for methods that need the teacher's features, which are not cached.
    cached_parts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Any = None) -> None:
        super().__init__()
        self.options = options if options is not None else self.Options()
        self.generator = torch.Generator().manual_seed(torch.initial_seed())

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def get_extra_state(self) -> Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        self.generator.set_state(state.cpu())

    def losses(self, batch: Batch, student: nn.Module,
               teacher: nn.Module | None) -> dict[str, Tensor]:
        raise NotImplementedError

    def train_step(self, batch: Batch, student: nn.Module, teacher: nn.Module | None,
                   step: StepFn) -> dict[str, float]:
        """One training iteration; the default is a single step on the sum of all terms."""
        terms = self.losses(batch, student, teacher)
        step(sum(terms.values()))
        return terms_to_floats(terms)

    def prepare(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Build helpers whose shapes depend on the two networks (feature adapters, KRNets).

        The loop calls it once, with both networks on their device, before it asks for
        `student_side_parameters` and before it loads a checkpoint's method state.
        """

    def student_side_parameters(self) -> list[nn.Parameter]:
        """Parameters trained together with the student by the main optimiser (e.g. adapters)."""
        return []


def terms_to_floats(terms: dict[str, Tensor]) -> dict[str, float]:
    """Detached values of the loss terms, read back from the device in one synchronisation."""
    values = torch.stack([term.detach().float() for term in terms.values()]).tolist()
    return dict(zip(terms, values, strict=True))

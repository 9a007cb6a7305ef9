"""DUKD: Data Upcycling Knowledge Distillation (Zhang et al., arXiv 2309.14162), methods.md §2.

On the training pairs the teacher's output is only a noisy copy of the ground truth, so plain KD
adds little. DUKD makes extra in-domain inputs from each pair where no ground truth exists and the
teacher is the only supervision: HR tiles used as LR inputs (zoom-in) and the LR patch shrunk once
more (zoom-out), plus a label-consistency regulariser (LCR) that asks the student to commute with
invertible image operations.

Cost: SR networks are fully convolutional, so their work is proportional to input pixels. Per
step the student and the teacher each see B·h² pixels of pairs, n_sub·B·h² of zoom-in tiles and
B·(h/s)² of zoom-out input, i.e. 1 + n_sub + 1/s² times what KD needs (1 + n_sub with zoom-out
off). This module adds no work beyond that: one teacher call per distinct input shape (pairs and
tiles together, zoom-out apart), under inference mode, never in the graph; the zoom-out bicubic
runs batched on the training device. The student runs once per input kind (pairs, transformed
tiles, zoom-out), each at KD's batch size: merging pairs and tiles into one batch of 2B made its
forward+backward superlinear on the CPU (2.41x for 2x the batch) and DUKD 14-18 % dearer than
its pixel count; separate calls measure +2.4 % (docs/results.md).

On real-world batches (`--degradation realesrgan`, `Batch.degraded`) every input is made from the
clean HR patch y and then degraded by the run's pipeline D_s (HR scale → LR scale), continuing
the iteration's random stream, so teacher and student always see the same degraded input:

- pairs: x = D_s(y); targets y (clean) and T(x);
- zoom-in: z = D_s(bicubic_s(tile)), i.e. a clean h×h tile of y, brought to HR scale by MATLAB
  bicubic and degraded like the pairs, so its blur, noise and JPEG have the same strength per
  pixel as the pairs' (degrading the tile at its own scale would blur it s times more);
  target T(z), LCR on the student's copy as above;
- zoom-out: x↓ = D_s(x_c), where x_c is the clean bicubic LR of y (cropped to a multiple of s);
  targets x_c (the clean image x↓ was made from) and T(x↓). The input→target relation is then
  the pairs' one, one scale down.

Ground-truth terms always compare with clean images (as Real-ESRGAN's PSNR-oriented stage,
without its sharpening of the ground truth); `w_rec = 0` leaves pure imitation of the teacher,
the usual choice for a GAN-trained teacher. The zoom-in degradation costs one more pipeline pass
at HR size per tile (measured in docs/results.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from srcompress.data.resize import imresize
from srcompress.errors import UserInputError
from srcompress.methods.base import (
    Batch,
    Method,
    StepFn,
    require_teacher,
    run_teacher,
    terms_to_floats,
)

# Label-consistency operations, in the order they are applied to the student's input. Each is its
# own inverse, so the inverse of a composition is the same operations in reverse order.
LCR_OPERATIONS: tuple[tuple[str, Callable[[Tensor], Tensor]], ...] = (
    ("invert", lambda images: 1 - images),
    ("vflip", lambda images: images.flip(-2)),
    ("hflip", lambda images: images.flip(-1)),
    ("transpose", lambda images: images.transpose(-2, -1)),
)


@dataclass(frozen=True)
class DUKDOptions:
    w_rec: float = field(default=5.0, metadata={
        "help": "weight of the ground-truth terms ℓ1(S(x), y) and ℓ1(S(x↓), x)", "min": 0.0})
    w_kd: float = field(default=1.0, metadata={
        "help": "weight of the teacher terms ℓ1(S(x), T(x)) and ℓ1(S(x↓), T(x↓))", "min": 0.0})
    w_upcycled: float = field(default=1.0, metadata={
        "help": "λ_dukd: weight of the upcycled losses (zoom-in + zoom-out)", "min": 0.0})
    n_sub: int = field(default=1, metadata={
        "help": "zoom-in HR tiles per pair, distinct, at most scale²", "min": 1})
    lcr_prob: float = field(default=0.3, metadata={
        "help": "probability of each label-consistency op (invert, vflip, hflip, transpose)",
        "min": 0.0, "max": 1.0})
    zoom_out: bool = field(default=True, metadata={
        "help": "also train on the LR patch downscaled by 1/scale (zoom-out upcycling)"})
    same_order_inverse: bool = field(default=False, metadata={
        "help": "undo LCR ops in the order they were applied, as the authors' code does "
                "(wrong for transpose with one flip; for reproducing their numbers only)"})
    two_step: bool = field(default=False, metadata={
        "help": "the authors' schedule: a step on the pair loss, then one on the upcycled loss "
                "without clearing gradients in between (default: one combined step)"})


@dataclass
class Upcycled:
    """The inputs DUKD makes from one batch.

    `tiles[b, j]` is the grid cell (row·s + column) of the j-th tile of sample b; the tiles are
    stacked sample-major, so row b·n_sub + j of `zoom_in` is that tile (degraded, on degraded
    batches). `operations[i, k]` says whether `LCR_OPERATIONS[k]` was applied to row i of
    `zoom_in` to make `zoom_in_student`. `zoom_out_target` is the clean image `zoom_out` was
    made from, the ground truth of the student's output on it.
    """

    zoom_in: Tensor
    tiles: Tensor
    operations: Tensor
    zoom_in_student: Tensor
    zoom_out: Tensor | None
    zoom_out_target: Tensor | None


def apply_operations(images: Tensor, operations: Tensor) -> Tensor:
    """F(images): each row's selected operations, in `LCR_OPERATIONS` order."""
    return _compose(images, operations, list(range(len(LCR_OPERATIONS))))


def undo_operations(images: Tensor, operations: Tensor, same_order: bool = False) -> Tensor:
    """F⁻¹(images): the operations in reverse order (or, `same_order`, as the authors' code does).

    Re-applying in the same order is right unless a transpose follows exactly one flip: then
    transpose·vflip·transpose = hflip, and the result is a 180° rotation instead of the identity.
    """
    order = list(range(len(LCR_OPERATIONS)))
    return _compose(images, operations, order if same_order else order[::-1])


def _compose(images: Tensor, operations: Tensor, order: list[int]) -> Tensor:
    """The selected ops of each row, in `order`, batched with `torch.where`.

    `operations` lives on the CPU, so ops that no row drew are skipped without a device sync.
    """
    on_device = operations.to(images.device, non_blocking=True)[:, :, None, None, None]
    for index in order:
        if operations[:, index].any():
            images = torch.where(on_device[:, index], LCR_OPERATIONS[index][1](images), images)
    return images


class DUKD(Method):
    """L = w_rec·ℓ1(S(x), y) + w_kd·ℓ1(S(x), T(x)) + λ·(L_zi + L_zo), methods.md §2.

    Logged terms (already weighted): `rec`, `kd` (the pairs), `zoom_in` (λ·L_zi with LCR) and,
    with zoom-out on, `zoom_out_rec` and `zoom_out_kd` (λ·w_rec·… and λ·w_kd·…).

    Zoom-out on a patch whose side h is not a multiple of s: MATLAB's imresize gives ceil(h/s)
    pixels, and its pixel-centre mapping puts pixel j of x↓ over pixels s·j … s·j+s−1 of x, so the
    first h rows and columns of S(x↓) line up with x and are compared with it; T(x↓) has the same
    size as S(x↓) and is compared whole. Any fully convolutional student and teacher take such
    inputs (window-based ones such as SwinIR pad internally).
    """

    name = "dukd"
    Options = DUKDOptions
    cached_parts = ("pairs", "zoom_out", "zoom_in")

    def upcycle(self, batch: Batch) -> Upcycled:
        """Zoom-in tiles (with their LCR-transformed copies for the student) and zoom-out input."""
        lr, hr, scale = batch.lr, batch.hr, batch.scale
        count, channels, height, width = lr.shape
        if height != width:
            raise UserInputError(
                f"DUKD needs square training patches (its transpose op), got {height}x{width}; "
                f"set the patch size to one number.")
        if hr.shape[-2:] != (scale * height, scale * width):
            raise ValueError(f"HR patch {tuple(hr.shape)} is not x{scale} of LR {tuple(lr.shape)}")
        n_sub = self.options.n_sub
        if n_sub > scale * scale:
            raise UserInputError(
                f"DUKD option n_sub={n_sub} asks for more tiles than the {scale * scale} of an "
                f"x{scale} HR patch; use at most {scale * scale}.")
        tiles = torch.rand(count, scale * scale, generator=self.generator).argsort(dim=1)[:, :n_sub]
        on_device = tiles.to(hr.device, non_blocking=True)
        grid = hr.unflatten(2, (scale, height)).unflatten(4, (scale, width))
        sample = torch.arange(count, device=hr.device).unsqueeze(1)
        zoom_in = grid[sample, :, on_device // scale, :, on_device % scale, :]
        zoom_in = zoom_in.reshape(count * n_sub, channels, height, width)
        if batch.degrade is not None:
            with torch.no_grad():
                zoom_in = batch.degrade(imresize(zoom_in, scale=scale))

        operations = torch.rand(count * n_sub, len(LCR_OPERATIONS),
                                generator=self.generator) < self.options.lcr_prob
        zoom_out = target = None
        if self.options.zoom_out:
            with torch.no_grad():
                zoom_out, target = self._zoom_out(batch)
        return Upcycled(zoom_in, tiles, operations, apply_operations(zoom_in, operations),
                        zoom_out, target)

    @staticmethod
    def _zoom_out(batch: Batch) -> tuple[Tensor, Tensor]:
        """x↓ and its ground truth: the bicubic of x (with a teacher cache, cut from the whole
        image shrunk once) and x itself; on degraded batches the clean LR patch (cropped to a
        multiple of s) degraded like the pairs, and that clean patch."""
        cached = batch.cached.zoom_out_input() if batch.cached is not None else None
        if cached is not None:
            return cached, batch.lr
        if batch.degrade is None or batch.clean_lr is None:
            return imresize(batch.lr, scale=1 / batch.scale), batch.lr
        height, width = batch.clean_lr.shape[-2:]
        clean = batch.clean_lr[..., :height // batch.scale * batch.scale,
                               :width // batch.scale * batch.scale]
        return batch.degrade(clean), clean

    def teacher_targets(self, batch: Batch, upcycled: Upcycled,
                        teacher: nn.Module | None) -> list[Tensor]:
        """[T(x), T(z)] and T(x↓) with zoom-out on: read from the teacher cache where it holds
        them, the others from one `run_teacher` call."""
        inputs = [batch.lr, upcycled.zoom_in]
        if upcycled.zoom_out is not None:
            inputs.append(upcycled.zoom_out)
        cached: list[Tensor | None] = [None] * len(inputs)
        if batch.cached is not None:
            cached = [batch.cached.pairs(), batch.cached.zoom_in(upcycled.tiles),
                      batch.cached.zoom_out()][:len(inputs)]
        missing = [tensor for tensor, target in zip(inputs, cached, strict=True) if target is None]
        online = iter(run_teacher(require_teacher(self.name, teacher), missing) if missing else [])
        return [target if target is not None else next(online) for target in cached]

    def pair_terms(self, batch: Batch, sr: Tensor, teacher_sr: Tensor) -> dict[str, Tensor]:
        """The KD objective on the original pairs (where `dukd+mkd` adds its feature term)."""
        return {"rec": self.options.w_rec * F.l1_loss(sr, batch.hr),
                "kd": self.options.w_kd * F.l1_loss(sr, teacher_sr)}

    def upcycled_terms(self, batch: Batch, student: nn.Module, upcycled: Upcycled,
                       sr_zoom_in: Tensor, targets: list[Tensor]) -> dict[str, Tensor]:
        """λ·L_zi from the student's output on F(z), and λ·L_zo (one more student call)."""
        options = self.options
        restored = undo_operations(sr_zoom_in, upcycled.operations, options.same_order_inverse)
        terms = {"zoom_in": options.w_upcycled * F.l1_loss(restored, targets[1])}
        if upcycled.zoom_out is not None and upcycled.zoom_out_target is not None:
            sr_down = student(upcycled.zoom_out)
            height, width = upcycled.zoom_out_target.shape[-2:]
            terms["zoom_out_rec"] = options.w_upcycled * options.w_rec * F.l1_loss(
                sr_down[..., :height, :width], upcycled.zoom_out_target)
            terms["zoom_out_kd"] = options.w_upcycled * options.w_kd * F.l1_loss(
                sr_down, targets[2])
        return terms

    def losses(self, batch: Batch, student: nn.Module,
               teacher: nn.Module | None) -> dict[str, Tensor]:
        upcycled = self.upcycle(batch)
        targets = self.teacher_targets(batch, upcycled, teacher)
        return self.pair_terms(batch, student(batch.lr), targets[0]) | self.upcycled_terms(
            batch, student, upcycled, student(upcycled.zoom_in_student), targets)

    def train_step(self, batch: Batch, student: nn.Module, teacher: nn.Module | None,
                   step: StepFn) -> dict[str, float]:
        """One combined step, or with `two_step` the authors' two: the pair loss, then the
        upcycled loss from a student forward with the updated weights, its gradient added to the
        first one (not cleared in between). The teacher runs once either way."""
        if not self.options.two_step:
            return super().train_step(batch, student, teacher, step)
        upcycled = self.upcycle(batch)
        targets = self.teacher_targets(batch, upcycled, teacher)
        pair = self.pair_terms(batch, student(batch.lr), targets[0])
        step(sum(pair.values()), clear_grad=False)
        upcycled_terms = self.upcycled_terms(
            batch, student, upcycled, student(upcycled.zoom_in_student), targets)
        step(sum(upcycled_terms.values()))
        return terms_to_floats(pair | upcycled_terms)

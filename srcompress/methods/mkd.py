"""MKD: meta knowledge distillation with knowledge-representation networks (methods.md §3).

Zhu, Liu and Chen (arXiv 2207.08356) let small networks (KRNets) decide what the student should
learn from the teacher's features, and train them by meta-learning so that the transfer lowers
the student's reconstruction error. Only their abstract is public in detail; this is the
reconstruction methods.md describes, with these choices:

- **Kernel bank.** Each KRNet outputs, per image, K kernels of size C×3×3 over the student's C
  channels (a full-channel bank, not depthwise and not shared across channels): kernel k maps the
  feature to one texture response Z_k = Σ_c w_kc ⊛ F_c. Each channel slice w_kc has zero mean, so
  every kernel is a spatial high-pass filter in every channel (texture, not flat intensity), and
  the whole kernel has unit norm, so the KRNet chooses which channels and orientations matter but
  cannot inflate the loss.
- **Feature scale.** Both features are divided by their per-image RMS before the kernels: EDSR
  and RCAN compute on a 0-255 range, SwinIR on 0-1, and teacher and student use different residual
  scales, so raw features are not comparable; after the division L_KR has one meaning everywhere.
- **Teacher adapter.** The kernels act on the student's channels, so the teacher feature is
  mapped to them by a 1×1 adapter (when the widths differ). The adapter belongs to the KRNet and is
  trained with it by the meta objective: the student never trains it, since Z_T is a constant of
  the student's step.
- **KRNet input.** The student feature (detached, RMS-normalised) and the per-pixel cosine
  similarity of the student and adapted teacher features (channel-normalised), 3×3 conv encoder,
  global average pool, a linear layer to the K·C·9 kernel weights.
- **Stop-gradient.** In the student's step the kernels and Z_T are computed without a graph: the
  student gets ∂/∂θ of ρ(Z_S − Z_T) only. In the meta step nothing is cut: the look-ahead θ' sees
  how φ shapes the student's gradient through the kernels on both sides and the adapter.
- **Second batch.** The meta objective ℓ1(S_θ'(x_m), y_m) is measured on the previous iteration's
  training batch, which the method keeps (and saves in its state for `--resume`). It is a real
  training batch other than the current one, costs no extra data loading, and needs nothing from
  the training loop. The first iteration has no previous batch and takes no meta step.

Cost per meta iteration (measured in benchmarks/bench_distill.py): one teacher forward, a
student forward and a double backward at θ, a student forward and backward at θ', then the
student's own forward and backward. `meta_every` N takes the meta step every N-th iteration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from srcompress.errors import UserInputError
from srcompress.methods.base import (
    Batch,
    Method,
    StepFn,
    require_teacher,
    run_teacher,
    terms_to_floats,
)
from srcompress.methods.dukd import DUKD, DUKDOptions, Upcycled
from srcompress.methods.features import (
    TapPair,
    adapter,
    as_constant,
    crop_to_common,
    feature_layers_option,
    helper_initialisation,
    unwrap,
)

PENALTIES = ("charbonnier", "l1")


@dataclass(frozen=True)
class KnowledgeOptions:
    """The options of the KRNet loss and its meta step, shared by `mkd` and `dukd+mkd`."""

    kr_weight: float = field(default=1.0, metadata={
        "help": "λ: weight of the texture-wise KRNet loss L_KR", "min": 0.0})
    num_kernels: int = field(default=8, metadata={
        "help": "K: dynamic 3×3 kernels per image and position", "min": 1})
    penalty: str = field(default="charbonnier", metadata={
        "help": "ρ of the texture loss: charbonnier or l1"})
    charbonnier_eps: float = field(default=1e-3, metadata={
        "help": "ε of the Charbonnier penalty sqrt(d² + ε²) − ε", "min": 0.0})
    krnet_width: int = field(default=32, metadata={
        "help": "channels of each KRNet's encoder", "min": 1})
    meta_lr: float = field(default=1e-4, metadata={
        "help": "learning rate of the KRNets' own Adam", "min": 0.0})
    look_ahead_lr: float = field(default=0.1, metadata={
        "help": "α of the one-step look-ahead θ' = θ − α∇θ L_S", "min": 0.0})
    meta_every: int = field(default=1, metadata={
        "help": "take the meta step every N iterations (1: every iteration)", "min": 1})
    feature_layers: str = feature_layers_option()


@dataclass(frozen=True)
class MKDOptions(KnowledgeOptions):
    w_rec: float = field(default=1.0, metadata={"help": "weight of ℓ1(S(x), y)", "min": 0.0})
    w_kd: float = field(default=0.0, metadata={
        "help": "weight of the optional output KD term ℓ1(S(x), T(x))", "min": 0.0})


@dataclass(frozen=True)
class DUKDMKDOptions(DUKDOptions, KnowledgeOptions):
    """DUKD's options and the KRNet options; L_KR joins DUKD's pair term."""


def rms_normalised(feature: Tensor) -> Tensor:
    scale = feature.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-12).sqrt()
    return feature / scale


def texture_responses(feature: Tensor, kernels: Tensor) -> Tensor:
    """Z (B×K×H×W): each image's K kernels (B×K×C×3×3) applied to its C-channel feature."""
    count, channels, height, width = feature.shape
    padded = F.pad(feature, (1, 1, 1, 1), mode="replicate")
    responses = F.conv2d(padded.reshape(1, count * channels, height + 2, width + 2),
                         kernels.reshape(-1, channels, 3, 3), groups=count)
    return responses.view(count, -1, height, width)


class KRNet(nn.Module):
    """One position's knowledge-representation network: teacher adapter and kernel generator."""

    def __init__(self, student_channels: int, teacher_channels: int, num_kernels: int,
                 width: int) -> None:
        super().__init__()
        self.num_kernels = num_kernels
        self.teacher_adapter = adapter(teacher_channels, student_channels)
        self.encoder = nn.Sequential(
            nn.Conv2d(student_channels + 1, width, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_kernels * student_channels * 9)

    def kernels(self, student: Tensor, teacher: Tensor) -> Tensor:
        """B×K×C×3×3 kernels, every channel slice zero-mean, every kernel of unit norm."""
        correlation = F.cosine_similarity(student, teacher, dim=1, eps=1e-8).unsqueeze(1)
        raw = self.head(self.encoder(torch.cat([student, correlation], dim=1)))
        raw = raw.view(student.shape[0], self.num_kernels, student.shape[1], 9)
        centred = raw - raw.mean(dim=-1, keepdim=True)
        norm = centred.flatten(2).norm(dim=-1).clamp_min(1e-12)
        return (centred / norm[..., None, None]).unflatten(-1, (3, 3))

    def responses(self, student: Tensor, teacher: Tensor,
                  through_krnet: bool) -> tuple[Tensor, Tensor]:
        """(Z_S, Z_T) at one position; without `through_krnet` only Z_S has a graph (to θ)."""
        student = rms_normalised(student)
        with contextlib.nullcontext() if through_krnet else torch.no_grad():
            guidance = rms_normalised(self.teacher_adapter(teacher))
            kernels = self.kernels(student.detach(), guidance)
            teacher_texture = texture_responses(guidance, kernels)
        return texture_responses(student, kernels), teacher_texture


class TextureKnowledge(nn.Module):
    """KRNets, their meta optimiser and the look-ahead: the part `mkd` and `dukd+mkd` share.

    State for `--resume` (in the method's state dict): KRNet and adapter weights, the meta Adam's
    state, the iteration count (for `meta_every`) and the kept previous batch.
    """

    def __init__(self, options: KnowledgeOptions, method: str) -> None:
        super().__init__()
        if options.penalty not in PENALTIES:
            raise UserInputError(
                f"Option 'penalty' of method '{method}' must be one of {', '.join(PENALTIES)}, "
                f"got '{options.penalty}'.")
        self.options = options
        self.method = method
        self.krnets = nn.ModuleList()
        self.taps: TapPair | None = None
        self.meta_optimizer: torch.optim.Adam | None = None
        self.iterations = 0
        self.previous: Batch | None = None

    def prepare(self, student: nn.Module, teacher: nn.Module) -> None:
        options = self.options
        self.taps = TapPair(student, teacher, options.feature_layers)
        with helper_initialisation():
            self.krnets = nn.ModuleList(
                KRNet(s, t, options.num_kernels, options.krnet_width)
                for s, t in zip(self.taps.student_channels, self.taps.teacher_channels,
                                strict=True))
        parameter = next(unwrap(student).parameters())
        self.krnets.to(parameter.device, parameter.dtype)
        self.meta_optimizer = torch.optim.Adam(self.krnets.parameters(), lr=options.meta_lr)

    def prepared_taps(self) -> TapPair:
        if self.taps is None:
            raise RuntimeError(f"call prepare(student, teacher) on the '{self.method}' method "
                               "before training with it")
        return self.taps

    def teacher_features(self, record: dict[str, list[Tensor]], rows: int) -> list[Tensor]:
        return [as_constant(f) for f in self.prepared_taps().teacher.features(record, rows)]

    def loss(self, student_features: list[Tensor], teacher_features: list[Tensor],
             through_krnets: bool = False) -> Tensor:
        """λ·L_KR = λ·Σ_positions (1/K)·Σ_k mean ρ(Z_S,k − Z_T,k)."""
        per_position = []
        for krnet, student, teacher in zip(self.krnets, student_features, teacher_features,
                                           strict=True):
            student, teacher = crop_to_common(student, teacher)
            z_student, z_teacher = krnet.responses(student, teacher, through_krnets)
            per_position.append(self.penalty(z_student - z_teacher).mean())
        return self.options.kr_weight * torch.stack(per_position).sum()

    def penalty(self, difference: Tensor) -> Tensor:
        if self.options.penalty == "l1":
            return difference.abs()
        eps = self.options.charbonnier_eps
        return (difference.square() + eps * eps).sqrt() - eps

    def look_ahead_loss(self, student: nn.Module, batch: Batch, meta_batch: Batch,
                        teacher_features: list[Tensor],
                        output_objective: Callable[[Tensor], Tensor]) -> Tensor:
        """ℓ1(S_θ'(x_m), y_m) with θ' = θ − α∇θ L_S(θ, φ), differentiable with respect to φ.

        `output_objective(S(x))` is the student objective without its KRNet term; the look-ahead
        runs on the plain module (outside any DDP wrapper, whose gradient hooks expect one
        backward) and leaves the student's `.grad` untouched.
        """
        taps = self.prepared_taps()
        module = unwrap(student)
        trainable = {name: p for name, p in module.named_parameters() if p.requires_grad}
        with taps.student.capture() as record:
            sr = module(batch.lr)
        objective = output_objective(sr) + self.loss(taps.student.features(record),
                                                     teacher_features, through_krnets=True)
        gradients = torch.autograd.grad(objective, list(trainable.values()), create_graph=True,
                                        allow_unused=True)
        alpha = self.options.look_ahead_lr
        look_ahead = {name: p if g is None else p - alpha * g
                      for (name, p), g in zip(trainable.items(), gradients, strict=True)}
        with taps.student.paused():
            sr_meta = functional_call(module, look_ahead, (meta_batch.lr,))
        return F.l1_loss(sr_meta, meta_batch.hr)

    def meta_due(self) -> bool:
        return self.previous is not None and self.iterations % self.options.meta_every == 0

    def meta_step(self, student: nn.Module, batch: Batch, teacher_features: list[Tensor],
                  output_objective: Callable[[Tensor], Tensor]) -> float:
        """One Adam step of the KRNets on the look-ahead loss; returns that loss."""
        assert self.previous is not None and self.meta_optimizer is not None
        meta_batch = self.previous.to(batch.lr.device)
        meta_loss = self.look_ahead_loss(student, batch, meta_batch, teacher_features,
                                         output_objective)
        parameters = list(self.krnets.parameters())
        gradients = torch.autograd.grad(meta_loss, parameters)
        for parameter, gradient in zip(parameters, gradients, strict=True):
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(gradient, op=dist.ReduceOp.AVG)
            parameter.grad = gradient
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        return meta_loss.detach().item()

    def finish_iteration(self, batch: Batch) -> None:
        """Keep this batch as the next meta step's second batch and count the iteration."""
        self.previous = Batch(batch.lr.detach(), batch.hr.detach(), batch.scale)
        self.iterations += 1

    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"iterations": self.iterations, "meta_optimizer": (
            self.meta_optimizer.state_dict() if self.meta_optimizer is not None else None)}
        if self.previous is not None:
            state["previous"] = {"lr": self.previous.lr, "hr": self.previous.hr,
                                 "scale": self.previous.scale}
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.iterations = int(state["iterations"])
        if state["meta_optimizer"] is not None:
            if self.meta_optimizer is None:
                raise RuntimeError(f"call prepare(student, teacher) on the '{self.method}' "
                                   "method before loading its state")
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        previous = state.get("previous")
        self.previous = (None if previous is None else
                         Batch(previous["lr"], previous["hr"], int(previous["scale"])))


class MKD(Method):
    """L_S = w_rec·ℓ1(S(x), y) + w_kd·ℓ1(S(x), T(x)) + λ·L_KR, KRNets trained by meta-learning.

    Logged terms: `rec`, `kd` (when w_kd > 0), `kr` (λ·L_KR), and on meta iterations `meta`, the
    look-ahead loss (not part of the student's objective).
    """

    name = "mkd"
    Options = MKDOptions

    def __init__(self, options: MKDOptions | None = None) -> None:
        super().__init__(options)
        self.knowledge = TextureKnowledge(self.options, self.name)

    def prepare(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.knowledge.prepare(student, require_teacher(self.name, teacher))

    def _teacher(self, batch: Batch, teacher: nn.Module | None) -> tuple[Tensor, list[Tensor]]:
        taps = self.knowledge.prepared_taps()
        with taps.teacher.capture() as record:
            (teacher_sr,) = run_teacher(require_teacher(self.name, teacher), [batch.lr])
        return teacher_sr, self.knowledge.teacher_features(record, batch.lr.shape[0])

    def output_terms(self, batch: Batch, sr: Tensor, teacher_sr: Tensor) -> dict[str, Tensor]:
        terms = {"rec": self.options.w_rec * F.l1_loss(sr, batch.hr)}
        if self.options.w_kd > 0:
            terms["kd"] = self.options.w_kd * F.l1_loss(sr, teacher_sr)
        return terms

    def _terms(self, batch: Batch, student: nn.Module, teacher_sr: Tensor,
               teacher_features: list[Tensor]) -> dict[str, Tensor]:
        taps = self.knowledge.prepared_taps()
        with taps.student.capture() as record:
            sr = student(batch.lr)
        return self.output_terms(batch, sr, teacher_sr) | {
            "kr": self.knowledge.loss(taps.student.features(record), teacher_features)}

    def losses(self, batch: Batch, student: nn.Module,
               teacher: nn.Module | None) -> dict[str, Tensor]:
        teacher_sr, teacher_features = self._teacher(batch, teacher)
        return self._terms(batch, student, teacher_sr, teacher_features)

    def train_step(self, batch: Batch, student: nn.Module, teacher: nn.Module | None,
                   step: StepFn) -> dict[str, float]:
        """Meta step on the KRNets (when due), then the student's step with the updated KRNets."""
        teacher_sr, teacher_features = self._teacher(batch, teacher)
        logged: dict[str, float] = {}
        if self.knowledge.meta_due():
            logged["meta"] = self.knowledge.meta_step(
                student, batch, teacher_features,
                lambda sr: sum(self.output_terms(batch, sr, teacher_sr).values()))
        terms = self._terms(batch, student, teacher_sr, teacher_features)
        step(sum(terms.values()))
        self.knowledge.finish_iteration(batch)
        return terms_to_floats(terms) | logged


@dataclass
class _PairStep:
    """What `dukd+mkd` needs between DUKD's calls within one step."""

    student: nn.Module
    student_record: dict[str, list[Tensor]]
    training: bool
    teacher_features: list[Tensor] | None = None
    meta_loss: float | None = None


class DUKDMKD(DUKD):
    """DUKD with λ·L_KR added to its pair term only; the meta objective is on real pairs.

    Colour inversion and the zoom inputs have no feature-space counterpart in the teacher's
    pair features, so the KRNet term sees only the original pairs: the features of the first B
    rows of DUKD's first student call (pairs, then tiles) and of its first teacher call. The
    look-ahead objective is DUKD's pair objective plus λ·L_KR: the upcycled terms do not depend
    on φ, and leaving them out of θ' changes the meta-gradient only at order α², while saving
    their double backward.
    """

    name = "dukd+mkd"
    Options = DUKDMKDOptions
    # The KRNet term needs the teacher's features on the pairs, so the teacher runs on them.
    cached_parts = ("zoom_out", "zoom_in")

    def __init__(self, options: DUKDMKDOptions | None = None) -> None:
        super().__init__(options)
        self.knowledge = TextureKnowledge(self.options, self.name)
        self._pair_step: _PairStep | None = None

    def prepare(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.knowledge.prepare(student, require_teacher(self.name, teacher))

    @contextlib.contextmanager
    def _pair_context(self, student: nn.Module, training: bool) -> Iterator[_PairStep]:
        if self._pair_step is not None:
            yield self._pair_step
            return
        with self.knowledge.prepared_taps().student.capture() as record:
            self._pair_step = _PairStep(student, record, training)
            try:
                yield self._pair_step
            finally:
                self._pair_step = None

    def teacher_targets(self, batch: Batch, upcycled: Upcycled,
                        teacher: nn.Module | None) -> list[Tensor]:
        with self.knowledge.prepared_taps().teacher.capture() as record:
            targets = super().teacher_targets(batch, upcycled, teacher)
        if self._pair_step is not None:
            self._pair_step.teacher_features = self.knowledge.teacher_features(
                record, batch.lr.shape[0])
        return targets

    def pair_terms(self, batch: Batch, sr: Tensor, teacher_sr: Tensor) -> dict[str, Tensor]:
        terms = super().pair_terms(batch, sr, teacher_sr)
        context = self._pair_step
        if context is None or context.teacher_features is None:
            raise RuntimeError("dukd+mkd pair terms are computed inside its losses/train_step")
        if context.training and self.knowledge.meta_due():
            context.meta_loss = self.knowledge.meta_step(
                context.student, batch, context.teacher_features,
                lambda output: sum(DUKD.pair_terms(self, batch, output, teacher_sr).values()))
        taps = self.knowledge.prepared_taps()
        student_features = taps.student.features(context.student_record, batch.lr.shape[0])
        return terms | {"kr": self.knowledge.loss(student_features, context.teacher_features)}

    def losses(self, batch: Batch, student: nn.Module,
               teacher: nn.Module | None) -> dict[str, Tensor]:
        with self._pair_context(student, training=False):
            return super().losses(batch, student, teacher)

    def train_step(self, batch: Batch, student: nn.Module, teacher: nn.Module | None,
                   step: StepFn) -> dict[str, float]:
        with self._pair_context(student, training=True) as context:
            logged = super().train_step(batch, student, teacher, step)
            meta_loss = context.meta_loss
        self.knowledge.finish_iteration(batch)
        return logged if meta_loss is None else logged | {"meta": meta_loss}

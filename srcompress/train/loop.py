"""The training loop shared by every method: optimiser, schedule, EMA, AMP, validation, checkpoints.

The loop knows nothing about distillation. Each iteration it sets the learning rate, hands the
method a batch and a `StepFn`, updates the EMA copy, and at fixed iterations validates, logs and
writes a resumable checkpoint.

Choices, and why:

- Adam with β = (0.9, 0.99), as in the DUKD recipes and BasicSR.
- Schedules are functions of the iteration number (`learning_rate`), not stateful scheduler
  objects, so a resumed run needs nothing but the iteration to be back on schedule. `multistep`
  (default) multiplies the rate by `gamma` (0.1) at 40 % and 80 % of the iterations, which is the
  paper's 100k/200k of 250k; `cosine` decays it to zero.
- EMA decay is `min(ema, (1 + i) / (10 + i))`: the usual warm-up, without which a short run's
  EMA weights would still be mostly the random initial ones.
- Randomness is reseeded every iteration from (seed, iteration, rank), for the data, the
  degradation of real-world runs (on the device, before the method) and the method's own draws
  (DUKD's tiles and flips), so resuming from a checkpoint is bit-exact on CPU.
- A loss that is NaN or infinite stops the run before the step, with the last checkpoint kept.
- AMP (bf16 where supported, else fp16 with a GradScaler) and channels_last are used on CUDA only.
- `metrics.json` is rewritten at every log and validation, not only with checkpoints, so a job
  can be watched from outside (every write replaces the file atomically).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from srcompress.data.degradation import Degradation, DegradationRandom
from srcompress.data.training import PatchBatches, iteration_seed, patch_loader
from srcompress.errors import UserInputError, WorkFailedError
from srcompress.files import DiskFullError
from srcompress.methods.base import Batch, CachedTargets, Method
from srcompress.train.distributed import Distributed
from srcompress.train.state import RunFolder
from srcompress.train.teacher_cache import TeacherCacheChanged

ValidationResults = dict[str, dict[str, float]]  # benchmark → {"psnr": .., "ssim": ..}
SCHEDULES = ("multistep", "cosine")
# The random streams of an iteration: 0 the patches, 1 torch/NumPy/random, 2 the method's
# generator, 3 the degradation.
DEGRADATION_STREAM = 3


@dataclass
class TrainSettings:
    iters: int
    lr: float
    schedule: str = "multistep"
    milestones: tuple[float, ...] = (0.4, 0.8)
    gamma: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    ema: float = 0.999
    grad_clip: float = 0.0
    amp: bool = True
    seed: int = 0
    workers: int = 2
    val_every: int = 5000
    save_every: int = 1000
    log_every: int = 100
    # Validate the starting weights too (iteration 0), so that a run starting from a trained
    # model keeps them as best.safetensors unless training beats them.
    validate_start: bool = False


def learning_rate(settings: TrainSettings, iteration: int) -> float:
    """The learning rate of (0-based) `iteration`."""
    if settings.schedule == "cosine":
        return settings.lr * 0.5 * (1 + math.cos(math.pi * iteration / settings.iters))
    passed = sum(iteration >= round(fraction * settings.iters) for fraction in settings.milestones)
    return settings.lr * settings.gamma**passed


class ExponentialAverage:
    """EMA copy of the student's weights; buffers are copied as they are."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, iteration: int) -> None:
        decay = min(self.decay, (1 + iteration) / (10 + iteration))
        for average, current in zip(self.module.parameters(), model.parameters(), strict=True):
            average.lerp_(current.detach(), 1 - decay)
        for average, current in zip(self.module.buffers(), model.buffers(), strict=True):
            average.copy_(current)


@dataclass
class RunRecord:
    """What the run has measured so far; saved in checkpoints and `metrics.json`.

    `start` is the validation of the weights the run started from and `start_loss` the mean
    training loss of its first iterations: what `Trainer.divergence` compares the end with.
    """

    validations: list[dict[str, Any]] = field(default_factory=list)
    train: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    start: dict[str, Any] | None = None
    start_loss: float | None = None

    def as_dict(self, iteration: int) -> dict[str, Any]:
        return {"iteration": iteration, "best": self.best, "validations": self.validations,
                "train": self.train, "start": self.start, "start_loss": self.start_loss}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> RunRecord:
        return cls(list(record["validations"]), list(record["train"]), record["best"],
                   record.get("start"), record.get("start_loss"))


# A run is called diverged when it ends worse than it started by more than this, so that a run
# that merely did not improve (QAT from a trained model) is no alarm; the loss is measured on the
# run's first `_PROBE_BATCHES` batches, with the same randomness at the start and at the end.
DIVERGED_LOSS_RATIO = 2.0
DIVERGED_PSNR_DROP = 0.1
_PROBE_BATCHES = 4


class Reporter:
    """Where the loop tells a person how it goes; the default tells no one."""

    def start(self, total: int, done: int) -> None: ...
    def advance(self, iteration: int, terms: dict[str, float], lr: float) -> None: ...
    def validated(self, iteration: int, results: ValidationResults) -> None: ...
    def message(self, text: str) -> None: ...
    def preparing(self, description: str, done: int, total: int) -> None:
        """Progress of preparatory work before training (building the teacher cache)."""
    def finish(self) -> None: ...


class NonFiniteLoss(Exception):
    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.value = value


class _StopRequest:
    """Turns SIGINT (Ctrl-C) and SIGTERM (torchrun's stop, cluster pre-emption) into a flag the
    loop checks between iterations, so it can write a checkpoint and return (main thread only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        with contextlib.suppress(ValueError):  # not the main thread: leave the signals alone
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second signal stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which checkpoints and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def training_batch(lr: Tensor, hr: Tensor, scale: int, degradation: Degradation | None,
                   seed: int, iteration: int, rank: int) -> Batch:
    """The batch of `iteration`: the data's bicubic pairs, or with a `degradation` the HR
    patches degraded on their device from (seed, iteration, rank) alone."""
    if degradation is None:
        return Batch(lr, hr, scale)
    random = DegradationRandom((seed, iteration, rank, DEGRADATION_STREAM), hr.device)
    return Batch.degraded(lr, hr, scale, degradation, random)


class Trainer:
    """Trains `student` with `method` (and the frozen `teacher`) on `batches`."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, method: Method,
                 batches: PatchBatches, settings: TrainSettings, device: torch.device,
                 run: RunFolder | None, place: Distributed,
                 validate: Callable[[nn.Module], ValidationResults] | None = None,
                 save_weights: Callable[[str, nn.Module, dict[str, Any]], None] | None = None,
                 reporter: Reporter | None = None,
                 degradation: Degradation | None = None,
                 cached_targets: Callable[[Tensor], CachedTargets] | None = None) -> None:
        """`cached_targets` gives the teacher-cache crops of a batch from its placements (see
        `PatchBatches`); without it the method runs the teacher online."""
        self.settings = settings
        self.degradation = degradation
        self.cached_targets = cached_targets
        self.device = device
        self.run = run if place.is_main else None
        self.place = place
        self.validate = validate if place.is_main else None
        self.save_weights = save_weights if place.is_main else None
        self.reporter = reporter if (reporter is not None and place.is_main) else Reporter()
        self.batches = batches
        on_cuda = device.type == "cuda"
        self.memory_format = torch.channels_last if on_cuda else torch.contiguous_format

        self.student = student.to(device, memory_format=self.memory_format).train()
        self.teacher = teacher
        if teacher is not None:
            teacher.to(device, memory_format=self.memory_format).eval().requires_grad_(False)
        method.prepare(self.student, teacher)
        self.method = method.to(device)
        self.trained = place.wrap(self.student, device)
        self.side_parameters = list(method.student_side_parameters())
        self.optimizer = torch.optim.Adam(
            [*self.student.parameters(), *self.side_parameters], lr=settings.lr,
            betas=settings.betas)
        self.ema = ExponentialAverage(self.student, settings.ema) if settings.ema > 0 else None

        amp_dtype = None
        if settings.amp and on_cuda:
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.iteration = 0
        self.saved_iteration: int | None = None  # of the checkpoint in the run folder
        self.record = RunRecord()
        self.tensorboard = self._open_tensorboard()

    @property
    def final_module(self) -> nn.Module:
        """The weights a user gets: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.student

    # -- resumable state ---------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "student": self.student.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "record": self.record.as_dict(self.iteration),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.saved_iteration = self.iteration
        self.student.load_state_dict(state["student"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.record = RunRecord.from_dict(state["record"])

    def save_checkpoint(self) -> None:
        if self.run is not None:
            with self.naming_last_checkpoint():
                self.run.save_checkpoint(self.state())
            self.saved_iteration = self.iteration
        self._write_metrics()

    def _write_metrics(self) -> None:
        """Replaces metrics.json (atomically) whenever the record grows, so a run can be watched
        from outside while it trains, not only read when it ends."""
        if self.run is not None:
            with self.naming_last_checkpoint():
                self.run.write_metrics(self.record.as_dict(self.iteration))

    @contextlib.contextmanager
    def naming_last_checkpoint(self) -> Iterator[None]:
        """A full disk stops the run; its message says which checkpoint is still whole."""
        try:
            yield
        except DiskFullError as error:
            if self.run is not None and self.saved_iteration is not None:
                kept = (f"the last good checkpoint is {self.run.checkpoint} (iteration "
                        f"{self.saved_iteration}): free some space and continue with --resume")
            else:
                kept = "no checkpoint had been written yet: free some space and start again"
            raise DiskFullError(f"{error} Training stopped; {kept}.", error.path) from None

    # -- the loop ----------------------------------------------------------------------------

    def train(self) -> bool:
        """Train up to `settings.iters`; returns False when stopped early by Ctrl-C/SIGTERM."""
        settings = self.settings
        if self.iteration == 0 and self.validate is not None and self.record.start is None:
            if settings.validate_start:  # a validation like any other, best.safetensors so far
                self._validate(0)
                self.record.start = self.record.validations[-1]
            else:
                self.record.start = self._measure(0)
        if self.iteration >= settings.iters:  # nothing to train (e.g. calibration only)
            self.save_checkpoint()
            self.place.barrier()
            return True
        self.reporter.start(settings.iters, self.iteration)
        loader = patch_loader(self.batches, self.iteration, settings.iters, settings.workers,
                              pin_memory=self.device.type == "cuda",
                              worker_init_fn=_ignore_stop_signals)
        window: dict[str, list[float]] = {}
        completed = True
        if self.iteration == 0 and self.record.start_loss is None:
            self.record.start_loss = self.probe_loss()
        with _StopRequest() as stop:
            batches: Iterator[tuple[Tensor, Tensor]] = iter(loader)
            while self.iteration < settings.iters:
                lr_patches, hr_patches, placements = next(batches)
                try:
                    terms = self._iterate(lr_patches, hr_patches, placements)
                except TeacherCacheChanged as failure:
                    raise self._stopped_by(failure) from None
                for name, value in terms.items():
                    window.setdefault(name, []).append(value)
                done = self.iteration
                lr = learning_rate(settings, done - 1)
                self.reporter.advance(done, terms, lr)
                if done % settings.log_every == 0 or done == settings.iters:
                    self._log_training(done, window, lr)
                    window = {}
                if self.validate is not None and (done % settings.val_every == 0
                                                  or done == settings.iters):
                    self._validate(done)
                if self.place.any_true(stop.requested, self.device):
                    completed = done == settings.iters
                    break
                if done % settings.save_every == 0 and done != settings.iters:
                    self.save_checkpoint()
            del batches
        self.save_checkpoint()
        self.place.barrier()
        self.reporter.finish()
        return completed

    def _iterate(self, lr_patches: Tensor, hr_patches: Tensor,
                 placements: Tensor) -> dict[str, float]:
        settings, iteration = self.settings, self.iteration
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(settings, iteration)
        _seed_everything(iteration_seed(settings.seed, iteration, self.place.rank, stream=1))
        self.method.reseed(iteration_seed(settings.seed, iteration, self.place.rank, stream=2))
        batch = self._batch(self._on_device(lr_patches), self._on_device(hr_patches), iteration)
        if self.cached_targets is not None:
            batch.cached = self.cached_targets(placements)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else contextlib.nullcontext())
        try:
            with autocast:
                terms = self.method.train_step(batch, self.trained, self.teacher, self._step)
        except NonFiniteLoss as failure:
            raise self._non_finite_error(failure.value) from None
        if self.ema is not None:
            self.ema.update(self.student, iteration)
        self.iteration = iteration + 1
        return terms

    def _batch(self, lr: Tensor, hr: Tensor, iteration: int) -> Batch:
        return training_batch(lr, hr, self.batches.scale, self.degradation, self.settings.seed,
                              iteration, self.place.rank)

    def _on_device(self, patches: Tensor) -> Tensor:
        patches = patches.to(self.device, non_blocking=True)
        return patches.contiguous(memory_format=self.memory_format)

    def _step(self, loss: Tensor, *, clear_grad: bool = True) -> None:
        """The `StepFn` methods call: guard, backward, clip, optimiser step (AMP-aware)."""
        value = float(loss.detach())
        if self.place.any_true(not math.isfinite(value), self.device):
            raise NonFiniteLoss(value)
        with torch.autocast(self.device.type, enabled=False):
            self.scaler.scale(loss).backward()
        if self.place.enabled and self.side_parameters:
            for parameter in self.side_parameters:
                if parameter.grad is not None:
                    dist.all_reduce(parameter.grad, op=dist.ReduceOp.AVG)
        if self.settings.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([*self.student.parameters(), *self.side_parameters],
                                     self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if clear_grad:
            self.optimizer.zero_grad(set_to_none=True)
        elif self.scaler.is_enabled():
            # step() unscaled the kept gradients; the next backward adds scaled ones.
            scale = self.scaler.get_scale()
            for group in self.optimizer.param_groups:
                for parameter in group["params"]:
                    if parameter.grad is not None:
                        parameter.grad.mul_(scale)

    def _stopped_by(self, failure: Exception) -> WorkFailedError:
        """A data source vanished mid-run: the iteration had not changed any state yet, so it is
        checkpointed and the run can continue once the source is back."""
        self.save_checkpoint()
        kept = (f" with a checkpoint: continue with --output {self.run.root} --resume, which "
                "rebuilds what is missing" if self.run is not None else "")
        return WorkFailedError(f"{failure}, so training stopped at iteration "
                               f"{self.iteration}{kept}.")

    def _non_finite_error(self, value: float) -> UserInputError:
        kept = (f"the last good checkpoint {self.run.checkpoint} is kept for --resume"
                if self.run is not None and self.run.checkpoint.exists()
                else "no checkpoint had been written yet")
        amp = " or run with --no-amp" if self.amp_dtype is not None else ""
        return UserInputError(
            f"The training loss became {value} at iteration {self.iteration + 1}, so training "
            f"stopped: lower --lr (it was {learning_rate(self.settings, self.iteration):g}){amp}; "
            f"{kept}.")

    def _log_training(self, done: int, window: dict[str, list[float]], lr: float) -> None:
        entry = {"iteration": done, "lr": lr,
                 **{name: sum(values) / len(values) for name, values in window.items()}}
        self.record.train.append(entry)
        self._write_metrics()
        if self.tensorboard is not None:
            for name, value in entry.items():
                if name != "iteration":
                    self.tensorboard.add_scalar(f"train/{name}", value, done)

    def probe_loss(self) -> float:
        """The method's loss, without a step, on the run's first batches with fixed randomness:
        a measurement that differs between the start and the end of a run only by the weights."""
        total = 0.0
        generator_state = self.method.get_extra_state()
        was_training = self.student.training
        self.student.eval()
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else contextlib.nullcontext())
        try:
            with torch.no_grad(), autocast:
                for index in range(_PROBE_BATCHES):
                    lr_patches, hr_patches, placements = self.batches[index]
                    self.method.reseed(iteration_seed(self.settings.seed, index, self.place.rank,
                                                      stream=2))
                    batch = self._batch(self._on_device(lr_patches),
                                        self._on_device(hr_patches), index)
                    if self.cached_targets is not None:
                        batch.cached = self.cached_targets(placements)
                    terms = self.method.losses(batch, self.student, self.teacher)
                    total += float(sum(terms.values()))
        finally:
            self.student.train(was_training)
            self.method.set_extra_state(generator_state)
        return total / _PROBE_BATCHES

    def divergence(self) -> str | None:
        """How the finished run ended worse than it started, or None: its last validation is
        more than `DIVERGED_PSNR_DROP` dB below the start's, or (without validation) its
        `probe_loss` is over `DIVERGED_LOSS_RATIO` times the start's."""
        start, validations = self.record.start, self.record.validations
        if start is not None and validations:
            end = validations[-1]["mean_psnr"]
            if not end >= start["mean_psnr"] - DIVERGED_PSNR_DROP:
                return (f"its validation PSNR fell from {start['mean_psnr']:.2f} dB at the start "
                        f"to {end:.2f} dB at iteration {validations[-1]['iteration']}")
            return None
        if self.record.start_loss is not None:
            end_loss = self.probe_loss()
            if not end_loss <= DIVERGED_LOSS_RATIO * self.record.start_loss:
                return (f"its training loss rose from {self.record.start_loss:.4g} at the start to "
                        f"{end_loss:.4g} at the end (on the same batches)")
        return None

    def _measure(self, done: int) -> dict[str, Any]:
        """Validate the weights a user would get now; the record entry of iteration `done`."""
        assert self.validate is not None
        module = self.final_module
        was_training = module.training
        module.eval()
        started = time.perf_counter()
        results = self.validate(module)
        module.train(was_training)
        mean_psnr = sum(result["psnr"] for result in results.values()) / len(results)
        return {"iteration": done, "mean_psnr": mean_psnr,
                "seconds": time.perf_counter() - started, "results": results}

    def _validate(self, done: int) -> None:
        entry = self._measure(done)
        module = self.final_module
        results = entry["results"]
        mean_psnr = entry["mean_psnr"]
        self.record.validations.append(entry)
        if self.record.best is None or mean_psnr > self.record.best["mean_psnr"]:
            self.record.best = entry
            if self.save_weights is not None and self.run is not None:
                with self.naming_last_checkpoint():
                    self.save_weights(str(self.run.best), module, {"iteration": done, **entry})
        self._write_metrics()
        if self.tensorboard is not None:
            for benchmark, result in results.items():
                for metric, value in result.items():
                    self.tensorboard.add_scalar(f"val/{benchmark}/{metric}", value, done)
        self.reporter.validated(done, results)

    def _open_tensorboard(self) -> Any:
        if self.run is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(log_dir=str(self.run.root / "tensorboard"))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

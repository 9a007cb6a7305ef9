"""How a training run shows its progress: a live bar in a terminal, plain lines in a log file.

A redrawn bar is invisible when the output is not a terminal: under nohup, in CI or in a cluster
job, a run would print nothing between its first line and its end. `training_reporter` therefore
gives a terminal the rich bar and anything else `PlainReporter`'s lines, one every
`PLAIN_INTERVAL` seconds (iteration, mean loss terms since the previous line, lr, it/s, ETA),
one per validation, and one at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from srcompress.train.loop import Reporter, ValidationResults

PLAIN_INTERVAL = 30.0  # seconds between plain progress lines


def training_reporter(console: Console | None = None, description: str = "training") -> Reporter:
    """The rich bar when `console` (default: stderr) is a terminal, else plain progress lines."""
    console = console or Console(stderr=True)
    if console.is_terminal:
        return RichReporter(console, description)
    return PlainReporter(console, description)


def _loss_text(terms: dict[str, float]) -> str:
    return " ".join(f"{name} {value:.4g}" for name, value in terms.items())


def _validation_text(results: ValidationResults) -> str:
    return " ".join(f"{name} {result['psnr']:.2f} dB" for name, result in results.items())


class RichReporter(Reporter):
    """Redraws at most a few times a second, so it costs nothing next to a training step."""

    def __init__(self, console: Console | None = None, description: str = "training") -> None:
        self.console = console or Console(stderr=True)
        self.description = description
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=20),
            MofNCompleteColumn(), TextColumn("{task.fields[speed]}"), TextColumn("ETA"),
            TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=self.console,
            transient=False, refresh_per_second=4)
        self.task: TaskID | None = None
        self.preparation: dict[str, TaskID] = {}
        self.last_validation = ""

    def start(self, total: int, done: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=total, completed=done,
                                           status="", speed="")

    def advance(self, iteration: int, terms: dict[str, float], lr: float) -> None:
        assert self.task is not None
        status = f"{_loss_text(terms)} lr {lr:.1e}{self.last_validation}"
        speed = self.progress.tasks[self.task].speed
        self.progress.update(self.task, completed=iteration, status=status,
                             speed=f"{speed:.2f} it/s" if speed else "")

    def validated(self, iteration: int, results: ValidationResults) -> None:
        self.last_validation = f" | val {_validation_text(results)}"

    def preparing(self, description: str, done: int, total: int) -> None:
        if description not in self.preparation:
            self.progress.start()
            self.preparation[description] = self.progress.add_task(
                description, total=total, completed=done, status="", speed="")
        self.progress.update(self.preparation[description], completed=done)

    def message(self, text: str) -> None:
        self.progress.console.print(text)

    def finish(self) -> None:
        self.progress.stop()


class PlainReporter(Reporter):
    """Complete lines for logs: `dukd 1200/250000 | rec 0.0123 kd 0.00456 | lr 1.0e-04 |
    3.21 it/s | ETA 21:35:10`, at most one per `interval` seconds, each with the mean of the loss
    terms and the speed over the iterations since the line before (validation time included,
    so the ETA counts it too)."""

    def __init__(self, console: Console | None = None, description: str = "training",
                 interval: float = PLAIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console or Console(stderr=True)
        self.description = description
        self.interval = interval
        self.clock = clock
        self.total = 0
        self.iteration = 0
        self.lr = 0.0
        self.window: dict[str, list[float]] = {}
        self.window_start = (0, 0.0)  # (iteration, time) of the previous line

    def start(self, total: int, done: int) -> None:
        self.total = total
        self.iteration = done
        self.window_start = (done, self.clock())

    def advance(self, iteration: int, terms: dict[str, float], lr: float) -> None:
        for name, value in terms.items():
            self.window.setdefault(name, []).append(value)
        self.iteration, self.lr = iteration, lr
        if iteration == self.total or self.clock() - self.window_start[1] >= self.interval:
            self._print_progress()

    def _print_progress(self) -> None:
        now = self.clock()
        first_iteration, since = self.window_start
        seconds = now - since
        speed = (self.iteration - first_iteration) / seconds if seconds > 0 else math.inf
        remaining = (self.total - self.iteration) / speed if speed > 0 else math.inf
        terms = {name: sum(values) / len(values) for name, values in self.window.items()}
        self._print(f"{self.description} {self.iteration}/{self.total} | {_loss_text(terms)} | "
                    f"lr {self.lr:.1e} | {speed:.2f} it/s | ETA {_clock_text(remaining)}")
        self.window = {}
        self.window_start = (self.iteration, now)

    def validated(self, iteration: int, results: ValidationResults) -> None:
        self._print(f"{self.description} {iteration}/{self.total} | validation "
                    f"{_validation_text(results)}")

    def preparing(self, description: str, done: int, total: int) -> None:
        if done == total or self.clock() - self.window_start[1] >= self.interval:
            self._print(f"{description} {done}/{total}")
            self.window_start = (self.iteration, self.clock())

    def message(self, text: str) -> None:
        self._print(text)

    def finish(self) -> None:
        if self.window:  # stopped between two lines: say where
            self._print_progress()

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def _clock_text(seconds: float) -> str:
    """H:MM:SS, as rich's bar shows it; `?` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}"

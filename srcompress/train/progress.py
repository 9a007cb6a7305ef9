"""A rich progress bar for training: loss terms, learning rate, it/s, ETA, last validation PSNR."""

from __future__ import annotations

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
        self.last_validation = ""

    def start(self, total: int, done: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=total, completed=done,
                                           status="", speed="")

    def advance(self, iteration: int, terms: dict[str, float], lr: float) -> None:
        assert self.task is not None
        loss = " ".join(f"{name} {value:.3g}" for name, value in terms.items())
        status = f"{loss} lr {lr:.1e}{self.last_validation}"
        speed = self.progress.tasks[self.task].speed
        self.progress.update(self.task, completed=iteration, status=status,
                             speed=f"{speed:.2f} it/s" if speed else "")

    def validated(self, iteration: int, results: ValidationResults) -> None:
        self.last_validation = " | val " + " ".join(
            f"{name} {result['psnr']:.2f} dB" for name, result in results.items())

    def message(self, text: str) -> None:
        self.progress.console.print(text)

    def finish(self) -> None:
        self.progress.stop()

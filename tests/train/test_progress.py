"""Progress a person can read in a log: plain lines at a fixed interval when not on a terminal."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from srcompress.train.progress import PlainReporter, RichReporter, training_reporter


class Clock:
    """Seconds that the test advances by hand, so the interval logic is checked exactly."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _plain(clock: Clock) -> tuple[PlainReporter, io.StringIO]:
    output = io.StringIO()
    console = Console(file=output, width=40)  # narrower than a line: lines must not wrap
    return PlainReporter(console, "dukd", interval=30.0, clock=clock), output


def test_a_line_every_interval_with_the_window_means_speed_and_eta() -> None:
    clock = Clock()
    reporter, output = _plain(clock)
    reporter.start(total=10, done=0)
    for iteration in range(1, 11):  # one iteration every 10 seconds
        clock.now = 10.0 * iteration
        reporter.advance(iteration, {"rec": float(iteration), "kd": 0.5}, lr=1e-3 / iteration)
    reporter.validated(10, {"val": {"psnr": 31.234, "ssim": 0.9}})
    reporter.finish()
    assert output.getvalue().splitlines() == [
        "dukd 3/10 | rec 2 kd 0.5 | lr 3.3e-04 | 0.10 it/s | ETA 0:01:10",
        "dukd 6/10 | rec 5 kd 0.5 | lr 1.7e-04 | 0.10 it/s | ETA 0:00:40",
        "dukd 9/10 | rec 8 kd 0.5 | lr 1.1e-04 | 0.10 it/s | ETA 0:00:10",
        "dukd 10/10 | rec 10 kd 0.5 | lr 1.0e-04 | 0.10 it/s | ETA 0:00:00",
        "dukd 10/10 | validation val 31.23 dB",
    ]


def test_a_run_stopped_between_two_lines_says_where_it_stopped() -> None:
    clock = Clock()
    reporter, output = _plain(clock)
    reporter.start(total=1000, done=400)  # a resumed run counts from its checkpoint
    for iteration in (401, 402):
        clock.now += 4.0
        reporter.advance(iteration, {"rec": 0.25}, lr=1e-4)
    reporter.finish()
    assert output.getvalue().splitlines() == [
        "dukd 402/1000 | rec 0.25 | lr 1.0e-04 | 0.25 it/s | ETA 0:39:52"]


def test_the_bar_is_for_terminals_only() -> None:
    assert isinstance(training_reporter(Console(file=io.StringIO())), PlainReporter)
    assert isinstance(training_reporter(Console(file=io.StringIO(), force_terminal=True)),
                      RichReporter)


def test_distill_into_a_file_or_pipe_prints_plain_progress_lines(tiny_teacher: Path,
                                                                 tiny_run: list[str], cli,
                                                                 tmp_path: Path) -> None:
    result = cli("distill", tiny_teacher, *tiny_run, "--iters", "3", "--output", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert re.search(r"^dukd 3/3 \| rec \S+ kd \S+ zoom_in \S+ zoom_out_rec \S+ zoom_out_kd \S+ "
                     r"\| lr \S+ \| \d+\.\d\d it/s \| ETA 0:00:00$", result.stdout,
                     re.MULTILINE), result.stdout
    assert not {"\x1b", "\r", "━"} & set(result.stdout), result.stdout
    # Paths are printed whole on one line, whatever the console's width, so a log can be copied.
    output = tmp_path / "run" / "which is a long path" / "under several folders"
    result = cli("distill", tiny_teacher, *tiny_run, "--iters", "1", "--output", output)
    assert f"Student: {output / 'student.safetensors'}\n" in result.stdout, result.stdout

"""Progress on long work: rich bars on a terminal; elsewhere (CI, logs) a plain line every tenth of the way
through bars of at least `PLAIN_MIN_STEPS` steps, so short loops stay quiet. And the whole run's time left
(`RunClock`), from the epoch times measured so far."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_MIN_STEPS = 50


class Bar:
    def __init__(self, progress: Progress | None, console: Console, description: str, total: int | None):
        self.progress, self.console, self.description, self.total = progress, console, description, total
        self.done, self.next_line = 0, 0.1
        self.task = progress.add_task(escape(description), total=total, info="") if progress else None

    def advance(self, info: str = "") -> None:
        self.done += 1
        if self.progress is not None:
            self.progress.update(self.task, advance=1, info=escape(info))
        elif self.total and self.total >= PLAIN_MIN_STEPS and self.done / self.total >= self.next_line - 1e-9:
            self.console.print(f"{self.description}: {self.done}/{self.total} {info}", highlight=False, markup=False)
            self.next_line = round(self.done / self.total * 10) / 10 + 0.1

    def close(self) -> None:
        if self.progress is not None:
            self.progress.remove_task(self.task)


@contextmanager
def progress_bars(console: Console) -> Iterator[Bars]:
    if console.is_terminal:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as progress:
            yield Bars(progress, console)
    else:
        yield Bars(None, console)


class Bars:
    def __init__(self, progress: Progress | None, console: Console):
        self.progress, self.console = progress, console

    def bar(self, description: str, total: int | None) -> Bar:
        return Bar(self.progress, self.console, description, total)


class RunClock:
    """The time left in a whole run of phases (`planned`: each phase's epochs), from the wall time of the epochs
    this process has finished (training, validation and checkpoint): each phase's remaining epochs at its own
    mean epoch time, a phase not started yet at the mean over every epoch measured (so the estimate firms up as
    each phase starts). None until an epoch has been measured."""

    def __init__(self, planned: Sequence[int]):
        self.planned = list(planned)
        self.measured: dict[int, list[float]] = {}

    def finished_epoch(self, phase: int, seconds: float) -> None:
        self.measured.setdefault(phase, []).append(seconds)

    def remaining(self, phase: int, epochs_done: int) -> float | None:
        """Seconds left with `epochs_done` epochs of phase index `phase` done (and every phase before it)."""
        every = [seconds for times in self.measured.values() for seconds in times]
        if not every:
            return None
        overall = sum(every) / len(every)
        total = 0.0
        for index in range(phase, len(self.planned)):
            left = max(0, self.planned[index] - (epochs_done if index == phase else 0))
            times = self.measured.get(index)
            total += left * (sum(times) / len(times) if times else overall)
        return total


def clock_text(seconds: float) -> str:
    """Seconds as h:mm:ss, as rich's time columns show them."""
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}"

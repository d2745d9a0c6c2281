"""Progress on long work: rich bars on a terminal; elsewhere (CI, logs) a plain line every tenth of the way
through bars of at least `PLAIN_MIN_STEPS` steps, so short loops stay quiet."""

from __future__ import annotations

from collections.abc import Iterator
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

"""Live progress of a sweep: trials done / running / failed and the best so far, on one status line (a
terminal) or one plain line per event (CI, logs)."""

from __future__ import annotations

import math
from typing import Self

from rich.console import Console
from rich.live import Live
from rich.text import Text


class SweepProgress:
    def __init__(self, console: Console, total: int, metric: str):
        self.console, self.total, self.metric = console, total, metric
        self.running: set[str] = set()
        self.done: set[str] = set()
        self.stopped: set[str] = set()
        self.failed: set[str] = set()
        self.best: tuple[float, str] | None = None
        self.live = Live(self._line(), console=console, transient=True) if console.is_terminal else None

    def __enter__(self) -> Self:
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.stop()

    def _line(self) -> Text:
        best = f"best {self.metric} {self.best[0]:.2f} ({self.best[1]})" if self.best else "best –"
        stopped = f" ({len(self.stopped)} stopped early)" if self.stopped else ""
        return Text(f"trials: {len(self.done)}/{self.total} done{stopped} · {len(self.running)} running · "
                    f"{len(self.failed)} failed · {best}")

    def _event(self, message: str) -> None:
        if self.live:
            self.live.console.print(message, highlight=False, markup=False)
            self.live.update(self._line())
        else:
            self.console.print(f"{message} | {self._line()}", highlight=False, markup=False)

    def already_done(self, key: str, value: float) -> None:
        self.done.add(key)
        self._note_best(key, value)

    def started(self, key: str) -> None:
        self.running.add(key)
        if self.live:
            self.live.update(self._line())

    def finished(self, key: str, value: float, stopped: bool = False) -> None:
        self.running.discard(key)
        self.done.add(key)
        if stopped:
            self.stopped.add(key)
        else:
            self._note_best(key, value)
        self._event(f"trial {key}: {self.metric} {value:.2f}" + (" (stopped early)" if stopped else ""))

    def stopped_by_scheduler(self, key: str) -> None:
        """A Ray trial ASHA stopped: evaluated where it stopped once the other trials are done."""
        self.running.discard(key)
        self._event(f"trial {key}: stopped early by ASHA (evaluated at the end of the sweep)")

    def retrying(self, key: str, error: str) -> None:
        self.running.discard(key)
        self._event(f"trial {key} failed, retrying: {error}")

    def failed_for_good(self, key: str, error: str) -> None:
        self.running.discard(key)
        self.failed.add(key)
        self._event(f"trial {key} failed (no retries left): {error}")

    def _note_best(self, key: str, value: float) -> None:
        if not math.isnan(value) and (self.best is None or value > self.best[0]):
            self.best = (value, key)

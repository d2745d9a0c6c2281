"""The whole run's time left (`bench.progress_bars.RunClock`): the arithmetic of the estimate (the per-epoch log
line that shows it is checked in tests/test_run.py)."""

from __future__ import annotations

import pytest

from bench.progress_bars import RunClock, clock_text


def test_each_phase_at_its_own_mean_and_phases_not_started_at_the_mean_of_all():
    clock = RunClock([3, 2, 4])  # epochs of three phases
    assert clock.remaining(0, 0) is None  # nothing measured yet
    clock.finished_epoch(0, 2.0)
    assert clock.remaining(0, 1) == pytest.approx(2 * 2.0 + 2 * 2.0 + 4 * 2.0)
    clock.finished_epoch(0, 4.0)
    # phase 0: 1 epoch at its mean 3 s; phases 1 and 2, not started: at the mean of all (3 s)
    assert clock.remaining(0, 2) == pytest.approx(1 * 3.0 + 2 * 3.0 + 4 * 3.0)
    clock.finished_epoch(0, 3.0)
    clock.finished_epoch(1, 9.0)  # phase 1 is slower: its own mean counts for it; the mean of all for phase 2
    assert clock.remaining(1, 1) == pytest.approx(1 * 9.0 + 4 * (2.0 + 4.0 + 3.0 + 9.0) / 4)
    clock.finished_epoch(1, 9.0)
    assert clock.remaining(1, 2) == pytest.approx(4 * (2.0 + 4.0 + 3.0 + 9.0 + 9.0) / 5)
    assert clock.remaining(2, 4) == 0.0


def test_clock_text_is_hours_minutes_seconds():
    assert clock_text(0.4) == "0:00:00"
    assert clock_text(65) == "0:01:05"
    assert clock_text(3 * 3600 + 2 * 60 + 59.6) == "3:03:00"


"""Hooks into a run's training (the engine calls them); light, so sweep definitions need no torch."""

from __future__ import annotations

from pathlib import Path


class Callback:
    """A hook into training; override what you need. An exception raised from a hook ends the run as that
    exception does elsewhere: a scheduler's TrialStopped evaluates the run where it stands, KeyboardInterrupt
    interrupts it (resumable), anything else crashes it. Checkpoints are written before the hooks run."""

    def on_epoch_end(self, entry: dict, run_dir: Path) -> None:
        """After every epoch: `entry` is its history line (phase, epoch, step, loss, lr, seconds, val if run);
        `epoch` counts within the phase and `step` over all phases, both from 1, as the log does."""

    def on_phase_end(self, phase: str, selected: dict, run_dir: Path) -> None:
        """After a phase's last epoch: `selected` says which epoch's weights the phase kept (from 1)."""

    def on_run_end(self, record: dict, run_dir: Path) -> None:
        """After the run is evaluated and recorded: `record` is its record (bench.record)."""

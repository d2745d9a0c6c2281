"""What the Ray executor plugs into Ray Tune (imported only when Ray runs a sweep):

- `RecordingASHA`: Ray Tune's ASHA scheduler, noting each trial it stops in `<sweep>/asha_stops.json`, so that
  the sweep evaluates exactly those trials (and not ones an interrupt cut short, which `--resume` continues);
- `ProgressCallback`: feeds the sweep's live progress from the driver.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from bench.atomic_io import atomic_write_json, read_json
from bench.sweeps.status_line import SweepProgress
from bench.sweeps.sweep import Sweep
from bench.sweeps.trial import FINAL

STOPS_FILE = "asha_stops.json"


class RecordingASHA(ASHAScheduler):
    def __init__(self, folder: str, **settings):
        super().__init__(**settings)
        self.stops_path = str(Path(folder) / STOPS_FILE)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and not result.get(FINAL):
            stops = read_stops(Path(self.stops_path).parent)
            stops[trial.trial_id] = {"config": trial.config, "epoch": result.get("epoch")}
            atomic_write_json(self.stops_path, stops)
        return decision


def read_stops(folder: Path) -> dict[str, dict]:
    """{Ray trial id: {"config", "epoch"}} of the trials ASHA stopped so far."""
    path = Path(folder) / STOPS_FILE
    return read_json(path) if path.exists() else {}


class ProgressCallback(Callback):
    def __init__(self, progress: SweepProgress, sweep: Sweep):
        self.progress, self.sweep = progress, sweep

    def _key(self, trial) -> str:
        return self.sweep.trial_from_ray(trial.config, trial.trial_id).key

    def on_trial_start(self, iteration, trials, trial, **info):
        self.progress.started(self._key(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(FINAL):
            self.progress.finished(self._key(trial), result[self.sweep.metric], result.get("stopped_early", False))
        else:  # a reused worker starts its next trial without on_trial_start
            self.progress.started(self._key(trial))

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not (trial.last_result or {}).get(FINAL):
            self.progress.stopped_by_scheduler(self._key(trial))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.progress.retrying(self._key(trial), last_error(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.progress.failed_for_good(self._key(trial), last_error(trial))

    def __reduce__(self):  # the live display is not saved with the experiment; `run_ray` attaches a new one
        return (Callback, ())


def last_error(trial) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError:
        return "error (no error file)"
    return lines[-1] if lines else "error"

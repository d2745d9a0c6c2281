"""Ray Tune's ASHA scheduler, noting each trial it stops in `<sweep>/asha_stops.json`, so that the sweep can
evaluate exactly those trials (and not ones an interrupt cut short, which `--resume` continues)."""

from __future__ import annotations

from pathlib import Path

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from bench.store import atomic_write_json, read_json
from bench.trial import FINAL

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

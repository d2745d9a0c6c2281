"""One trial of a sweep or ablation: an ordinary run (run folder + record) with a fixed run id, so that a retry
or a resumed sweep continues it from its checkpoint, and a finished one is never run or recorded twice.

Both executors (in-process and Ray) call `run_trial`; they differ only in how `report` reaches a scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

REPORTED = ("overall", "many", "medium", "few", "worst_class", "harmonic_mean", "macro_f1")
METRICS = tuple(f"val_{name}" for name in REPORTED)  # sweeps select on validation metrics only
FINAL = "trial_finished"  # marks a trial's last report (Ray's own results carry a "done" key)


class TrialStopped(Exception):
    """Raised from `report` when a scheduler stops the trial; the run is then evaluated where it stands."""

    def __init__(self, decision: dict):
        super().__init__(decision)
        self.decision = decision


@dataclass(frozen=True)
class Trial:
    key: str  # unique within its sweep; the run id is "<sweep>-<key>"
    method: str
    seed: int
    overrides: dict[str, str]  # every --set of the run: presets, pins and the searched values
    searched: tuple[str, ...] = ()
    backbone: str | None = None

    def as_dict(self) -> dict:
        return {"key": self.key, "method": self.method, "seed": self.seed, "overrides": dict(self.overrides),
                "searched": list(self.searched), "backbone": self.backbone}

    @classmethod
    def from_dict(cls, data: dict) -> Trial:
        return cls(data["key"], data["method"], data["seed"], dict(data["overrides"]), tuple(data["searched"]),
                   data["backbone"])


@dataclass
class TrialPlan:
    """What every trial of one sweep shares. Paths are absolute: Ray runs trials in other folders."""

    sweep: str
    kind: str  # sweep | ablation
    dataset: str
    out: str
    weights: str | None = None
    data_root: str | None = None
    device: str = "auto"
    allow_download: bool = False
    allow_random_init: bool = False
    cpus_per_trial: int | None = None  # torch threads per trial; None: torch's default
    tags: dict[str, str] = field(default_factory=dict)
    epoch_hook: Callable[[Trial, dict, Path], None] | None = None  # called after every epoch (fault injection)

    def run_id(self, trial: Trial) -> str:
        return f"{self.sweep}-{trial.key}"


def val_metrics(summary: dict) -> dict[str, float]:
    """Reported metrics; an undefined one (an empty shot group) is NaN, never 0."""
    return {f"val_{name}": float("nan") if summary.get(name) is None else float(summary[name]) for name in REPORTED}


def run_trial(plan: TrialPlan, trial: Trial, report: Callable[[dict], None] | None = None) -> dict:
    """Train (or resume, or just read back) the trial's run; report each validated epoch (to a scheduler, which
    may raise TrialStopped); return its final validation metrics with {FINAL: True, "run_id": ...}."""
    import torch

    from bench import runner
    from bench.store import ResultsStore

    run_id = plan.run_id(trial)
    record = ResultsStore(plan.out).get(run_id)
    if record is None:
        if plan.cpus_per_trial:
            torch.set_num_threads(plan.cpus_per_trial)
        spec = trial_spec(plan, trial)
        run_dir = Path(plan.out) / "runs" / run_id

        def on_epoch_end(entry: dict) -> None:
            if plan.epoch_hook:
                plan.epoch_hook(trial, entry, run_dir)
            if report and "val" in entry:
                report({**val_metrics(entry["val"]), "epoch": entry["step"], "run_id": run_id})

        try:
            record = runner.execute(spec, Console(quiet=True), run_dir, on_epoch_end).record
        except TrialStopped as stop:
            return stop_trial(plan, trial, stop.decision)
    return final_metrics(record)


def stop_trial(plan: TrialPlan, trial: Trial, decision: dict) -> dict:
    """Evaluate a trial a scheduler stopped where its checkpoint left it (once: a recorded one is read back)."""
    from bench import runner
    from bench.store import ResultsStore

    run_id = plan.run_id(trial)
    record = ResultsStore(plan.out).get(run_id)
    if record is None:
        run_dir = Path(plan.out) / "runs" / run_id
        record = runner.execute(trial_spec(plan, trial), Console(quiet=True), run_dir,
                                stopped_early=decision).record
    return final_metrics(record)


def final_metrics(record: dict) -> dict:
    return {**val_metrics(record["val"]), "epoch": record.get("epochs_trained", 0), FINAL: True,
            "run_id": record["run_id"],
            "stopped_early": bool(record.get("stopped_early"))}


def trial_spec(plan: TrialPlan, trial: Trial):
    from bench.runner import RunSpec

    tags = {**plan.tags, "kind": plan.kind, plan.kind: plan.sweep, "trial": trial.key}
    if trial.searched:
        tags["searched"] = ",".join(trial.searched)
    return RunSpec(method=trial.method, dataset=plan.dataset, backbone=trial.backbone, weights=plan.weights,
                   data_root=plan.data_root, overrides=dict(trial.overrides), seed=trial.seed, out=plan.out,
                   device=plan.device, allow_download=plan.allow_download,
                   allow_random_init=plan.allow_random_init, sweep=plan.sweep, tags=tags)

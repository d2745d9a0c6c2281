"""One trial of a sweep or ablation: an ordinary run (run folder + record) with a fixed run id, so that a retry
or a resumed sweep continues it from its checkpoint, and a finished one is never run or recorded twice.

Both executors (in-process and Ray) call `run_trial`; they differ only in how `report` reaches a scheduler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from bench.callbacks import Callback
from bench.run_spec import RunSpec
from bench.selection import METRIC_CHOICES, METRICS

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
    """What every trial of one sweep shares: the run settings (a run spec whose method, seed, backbone and --set
    values each trial fills in; paths absolute, as Ray runs trials in other folders), the sweep's kind, and
    training callbacks added to every trial's run (not saved with the sweep). How trials run (their CPUs and
    processes) is the sweep's `Execution`."""

    kind: str  # sweep | ablation | benchmark
    run: RunSpec  # its `sweep` names the sweep; its tags go on every trial's record
    callbacks: list[Callback] = field(default_factory=list)

    @property
    def sweep(self) -> str:
        return self.run.sweep

    def run_id(self, trial: Trial) -> str:
        return f"{self.sweep}-{trial.key}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "run": dataclasses.asdict(self.run)}

    @classmethod
    def from_dict(cls, data: dict) -> TrialPlan:
        if "run" not in data:  # sweep.json written before the run spec was shared: flat fields
            data = {"kind": data["kind"],
                    "run": {"method": "", "sweep": data["sweep"], "tags": data.get("tags", {}),
                            **{key: data[key] for key in ("dataset", "out", "weights", "data_root", "device",
                                                          "allow_download", "allow_random_init")}}}
        return cls(data["kind"], RunSpec(**data["run"]))


class SchedulerReport(Callback):
    """Hands each validated epoch's metrics to a scheduler's `report` (ASHA), which may raise TrialStopped."""

    def __init__(self, report: Callable[[dict], None], run_id: str):
        self.report, self.run_id = report, run_id

    def on_epoch_end(self, entry: dict, run_dir: Path) -> None:
        if "val" in entry:
            self.report({**val_metrics(entry["val"]), "epoch": entry["step"], "run_id": self.run_id})


def val_metrics(summary: dict) -> dict[str, float]:
    """Reported metrics; an undefined one (an empty shot group) is NaN, never 0."""
    return {metric: float("nan") if summary.get(name) is None else float(summary[name])
            for metric, name in zip(METRICS, METRIC_CHOICES, strict=True)}


def run_trial(plan: TrialPlan, trial: Trial, report: Callable[[dict], None] | None = None,
              node: str | None = None, threads: int | None = None) -> dict:
    """Train (or resume, or just read back) the trial's run; report each validated epoch (to a scheduler, which
    may raise TrialStopped); return its final validation metrics with {FINAL: True, "run_id": ...}. `node`
    (a Ray node id) is recorded in the run's tags; `threads`: the process's torch threads (`fit_threads`)."""
    from bench import runner
    from bench.store import ResultsStore
    run_id = plan.run_id(trial)
    record = ResultsStore(plan.run.out).get(run_id)
    if record is None:
        fit_threads(threads)
        run_dir = Path(plan.run.out) / "runs" / run_id
        callbacks = [*plan.callbacks, *([SchedulerReport(report, run_id)] if report else [])]
        try:
            record = runner.execute(trial_spec(plan, trial, node), Console(quiet=True), run_dir, callbacks).record
        except TrialStopped as stop:
            return stop_trial(plan, trial, stop.decision, node, threads)
    return final_metrics(record)


def stop_trial(plan: TrialPlan, trial: Trial, decision: dict, node: str | None = None,
               threads: int | None = None) -> dict:
    """Evaluate a trial a scheduler stopped where its checkpoint left it (once: a recorded one is read back);
    `node` and `threads` as for `run_trial`."""
    from bench import runner
    from bench.store import ResultsStore
    run_id = plan.run_id(trial)
    record = ResultsStore(plan.run.out).get(run_id)
    if record is None:
        fit_threads(threads)
        run_dir = Path(plan.run.out) / "runs" / run_id
        record = runner.execute(trial_spec(plan, trial, node), Console(quiet=True), run_dir,
                                stopped_early=decision).record
    return final_metrics(record)


def fit_threads(threads: int | None) -> None:
    """Torch threads of a trial process: its share of the trial's CPUs (`Execution.threads`), else (None) the
    CPUs it may use (the local executor runs one trial at a time; a Ray trial gets the CPUs Ray gave it), so that
    trials at once × threads each never exceed the CPUs."""
    import torch

    from bench.hardware import usable_cpus

    torch.set_num_threads(threads or usable_cpus())


def final_metrics(record: dict) -> dict:
    return {**val_metrics(record["val"]), "epoch": record.get("epochs_trained", 0), FINAL: True,
            "run_id": record["run_id"],
            "stopped_early": bool(record.get("stopped_early"))}


def trial_spec(plan: TrialPlan, trial: Trial, node: str | None = None) -> RunSpec:
    tags = {**plan.run.tags, "kind": plan.kind, plan.kind: plan.sweep, "trial": trial.key}
    if trial.searched:
        tags["searched"] = ",".join(trial.searched)
    if node:
        tags["node"] = node
    weights = plan.run.weights if trial.backbone in (None, plan.run.backbone) else None  # the file is the
    # sweep backbone's: a trial on its own backbone (a protocol's method_backbones) takes that one's by its tag
    return dataclasses.replace(plan.run, method=trial.method, seed=trial.seed, backbone=trial.backbone,
                               weights=weights, overrides=dict(trial.overrides), tags=tags)

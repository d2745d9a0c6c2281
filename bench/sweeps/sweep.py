"""A sweep (or an ablation): many trials over one dataset, each an ordinary run, saved as `sweep.json` in
`<storage>/<name>/` so that `--resume` finishes it with the settings it started with.

Trials are either a fixed list (random and grid search, ablations: known before the first trial runs, so
both executors run the very same configurations) or drawn one by one by Optuna from the searched spaces.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.atomic_io import atomic_write_json, read_json
from bench.errors import UsageError
from bench.flags import command_line
from bench.hparams import Space, as_override
from bench.selection import DEFAULT_METRIC, METRICS, selection_key
from bench.sweeps.execution import Execution
from bench.sweeps.space import from_entries, to_entries
from bench.sweeps.trial import Trial, TrialPlan, val_metrics

SEARCHES = ("random", "grid", "optuna")
SCHEDULERS = ("asha", "none")
SWEEP_FILE = "sweep.json"
COMMANDS = {"sweep": "sweep", "ablation": "ablate"}  # the command that starts (and continues) a sweep of a kind
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Sweep:
    name: str
    storage: str  # absolute; the sweep's folder is <storage>/<name>
    plan: TrialPlan
    # method, seed, backbone and fixed --set values of every drawn trial (Optuna adds the searched ones); None for
    # a benchmark stage, whose fixed list has each trial whole
    base: Trial | None = None
    search: str = "random"  # random | grid | optuna | fixed (an ablation's list)
    space: dict[str, Space] = field(default_factory=dict)
    trials: list[Trial] | None = None  # the fixed list; None: Optuna draws `num_trials`
    num_trials: int = 0
    metric: str = f"val_{DEFAULT_METRIC}"
    scheduler: str = "none"
    grace_period: int = 1
    reduction_factor: int = 3
    seed: int = 0  # of the search (random draws, Optuna's sampler), not of the trials' training
    execution: Execution = field(default_factory=Execution)
    embedded: bool = False  # on the embedded default (its presets apply, as in `bench run`)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def folder(self) -> Path:
        return Path(self.storage) / self.name

    def make_trial(self, key: str, values: dict[str, Any]) -> Trial:
        overrides = {**self.base.overrides, **{name: as_override(value) for name, value in values.items()}}
        return dataclasses.replace(self.base, key=key, overrides=overrides, searched=tuple(sorted(self.space)))

    def trial_from_ray(self, config: dict, trial_id: str) -> Trial:
        """The trial a Ray Tune config stands for: a fixed trial, or Optuna's values (keyed by Ray's trial id)."""
        return Trial.from_dict(config["trial"]) if "trial" in config else self.make_trial(trial_id, config)

    def save(self) -> None:
        data = dataclasses.asdict(self)
        data["plan"] = self.plan.as_dict()
        data["space"] = to_entries(self.space)
        data["base"] = None if self.base is None else self.base.as_dict()
        data["trials"] = None if self.trials is None else [t.as_dict() for t in self.trials]
        atomic_write_json(self.folder / SWEEP_FILE, data)

    @classmethod
    def load(cls, folder: Path) -> Sweep:
        data = read_json(folder / SWEEP_FILE)
        data["execution"] = Execution(**data["execution"]) if "execution" in data else _flat_execution(data)
        data["plan"] = TrialPlan.from_dict(data["plan"])
        data["space"] = from_entries(data["space"])
        data["base"] = None if data["base"] is None else Trial.from_dict(data["base"])
        data["trials"] = None if data["trials"] is None else [Trial.from_dict(t) for t in data["trials"]]
        return cls(**data)

    def records(self) -> list[dict]:
        from bench.store import ResultsStore
        return ResultsStore(self.plan.run.out).records(sweep=self.name)

    def continue_command(self) -> str:
        """The command that finishes this sweep or ablation (a benchmark's stages: `bench benchmark --resume`)."""
        return command_line(COMMANDS[self.plan.kind], name=self.name, resume=True)


def _flat_execution(data: dict) -> Execution:
    """The execution of a sweep.json written before 2026-12-06, when its settings were flat keys of the sweep
    (executor, max_failures, gpus_per_trial, address) and of its plan (cpus_per_trial, nproc); they are taken out
    of `data`."""
    plan = data["plan"]
    return Execution(executor=data.pop("executor"), address=data.pop("address"),
                     max_failures=data.pop("max_failures"), cpus_per_trial=plan.pop("cpus_per_trial", None),
                     gpus_per_trial=data.pop("gpus_per_trial"), nproc_per_trial=plan.pop("nproc", 1))


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(f"--name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit")
    return name


def check_metric(metric: str) -> str:
    if metric.startswith("test"):
        raise UsageError(f"--metric {metric}: sweeps select on validation metrics only; use "
                         + metric.replace("test", "val", 1))
    if metric not in METRICS:
        raise UsageError(f"--metric {metric}: choose one of {', '.join(METRICS)}")
    return metric


def metric_value(record: dict, metric: str) -> float:
    return val_metrics(record["val"])[metric]


def best_record(records: list[dict], metric: str) -> dict | None:
    """The record with the best validation `metric`; trials a scheduler stopped, then trials whose training was
    flagged (diverged, exploded, collapsed), count only when nothing better is left. Equal scores go to the
    lower class-balanced val NLL, then to the earlier trial."""
    healthy = [r for r in records if (r.get("health") or {}).get("ok", True)]
    for candidates in ([r for r in healthy if not r.get("stopped_early")], healthy,
                       [r for r in records if not r.get("stopped_early")], records):
        scored = [r for r in candidates if not math.isnan(metric_value(r, metric))]
        if scored:  # by the selection rule: the metric, then the lower balanced NLL, then the earlier trial
            return max(sorted(scored, key=lambda r: r["tags"].get("trial", "")),
                       key=lambda r: selection_key(r["val"], metric.removeprefix("val_")))
    return None


def rerun_command(record: dict, sweep: Sweep) -> str:
    """The `bench run` command that repeats a trial (on the embedded default, `bench run` applies the same
    preset itself), quoted for a POSIX shell (paths with spaces)."""
    run = sweep.plan.run
    parts = ["bench", "run", "--method", record["method"], "--dataset", run.dataset]
    overrides = sweep.make_trial("", {name: record["hparams"][name] for name in sweep.space}).overrides
    if not sweep.embedded:
        parts += ["--backbone", record["backbone"]]
    for flag, value in (("--weights", run.weights), ("--data-root", run.data_root)):
        if value:
            parts += [flag, value]
    for key, value in sorted(overrides.items()):
        parts += ["--set", f"{key}={value}"]
    parts += ["--seed", str(record["seed"])]
    nproc = sweep.execution.nproc_per_trial
    if nproc > 1:  # the same world size (the same global batches, sharded the same way)
        parts += ["--nproc", str(nproc)]
    if run.allow_random_init and not sweep.embedded:
        parts.append("--random-init")
    return shlex.join(parts)

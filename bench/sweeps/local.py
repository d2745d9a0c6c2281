"""The in-process executor: one trial after another in this process (no Ray), through the same
`run_trial` as Ray's. Optuna's study lives in `<sweep>/optuna.db`, ASHA's rungs in `<sweep>/asha.json`, so an
interrupted sweep resumes where it stopped. The results store, not Optuna's files, holds every trial's outcome.
"""

from __future__ import annotations

import math

from bench.sweeps.asha import ASHA_MAX_T, LocalASHA
from bench.sweeps.status_line import SweepProgress
from bench.sweeps.sweep import Sweep, metric_value
from bench.sweeps.trial import Trial, TrialStopped, run_trial


def run_local(sweep: Sweep, progress: SweepProgress) -> None:
    asha = (LocalASHA(sweep.grace_period, sweep.reduction_factor, ASHA_MAX_T, sweep.folder / "asha.json")
            if sweep.scheduler == "asha" else None)
    if sweep.trials is not None:
        for trial in sweep.trials:
            _run_with_retries(sweep, trial, asha, progress)
        return
    _run_optuna_locally(sweep, asha, progress)


def _run_optuna_locally(sweep: Sweep, asha: LocalASHA | None, progress: SweepProgress) -> None:
    import optuna

    from bench.sweeps.space import optuna_distributions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=sweep.name, storage=f"sqlite:///{sweep.folder / 'optuna.db'}", load_if_exists=True,
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=sweep.seed))
    distributions = optuna_distributions(sweep.space)
    interrupted = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for frozen in interrupted:  # asked before an interrupt: run (resume) them with the values they were given
        final = _run_with_retries(sweep, sweep.make_trial(_key(frozen.number), frozen.params), asha, progress)
        _tell(study, frozen.number, final, sweep.metric)
    while len([t for t in study.trials if t.state.is_finished()]) < sweep.num_trials:
        asked = study.ask(distributions)
        final = _run_with_retries(sweep, sweep.make_trial(_key(asked.number), asked.params), asha, progress)
        _tell(study, asked.number, final, sweep.metric)


def _key(number: int) -> str:
    return f"t{number:03d}"


def _tell(study, number: int, final: dict | None, metric: str) -> None:
    import optuna

    value = None if final is None else final[metric]
    if value is None or math.isnan(value):
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(number, value)


def _run_with_retries(sweep: Sweep, trial: Trial, asha: LocalASHA | None, progress: SweepProgress) -> dict | None:
    def report(metrics: dict) -> None:
        if asha and asha.should_stop(trial.key, metrics["epoch"], metrics[sweep.metric]):
            raise TrialStopped({"reason": "asha", "epoch": metrics["epoch"]})

    for attempt in range(sweep.execution.max_failures + 1):
        progress.started(trial.key)
        try:
            final = run_trial(sweep.plan, trial, report, threads=sweep.execution.threads)
        except Exception as error:  # noqa: BLE001  (a failing trial never ends the sweep)
            message = f"{type(error).__name__}: {error}"
            if attempt < sweep.execution.max_failures:
                progress.retrying(trial.key, message)
                continue
            progress.failed_for_good(trial.key, message)
            return None
        progress.finished(trial.key, final[sweep.metric], final["stopped_early"])
        return final
    return None


def already_done(sweep: Sweep, progress: SweepProgress) -> None:
    """Count the trials finished before a resume."""
    for record in sweep.records():
        progress.already_done(record["tags"].get("trial", record["run_id"]), metric_value(record, sweep.metric))

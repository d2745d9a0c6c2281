"""The two ways to run a sweep's trials, through the same `bench.trial.run_trial`:

- `local`: one trial after another in this process (no Ray); Optuna's study lives in `<sweep>/optuna.db`,
  ASHA's rungs in `<sweep>/asha.json`, so an interrupted sweep resumes where it stopped.
- `ray`: Ray Tune on this machine or a cluster (`--address`); Ray's experiment lives in `<sweep>/` beside
  `sweep.json`, and Tuner.restore resumes it.

Either way the results store, not Ray's or Optuna's files, holds the outcome of every trial.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from pathlib import Path

from bench.asha import LocalASHA
from bench.sweep import Sweep, metric_value
from bench.sweep_progress import SweepProgress
from bench.trial import FINAL, Trial, TrialStopped, run_trial, stop_trial

ASHA_MAX_T = 10_000  # trials end by themselves; ASHA only stops them early
OBJECT_STORE_CAP = 512 * 1024**2  # trials pass small configs only; Ray's default (30 % of RAM) wastes memory


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

    from bench.search_space import optuna_distributions

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

    for attempt in range(sweep.max_failures + 1):
        progress.started(trial.key)
        try:
            final = run_trial(sweep.plan, trial, report)
        except Exception as error:  # noqa: BLE001  (a failing trial never ends the sweep)
            message = f"{type(error).__name__}: {error}"
            if attempt < sweep.max_failures:
                progress.retrying(trial.key, message)
                continue
            progress.failed_for_good(trial.key, message)
            return None
        progress.finished(trial.key, final[sweep.metric], final["stopped_early"])
        return final
    return None


def init_ray(address: str | None) -> bool:
    """Start (or join, with `address`) Ray with small-machine settings; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    settings = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address:
        ray.init(address=address, **settings)
    else:
        ray.init(object_store_memory=OBJECT_STORE_CAP, **settings)
    return True


def _ray_trainable(config: dict, sweep: Sweep) -> None:
    from ray import tune

    trial = sweep.trial_from_ray(config, tune.get_context().get_trial_id())
    tune.report(run_trial(sweep.plan, trial, tune.report))


def run_ray(sweep: Sweep, progress: SweepProgress, resume: bool) -> None:
    import ray
    from ray import tune

    from bench.ray_hooks import ProgressCallback

    started = init_ray(sweep.address)
    try:
        trainable = tune.with_resources(tune.with_parameters(_ray_trainable, sweep=sweep),
                                        {"cpu": sweep.plan.cpus_per_trial or 1, "gpu": sweep.gpus_per_trial})
        callback = ProgressCallback(progress, sweep)
        if resume and tune.Tuner.can_restore(str(sweep.folder)):
            tuner = tune.Tuner.restore(str(sweep.folder), trainable, resume_errored=True)
            tuner._local_tuner._run_config.callbacks = [callback]  # a restored run keeps no live callbacks
        else:
            tuner = tune.Tuner(trainable, param_space=_param_space(sweep),
                               tune_config=_tune_config(sweep), run_config=_run_config(sweep, callback))
        results, interrupted = _fit_noting_interrupt(tuner)
        if not interrupted:  # after an interrupt, --resume completes the trials
            _complete_trials(sweep, progress, results)
    finally:
        if started:
            ray.shutdown()


def _fit_noting_interrupt(tuner) -> tuple[object, bool]:
    """Run the Tuner; True when Ctrl-C ended it. Ray Tune replaces the SIGINT handler for the run (in the main
    thread, unless TUNE_DISABLE_SIGINT_HANDLER) and puts the previous one back only when a SIGINT arrives."""
    watched = (threading.current_thread() is threading.main_thread()
               and os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0") == "0")
    before = signal.getsignal(signal.SIGINT)
    results = tuner.fit()
    return results, watched and signal.getsignal(signal.SIGINT) is before


def _complete_trials(sweep: Sweep, progress: SweepProgress, results) -> None:
    """Give every trial without a record one, as Ray tasks with the trials' resources: a trial ASHA stopped is
    evaluated where its checkpoint left it; a trial an earlier interrupt cut short (Ray does not restart it)
    continues from its checkpoint to the end."""
    import ray

    from bench.ray_hooks import read_stops
    from bench.store import ResultsStore

    stops, store = read_stops(sweep.folder), ResultsStore(sweep.plan.out)
    resources = {"num_cpus": sweep.plan.cpus_per_trial or 1, "num_gpus": sweep.gpus_per_trial}
    stop, finish = ray.remote(**resources)(stop_trial), ray.remote(**resources)(run_trial)
    pending = []
    for result in results:
        metrics = result.metrics or {}
        if result.error is not None or metrics.get(FINAL) or not result.config:
            continue
        trial_id = metrics["trial_id"]
        trial = sweep.trial_from_ray(result.config, trial_id)
        if sweep.plan.run_id(trial) in store:
            continue
        if trial_id in stops:
            decision = {"reason": "asha", "epoch": stops[trial_id]["epoch"]}
            pending.append((trial, stop.remote(sweep.plan, trial, decision)))
        else:  # no ASHA outside the Tuner: the trial runs to its end
            pending.append((trial, finish.remote(sweep.plan, trial)))
    for trial, ref in pending:
        final = ray.get(ref)
        progress.finished(trial.key, final[sweep.metric], final["stopped_early"])


def _param_space(sweep: Sweep) -> dict:
    from ray import tune

    if sweep.trials is not None:
        return {"trial": tune.grid_search([t.as_dict() for t in sweep.trials])}
    return {}


def _tune_config(sweep: Sweep):
    from ray import tune

    search_alg = None
    if sweep.trials is None:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        from bench.search_space import optuna_distributions

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        search_alg = OptunaSearch(space=optuna_distributions(sweep.space), metric=sweep.metric, mode="max",
                                  sampler=optuna.samplers.TPESampler(seed=sweep.seed))
    scheduler = None
    if sweep.scheduler == "asha":
        from bench.ray_hooks import RecordingASHA

        scheduler = RecordingASHA(str(sweep.folder), time_attr="epoch", max_t=ASHA_MAX_T,
                                  grace_period=sweep.grace_period, reduction_factor=sweep.reduction_factor)
    # reuse_actors: a worker process runs trial after trial, so torch and the harness are imported once per worker
    return tune.TuneConfig(metric=sweep.metric, mode="max", search_alg=search_alg, scheduler=scheduler,
                           num_samples=1 if sweep.trials is not None else sweep.num_trials, reuse_actors=True)


def _run_config(sweep: Sweep, callback):
    from ray import tune

    return tune.RunConfig(storage_path=str(Path(sweep.storage).resolve()), name=sweep.name, verbose=0,
                          failure_config=tune.FailureConfig(max_failures=sweep.max_failures), callbacks=[callback])


def already_done(sweep: Sweep, progress: SweepProgress) -> None:
    """Count the trials finished before a resume."""
    for record in sweep.records():
        progress.already_done(record["tags"].get("trial", record["run_id"]), metric_value(record, sweep.metric))

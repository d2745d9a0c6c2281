"""The Ray Tune executor: trials on this machine or a cluster (`--address`), through the same `run_trial` as
the in-process one (each rank of a data-parallel trial calls it in the trial's Ray Train job:
bench/sweeps/ray_train.py). Ray's experiment lives in `<sweep>/` beside `sweep.json`, and Tuner.restore resumes
it; the results store, not Ray's files, holds every trial's outcome.

Two things here lean on Ray internals, each behind `ray_internals_checked` (Ray 2, from the floor this
package declares; checked up to Ray 2.60): a restored Tuner's live callbacks (`_attach_callbacks`) and telling
a Ctrl-C from a finished run (`_fit_noting_interrupt`). Outside that range both fall back to what is safe.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.sweeps.asha import ASHA_MAX_T
from bench.sweeps.ray_cluster import init_ray, ray_node
from bench.sweeps.status_line import SweepProgress
from bench.sweeps.sweep import Sweep
from bench.sweeps.trial import FINAL, run_trial, stop_trial

# Ray pickles a Tuner's scheduler, callbacks and parameters by reference: a sweep started before a module moved
# names its old module, which resolves to the new one on restore. Moved 2026-11-30 (into bench.sweeps) and
# 2026-12-06 (sweeps.model -> sweeps.sweep, sweeps.progress -> sweeps.status_line); these aliases can go after
# 2027-06-30, when no sweep started before those dates is still being resumed.
MOVED_MODULES = {"bench.ray_hooks": "bench.sweeps.ray_hooks", "bench.sweeps.model": "bench.sweeps.sweep",
                 "bench.sweeps.progress": "bench.sweeps.status_line"}


def _ray_trainable(config: dict, sweep: Sweep) -> None:
    from ray import tune

    trial = sweep.trial_from_ray(config, tune.get_context().get_trial_id())
    if sweep.execution.nproc_per_trial > 1:  # this actor drives the trial's Ray Train job
        from bench.sweeps.ray_train import train_trial

        tune.report(train_trial(sweep, trial, in_tune=True))
        return
    tune.report(run_trial(sweep.plan, trial, tune.report, node=ray_node(), threads=sweep.execution.threads))


def _stop_trial_here(sweep: Sweep, trial, decision: dict) -> dict:
    return stop_trial(sweep.plan, trial, decision, ray_node(), sweep.execution.threads)


def _run_trial_here(sweep: Sweep, trial) -> dict:
    return run_trial(sweep.plan, trial, node=ray_node(), threads=sweep.execution.threads)


def check_cluster_fits(sweep: Sweep, warn) -> int:
    """How many trials fit on the Ray cluster at once (at least 1). A trial bigger than the whole cluster is
    refused on this machine's Ray (nothing will add nodes), and `warn`ed about on a cluster joined with
    --address (an autoscaler may add them)."""
    import ray

    from bench.errors import UsageError
    from bench.sweeps.ray_train import trial_needs

    needs, total = trial_needs(sweep), ray.cluster_resources()
    short = {name: amount for name, amount in needs.items() if amount > total.get(name, 0.0) + 1e-9}
    if short:
        have = ", ".join(f"{total.get(name, 0.0):g} {name}" for name in needs)
        message = (f"a trial needs {', '.join(f'{amount:g} {name}' for name, amount in needs.items())} at once "
                   f"(--cpus-per-trial, --gpus-per-trial, --nproc-per-trial"
                   + (", and the driver's share of a CPU" if sweep.execution.nproc_per_trial > 1 else "")
                   + f") and this Ray cluster has {have}")
        if not sweep.execution.address:
            raise UsageError(f"{message}; ask for less per trial")
        warn(f"{message}: its trials wait until nodes are added")
    fits = [int(total.get(name, 0.0) // amount) for name, amount in needs.items() if amount > 0]
    return max(1, min(fits, default=1))


@contextmanager
def ray_for(sweep: Sweep, console) -> Iterator[int]:
    """Ray for `sweep`: started (or joined, with --address) unless this process has it already, and shut down
    after if this started it. Yields how many trials fit on it at once, having refused a trial too large for it
    before the sweep writes anything."""
    import ray

    started = init_ray(sweep.execution.address)
    try:
        yield check_cluster_fits(sweep, lambda message: console.print(f"warning: {message}", highlight=False,
                                                                      markup=False))
    finally:
        if started:
            ray.shutdown()


def run_ray(sweep: Sweep, progress: SweepProgress, resume: bool, at_once: int) -> None:
    """Run the sweep's trials as Ray Tune trials (on the Ray `ray_for` gave), at most `at_once` data-parallel
    trials at a time."""
    import ray
    from ray import tune

    from bench.sweeps.ray_hooks import ProgressCallback

    def warn(message: str) -> None:
        progress.console.print(f"warning: {message} (Ray {ray.__version__}; checked: Ray 2, {ray_floor()})",
                               highlight=False, markup=False)

    if sweep.execution.nproc_per_trial > 1:
        from bench.sweeps.ray_train import DRIVER_CPUS

        resources = {"cpu": DRIVER_CPUS}
        progress.console.print(
            f"each trial trains data-parallel in {sweep.execution.nproc_per_trial} processes (Ray Train; "
            + ("one GPU each, NCCL" if sweep.execution.gpus_per_trial else "CPUs, gloo")
            + f"); at most {at_once} trial(s) at once on this cluster", highlight=False, markup=False)
    else:
        resources = {"cpu": sweep.execution.cpus_per_trial or 1, "gpu": sweep.execution.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(_ray_trainable, sweep=sweep), resources)
    callback = ProgressCallback(progress, sweep)
    if resume and tune.Tuner.can_restore(str(sweep.folder)):
        alias_moved_modules()
        tuner = tune.Tuner.restore(str(sweep.folder), trainable, resume_errored=True)
        if not _attach_callbacks(tuner, [callback]):
            warn("a restored sweep gets no live progress on this Ray; its trials run and are recorded")
    else:
        tuner = tune.Tuner(trainable, param_space=_param_space(sweep),
                           tune_config=_tune_config(sweep, at_once), run_config=_run_config(sweep, callback))
    results, interrupted = _fit_noting_interrupt(tuner, warn)
    if not interrupted:  # after an interrupt, --resume completes the trials
        _complete_trials(sweep, progress, results)


def ray_floor():
    """The Ray versions this package declares it needs (pyproject.toml), as a packaging SpecifierSet."""
    from packaging.requirements import Requirement

    requirements = map(Requirement, importlib.metadata.requires("lt-bench"))
    return next(r.specifier for r in requirements if r.name == "ray")


def ray_internals_checked() -> bool:
    """True when the installed Ray is major version 2 and within this package's declared floor."""
    import ray
    from packaging.version import Version

    installed = Version(ray.__version__)
    return installed.major == 2 and ray_floor().contains(installed, prereleases=True)


def _attach_callbacks(tuner, callbacks: list) -> bool:
    """Give a restored Tuner live callbacks (Tuner.restore keeps none and takes none); False when the
    installed Ray is not a checked one or lacks the private run config this sets."""
    run_config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
    if not (ray_internals_checked() and hasattr(run_config, "callbacks")):
        return False
    run_config.callbacks = callbacks
    return True


def _fit_noting_interrupt(tuner, warn) -> tuple[object, bool]:
    """Run the Tuner; True when Ctrl-C ended it. Ray Tune replaces the SIGINT handler for the run (in the
    main thread, unless TUNE_DISABLE_SIGINT_HANDLER) and puts the previous one back only when a SIGINT
    arrives; without that handler a Ctrl-C raises KeyboardInterrupt out of fit. On a Ray not checked for this
    the answer is True (and `warn` says why): trials left without a record are completed by `--resume`, never
    run on after a possible Ctrl-C."""
    watched = (threading.current_thread() is threading.main_thread()
               and os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0") == "0")
    before = signal.getsignal(signal.SIGINT)
    results = tuner.fit()
    if not ray_internals_checked():
        warn("cannot tell a Ctrl-C from the end of the sweep on this Ray; trials it left without a record "
             "(stopped by ASHA or cut short) are completed by --resume")
        return results, True
    return results, watched and signal.getsignal(signal.SIGINT) is before


def _complete_trials(sweep: Sweep, progress: SweepProgress, results) -> None:
    """Give every trial without a record one, as Ray tasks with the trials' resources: a trial ASHA stopped is
    evaluated where its checkpoint left it; a trial an earlier interrupt cut short (Ray does not restart it)
    continues from its checkpoint to the end."""
    import ray

    from bench.store import ResultsStore
    from bench.sweeps.ray_hooks import read_stops

    stops, store = read_stops(sweep.folder), ResultsStore(sweep.plan.run.out)
    if sweep.execution.nproc_per_trial > 1:  # each completion drives a Ray Train job of the trial's size
        from bench.sweeps.ray_train import DRIVER_CPUS, train_trial

        task = ray.remote(num_cpus=DRIVER_CPUS)(train_trial)
        stop, finish = task.remote, task.remote
    else:
        resources = {"num_cpus": sweep.execution.cpus_per_trial or 1, "num_gpus": sweep.execution.gpus_per_trial}
        stop, finish = ray.remote(**resources)(_stop_trial_here).remote, ray.remote(**resources)(_run_trial_here).remote
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
            pending.append((trial, stop(sweep, trial, decision)))
        else:  # no ASHA outside the Tuner: the trial runs to its end
            pending.append((trial, finish(sweep, trial)))
    for trial, ref in pending:
        final = ray.get(ref)
        progress.finished(trial.key, final[sweep.metric], final["stopped_early"])


def _param_space(sweep: Sweep) -> dict:
    from ray import tune

    if sweep.trials is not None:
        return {"trial": tune.grid_search([t.as_dict() for t in sweep.trials])}
    return {}


def _tune_config(sweep: Sweep, at_once: int):
    from ray import tune

    search_alg = None
    if sweep.trials is None:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        from bench.sweeps.space import optuna_distributions

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        search_alg = OptunaSearch(space=optuna_distributions(sweep.space), metric=sweep.metric, mode="max",
                                  sampler=optuna.samplers.TPESampler(seed=sweep.seed))
    scheduler = None
    if sweep.scheduler == "asha":
        from bench.sweeps.ray_hooks import RecordingASHA

        scheduler = RecordingASHA(str(sweep.folder), time_attr="epoch", max_t=ASHA_MAX_T,
                                  grace_period=sweep.grace_period, reduction_factor=sweep.reduction_factor)
    # reuse_actors: a worker process runs trial after trial, so torch and the harness are imported once per worker
    # a data-parallel trial's driver holds almost nothing, so Tune alone would start every trial's driver at
    # once, each job waiting for workers: at most as many as fit (Ray Train's advice)
    return tune.TuneConfig(metric=sweep.metric, mode="max", search_alg=search_alg, scheduler=scheduler,
                           num_samples=1 if sweep.trials is not None else sweep.num_trials, reuse_actors=True,
                           max_concurrent_trials=at_once if sweep.execution.nproc_per_trial > 1 else None)


def _run_config(sweep: Sweep, callback):
    from ray import tune

    return tune.RunConfig(storage_path=str(Path(sweep.storage).resolve()), name=sweep.name, verbose=0,
                          failure_config=tune.FailureConfig(max_failures=sweep.execution.max_failures), callbacks=[callback])


def alias_moved_modules() -> None:
    """Let pickles that name a module from before the move (MOVED_MODULES) load."""
    for old, new in MOVED_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))

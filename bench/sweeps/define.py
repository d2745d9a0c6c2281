"""From a request to a `Sweep`: what is searched, which trials run, where everything goes; and the run of it
(through the local or the Ray Tune executor)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from bench import selection
from bench.embedded import is_embedded
from bench.errors import UsageError
from bench.hparams import resolve
from bench.run_spec import RunSpec
from bench.sweeps.space import (
    apply_space_file,
    default_space,
    describe,
    grid,
    random_configs,
    read_space_file,
)
from bench.sweeps.sweep import (
    EXECUTORS,
    SCHEDULERS,
    SEARCHES,
    Sweep,
    check_metric,
    check_name,
)
from bench.sweeps.trial import Trial, TrialPlan


@dataclass
class Request:
    """A sweep or ablation asked for: the run settings every trial shares (`run`: method, dataset, backbone,
    weights, data, --set pins, first seed, results root, device) and how the trials are run."""

    run: RunSpec
    storage: str | None = None
    name: str | None = None
    executor: str = "ray"
    metric: str = f"val_{selection.DEFAULT_METRIC}"
    max_failures: int = 2
    cpus_per_trial: int | None = None
    gpus_per_trial: float = 0.0
    address: str | None = None
    nproc_per_trial: int = 1


def absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def results_and_sweeps_roots(out: str | None, storage: str | None) -> tuple[Path, Path]:
    """(results root, where sweep folders go): --out or the default, --storage or <results>/sweeps."""
    from bench.run_folder import default_results_root

    results = Path(absolute(out)) if out else default_results_root()
    return results, Path(absolute(storage)) if storage else results / "sweeps"


def check_trial_resources(executor: str, gpus: float, nproc: int, cpus: int | None = None) -> None:
    """A trial is one process on one device (a fraction of a GPU shares a card), or `nproc` data-parallel
    processes with one GPU each (or none: CPU processes), which Ray Train starts. The local executor runs one
    trial at a time, with at most the CPUs this process may use."""
    if cpus is not None and cpus < 1:
        raise UsageError(f"--cpus-per-trial {cpus}: need at least 1")
    if executor == "local" and cpus is not None:
        from bench.distributed import allowed_cpus

        if cpus > allowed_cpus():
            raise UsageError(f"--cpus-per-trial {cpus}: the local executor runs one trial at a time on the "
                             f"{allowed_cpus()} CPUs this process may use; give at most {allowed_cpus()}")
    if nproc < 1:
        raise UsageError(f"--nproc-per-trial {nproc}: need at least 1")
    if nproc > 1 and gpus not in (0, nproc):
        raise UsageError(f"--gpus-per-trial {gpus:g} with --nproc-per-trial {nproc}: each process trains on one "
                         f"GPU, so pass --gpus-per-trial {nproc} (or 0 for CPU processes)")
    if nproc == 1 and gpus > 1:
        raise UsageError(f"--gpus-per-trial {gpus:g}: a trial process trains on one GPU; to train each trial "
                         f"data-parallel on {gpus:g} GPUs add --nproc-per-trial {gpus:g}")
    if nproc > 1 and executor != "ray":
        raise UsageError(f"--nproc-per-trial {nproc}: Ray Train starts a trial's processes, so it needs "
                         "--executor ray; the local executor runs one process per trial")


def _common(request: Request, kind: str, default_name: str) -> tuple[Path, str, TrialPlan]:
    from bench.datasets.base import DATASETS

    if request.executor not in EXECUTORS:
        raise UsageError(f"--executor {request.executor}: choose one of {', '.join(EXECUTORS)}")
    check_metric(request.metric)
    check_trial_resources(request.executor, request.gpus_per_trial, request.nproc_per_trial, request.cpus_per_trial)
    run = request.run
    out, storage = results_and_sweeps_roots(run.out, request.storage)
    name = check_name(request.name or default_name)
    if (storage / name).exists():
        raise UsageError(f"sweep {name!r} already exists in {storage}; add --resume to finish it, or choose "
                         "another --name")
    shared = dataclasses.replace(run, dataset=DATASETS.canonical(run.dataset), out=str(out),
                                 weights=absolute(run.weights), data_root=absolute(run.data_root), sweep=name,
                                 overrides={}, tags={})
    return storage, name, TrialPlan(kind, shared, request.cpus_per_trial, nproc=request.nproc_per_trial)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def define_sweep(request: Request, trials: int, search: str, scheduler: str, space_file: str | None,
                 search_seed: int, grace_period: int, reduction_factor: int) -> Sweep:
    from bench.methods.base import METHODS
    from bench.options import declared_options

    if search not in SEARCHES:
        raise UsageError(f"--search {search}: choose one of {', '.join(SEARCHES)}")
    if scheduler not in SCHEDULERS:
        raise UsageError(f"--scheduler {scheduler}: choose one of {', '.join(SCHEDULERS)}")
    if trials < 1 and search != "grid":
        raise UsageError(f"--trials {trials}: need at least 1")
    run = request.run
    method = METHODS.canonical(run.method)
    storage, name, plan = _common(request, "sweep", f"{method}-{run.dataset}-{_stamp()}")
    declared = declared_options(method, plan.run.dataset)
    pins = selection.pinned(run.overrides, request.metric, "--metric")
    if resolve(declared, pins).get("val_split") == "none":
        raise UsageError("a sweep chooses on val, and val_split=none leaves no val split; sweep with "
                         "val_split=carved, then train the chosen configuration with val_split=none")
    method_cls = METHODS.get(method)
    space = default_space(method_cls.hparams)
    embedded = is_embedded(run.dataset, run.backbone)
    if embedded:
        space, _ = apply_space_file(space, method_cls.embedded_space, declared, "embedded preset")
    if space_file:
        space, file_pins = apply_space_file(space, read_space_file(space_file), declared, f"--space {space_file}")
        pins = {**file_pins, **pins}
    space = {k: v for k, v in space.items() if k not in pins}
    if not space:
        raise UsageError(f"nothing to search: {method} declares no search space left after --set / --space")
    base = Trial(key="", method=method, seed=run.seed, overrides=pins, searched=tuple(sorted(space)),
                 backbone=run.backbone)
    sweep = Sweep(name=name, storage=str(storage), plan=plan, base=base, search=search, space=space,
                  num_trials=trials, metric=request.metric, scheduler=scheduler, grace_period=grace_period,
                  reduction_factor=reduction_factor, seed=search_seed, executor=request.executor,
                  max_failures=request.max_failures, gpus_per_trial=request.gpus_per_trial,
                  address=request.address, embedded=embedded)
    if search == "random":
        sweep.trials = [sweep.make_trial(f"t{i:03d}", values)
                        for i, values in enumerate(random_configs(space, trials, search_seed))]
    elif search == "grid":
        sweep.trials = [sweep.make_trial(f"t{i:03d}", values) for i, values in enumerate(grid(space))]
        sweep.num_trials = len(sweep.trials)
    return sweep


def define_ablation(request: Request, variants: list[str] | None, seeds: int) -> Sweep:
    from bench.methods.base import METHODS
    from bench.options import declared_options

    if seeds < 1:
        raise UsageError(f"--seeds {seeds}: need at least 1")
    run = request.run
    method = METHODS.canonical(run.method)
    registered = [name for name, cls in METHODS.items() if cls.variant_of == method]
    chosen = [method, *registered] if variants is None else [METHODS.canonical(v) for v in variants]
    strangers = [v for v in chosen if v != method and v not in registered]
    if strangers:
        raise UsageError(f"--variants: {', '.join(strangers)} {'is' if len(strangers) == 1 else 'are'} not a "
                         f"variant of {method}; its variants: {', '.join(registered) or 'none'}")
    storage, name, plan = _common(request, "ablation", f"ablate-{method}-{run.dataset}-{_stamp()}")
    plan.run.tags = {"base_method": method}
    pins = selection.pinned(run.overrides, request.metric, "--metric")
    for variant in chosen:  # refuses unknown keys and ill-typed values before anything starts
        resolve(declared_options(variant, plan.run.dataset), pins)
    trials = [Trial(key=f"{variant}-s{seed}", method=variant, seed=seed, overrides=pins, backbone=run.backbone)
              for variant in chosen for seed in range(run.seed, run.seed + seeds)]
    base = Trial(key="", method=method, seed=run.seed, overrides=pins, backbone=run.backbone)
    return Sweep(name=name, storage=str(storage), plan=plan, base=base, search="fixed", trials=trials,
                 num_trials=len(trials), metric=request.metric, executor=request.executor,
                 max_failures=request.max_failures, gpus_per_trial=request.gpus_per_trial, address=request.address,
                 embedded=is_embedded(run.dataset, run.backbone))


def load_for_resume(name: str | None, storage: str | None, out: str | None) -> Sweep:
    from bench.sweeps.sweep import SWEEP_FILE

    if not name:
        raise UsageError("--resume needs the sweep's --name (see the folders under <results>/sweeps)")
    _, root = results_and_sweeps_roots(out, storage)
    folder = root / name
    if not (folder / SWEEP_FILE).exists():
        raise UsageError(f"no sweep {name!r} in {root} (no {SWEEP_FILE}); check --name and --storage")
    return Sweep.load(folder)


def execute_sweep(sweep: Sweep, console: Console, resume: bool = False) -> None:
    if sweep.executor == "ray":
        from bench.sweeps.ray_tune import ray_for

        with ray_for(sweep, console) as at_once:
            _execute(sweep, console, resume, at_once)
    else:
        _execute(sweep, console, resume)


def _execute(sweep: Sweep, console: Console, resume: bool, at_once: int = 1) -> None:
    from bench.sweeps.local import already_done, run_local
    from bench.sweeps.status_line import SweepProgress

    if not resume:
        sweep.folder.mkdir(parents=True, exist_ok=True)
        sweep.save()
    what = (f"{sweep.num_trials} trials, {sweep.search} search" + (f" over {describe(sweep.space)}" if sweep.space
                                                                    else "")
            + (f", ASHA (grace {sweep.grace_period}, η {sweep.reduction_factor})" if sweep.scheduler == "asha"
               else ""))
    console.print(f"{'resuming' if resume else 'starting'} {sweep.plan.kind} {sweep.name}: {what}; "
                  f"{sweep.executor} executor; records in {sweep.plan.run.out}/records", highlight=False, markup=False)
    with SweepProgress(console, sweep.num_trials, sweep.metric) as progress:
        if resume:
            already_done(sweep, progress)
        if sweep.executor == "local":
            run_local(sweep, progress)
        else:
            from bench.sweeps.ray_tune import run_ray

            run_ray(sweep, progress, resume, at_once)

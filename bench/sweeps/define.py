"""From a request to a `Sweep`: what is searched, which trials run, where everything goes; and the run of it
(through the local or the Ray Tune executor)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from bench import selection
from bench.embedded import is_embedded
from bench.errors import UsageError
from bench.hparams import resolve
from bench.run_spec import RunSpec
from bench.sweeps.execution import Execution
from bench.sweeps.space import (
    apply_space_file,
    default_space,
    describe,
    grid,
    random_configs,
    read_space_file,
)
from bench.sweeps.sweep import (
    SCHEDULERS,
    SEARCHES,
    Sweep,
    check_metric,
    check_name,
)
from bench.sweeps.trial import Trial, TrialPlan
from bench.trackers import check_trackers


@dataclass
class Request:
    """A sweep, ablation or benchmark stage asked for: the run settings every trial shares (`run`: dataset,
    backbone, weights, data, --set pins, first seed, results root, device; its method is the one swept or
    ablated), how the trials run, where the sweep goes (None: a name of its own, <results>/sweeps) and the
    validation metric it chooses on."""

    run: RunSpec
    execution: Execution = field(default_factory=Execution)
    name: str | None = None
    storage: str | None = None
    metric: str = f"val_{selection.DEFAULT_METRIC}"


def absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def results_and_sweeps_roots(out: str | None, storage: str | None) -> tuple[Path, Path]:
    """(results root, where sweep folders go): --out or the default, --storage or <results>/sweeps."""
    from bench.run_folder import default_results_root

    results = Path(absolute(out)) if out else default_results_root()
    return results, Path(absolute(storage)) if storage else results / "sweeps"


def build_sweep(kind: str, request: Request, base: Trial | None, trials: list[Trial] | None, **settings) -> Sweep:
    """The one builder of a `Sweep` (a sweep, an ablation, a benchmark stage) from a request whose name and
    storage are settled: every trial shares the request's run settings (each fills in its method, seed, backbone
    and --set values; the run names the sweep), and runs as its execution says. `settings`: the search's (Sweep's
    own fields); `num_trials` is the fixed list's length when there is one."""
    run = dataclasses.replace(request.run, method="", sweep=request.name, overrides={})
    settings.setdefault("num_trials", len(trials) if trials is not None else 0)
    return Sweep(name=request.name, storage=request.storage, plan=TrialPlan(kind, run), base=base, trials=trials,
                 metric=request.metric, execution=request.execution, **settings)


def _settled(request: Request, default_name: str) -> Request:
    """A sweep or ablation request checked, named and placed: a new sweep folder under --storage, absolute
    paths (Ray runs trials in other folders), the canonical dataset."""
    from bench.datasets.base import DATASETS

    request.execution.checked()
    check_metric(request.metric)
    run = request.run
    out, storage = results_and_sweeps_roots(run.out, request.storage)
    name = check_name(request.name or default_name)
    if (storage / name).exists():
        raise UsageError(f"sweep {name!r} already exists in {storage}; add --resume to finish it, or choose "
                         "another --name")
    run = dataclasses.replace(run, dataset=DATASETS.canonical(run.dataset), out=str(out),
                              weights=absolute(run.weights), data_root=absolute(run.data_root), tags={})
    return dataclasses.replace(request, run=run, name=name, storage=str(storage))


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def define_sweep(request: Request, trials: int, search: str, scheduler: str, space_file: str | None,
                 search_seed: int, grace_period: int, reduction_factor: int) -> Sweep:
    check_trackers(request.run.trackers)
    if search not in SEARCHES:
        raise UsageError(f"--search {search}: choose one of {', '.join(SEARCHES)}")
    if scheduler not in SCHEDULERS:
        raise UsageError(f"--scheduler {scheduler}: choose one of {', '.join(SCHEDULERS)}")
    if trials < 1 and search != "grid":
        raise UsageError(f"--trials {trials}: need at least 1")
    from bench.methods.base import METHODS

    method = METHODS.canonical(request.run.method)
    request = _settled(request, f"{method}-{request.run.dataset}-{_stamp()}")
    run = request.run
    space, pins = _searched_space(method, run, request.metric, space_file)
    base = Trial(key="", method=method, seed=run.seed, overrides=pins, searched=tuple(sorted(space)),
                 backbone=run.backbone)
    sweep = build_sweep("sweep", request, base, None, search=search, space=space, num_trials=trials,
                        scheduler=scheduler, grace_period=grace_period, reduction_factor=reduction_factor,
                        seed=search_seed, embedded=is_embedded(run.dataset, run.backbone))
    if search == "random":
        sweep.trials = [sweep.make_trial(f"t{i:03d}", values)
                        for i, values in enumerate(random_configs(space, trials, search_seed))]
    elif search == "grid":
        sweep.trials = [sweep.make_trial(f"t{i:03d}", values) for i, values in enumerate(grid(space))]
        sweep.num_trials = len(sweep.trials)
    return sweep


def _searched_space(method: str, run: RunSpec, metric: str, space_file: str | None) -> tuple[dict, dict]:
    """(the space a sweep of `method` searches, the values pinned in every trial): the method's declared space
    (on the embedded default, its embedded space), changed by `space_file`, less what --set pins."""
    from bench.methods.base import METHODS
    from bench.options import declared_options

    declared = declared_options(method, run.dataset)
    pins = selection.pinned(run.overrides, metric, "--metric")
    if resolve(declared, pins).get("val_split") == "none":
        raise UsageError("a sweep chooses on val, and val_split=none leaves no val split; sweep with "
                         "val_split=carved, then train the chosen configuration with val_split=none")
    method_cls = METHODS.get(method)
    space = default_space(method_cls.hparams)
    if is_embedded(run.dataset, run.backbone):
        space, _ = apply_space_file(space, method_cls.embedded_space, declared, "embedded preset")
    if space_file:
        space, file_pins = apply_space_file(space, read_space_file(space_file), declared, f"--space {space_file}")
        pins = {**file_pins, **pins}
    space = {k: v for k, v in space.items() if k not in pins}
    if not space:
        raise UsageError(f"nothing to search: {method} declares no search space left after --set / --space")
    return space, pins


def define_ablation(request: Request, variants: list[str] | None, seeds: int) -> Sweep:
    from bench.methods.base import METHODS
    from bench.options import declared_options

    check_trackers(request.run.trackers)
    if seeds < 1:
        raise UsageError(f"--seeds {seeds}: need at least 1")
    method = METHODS.canonical(request.run.method)
    registered = [name for name, cls in METHODS.items() if cls.variant_of == method]
    chosen = [method, *registered] if variants is None else [METHODS.canonical(v) for v in variants]
    strangers = [v for v in chosen if v != method and v not in registered]
    if strangers:
        raise UsageError(f"--variants: {', '.join(strangers)} {'is' if len(strangers) == 1 else 'are'} not a "
                         f"variant of {method}; its variants: {', '.join(registered) or 'none'}")
    request = _settled(request, f"ablate-{method}-{request.run.dataset}-{_stamp()}")
    run = request.run = dataclasses.replace(request.run, tags={"base_method": method})
    pins = selection.pinned(run.overrides, request.metric, "--metric")
    for variant in chosen:  # refuses unknown keys and ill-typed values before anything starts
        resolve(declared_options(variant, run.dataset), pins)
    trials = [Trial(key=f"{variant}-s{seed}", method=variant, seed=seed, overrides=pins, backbone=run.backbone)
              for variant in chosen for seed in range(run.seed, run.seed + seeds)]
    base = Trial(key="", method=method, seed=run.seed, overrides=pins, backbone=run.backbone)
    return build_sweep("ablation", request, base, trials, search="fixed",
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
    if sweep.execution.executor == "ray":
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
                  f"{sweep.execution.executor} executor; records in {sweep.plan.run.out}/records", highlight=False, markup=False)
    with SweepProgress(console, sweep.num_trials, sweep.metric) as progress:
        if resume:
            already_done(sweep, progress)
        if sweep.execution.executor == "local":
            run_local(sweep, progress)
        else:
            from bench.sweeps.ray_tune import run_ray

            run_ray(sweep, progress, resume, at_once)

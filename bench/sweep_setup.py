"""From command-line arguments to a `Sweep`: what is searched, which trials run, where everything goes; and
the run of it, with its closing summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.embedded import applicable_preset, embedded_preset, embedded_sweep_space, is_embedded
from bench.errors import BenchError
from bench.hparams import parse_assignments, resolve
from bench.search_space import (
    apply_space_file,
    default_space,
    describe,
    grid,
    random_configs,
    read_space_file,
)
from bench.sweep import (
    EXECUTORS,
    SCHEDULERS,
    SEARCHES,
    Sweep,
    best_record,
    check_metric,
    check_name,
    rerun_command,
)
from bench.trial import Trial, TrialPlan


@dataclass
class Request:
    """The arguments `bench sweep` and `bench ablate` share."""

    method: str
    dataset: str
    backbone: str | None = None
    weights: str | None = None
    data_root: str | None = None
    assignments: list[str] = field(default_factory=list)
    seed: int = 0
    out: str | None = None
    storage: str | None = None
    name: str | None = None
    executor: str = "ray"
    metric: str = "val_overall"
    max_failures: int = 2
    cpus_per_trial: int | None = None
    gpus_per_trial: float = 0.0
    address: str | None = None
    device: str = "auto"
    allow_download: bool = False
    random_init: bool = False


def absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def results_and_sweeps_roots(out: str | None, storage: str | None) -> tuple[Path, Path]:
    """(results root, where sweep folders go): --out or the default, --storage or <results>/sweeps."""
    from bench.run_folder import default_results_root

    results = Path(absolute(out)) if out else default_results_root()
    return results, Path(absolute(storage)) if storage else results / "sweeps"


def _common(request: Request, kind: str, default_name: str) -> tuple[Path, str, TrialPlan]:
    from bench.datasets.base import DATASETS

    if request.executor not in EXECUTORS:
        raise BenchError(f"--executor {request.executor}: choose one of {', '.join(EXECUTORS)}")
    check_metric(request.metric)
    out, storage = results_and_sweeps_roots(request.out, request.storage)
    name = check_name(request.name or default_name)
    if (storage / name).exists():
        raise BenchError(f"sweep {name!r} already exists in {storage}; add --resume to finish it, or choose "
                         "another --name")
    dataset = DATASETS.canonical(request.dataset)
    plan = TrialPlan(sweep=name, kind=kind, dataset=dataset, out=str(out), weights=absolute(request.weights),
                     data_root=absolute(request.data_root), device=request.device,
                     allow_download=request.allow_download,
                     allow_random_init=request.random_init or is_embedded(request.dataset, request.backbone),
                     cpus_per_trial=request.cpus_per_trial)
    return storage, name, plan


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def define_sweep(request: Request, trials: int, search: str, scheduler: str, space_file: str | None,
                 search_seed: int, grace_period: int, reduction_factor: int) -> Sweep:
    from bench.methods.base import METHODS
    from bench.runner import declared_options

    if search not in SEARCHES:
        raise BenchError(f"--search {search}: choose one of {', '.join(SEARCHES)}")
    if scheduler not in SCHEDULERS:
        raise BenchError(f"--scheduler {scheduler}: choose one of {', '.join(SCHEDULERS)}")
    if trials < 1 and search != "grid":
        raise BenchError(f"--trials {trials}: need at least 1")
    method = METHODS.canonical(request.method)
    storage, name, plan = _common(request, "sweep", f"{method}-{request.dataset}-{_stamp()}")
    declared = declared_options(method, plan.dataset)
    pins = parse_assignments(request.assignments)
    if resolve(declared, pins).get("val_split") == "none":
        raise BenchError("a sweep chooses on val, and val_split=none leaves no val split; sweep with "
                         "val_split=carved, then train the chosen configuration with val_split=none")
    space = default_space(METHODS.get(method).hparams)
    embedded = is_embedded(request.dataset, request.backbone)
    if embedded:
        space, _ = apply_space_file(space, embedded_sweep_space(method), declared, "embedded preset")
    if space_file:
        space, file_pins = apply_space_file(space, read_space_file(space_file), declared, f"--space {space_file}")
        pins = {**file_pins, **pins}
    space = {k: v for k, v in space.items() if k not in pins}
    if not space:
        raise BenchError(f"nothing to search: {method} declares no search space left after --set / --space")
    backbone = request.backbone
    if embedded:
        backbone, preset = applicable_preset(method, plan.dataset, pins, searched=space)
        pins = {**preset, **pins}
    base = Trial(key="", method=method, seed=request.seed, overrides=pins, searched=tuple(sorted(space)),
                 backbone=backbone)
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
    from bench.runner import declared_options

    if seeds < 1:
        raise BenchError(f"--seeds {seeds}: need at least 1")
    method = METHODS.canonical(request.method)
    registered = [name for name, cls in METHODS.items() if cls.variant_of == method]
    chosen = [method, *registered] if variants is None else [METHODS.canonical(v) for v in variants]
    strangers = [v for v in chosen if v != method and v not in registered]
    if strangers:
        raise BenchError(f"--variants: {', '.join(strangers)} {'is' if len(strangers) == 1 else 'are'} not a "
                         f"variant of {method}; its variants: {', '.join(registered) or 'none'}")
    storage, name, plan = _common(request, "ablation", f"ablate-{method}-{request.dataset}-{_stamp()}")
    plan.tags = {"base_method": method}
    pins = parse_assignments(request.assignments)
    for variant in chosen:  # refuses unknown keys and ill-typed values before anything starts
        resolve(declared_options(variant, plan.dataset), pins)
    trials = []
    for variant in chosen:
        backbone, overrides = request.backbone, dict(pins)
        if is_embedded(request.dataset, request.backbone):
            backbone, preset = applicable_preset(variant, plan.dataset, pins)
            overrides = {**preset, **pins}
        for seed in range(request.seed, request.seed + seeds):
            trials.append(Trial(key=f"{variant}-s{seed}", method=variant, seed=seed, overrides=overrides,
                                backbone=backbone))
    base = Trial(key="", method=method, seed=request.seed, overrides=pins, backbone=request.backbone)
    return Sweep(name=name, storage=str(storage), plan=plan, base=base, search="fixed", trials=trials,
                 num_trials=len(trials), metric=request.metric, executor=request.executor,
                 max_failures=request.max_failures, gpus_per_trial=request.gpus_per_trial, address=request.address)


def load_for_resume(name: str | None, storage: str | None, out: str | None) -> Sweep:
    from bench.sweep import SWEEP_FILE

    if not name:
        raise BenchError("--resume needs the sweep's --name (see the folders under <results>/sweeps)")
    _, root = results_and_sweeps_roots(out, storage)
    folder = root / name
    if not (folder / SWEEP_FILE).exists():
        raise BenchError(f"no sweep {name!r} in {root} (no {SWEEP_FILE}); check --name and --storage")
    return Sweep.load(folder)


def execute_sweep(sweep: Sweep, console: Console, resume: bool = False) -> None:
    from bench.executors import already_done, run_local, run_ray
    from bench.sweep_progress import SweepProgress

    if not resume:
        sweep.folder.mkdir(parents=True, exist_ok=True)
        sweep.save()
    what = (f"{sweep.num_trials} trials, {sweep.search} search" + (f" over {describe(sweep.space)}" if sweep.space
                                                                    else "")
            + (f", ASHA (grace {sweep.grace_period}, η {sweep.reduction_factor})" if sweep.scheduler == "asha"
               else ""))
    console.print(f"{'resuming' if resume else 'starting'} {sweep.plan.kind} {sweep.name}: {what}; "
                  f"{sweep.executor} executor; records in {sweep.plan.out}/records", highlight=False, markup=False)
    with SweepProgress(console, sweep.num_trials, sweep.metric) as progress:
        if resume:
            already_done(sweep, progress)
        if sweep.executor == "local":
            run_local(sweep, progress)
        else:
            run_ray(sweep, progress, resume)


def sweep_summary(sweep: Sweep, console: Console) -> None:
    records = sweep.records()
    stopped = sum(1 for r in records if r.get("stopped_early"))
    console.print(f"{sweep.name}: {len(records)} of {sweep.num_trials} trials recorded"
                  + (f" ({stopped} stopped early by ASHA)" if stopped else ""), highlight=False, markup=False)
    best = best_record(records, sweep.metric)
    if best is None:
        raise BenchError(f"sweep {sweep.name}: no trial finished with a defined {sweep.metric}; see the run logs "
                         f"under {sweep.plan.out}/runs/{sweep.name}-*")
    table = Table(title=f"best trial: {best['tags'].get('trial', best['run_id'])}",
                  caption=f"chosen on {sweep.metric} (validation); test is shown, never used to select")
    table.add_column("")
    table.add_column("value", justify="right")
    for name in sorted(sweep.space):
        table.add_row(Text(name), Text(_value(best["hparams"].get(name))))
    table.add_row(sweep.metric, _num(best["val"].get(sweep.metric.removeprefix("val_"))), style="bold")
    table.add_row("test overall", _num(best["test"]["overall"]), style="dim")
    console.print(table)
    preset = embedded_preset(best["method"])[1] if sweep.embedded else {}
    console.print(f"re-run it: {rerun_command(best, sweep, preset)}", highlight=False, soft_wrap=True, markup=False)


def ablation_summary(sweep: Sweep, console: Console) -> None:
    import numpy as np

    records = sweep.records()
    table = Table(title=f"{sweep.name}: {len(records)} of {sweep.num_trials} runs (mean ± std over seeds)")
    for column in ("variant", "seeds", "val overall", "test overall", "many", "medium", "few"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    variants = list(dict.fromkeys(t.method for t in sweep.trials))
    for variant in variants:
        runs = [r for r in records if r["method"] == variant]
        cells = []
        for split, metric in (("val", "overall"), ("test", "overall"), ("test", "many"), ("test", "medium"),
                              ("test", "few")):
            values = [r[split][metric] for r in runs if r[split].get(metric) is not None]
            cells.append("–" if not values else f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"
                         if len(values) > 1 else f"{values[0]:.2f}")
        table.add_row(variant, str(len(runs)), *cells)
    console.print(table)


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _num(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"

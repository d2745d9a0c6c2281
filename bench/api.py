"""The Python API: `run`, `sweep`, `benchmark` and `report`, what the `bench` commands of those names do, as plain
functions (the commands are a thin layer over them). Settings are Python values (`settings={"epochs": 2}`, as
`--set epochs=2`); bad input raises `bench.errors.BenchError` (`UsageError` for a wrong request) with the one line
the command would print (naming options as the keywords here do: cpus_per_trial where the command says
--cpus-per-trial). Importing this module is light: torch loads when a run starts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.embedded import EMBEDDED_DATASET
from bench.hparams import as_override
from bench.run_spec import RunSpec
from bench.selection import DEFAULT_METRIC
from bench.sweeps.execution import Execution

if TYPE_CHECKING:
    from rich.console import Console

    from bench.benchmark import BenchmarkResult
    from bench.callbacks import Callback
    from bench.report import ReportResult, report_folder
    from bench.runner import RunResult
    from bench.sweeps.sweep import Sweep

__all__ = ["BenchmarkResult", "ReportResult", "SweepResult", "benchmark", "report", "report_folder", "run", "sweep"]
DEFAULT_METHOD = "lpt"  # of `run` and `sweep` (and of `bench run`, `bench sweep`)
LATER = {"ReportResult": "bench.report", "report_folder": "bench.report", "BenchmarkResult": "bench.benchmark"}


def __getattr__(name: str):
    """The names that live in the report and benchmark modules (LATER), imported when first asked for, so that
    importing this module stays light."""
    if name in LATER:
        import importlib

        return getattr(importlib.import_module(LATER[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class SweepResult:
    sweep: Sweep
    records: list[dict]  # the trials' records
    best: dict | None  # the record chosen on val by the sweep's metric (None: no trial finished)
    rerun: str | None  # the `bench run` command that repeats the best trial


def _formats(formats: str | Sequence[str]) -> list[str]:
    from bench.report import parse_formats

    return parse_formats(formats if isinstance(formats, str) else ",".join(formats))


def _overrides(settings: Mapping[str, Any] | None) -> dict[str, str]:
    return {key: as_override(value) for key, value in (settings or {}).items()}


def run(method: str = DEFAULT_METHOD, dataset: str = EMBEDDED_DATASET, *, backbone: str | None = None, weights: str | None = None,
        data_root: str | None = None, settings: Mapping[str, Any] | None = None, seed: int = 0,
        out: str | None = None, device: str = "auto", allow_download: bool = False, random_init: bool = False,
        trackers: Sequence[str] = (), callbacks: Sequence[Callback] = (), console: Console | None = None
        ) -> RunResult:
    """Train and evaluate one method on one dataset, as `bench run` (with no arguments, the embedded default,
    preset included). Returns the run's id, folder and record (`result.record["test"]["overall"]`)."""
    from bench.runner import execute

    spec = RunSpec(method=method, dataset=dataset, backbone=backbone, weights=weights, data_root=data_root,
                   overrides=_overrides(settings), seed=seed, out=out, device=device, allow_download=allow_download,
                   allow_random_init=random_init, trackers=list(trackers))
    return execute(spec, console, callbacks=callbacks)


def sweep(method: str = DEFAULT_METHOD, dataset: str = EMBEDDED_DATASET, *, trials: int = 8, search: str = "optuna",
          scheduler: str = "asha", metric: str = f"val_{DEFAULT_METRIC}", space: str | None = None,
          settings: Mapping[str, Any] | None = None, executor: str = "ray", name: str | None = None,
          storage: str | None = None, seed: int = 0, search_seed: int = 0, grace_period: int = 1,
          reduction_factor: int = 3, cpus_per_trial: int | None = None, gpus_per_trial: float = 0.0,
          nproc_per_trial: int = 1, address: str | None = None, max_failures: int = 2, backbone: str | None = None,
          weights: str | None = None, data_root: str | None = None, out: str | None = None, device: str = "auto",
          allow_download: bool = False, random_init: bool = False, trackers: Sequence[str] = (),
          console: Console | None = None) -> SweepResult:
    """Sweep a method's declared search space, as `bench sweep` (`space`: a YAML/TOML file that changes it;
    `settings`: values pinned in every trial; `executor="local"` runs the trials in this process, without Ray).
    Every trial is an ordinary run; the best is chosen on val."""
    from rich.console import Console

    from bench.sweeps.define import Request, define_sweep, execute_sweep
    from bench.sweeps.sweep import best_record, rerun_command

    shared = RunSpec(method=method, dataset=dataset, backbone=backbone, weights=weights, data_root=data_root,
                     overrides=_overrides(settings), seed=seed, out=out, device=device, allow_download=allow_download,
                     allow_random_init=random_init, trackers=list(trackers))
    execution = Execution(executor=executor, address=address, max_failures=max_failures,
                          cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, nproc_per_trial=nproc_per_trial)
    request = Request(shared, execution, name=name, storage=storage, metric=metric)
    definition = define_sweep(request, trials, search, scheduler, space, search_seed, grace_period, reduction_factor)
    execute_sweep(definition, console or Console())
    records = definition.records()
    best = best_record(records, definition.metric)
    return SweepResult(definition, records, best, rerun_command(best, definition) if best else None)


def report(results: str | Path | None = None, *, dataset: str | None = None, protocol: str | None = None,
           formats: str | Sequence[str] = "md,html", report_dir: str | Path | None = None,
           published: str = "store") -> ReportResult:
    """Leaderboards, ablation tables, sweep summaries and plots from a results store's records, as `bench report`:
    written to `report_dir`, by default <results>/reports/all/ (<results>/reports/<protocol>/ with `protocol`,
    -<dataset> added with `dataset`). Raises `bench.report.NothingToReport` (writing nothing) when there are no
    records to report on."""
    from bench.report import write_report
    from bench.run_folder import default_results_root

    chosen_formats = _formats(formats)
    root = Path(results).expanduser().resolve() if results is not None else default_results_root()
    return write_report(root, dataset=dataset, protocol=protocol, formats=chosen_formats, published=published,
                        report_dir=Path(report_dir).expanduser().resolve() if report_dir else None)


def benchmark(protocol: str, *, data_root: str | None = None, weights: str | None = None,
              allow_download: bool = False, executor: str = "local", resume: bool = False,
              cpus_per_trial: int | None = None, gpus_per_trial: float = 0.0, nproc_per_trial: int = 1,
              address: str | None = None, max_failures: int = 2, out: str | None = None, device: str = "auto",
              formats: str | Sequence[str] = "md,html", trackers: Sequence[str] = (),
              console: Console | None = None) -> BenchmarkResult:
    """Run (or with `resume`, continue) a benchmark protocol, a shipped one by name or a .toml file, as
    `bench benchmark`; then its report, in <results>/reports/<protocol>/."""
    from rich.console import Console

    from bench.benchmark import BenchmarkOptions, benchmark_and_report
    from bench.protocols import load_protocol

    chosen_formats = _formats(formats)
    execution = Execution(executor=executor, address=address, max_failures=max_failures,
                          cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, nproc_per_trial=nproc_per_trial)
    options = BenchmarkOptions(data_root=data_root, weights=weights, allow_download=allow_download, out=out,
                               device=device, execution=execution, resume=resume, trackers=list(trackers))
    return benchmark_and_report(load_protocol(protocol), options, chosen_formats, console or Console())

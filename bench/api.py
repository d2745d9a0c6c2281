"""The Python API: `run`, `sweep`, `benchmark` and `report`, what the `bench` commands of those names do, as plain
functions (the commands are a thin layer over them). Settings are Python values (`settings={"epochs": 2}`, as
`--set epochs=2`); bad input raises `bench.errors.BenchError` (`UsageError` for a wrong request) with the one line
the command would print. Importing this module is light: torch loads when a run starts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.hparams import as_override
from bench.run_spec import RunSpec
from bench.selection import DEFAULT_METRIC

if TYPE_CHECKING:
    from rich.console import Console

    from bench.callbacks import Callback
    from bench.protocols import Protocol
    from bench.report import Report
    from bench.report.document import Block
    from bench.runner import RunResult
    from bench.sweeps.sweep import Sweep

__all__ = ["BenchmarkResult", "ReportResult", "SweepResult", "benchmark", "report", "report_folder", "run", "sweep"]

ALL_RUNS = "all"  # the report folder of every run in the store: <results>/reports/all/


@dataclass
class SweepResult:
    sweep: Sweep
    records: list[dict]  # the trials' records
    best: dict | None  # the record chosen on val by the sweep's metric (None: no trial finished)
    rerun: str | None  # the `bench run` command that repeats the best trial


@dataclass
class ReportResult:
    folder: Path
    written: list[Path]
    records: list[dict]  # the records reported on
    report: Report  # the tables (leaderboards, ablations, sweeps) per dataset
    blocks: list[Block]  # the document they were rendered from (`bench.report.console_tables(blocks)` prints it)


@dataclass
class BenchmarkResult:
    protocol: Protocol
    planned: int  # at most this many runs (methods × (seeds + searched configurations beyond the first))
    report: ReportResult  # of the protocol's runs, in <results>/reports/<protocol>/


def _formats(formats: str | Sequence[str]) -> list[str]:
    from bench.report import parse_formats

    return parse_formats(formats if isinstance(formats, str) else ",".join(formats))


def _overrides(settings: Mapping[str, Any] | None) -> dict[str, str]:
    return {key: as_override(value) for key, value in (settings or {}).items()}


def run(method: str = "lpt", dataset: str = "digits_lt", *, backbone: str | None = None, weights: str | None = None,
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


def sweep(method: str = "lpt", dataset: str = "digits_lt", *, trials: int = 8, search: str = "optuna",
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
    from bench.trackers import check_trackers

    check_trackers(list(trackers))
    shared = RunSpec(method=method, dataset=dataset, backbone=backbone, weights=weights, data_root=data_root,
                     overrides=_overrides(settings), seed=seed, out=out, device=device, allow_download=allow_download,
                     allow_random_init=random_init, trackers=list(trackers))
    request = Request(shared, storage=storage, name=name, executor=executor, metric=metric, max_failures=max_failures,
                      cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, address=address,
                      nproc_per_trial=nproc_per_trial)
    definition = define_sweep(request, trials, search, scheduler, space, search_seed, grace_period, reduction_factor)
    execute_sweep(definition, console or Console())
    records = definition.records()
    best = best_record(records, definition.metric)
    return SweepResult(definition, records, best, rerun_command(best, definition) if best else None)


def report_folder(root: Path, protocol: str | None = None, dataset: str | None = None) -> Path:
    """Where a report goes: <results>/reports/<protocol>/ for one protocol's runs (where `bench benchmark` puts
    its report), <results>/reports/all/ for the whole store; one dataset's adds -<dataset>."""
    return root / "reports" / "-".join(part for part in (protocol or ALL_RUNS, dataset) if part)


def report(results: str | Path | None = None, *, dataset: str | None = None, protocol: str | None = None,
           formats: str | Sequence[str] = "md,html", report_dir: str | Path | None = None,
           published: str = "store") -> ReportResult:
    """Leaderboards, ablation tables, sweep summaries and plots from a results store's records, as `bench report`:
    written to `report_dir`, by default <results>/reports/all/ (<results>/reports/<protocol>/ with `protocol`,
    -<dataset> added with `dataset`). Raises `bench.report.NothingToReport` (writing nothing) when there are no
    records to report on."""
    from bench import report as reports
    from bench.errors import UsageError
    from bench.run_folder import default_results_root
    from bench.store import ResultsStore
    chosen_formats = _formats(formats)
    if published not in reports.PUBLISHED_CHOICES:
        raise UsageError(f"published={published!r}: choose one of {', '.join(reports.PUBLISHED_CHOICES)}")
    root = Path(results).expanduser().resolve() if results is not None else default_results_root()
    store = ResultsStore(root)
    records = reports.load_records(store, dataset)
    if protocol is not None:
        records = [r for r in records if (reports.protocol_of(r) or "").split(" ")[0] == protocol]
        if not records:
            raise reports.NothingToReport(f"no records of protocol {protocol} in {root}/records "
                                          "(run `bench benchmark` first)")
    canonical = records[0]["dataset"] if dataset is not None else None
    folder = Path(report_dir).expanduser().resolve() if report_dir else report_folder(root, protocol, canonical)
    source = root.relative_to(Path.cwd()) if root.is_relative_to(Path.cwd()) else root
    return _write_report(records, store, str(source), chosen_formats, published, folder)


def _write_report(records: list[dict], store, source: str, formats: list[str], published: str,
                  folder: Path) -> ReportResult:
    from bench import report as reports

    built = reports.build_report(records, reports.method_order(records), source, published, predictions=store.predictions)
    files, blocks = reports.render_report(built, formats, store.root)
    return ReportResult(folder, reports.write_files(folder, files), records, built, blocks)


def benchmark(protocol: str, *, data_root: str | None = None, weights: str | None = None,
              allow_download: bool = False, executor: str = "local", resume: bool = False,
              cpus_per_trial: int | None = None, gpus_per_trial: float = 0.0, nproc_per_trial: int = 1,
              address: str | None = None, max_failures: int = 2, out: str | None = None, device: str = "auto",
              formats: str | Sequence[str] = "md,html", trackers: Sequence[str] = (),
              console: Console | None = None) -> BenchmarkResult:
    """Run (or with `resume`, continue) a benchmark protocol, a shipped one by name or a .toml file, as
    `bench benchmark`; then its report, in <results>/reports/<protocol>/."""
    from rich.console import Console

    from bench import report as reports
    from bench.benchmark import BenchmarkOptions, run_benchmark
    from bench.errors import BenchError
    from bench.protocols import load_protocol
    from bench.store import ResultsStore
    chosen_formats = _formats(formats)
    definition = load_protocol(protocol)
    options = BenchmarkOptions(data_root=data_root, weights=weights, allow_download=allow_download, out=out,
                               executor=executor, resume=resume, device=device, cpus_per_trial=cpus_per_trial,
                               gpus_per_trial=gpus_per_trial, address=address, max_failures=max_failures,
                               nproc_per_trial=nproc_per_trial, trackers=list(trackers))
    root = run_benchmark(definition, options, console or Console())
    tag = f"{definition.name} {definition.hash}"
    store = ResultsStore(root)
    records = [r for r in reports.load_records(store) if reports.protocol_of(r) == tag]
    if not records:
        raise BenchError(f"benchmark {definition.name}: no run was recorded; see the run logs under {root}/runs")
    planned = len(definition.methods) * (len(definition.seeds) + max(0, definition.trials - 1))
    written = _write_report(records, store, str(root), chosen_formats, "none", report_folder(root, definition.name))
    return BenchmarkResult(definition, planned, written)

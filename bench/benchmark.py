"""`bench benchmark PROTOCOL`: the protocol's methods × configurations × seeds, run through the sweep executors
(local or Ray), then its report.

Two stages, each an ordinary sweep with fixed trials and deterministic run ids (so a second invocation re-runs
nothing recorded and continues what was interrupted):
- search (only when the protocol searches): every method's configurations at the first seed, the first one its
  defaults, the rest drawn from its declared space; the best on the protocol's val metric is chosen (healthy
  runs first, never on test);
- seeds: the chosen configuration (or the defaults) at every remaining seed.
Stage folders are named after the protocol and its hash: a changed protocol starts afresh and never mixes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from bench.errors import BenchError, UsageError
from bench.flags import command_line
from bench.hparams import as_override
from bench.protocols import Protocol
from bench.run_spec import RunSpec
from bench.sweeps.execution import Execution
from bench.sweeps.sweep import Sweep, best_record
from bench.sweeps.trial import Trial

if TYPE_CHECKING:
    from bench.report import ReportResult

IDENTITY = ("loss", "sampler")  # what a method is (la is fine-tuning with the LA loss): never searched


@dataclass
class BenchmarkOptions:
    """How a protocol is run: where its data, weights and results are, on which device, how its trials run (the
    local executor unless told), whether it continues a started benchmark, and the experiment trackers."""

    data_root: str | None = None
    weights: str | None = None  # a local file of the protocol's backbone weights (its pretrained tag's); a method
    # on its own backbone (the protocol's method_backbones) takes that one's by its tag
    allow_download: bool = False
    out: str | None = None
    device: str = "auto"
    execution: Execution = field(default_factory=lambda: Execution(executor="local"))
    resume: bool = False
    trackers: list[str] = field(default_factory=list)

    def continue_command(self, protocol: str) -> str:
        """The command that continues the benchmark of `protocol` (as named on the command line) as started."""
        execution = self.execution
        return command_line(
            "benchmark", protocol, resume=True, allow_download=self.allow_download,
            executor=execution.executor if execution.executor != "local" else None, data_root=self.data_root,
            weights=self.weights, out=self.out, address=execution.address, cpus_per_trial=execution.cpus_per_trial,
            gpus_per_trial=execution.gpus_per_trial or None,
            nproc_per_trial=execution.nproc_per_trial if execution.nproc_per_trial > 1 else None,
            tracker=self.trackers)


@dataclass
class BenchmarkResult:
    protocol: Protocol
    planned: int  # at most this many runs (methods × (seeds + searched configurations beyond the first))
    report: ReportResult  # of the protocol's runs, in <results>/reports/<protocol>/


def stage_name(protocol: Protocol, stage: str) -> str:
    return f"{protocol.name}-{protocol.hash[:8]}-{stage}"


def protocol_tags(protocol: Protocol, stage: str) -> dict[str, str]:
    return {"protocol": protocol.name, "protocol_hash": protocol.hash, "stage": stage, "selection": protocol.selection}


def _stage(protocol: Protocol, stage: str, trials: list[Trial], options: BenchmarkOptions, out: Path) -> Sweep:
    from bench.sweeps.define import Request, absolute, build_sweep

    run = RunSpec(method="", dataset=protocol.dataset, backbone=protocol.backbone,
                  weights=absolute(options.weights) or protocol.weights_path, data_root=absolute(options.data_root),
                  out=str(out), device=options.device, allow_download=options.allow_download,
                  allow_random_init=protocol.random_init, trackers=options.trackers,
                  tags=protocol_tags(protocol, stage))
    request = Request(run, options.execution, stage_name(protocol, stage), str(out / "benchmarks"),
                      protocol.selection)
    return build_sweep("benchmark", request, None, trials, search="fixed")


def search_trials(protocol: Protocol) -> list[Trial]:
    """Per method `trials` configurations at the first seed: its defaults, then random draws from its declared
    space (DomainBed-style streams seeded by the protocol's search seed), restricted to the protocol's `searched`
    hyperparameters when it names them; neither the protocol's pins nor what defines the method (its loss, its
    sampler) are searched."""
    from bench.methods.base import METHODS
    from bench.sweeps.space import default_space, random_configs

    seed, trials = protocol.seeds[0], []
    for method in protocol.methods:
        pins = protocol.overrides(method)
        space = {k: v for k, v in default_space(METHODS.get(method).hparams).items()
                 if k not in pins and k not in IDENTITY and (not protocol.searched or k in protocol.searched)}
        draws = random_configs(space, protocol.trials - 1, protocol.search_seed) if space else []
        for index, values in enumerate([{}, *draws]):
            overrides = {**pins, **{k: as_override(v) for k, v in values.items()}}
            trials.append(Trial(key=f"{method}-c{index:02d}-s{seed}", method=method, seed=seed, overrides=overrides,
                                searched=tuple(sorted(space)), backbone=protocol.backbone_for(method)))
    return trials


def chosen_configurations(protocol: Protocol, search: Sweep | None, console: Console) -> dict[str, dict[str, str]]:
    """Per method the --set values of its configuration for the remaining seeds."""
    if search is None:
        return {method: protocol.overrides(method) for method in protocol.methods}
    by_key = {trial.key: trial for trial in search.trials}
    records = search.records()
    chosen = {}
    for method in protocol.methods:
        best = best_record([r for r in records if r["method"] == method], protocol.selection)
        if best is None:
            console.print(f"[yellow]warning:[/] {method}: no search run finished with a {protocol.selection}; "
                          "it gets no further seeds (see its run logs)")
            continue
        chosen[method] = by_key[best["tags"]["trial"]].overrides
    return chosen


def preflight(protocol: Protocol, options: BenchmarkOptions) -> None:
    """What would make every run fail, said once before any starts: the weights, the dataset."""
    from bench.datasets.base import DATASETS, load_dataset
    from bench.hparams import resolve
    from bench.trackers import check_trackers

    check_trackers(options.trackers)
    if options.weights:
        if not Path(options.weights).expanduser().is_file():
            raise BenchError(f"--weights {options.weights}: file not found; give the path of a local copy of "
                             f"{protocol.backbone}'s weights (.safetensors or a state dict)")
    elif protocol.weights:
        if not Path(protocol.weights_path).is_file():
            raise BenchError(f"protocol {protocol.name}: weights file {protocol.weights_path} not found (weights = "
                             f"{protocol.weights!r} in {protocol.path}); put the file there or pass --weights FILE")
    else:
        _check_tower(protocol, protocol.backbone, options, "")
    for method, backbone in protocol.method_backbones.items():  # --weights is the protocol backbone's file
        _check_tower(protocol, backbone, options, method)
    spec = DATASETS.get(protocol.dataset)
    load_dataset(protocol.dataset, options.data_root, resolve(spec.options, {
        k: v for k, v in protocol.dataset_options.items() if k in spec.options}))


def _check_tower(protocol: Protocol, backbone: str, options: BenchmarkOptions, method: str) -> None:
    """`backbone`'s weights are there by its pretrained tag: the protocol's own (method ""), or the one a method
    runs on (`method_backbones`), which --weights never supplies."""
    from bench.backbones import WEIGHT_FIXES, check_weights_available

    fixes = WEIGHT_FIXES if not method else ("populate the Hugging Face cache (HF_HOME) on a connected machine, "
                                             f"pass --allow-download, or leave {method} out of a copy of the protocol")
    try:
        check_weights_available(backbone, allow_download=options.allow_download,
                                allow_random_init=protocol.random_init,
                                random_init_fix="random_init = true in a protocol of your own", fixes=fixes)
    except BenchError as error:
        own = f"{method} runs on its own backbone (method_backbones): " if method else ""
        raise BenchError(f"protocol {protocol.name}: {own}{error}") from None


def run_benchmark(protocol: Protocol, options: BenchmarkOptions, console: Console) -> Path:
    """Run (or continue) every stage; returns the results root the records went to."""
    from bench.sweeps.define import execute_sweep, results_and_sweeps_roots

    options.execution.checked()
    out, _ = results_and_sweeps_roots(options.out, None)
    preflight(protocol, options)
    console.print(f"benchmark {protocol.describe()}", highlight=False, markup=False)
    if protocol.source:
        console.print(f"source: {protocol.source}", highlight=False, markup=False)
    search = None
    if protocol.trials:
        search = _prepared(_stage(protocol, "search", search_trials(protocol), options, out), options)
        execute_sweep(search, console, resume=_started(search))
    configurations = chosen_configurations(protocol, search, console)
    seeds = protocol.seeds[1:] if search is not None else protocol.seeds
    trials = [Trial(key=f"{method}-s{seed}", method=method, seed=seed, overrides=overrides,
                    backbone=protocol.backbone_for(method))
              for seed in seeds for method, overrides in configurations.items()]  # seed-major: a partial run
    # of a long protocol already has every method at its first seeds
    if trials:
        final = _prepared(_stage(protocol, "seeds", trials, options, out), options)
        execute_sweep(final, console, resume=_started(final))
    return out


def benchmark_and_report(protocol: Protocol, options: BenchmarkOptions, formats: list[str],
                         console: Console) -> BenchmarkResult:
    """Run (or continue) the protocol's stages, then the report of its runs in <results>/reports/<protocol>/."""
    from bench.report import NothingToReport, report_folder, write_report

    root = run_benchmark(protocol, options, console)
    try:
        made = write_report(root, protocol=f"{protocol.name} {protocol.hash}", formats=formats, published="none",
                            report_dir=report_folder(root, protocol.name), source=str(root))
    except NothingToReport:
        raise BenchError(f"benchmark {protocol.name}: no run was recorded; see the run logs under {root}/runs") \
            from None
    planned = len(protocol.methods) * (len(protocol.seeds) + max(0, protocol.trials - 1))
    return BenchmarkResult(protocol, planned, made)


def _started(sweep: Sweep) -> bool:
    from bench.sweeps.sweep import SWEEP_FILE

    return (sweep.folder / SWEEP_FILE).exists()


def _prepared(sweep: Sweep, options: BenchmarkOptions) -> Sweep:
    """A stage about to run: a new one as defined; one already started only with --resume, and then with its
    trial list brought up to date (seeds or methods added to the protocol since)."""
    if not _started(sweep):
        return sweep
    if not options.resume:
        raise UsageError(f"benchmark stage {sweep.name} already exists in {Path(sweep.storage)}; add --resume to "
                         "continue it (recorded runs are not run again)")
    saved = Sweep.load(sweep.folder)
    known = {trial.key for trial in saved.trials}
    added = [trial for trial in sweep.trials if trial.key not in known]
    if added:
        saved.trials = [*saved.trials, *added]
        saved.num_trials = len(saved.trials)
        saved.save()
    return saved

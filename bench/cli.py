"""`bench`: run, eval, sweep, ablate, benchmark, list, runs, show, report."""

from __future__ import annotations

import functools
import inspect
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from bench.api import DEFAULT_METHOD
from bench.console_tables import hparams_tables, metrics_table, registry_table, settings_table
from bench.embedded import EMBEDDED_DATASET
from bench.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, BenchError, UsageError
from bench.flags import OptionError
from bench.report import PUBLISHED_CHOICES
from bench.selection import DEFAULT_METRIC, METRICS
from bench.sweeps.execution import EXECUTORS, Execution
from bench.sweeps.sweep import SCHEDULERS, SEARCHES

app = typer.Typer(add_completion=True, no_args_is_help=False, pretty_exceptions_show_locals=False,
                  help="Long-tailed classification benchmark harness.")
console = Console()
err_console = Console(stderr=True)


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A typed choice: help lists the values, and any other value is a usage error (exit 2)."""
    return Enum(name, {value: value for value in values}, type=str)


def _names(kind: str):
    """Shell completion of registered names (`bench --install-completion` sets it up)."""

    def complete(incomplete: str) -> list[str]:
        import bench.datasets
        import bench.methods  # noqa: F401  (registers the names)
        from bench.backbones import BACKBONES
        from bench.datasets.base import DATASETS
        from bench.methods.base import METHODS

        registry = {"method": METHODS, "dataset": DATASETS, "backbone": BACKBONES}[kind]
        names = [*registry.names(), *(alias for name in registry.names() for alias in registry.aliases_of(name))]
        return [name for name in names if name.startswith(incomplete)]

    return complete


Executor = _choices("Executor", EXECUTORS)
Search = _choices("Search", SEARCHES)
Scheduler = _choices("Scheduler", SCHEDULERS)
Published = _choices("Published", PUBLISHED_CHOICES)
Tracker = _choices("Tracker", ("tensorboard", "mlflow"))
ListWhat = _choices("ListWhat", ("all", "methods", "datasets", "backbones", "protocols", "hparams"))

# Options several commands share, each declared once.
Trackers = Annotated[list[Tracker], typer.Option(
    "--tracker", help="log to an experiment tracker (repeatable): tensorboard (event files in each run folder) or "
    "mlflow (a local store, <results>/mlflow.db)")]
DataRoot = Annotated[str | None, typer.Option("--data-root", help="dataset folder (else $BENCH_DATA_ROOT/<dir>)")]
ResultsOut = Annotated[str | None, typer.Option("--out", help="results root (default ./results or $BENCH_RESULTS)")]
AllowDownload = Annotated[bool, typer.Option("--allow-download", help="let timm/open_clip download weights")]
# The run settings of `bench run`, and those every trial of `bench sweep` and `bench ablate` shares:
# {parameter: (type and option, default)}; the commands get them as one dict, `settings`.
RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "dataset": (Annotated[str, typer.Option("--dataset", "-d", help="dataset name (bench list datasets)",
                                            autocompletion=_names("dataset"))], EMBEDDED_DATASET),
    "backbone": (Annotated[str | None, typer.Option(
        "--backbone", "-b", autocompletion=_names("backbone"), help="backbone name (bench list backbones); "
        "default: vit_micro on the embedded dataset, elsewhere the method's own (CLIP ViT-B/16 for lptpp_vl) or "
        "the in21k ViT-B/16")], None),
    "weights": (Annotated[str | None, typer.Option("--weights", help="backbone weights file (.safetensors or "
                                                   "state dict)")], None),
    "data_root": (DataRoot, None),
    "out": (ResultsOut, None),
    "device": (Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")], "auto"),
    "allow_download": (AllowDownload, False),
    "random_init": (Annotated[bool, typer.Option("--random-init", help="allow a randomly initialised backbone")],
                    False),
    "trackers": (Trackers, []),
}
SPEC_FIELDS = {"random_init": "allow_random_init"}  # the run spec's name of an option, where it has another


def _execution_options(executor: Executor) -> dict[str, tuple[Any, Any]]:
    """The options that make an `Execution` (how the trials of `bench sweep`, `ablate`, `benchmark` run), with
    the command's default executor; as RUN_OPTIONS."""
    return {
        "executor": (Annotated[Executor, typer.Option("--executor", help="ray (Ray Tune) or local (in-process, "
                                                      "no Ray)")], executor),
        "address": (Annotated[str | None, typer.Option("--address", help="join a Ray cluster: auto | HOST:PORT")],
                    None),
        "cpus_per_trial": (Annotated[int | None, typer.Option("--cpus-per-trial", help="CPUs (torch threads) per "
                                                              "trial; default 1 on Ray, all locally")], None),
        "gpus_per_trial": (Annotated[float, typer.Option("--gpus-per-trial", help="GPUs per trial (fractions "
                                                         "share a card)")], 0.0),
        "nproc_per_trial": (Annotated[int, typer.Option(
            "--nproc-per-trial", help="processes per trial: above 1 each trial trains data-parallel (Ray Train; "
            "one GPU per process with --gpus-per-trial equal to it, gloo CPU processes with 0); --cpus-per-trial "
            "is shared among them")], 1),
        "max_failures": (Annotated[int, typer.Option("--max-failures", help="retries of a crashing trial")], 2),
    }


def _execution(values: dict[str, Any]) -> Execution:
    return Execution(**{**values, "executor": values["executor"].value})


def _run_settings(values: dict[str, Any]) -> dict[str, Any]:
    return {**values, "trackers": [tracker.value for tracker in values["trackers"]]}


def _grouped(name: str, options: dict[str, tuple[Any, Any]], build: Callable[[dict], Any] = _run_settings):
    """Adds a group of `options` to a command's parameters (after its own); the command gets them as its one
    parameter `name`, made by `build` from their values."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        parameters = [*(p for p in signature.parameters.values() if p.name != name),
                      *(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=default)
                        for key, (kind, default) in options.items())]

        @functools.wraps(command)
        def with_group(*args, **kwargs):
            values = {key: kwargs.pop(key) for key in options}
            return command(*args, **kwargs, **{name: build(values)})

        with_group.__signature__ = signature.replace(parameters=parameters)
        with_group.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_group

    return decorate


def _version(shown: bool) -> None:
    if shown:
        from bench import __version__

        _say(f"bench {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="print the installed version and exit")) -> None:
    """Long-tailed classification benchmark harness."""


RESUME_KEEPS = {"run": {"resume", "out", "nproc", "nnodes", "node_rank", "master_addr", "master_port"},
                "sweep": {"resume", "name", "storage", "out"}, "ablate": {"resume", "name", "storage", "out"}}


def _on_line(ctx: typer.Context) -> set[str]:
    """The command's options given on its command line (not defaults)."""
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}


def _refuse_ignored_with_resume(ctx: typer.Context, command: str) -> None:
    """--resume continues what was configured: an option it would ignore is refused, not dropped silently."""
    given = _on_line(ctx)
    ignored = [param.opts[0] for param in ctx.command.params
               if param.name not in RESUME_KEEPS[command] and param.name in given]
    if ignored:
        raise UsageError(f"--resume continues the {command} as it was started, so {', '.join(ignored)} would be "
                         f"ignored; drop {'it' if len(ignored) == 1 else 'them'} (only "
                         f"{', '.join('--' + k for k in sorted(RESUME_KEEPS[command]))} go with --resume)")


def _fail(error: BenchError) -> None:
    """One line (options named as flags), then the error's exit code: EXIT_USAGE for a wrong command, EXIT_RUNTIME
    otherwise."""
    line = error.as_flags() if isinstance(error, OptionError) else str(error)
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(error.exit_code)


def _say(text: str, to: Console = console) -> None:
    """Plain text (paths, names, values) printed as it is: no markup, no highlighting, no wrapping."""
    to.print(text, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cluster's pre-emption) raises KeyboardInterrupt, as Ctrl-C does, while the block runs."""

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextmanager
def _interruptible_run() -> Iterator[None]:
    """Ctrl-C or SIGTERM during a run: exit 130 with the command that continues it. BenchError: one line, exit 1
    (2 for a usage error)."""
    from bench.errors import RunInterrupted

    try:
        with _sigterm_as_interrupt():
            yield
    except BenchError as error:
        _fail(error)
    except RunInterrupted as interrupted:
        _say(str(interrupted), err_console)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        _say("interrupted before the run started; nothing was written", err_console)
        raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command()
@_grouped("settings", RUN_OPTIONS)
def run(
    ctx: typer.Context,
    method: str = typer.Option(DEFAULT_METHOD, "--method", "-m", help="method name (bench list methods)",
        autocompletion=_names("method")),
    assignments: list[str] = typer.Option([], "--set", help="key=value hyperparameter or dataset option (repeatable)"),
    seed: int = typer.Option(0, "--seed"),
    resume: str | None = typer.Option(None, "--resume", help="continue an interrupted run (folder or run id)"),
    config: str | None = typer.Option(None, "--config", help="settings from a file: a run's config.json (an exact "
                                      "re-run) or a .toml/.yaml; options given here override it"),
    nproc: int = typer.Option(1, "--nproc", help="data-parallel processes on this node (one per GPU; gloo on "
                              "CPU), started by torchrun"),
    nnodes: int = typer.Option(1, "--nnodes", help="nodes of a data-parallel run (start it on each node)"),
    node_rank: int = typer.Option(0, "--node-rank", help="this node's rank, 0 .. nnodes-1"),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="host of node 0 (multi-node runs)"),
    master_port: int | None = typer.Option(None, "--master-port", help="free port on node 0 (default: any free "
                                           "port, single-node runs only)"),
    settings: dict | None = None,
) -> None:
    """Train and evaluate one method on one dataset; with no arguments, the embedded default."""
    from bench import runner
    from bench.distributed import launched, leave, world

    if (nproc > 1 or nnodes > 1) and not launched():
        _launch(resume, settings, nproc, nnodes, node_rank, master_addr, master_port)
    with _interruptible_run():
        if resume:
            _refuse_ignored_with_resume(ctx, "run")
            result = runner.resume(resume, console, settings["out"])
        else:
            result = runner.execute(_run_spec(method, assignments, seed, settings, config, _on_line(ctx)), console)
    if world().is_main:  # the other ranks of a data-parallel run print nothing
        console.print(metrics_table(result.record))
        _say(f"run folder: {result.run_dir}")
    leave()


def _launch(resume: str | None, settings: dict, nproc: int, nnodes: int, node_rank: int, master_addr: str,
            master_port: int | None) -> None:
    """Start this `bench run` data-parallel (torchrun), having refused in one line, rather than by every rank,
    what cannot run."""
    import sys

    from bench.distributed import check_launch, launch, strip_launch_flags
    from bench.run_folder import RunFolder, find_run

    with _interruptible_run():
        check_launch(nproc, nnodes, node_rank, master_port, settings["device"])
        if resume:
            RunFolder(find_run(resume, settings["out"])).check_resumable_by(nproc * nnodes)
    raise typer.Exit(launch(strip_launch_flags(sys.argv[1:]), nproc, nnodes, node_rank, master_addr, master_port))


def _run_spec(method: str, assignments: list[str], seed: int, settings: dict, config: str | None = None,
              given: set[str] = frozenset()):
    """The run spec of `bench run` (or the run settings every trial of a sweep or ablation shares) from its
    options; with --config, the file's settings where the command line (`given`) did not set them."""
    from bench.hparams import parse_assignments
    from bench.run_spec import RunSpec

    options = {"method": method, "seed": seed, **settings, "overrides": parse_assignments(assignments)}
    if config:
        from bench.run_config import load_run_config, merge_config

        options = merge_config(load_run_config(config), options, given)
    return RunSpec(**{SPEC_FIELDS.get(name, name): value for name, value in options.items()})


@app.command("eval")
def eval_(
    checkpoint: str = typer.Option(..., "--checkpoint", help="trained checkpoint, e.g. the official LPT_places.pth"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="dataset name (bench list datasets)",
        autocompletion=_names("dataset")),
    method: str = typer.Option("lpt", "--method", "-m", help="method whose checkpoint format to read",
        autocompletion=_names("method")),
    backbone: str | None = typer.Option(None, "--backbone", "-b", help="backbone name; default the in21k ViT-B/16",
        autocompletion=_names("backbone")),
    weights: str | None = typer.Option(None, "--weights", help="backbone weights, when the checkpoint lacks them"),
    data_root: DataRoot = None,
    assignments: list[str] = typer.Option([], "--set", help="key=value, e.g. shot_convention=lpt (repeatable)"),
    out: str | None = typer.Option(None, "--out", help="results root (default ./results or $BENCH_RESULTS)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
) -> None:
    """Evaluate a trained checkpoint on val and test (no training), recorded as an ordinary run."""
    from bench import runner
    from bench.hparams import parse_assignments

    with _interruptible_run():
        spec = runner.RunSpec(method=method, dataset=dataset, backbone=backbone,
                              weights=weights, data_root=data_root, overrides=parse_assignments(assignments),
                              out=out, device=device, checkpoint=checkpoint, tags={"kind": "checkpoint_eval"})
        result = runner.execute(spec, console)
    console.print(metrics_table(result.record))
    _say(f"run folder: {result.run_dir}")


def _execute_sweep(ctx: typer.Context, command: str, resume: bool, where: tuple, define, summary) -> None:
    """`bench sweep` or `bench ablate`: define it (or with --resume, load it from `where`: name, storage, out),
    run its trials (Ctrl-C: how to finish it), then its `summary`."""
    from bench.sweeps.define import execute_sweep, load_for_resume

    try:
        if resume:
            _refuse_ignored_with_resume(ctx, command)
            definition = load_for_resume(*where)
        else:
            definition = define()
        hint = f"finish it with: {definition.continue_command()}"
        try:
            execute_sweep(definition, console, resume)
        except KeyboardInterrupt:
            _say(f"interrupted; finished trials are recorded; {hint}", err_console)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        recorded = len(definition.records())
        if recorded < definition.num_trials:
            _say(f"{definition.num_trials - recorded} of {definition.num_trials} trials have no record "
                 f"(interrupted or failed); {hint}")
        summary(definition, console)
    except BenchError as error:
        _fail(error)


@app.command()
@_grouped("execution", _execution_options(Executor.ray), _execution)
@_grouped("settings", RUN_OPTIONS)
def sweep(
    ctx: typer.Context,
    method: str = typer.Option(DEFAULT_METHOD, "--method", "-m", help="method whose declared search space is "
                               "swept", autocompletion=_names("method")),
    trials: int = typer.Option(8, "--trials", "-n", help="number of trials (grid: all combinations)"),
    metric: str = typer.Option(f"val_{DEFAULT_METRIC}", "--metric", help="validation metric every choice "
                               "maximises (the trials' epochs too; ties: lower class-balanced val NLL): "
                               + " | ".join(METRICS)),
    search: Search = typer.Option(Search.optuna, "--search", help="optuna (TPE), random or grid"),
    scheduler: Scheduler = typer.Option(Scheduler.asha, "--scheduler", help="asha (stop poor trials early) or none"),
    space: str | None = typer.Option(None, "--space", help="YAML or TOML file that changes the search space"),
    assignments: list[str] = typer.Option([], "--set", help="key=value pinned in every trial (repeatable)"),
    storage: str | None = typer.Option(None, "--storage", help="sweep folder root (default <results>/sweeps); "
                                       "shared storage on a cluster"),
    name: str | None = typer.Option(None, "--name", help="sweep name (default <method>-<dataset>-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="finish the interrupted sweep --name"),
    grace_period: int = typer.Option(1, "--grace-period", help="ASHA: epochs before a trial can be stopped"),
    reduction_factor: int = typer.Option(3, "--reduction-factor", help="ASHA: η, rungs at grace·η^k epochs"),
    search_seed: int = typer.Option(0, "--search-seed", help="seed of the search (random draws, TPE)"),
    seed: int = typer.Option(0, "--seed", help="training seed of every trial"),
    execution: Execution | None = None,
    settings: dict | None = None,
) -> None:
    """Sweep a method's hyperparameters (Optuna/random/grid, ASHA), with Ray Tune or in-process.

    Every trial is an ordinary run tagged with the sweep's name."""
    from bench.sweeps.define import Request, define_sweep
    from bench.sweeps.summary import sweep_summary

    def define():
        request = Request(_run_spec(method, assignments, seed, settings), execution, name, storage, metric)
        return define_sweep(request, trials, search.value, scheduler.value, space, search_seed, grace_period,
                            reduction_factor)

    _execute_sweep(ctx, "sweep", resume, (name, storage, settings["out"]), define, sweep_summary)


@app.command()
@_grouped("execution", _execution_options(Executor.ray), _execution)
@_grouped("settings", RUN_OPTIONS)
def ablate(
    ctx: typer.Context,
    method: str = typer.Option("lptpp", "--method", "-m", help="the full method",
        autocompletion=_names("method")),
    variants: str | None = typer.Option(None, "--variants", help="comma-separated variants (default: the method "
                                        "and all its registered variants)"),
    seeds: int = typer.Option(3, "--seeds", help="seeds per variant (--seed, --seed+1, ...)"),
    assignments: list[str] = typer.Option([], "--set", help="key=value for every run (repeatable)"),
    storage: str | None = typer.Option(None, "--storage", help="sweep folder root (default <results>/sweeps)"),
    name: str | None = typer.Option(None, "--name", help="ablation name (default ablate-<method>-<dataset>-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="finish the interrupted ablation --name"),
    seed: int = typer.Option(0, "--seed", help="first training seed"),
    execution: Execution | None = None,
    settings: dict | None = None,
) -> None:
    """Run a method and its registered ablation variants × seeds through the sweep executors."""
    from bench.sweeps.define import Request, define_ablation
    from bench.sweeps.summary import ablation_summary

    def define():
        request = Request(_run_spec(method, assignments, seed, settings), execution, name, storage)
        chosen = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
        return define_ablation(request, chosen, seeds)

    _execute_sweep(ctx, "ablate", resume, (name, storage, settings["out"]), define, ablation_summary)


@app.command()
@_grouped("execution", _execution_options(Executor.local), _execution)
def benchmark(
    protocol: str = typer.Argument(..., help="a shipped protocol (bench list protocols) or a protocol .toml file"),
    data_root: DataRoot = None,
    weights: str | None = typer.Option(None, "--weights", help="a local file of the protocol backbone's weights "
                                       "(its pretrained tag's; .safetensors or a state dict)"),
    allow_download: AllowDownload = False,
    resume: bool = typer.Option(False, "--resume", help="continue a benchmark started before; recorded runs are "
                                "not run again"),
    out: ResultsOut = None,
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    formats: str = typer.Option("md,html", "--format", "-f", help="report formats: md, html, tex, csv"),
    trackers: Trackers = [],  # noqa: B006  (typer reads it, nothing changes it)
    execution: Execution | None = None,
) -> None:
    """Run a benchmark protocol (methods × configurations searched on val × seeds), then its report.

    One table per protocol, mean ± std over seeds, configurations searched per method; the report goes to
    <results>/reports/<protocol>/."""
    from bench.benchmark import BenchmarkOptions, benchmark_and_report
    from bench.protocols import load_protocol
    from bench.report import RISING_MARK, parse_formats

    options = BenchmarkOptions(data_root=data_root, weights=weights, allow_download=allow_download, out=out,
                               device=device, execution=execution, resume=resume,
                               trackers=[tracker.value for tracker in trackers])
    try:
        try:
            with _sigterm_as_interrupt():
                chosen = parse_formats(formats)
                result = benchmark_and_report(load_protocol(protocol), options, chosen, console)
        except KeyboardInterrupt:
            _say(f"interrupted; finished runs are recorded; continue with: {options.continue_command(protocol)}",
                 err_console)
            raise typer.Exit(EXIT_INTERRUPTED) from None
    except BenchError as error:
        _fail(error)
    made = _print_report(result.report)
    _say(f"{len(made.records)} runs recorded under protocol {result.protocol.name} {result.protocol.hash} (at most "
         f"{result.planned} planned); report: " + ", ".join(str(path) for path in made.written))
    for section in made.report.datasets:
        for row in section.leaderboard:
            if row.configuration.still_rising:
                _say(f"{RISING_MARK} this budget does not let {row.configuration.method} converge: its "
                     f"val {section.metric} was still rising at the end in {len(row.configuration.still_rising)} "
                     f"of {row.configuration.seeds} seed(s) (see the report's footnote)")


def _print_report(made):
    """Print a written report's tables on the console; returns it."""
    from bench.report import console_tables

    for table in console_tables(made.blocks, console):
        console.print(table)
    return made


@app.command("list")
def list_(
    what: ListWhat = typer.Argument(ListWhat.all, help="what to list", show_default=True),
    method: str = typer.Option(DEFAULT_METHOD, "--method", "-m", help="with hparams: the method",
        autocompletion=_names("method")),
    dataset: str = typer.Option(EMBEDDED_DATASET, "--dataset", "-d", help="with hparams: the dataset",
        autocompletion=_names("dataset")),
    backbone: str | None = typer.Option(None, "--backbone", "-b", autocompletion=_names("backbone"),
                                        help="with hparams: the backbone (as for bench run; on the embedded "
                                        "dataset, none means the embedded default and its preset)"),
) -> None:
    """List methods, datasets, backbones and shipped protocols, or (hparams) a method's options.

    hparams: every option a method and dataset declare, with the default bench run uses (on the embedded default,
    its preset), the space bench sweep searches, and help citing its source."""
    import bench.datasets
    import bench.methods  # noqa: F401
    from bench.backbones import BACKBONES
    from bench.datasets.base import DATASETS
    from bench.methods.base import METHODS

    what = what.value
    if what == "hparams":
        try:
            heading, tables = hparams_tables(METHODS.canonical(method), DATASETS.canonical(dataset), backbone)
        except BenchError as error:
            _fail(error)
        _say(heading)
        for table in tables:
            console.print(table)
        return

    sections = {
        "methods": (METHODS, lambda cls: cls.description),
        "datasets": (DATASETS, lambda spec: spec.description),
        "backbones": (BACKBONES, lambda spec: spec.description),
    }
    for name, (registry, describe) in sections.items():
        if what in ("all", name):
            console.print(registry_table(name, [(key, ", ".join(registry.aliases_of(key)), describe(entry))
                                                for key, entry in registry.items()],
                                         ("name", "aliases", "description")))
    if what in ("all", "protocols"):
        import tomllib

        from bench.protocols import shipped_protocols

        rows = [(path.stem, str(tomllib.loads(path.read_text()).get("description", "")))
                for path in shipped_protocols()]
        console.print(registry_table("protocols (bench benchmark NAME)", rows, ("name", "description")))


@app.command()
def show(
    run_ref: str = typer.Argument(..., metavar="RUN", help="run folder, run id (or a unique prefix of one), or "
                                  "latest: the run started or resumed last"),
    out: str | None = typer.Option(None, "--out", help="results root"),
) -> None:
    """Show a run's state, configuration and metrics (bench show latest: the last run started)."""
    from bench.atomic_io import read_json
    from bench.run_folder import describe_status, find_run
    from bench.store import ResultsStore
    try:
        run_dir = find_run(run_ref, out)
        try:
            config = read_json(run_dir / "config.json")
            hparams, options = config["hparams"], config["dataset_options"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BenchError(f"{run_dir / 'config.json'} is unreadable or incomplete ({type(error).__name__}: "
                             f"{error}); the run folder is damaged") from None
        status = describe_status(run_dir)
        record_path = ResultsStore(run_dir.parents[1]).path_for(run_dir.name)
        record = None
        if record_path.exists():
            try:
                record = read_json(record_path)
                table = metrics_table(record)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                raise BenchError(f"record {record_path} is unreadable or incomplete ({type(error).__name__}: "
                                 f"{error}); re-run the run or remove the record") from None
    except BenchError as error:
        _fail(error)
    console.print(Text.assemble((run_dir.name, "bold"), f" ({status})"), soft_wrap=True)
    console.print(settings_table("hyperparameters", hparams))
    if options:
        console.print(settings_table("dataset options", options))
    if record is None:
        _say(f"no record in the store: {record_path} is missing" if status == "complete"
             else "no record in the store yet (the run has not finished)")
        return
    console.print(table)
    for note in record.get("notes", []):
        _say(f"note: {note}")


@app.command()
def runs(
    out: str | None = typer.Option(None, "--out", help="results root"),
    method: str | None = typer.Option(None, "--method", "-m", help="only this method's runs"),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="only this dataset's runs"),
    last: int = typer.Option(20, "--last", "-n", help="how many runs, the latest first (0: all)"),
) -> None:
    """List the runs of a results store, the one started or resumed last first: id, state, method, dataset,
    test overall accuracy and when it finished (bench show RUN for one)."""
    from bench.atomic_io import read_json
    from bench.console_tables import RunRow, runs_table
    from bench.run_folder import results_root, run_folders, run_state
    from bench.store import ResultsStore
    if last < 0:
        _fail(UsageError(f"--last {last}: give a number of runs, or 0 for all"))
    root = results_root(out)
    store = ResultsStore(root)
    rows = []
    for folder in run_folders(root):
        try:
            config = read_json(folder / "config.json")
            record = read_json(store.path_for(folder.name)) if store.path_for(folder.name).exists() else {}
        except (OSError, ValueError) as error:
            _say(f"warning: skipping run {folder.name}: {error}", err_console)
            continue
        if method not in (None, config.get("method")) or dataset not in (None, config.get("dataset")):
            continue
        rows.append(RunRow(folder.name, run_state(folder), str(config.get("method", "?")),
                           str(config.get("dataset", "?")), (record.get("test") or {}).get("overall"),
                           record.get("finished_at")))
    if not rows:
        wanted = " and ".join(f"{name} {value}" for name, value in (("method", method), ("dataset", dataset))
                              if value)
        _say(f"no runs{' of ' + wanted if wanted else ''} under {root / 'runs'}", err_console)
        raise typer.Exit(EXIT_RUNTIME)
    shown = rows[:last] if last else rows
    console.print(runs_table(shown, console, f"{len(shown)} of {len(rows)} runs under {root / 'runs'}, the "
                                             "latest first"))


@app.command()
def report(
    results: ResultsOut = None,
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="only this dataset (name or alias)",
        autocompletion=_names("dataset")),
    protocol: str | None = typer.Option(None, "--protocol", help="only the runs of this benchmark protocol"),
    formats: str | None = typer.Option(None, "--format", "-f", help="comma-separated md, html, tex, csv "
                                                                     "(default md,html)"),
    report_dir: str | None = typer.Option(None, "--report-dir", help="where the report goes (default "
                                          "<results>/reports/all, or reports/<protocol> with --protocol)"),
    published: Published = typer.Option(
        Published.store, "--published",
        help="published reference rows for the datasets with records (store), for every dataset that has some (all), "
             "or none"),
) -> None:
    """Leaderboards, ablation tables, sweep summaries and plots, from the results store's records only.

    Written to <results>/reports/all/ (reports/<protocol>/ with --protocol, -<dataset> added with --dataset).
    Exits with status 1, writing nothing, when the store (or the chosen dataset) has no records."""
    from bench import api
    from bench import report as reports

    try:
        try:
            made = api.report(results, dataset=dataset, protocol=protocol, formats=formats or reports.DEFAULT_FORMATS,
                              report_dir=report_dir, published=published.value)
        except reports.NothingToReport as nothing:
            err_console.print(str(nothing), highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(EXIT_RUNTIME) from None
    except BenchError as error:
        _fail(error)
    _print_report(made)
    names = ", ".join(str(path.relative_to(made.folder)) for path in made.written)
    _say(f"wrote {len(made.written)} files to {made.folder}: {names}")

"""`bench`: run, list, show."""

from __future__ import annotations

import math

import typer
from rich.console import Console
from rich.table import Table

from bench.errors import BenchError

app = typer.Typer(add_completion=False, no_args_is_help=False, help="Long-tailed classification benchmark harness.")
console = Console()
err_console = Console(stderr=True)

EMBEDDED_DATASET = "digits_lt"
EMBEDDED_BACKBONE = "vit_micro"
DEFAULT_METHOD = "lpt"
# A tiny random-init ViT learns 8×8 digits best at 16 px, without crops, with a larger learning rate; LPT gets
# short phases without warm-up so the default run stays well under two minutes on 2 CPU cores.
EMBEDDED_PRESET = {"image_size": "16", "augment": "none", "lr": "2e-3", "epochs": "40", "batch_size": "32"}
_LPT_PRESET = {"lr": "0.05", "phase1_epochs": "6", "phase2_epochs": "6", "warmup_epochs": "0"}
_LPTPP_PRESET = {**_LPT_PRESET, "phase1_epochs": "2", "phase2_epochs": "2", "adapter_epochs": "2",
                 "scorer_epochs": "2", "vl_backbone": "clip_micro"}
EMBEDDED_METHOD_PRESETS = {"lpt": _LPT_PRESET, **{name: _LPTPP_PRESET for name in (
    "lptpp", "lptpp_visual", "lptpp_vl", "lptpp_no_adapter", "lptpp_no_group_prompts", "lptpp_mean")}}
EMBEDDED_BACKBONES = {"lptpp_vl": "clip_micro"}  # methods whose own tower must be a (tiny) CLIP


def embedded_preset(method: str) -> tuple[str, dict[str, str]]:
    """(backbone, --set preset) of `method` on the embedded dataset."""
    from bench.methods.base import METHODS

    name = METHODS.canonical(method)
    return EMBEDDED_BACKBONES.get(name, EMBEDDED_BACKBONE), {**EMBEDDED_PRESET, **EMBEDDED_METHOD_PRESETS.get(name, {})}


def _fail(error: BenchError) -> None:
    err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def run(
    method: str = typer.Option(DEFAULT_METHOD, "--method", "-m", help="method name (bench list methods)"),
    dataset: str = typer.Option(EMBEDDED_DATASET, "--dataset", "-d", help="dataset name (bench list datasets)"),
    backbone: str | None = typer.Option(None, "--backbone", "-b", help="backbone name (bench list backbones); "
                                           f"default: {EMBEDDED_BACKBONE} on the embedded dataset, elsewhere "
                                           "the method's own (CLIP ViT-B/16 for lptpp_vl) or the in21k ViT-B/16"),
    weights: str | None = typer.Option(None, "--weights", help="backbone weights file (.safetensors or state dict)"),
    data_root: str | None = typer.Option(None, "--data-root", help="dataset folder (else $BENCH_DATA_ROOT/<dir>)"),
    assignments: list[str] = typer.Option([], "--set", help="key=value hyperparameter or dataset option (repeatable)"),
    seed: int = typer.Option(0, "--seed"),
    out: str | None = typer.Option(None, "--out", help="results root (default ./results or $BENCH_RESULTS)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    allow_download: bool = typer.Option(False, "--allow-download", help="let timm/open_clip download weights"),
    random_init: bool = typer.Option(False, "--random-init", help="allow a randomly initialised backbone"),
    resume: str | None = typer.Option(None, "--resume", help="continue an interrupted run (folder or run id)"),
) -> None:
    """Train and evaluate one method on one dataset; with no arguments, the embedded default."""
    from bench import runner
    from bench.hparams import parse_assignments

    try:
        if resume:
            result = runner.resume(resume, console, out)
        else:
            embedded = dataset in (EMBEDDED_DATASET, "default", "digits") and backbone is None
            overrides = parse_assignments(assignments)
            if embedded:
                declared = runner.declared_options(method, dataset)
                backbone, preset = embedded_preset(method)
                preset = {k: v for k, v in preset.items() if k in declared and k not in overrides}
                console.print(f"embedded default: {backbone} (random init) on {EMBEDDED_DATASET}, preset "
                              + " ".join(f"{k}={v}" for k, v in preset.items()))
                overrides = {**preset, **overrides}
            spec = runner.RunSpec(
                method=method, dataset=dataset, backbone=backbone,
                weights=weights, data_root=data_root, overrides=overrides, seed=seed,
                out=out, device=device, allow_download=allow_download, allow_random_init=random_init or embedded,
            )
            result = runner.execute(spec, console)
    except BenchError as error:
        _fail(error)
    console.print(metrics_table(result.record))
    console.print(f"run folder: {result.run_dir}")


@app.command("eval")
def eval_(
    checkpoint: str = typer.Option(..., "--checkpoint", help="trained checkpoint, e.g. the official LPT_places.pth"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="dataset name (bench list datasets)"),
    method: str = typer.Option("lpt", "--method", "-m", help="method whose checkpoint format to read"),
    backbone: str | None = typer.Option(None, "--backbone", "-b", help="backbone name; default the in21k ViT-B/16"),
    weights: str | None = typer.Option(None, "--weights", help="backbone weights, when the checkpoint lacks them"),
    data_root: str | None = typer.Option(None, "--data-root", help="dataset folder (else $BENCH_DATA_ROOT/<dir>)"),
    assignments: list[str] = typer.Option([], "--set", help="key=value, e.g. shot_convention=lpt (repeatable)"),
    out: str | None = typer.Option(None, "--out", help="results root (default ./results or $BENCH_RESULTS)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
) -> None:
    """Evaluate a trained checkpoint on val and test (no training); the result is an ordinary run record."""
    from bench import runner
    from bench.hparams import parse_assignments

    try:
        spec = runner.RunSpec(method=method, dataset=dataset, backbone=backbone,
                              weights=weights, data_root=data_root, overrides=parse_assignments(assignments),
                              out=out, device=device, checkpoint=checkpoint, tags={"kind": "checkpoint_eval"})
        result = runner.execute(spec, console)
    except BenchError as error:
        _fail(error)
    console.print(metrics_table(result.record))
    console.print(f"run folder: {result.run_dir}")


def metrics_table(record: dict) -> Table:
    table = Table(title=f"{record['method']} on {record['dataset']} ({record['backbone']}, "
                        f"{'pretrained' if record['pretrained'] else 'random init'}, seed {record['seed']})")
    columns = ("overall", "many", "medium", "few", "worst_class", "harmonic_mean", "macro_f1")
    table.add_column("split")
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for split in ("val", "test"):
        metrics = record[split]
        table.add_row(split, *(_cell(metrics.get(column)) for column in columns))
    posthoc = record.get("posthoc")
    if posthoc:
        table.add_row(f"test, post-hoc LA τ={posthoc['tau']:.1f} (τ from val)",
                      *(_cell(posthoc["test"].get(column)) for column in columns), style="dim")
    table.caption = (f"{record['trainable_params']:,} trainable parameters, trained {record['train_time_s']:.1f} s "
                     f"on {record['device']}; shot groups: {record['shot_convention']}")
    return table


def _cell(value) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}"


@app.command("list")
def list_(what: str = typer.Argument("all", help="methods | datasets | backbones | all")) -> None:
    """List registered methods, datasets and backbones."""
    import bench.datasets
    import bench.methods  # noqa: F401
    from bench.backbones import BACKBONES
    from bench.datasets.base import DATASETS
    from bench.methods.base import METHODS

    sections = {
        "methods": (METHODS, lambda cls: cls.description),
        "datasets": (DATASETS, lambda spec: spec.description),
        "backbones": (BACKBONES, lambda spec: spec.description),
    }
    if what != "all" and what not in sections:
        _fail(BenchError(f"bench list {what}: choose one of methods, datasets, backbones, all"))
    for name, (registry, describe) in sections.items():
        if what not in ("all", name):
            continue
        table = Table(title=name)
        table.add_column("name", style="bold")
        table.add_column("aliases")
        table.add_column("description")
        for key, entry in registry.items():
            table.add_row(key, ", ".join(registry.aliases_of(key)), describe(entry))
        console.print(table)


@app.command()
def show(
    run_ref: str = typer.Argument(..., metavar="RUN", help="run folder or run id"),
    out: str | None = typer.Option(None, "--out", help="results root"),
) -> None:
    """Show a run's configuration and metrics."""
    from bench.runner import find_run
    from bench.store import ResultsStore, read_json

    try:
        run_dir = find_run(run_ref, out)
    except BenchError as error:
        _fail(error)
    status = read_json(run_dir / "status.json").get("state", "unknown")
    config = read_json(run_dir / "config.json")
    console.print(f"[bold]{run_dir.name}[/] ({status})")
    console.print(f"hyperparameters: {config['hparams']}")
    console.print(f"dataset options: {config['dataset_options']}")
    record = ResultsStore(run_dir.parents[1]).get(run_dir.name)
    if record is None:
        console.print("no record in the store yet (the run has not finished)")
        return
    console.print(metrics_table(record))
    for note in record.get("notes", []):
        console.print(f"note: {note}")

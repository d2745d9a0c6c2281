"""One run: (method, dataset, backbone, hyperparameters, seed) → a run folder and one record in the store."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.logging import RichHandler

import bench.datasets
import bench.methods  # noqa: F401  (registers the methods)
from bench import selection
from bench.atomic_io import atomic_write_json, read_json, remove_temp_files
from bench.backbones import parse_backbone
from bench.callbacks import Callback
from bench.context import COMMON_OPTIONS, BackboneRequest, RunContext
from bench.datasets.base import DATASETS, load_dataset
from bench.distributed import join, world
from bench.embedded import EMBEDDED_DATASET, EMBEDDED_PRESET, is_embedded
from bench.engine import Engine, TrainingDiverged, TrainingState
from bench.errors import BenchError, RunInterrupted, UsageError, first_line
from bench.hparams import HParam, as_override, merge_declarations, resolve
from bench.manifest import build_manifest
from bench.methods.base import METHODS
from bench.posthoc import posthoc_report
from bench.record import build_record, write_per_class
from bench.run_folder import (
    RESULTS_ENV,
    RunLock,
    default_results_root,
    find_run,
    new_run_id,
    read_status,
    resume_command,
    write_status,
)
from bench.run_spec import RunSpec
from bench.seeding import derived_seed, seed_everything
from bench.store import ResultsStore
from bench.trackers import check_trackers, make_trackers

DEFAULT_BACKBONE = "vit_base_patch16_224.augreg_in21k"


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    record: dict[str, Any]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is visible; use --device cpu")
    return torch.device(name)


def declared_options(method: str, dataset: str) -> dict[str, HParam]:
    """The one declaration of every --set key of a (method, dataset) pair: common, method and dataset options."""
    method_cls, dataset_spec = METHODS.get(method), DATASETS.get(dataset)
    return merge_declarations(("common", COMMON_OPTIONS), (f"method {method_cls.name}", method_cls.hparams),
                              (f"dataset {dataset_spec.name}", dataset_spec.options))


def split_options(spec: RunSpec):
    """Resolve --set values; return the method class, dataset spec, hyperparameters and dataset options."""
    method_cls = METHODS.get(spec.method)
    dataset_spec = DATASETS.get(spec.dataset)
    values = resolve(declared_options(spec.method, spec.dataset), spec.overrides)
    dataset_options = {k: values[k] for k in dataset_spec.options}
    hparams = {k: v for k, v in values.items() if k not in dataset_spec.options}
    return method_cls, dataset_spec, hparams, dataset_options


def with_embedded_preset(spec: RunSpec) -> tuple[RunSpec, str | None]:
    """On the embedded default (its dataset, no --backbone): the method's micro tower (pretrained weights
    shipped with the package, or random init for towers that have none), and the embedded preset (the common
    one and the method's own) for every declared key not given; and a line saying so. Elsewhere the spec as
    it is."""
    if not is_embedded(spec.dataset, spec.backbone):
        return spec, None
    method_cls = METHODS.get(spec.method)
    declared = declared_options(spec.method, spec.dataset)
    preset = {key: value for key, value in {**EMBEDDED_PRESET, **method_cls.embedded_preset}.items()
              if key in declared and key not in spec.overrides}
    backbone = parse_backbone(method_cls.embedded_backbone)
    towers = [backbone, *(parse_backbone(value) for key, value in preset.items() if key.endswith("backbone"))]
    random_init = [tower.name for tower in towers if not tower.shipped]  # micro towers with no weights to ship
    weights = "pretrained weights shipped with lt-bench" if backbone.shipped else "random init"
    note = (f"embedded default: {backbone.name} ({weights}) on {EMBEDDED_DATASET}"
            + (f"; random init: {', '.join(random_init)}" if random_init else "") + ", preset "
            + " ".join(f"{key}={value}" for key, value in preset.items()))
    return dataclasses.replace(spec, backbone=backbone.name, overrides={**preset, **spec.overrides},
                               allow_random_init=spec.allow_random_init or bool(random_init)), note


def _logger(run_id: str, console: Console) -> logging.Logger:
    log = logging.getLogger(f"bench.run.{run_id}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        log.addHandler(RichHandler(console=console, show_path=False, show_level=False, markup=False))
    return log


def execute(spec: RunSpec, console: Console | None = None, run_dir: Path | None = None,
            callbacks: Sequence[Callback] = (), stopped_early: dict | None = None) -> RunResult:
    """Run `spec` to completion. Passing the `run_dir` of an interrupted run resumes it (or starts a fresh run
    in that folder). `callbacks` hook into training (epoch and phase ends). `stopped_early` (a scheduler's
    decision, e.g. {"reason": "asha", "epoch": 3}) ends the run at its last checkpoint instead: it is evaluated
    as it stands and its record says so."""
    console = console or Console()
    check_trackers(spec.trackers)
    spec, preset_note = with_embedded_preset(spec)
    method_cls, dataset_spec, hparams, dataset_options = split_options(spec)
    spec = dataclasses.replace(spec, backbone=spec.backbone or method_cls.default_backbone or DEFAULT_BACKBONE)
    ranks, device = join(pick_device(spec.device))  # a data-parallel run's rank (torchrun), else one process
    if run_dir is not None:
        out_root = run_dir.parents[1]
    else:
        out_root = Path(spec.out).expanduser().resolve() if spec.out else default_results_root()
    check_writable(out_root)
    checkpoint = _checkpoint_path(spec, method_cls)
    spec = dataclasses.replace(spec, checkpoint=str(checkpoint) if checkpoint else None)
    dataset = load_dataset(dataset_spec.name, spec.data_root, dataset_options)
    run_id = ranks.broadcast(run_dir.name if run_dir else new_run_id(method_cls.name, dataset_spec.name))
    run_dir = run_dir or out_root / "runs" / run_id
    primary_run_dir = run_dir
    if not ranks.is_main:  # its own scratch folder (log, best epoch's weights, caches) inside rank 0's
        out_root = run_dir / "ranks" / str(ranks.rank)
        run_dir = out_root / "runs" / run_id
        console = Console(quiet=True)
        check_writable(out_root)
    check_resumable_by(run_dir, ranks.size)
    log = _logger(run_id, console)
    ctx = RunContext(dataset=dataset, hparams=hparams, device=device, seed=spec.seed, run_dir=run_dir,
                     cache_dir=out_root / "cache", console=console, log=log,
                     backbone_request=BackboneRequest(
                         spec.backbone, spec.weights or spec.checkpoint, spec.allow_download,
                         spec.allow_random_init, method_cls.checkpoint_prefixes if checkpoint else ()),
                     method_preprocessing=method_cls.preprocessing, primary_run_dir=primary_run_dir)
    ctx.notes.extend(dataset.notes)
    if preset_note:
        ctx.notes.append(preset_note)
        log.info(preset_note)
    seed_everything(spec.seed)
    ctx.backbone  # noqa: B018  (weights and precision are resolved before any folder is written)
    ctx.amp_dtype  # noqa: B018

    with RunLock(run_dir):
        if read_status(run_dir)["state"] == "complete":
            raise UsageError(f"run {run_id} is already complete; see `bench show {run_id}`")
        handler = None
        try:
            handler = _file_handler(run_dir)
            log.addHandler(handler)
            _remove_leftovers(run_dir, out_root, log)
            for warning in dataset.warnings:
                ctx.warn(warning)
            config = {"spec": dataclasses.asdict(spec), "method": method_cls.name, "dataset": dataset_spec.name,
                      "hparams": hparams, "dataset_options": dataset_options, "world_size": ranks.size}
            atomic_write_json(run_dir / "config.json", config)
            _write_manifest(ctx, device, dataset)
            write_status(run_dir, "running")
            record = _train_and_record(spec, ctx, method_cls, config, callbacks, out_root, stopped_early)
        except SystemExit:  # how Ray Tune ends a trial its scheduler stopped
            _try_write_status(run_dir, "stopped")
            log.info("run stopped by its process (a sweep scheduler's decision or an exit); resumable")
            raise
        except KeyboardInterrupt:
            _try_write_status(run_dir, "interrupted")
            hint = f"run {run_id} interrupted; continue it with: {resume_command(run_dir)}"
            log.info(hint)
            raise RunInterrupted(hint) from None
        except BaseException as error:
            _try_write_status(run_dir, "failed", error=f"{type(error).__name__}: {first_line(error, 400)}")
            log.error(f"run failed: {type(error).__name__}: {first_line(error, 400)}")
            if isinstance(error, OSError):
                fix = "free space there, then" if error.errno in DISK_FULL else "once that is fixed,"
                raise BenchError(f"{describe_os_error(error)}; run {run_id} is marked failed; {fix} "
                                 f"continue it with: {resume_command(run_dir)}") from None
            raise
        finally:
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
    return RunResult(run_id, run_dir, record)


def check_resumable_by(run_dir: Path, world_size: int) -> None:
    """A run resumes only with the world size it started with: its batches were sharded over that many ranks."""
    config = run_dir / "config.json"
    if not config.exists():
        return
    try:
        started = int(read_json(config).get("world_size", 1))
    except (OSError, ValueError, TypeError):
        return  # an unreadable config is reported where it is read
    if started != world_size:
        raise UsageError(f"run {run_dir.name} was trained by {started} process(es) and this is {world_size}; "
                         f"resume it with the same total (--nproc × --nnodes = {started})")


def check_writable(root: Path) -> None:
    """Refuse a results root that cannot be written before anything is loaded or written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, prefix=".write-probe.", delete=True)  # noqa: SIM115
        probe.close()
    except OSError as error:
        raise BenchError(f"cannot write to the results root {root}: {error.strerror or error}; pass --out DIR "
                         f"(a writable folder) or set {RESULTS_ENV}") from None


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def describe_os_error(error: OSError) -> str:
    """'No space left on device: /path' from an OSError, whatever raised it; on a full disk, also the file
    system the path is on and its free space."""
    where = f": {error.filename}" if error.filename else ""
    text = f"{error.strerror or first_line(error)}{where}"
    if error.errno in DISK_FULL and error.filename:
        text += f" ({file_system_space(Path(error.filename))})"
    return text


def file_system_space(path: Path) -> str:
    """'the file system at /mnt has 12.0 KiB free of 2.0 MiB' for the file system holding `path`."""
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    mount = folder.resolve()
    while not os.path.ismount(mount):
        mount = mount.parent
    usage = shutil.disk_usage(mount)
    return f"the file system at {mount} has {_bytes_text(usage.free)} free of {_bytes_text(usage.total)}"


def _bytes_text(count: int) -> str:
    size, unit = float(count), "bytes"
    for larger in ("KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, larger
    return f"{count} bytes" if unit == "bytes" else f"{size:.1f} {unit}"


def _remove_leftovers(run_dir: Path, out_root: Path, log: logging.Logger) -> None:
    """Temp files of interrupted atomic writes: all of this run's (its lock is held), and those of dead
    writers in the shared records/ and cache/ folders."""
    removed = [*remove_temp_files(run_dir, only_dead_writers=False),
               *remove_temp_files(run_dir / "checkpoints", only_dead_writers=False),
               *remove_temp_files(out_root / "records")]
    cache = out_root / "cache"
    for folder in [cache, *(cache.iterdir() if cache.is_dir() else [])]:
        if folder.is_dir():
            removed += remove_temp_files(folder)
    if removed:
        log.info(
            f"removed {len(removed)} temp file(s) left by interrupted writes: "
            + ", ".join(str(p.relative_to(out_root)) for p in removed[:5]) + (" …" if len(removed) > 5 else ""))


class _QuietFileHandler(logging.FileHandler):
    """The run's log.txt. A failed write (a full disk) must not print a logging traceback: the run's own error
    says what happened."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def _file_handler(run_dir: Path) -> logging.Handler:
    handler = _QuietFileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler


def _write_manifest(ctx: RunContext, device: torch.device, dataset) -> None:
    run_dir = ctx.run_dir
    manifest = build_manifest(
        device=device, amp=ctx.precision,
        split_files=dataset.split_files,
        split_fingerprints={s.name: s.fingerprint for s in (dataset.train, dataset.val, dataset.test)},
        weights_info=dataclasses.asdict(ctx.backbone.weights_info))
    if (run_dir / "manifest.json").exists():  # a resumed run keeps what it started on and adds what resumed it
        started = read_json(run_dir / "manifest.json")
        resumes = started.get("resumes", []) + [{k: manifest[k] for k in ("git", "device", "packages", "argv")}]
        manifest = {**started, "resumes": resumes}
    atomic_write_json(run_dir / "manifest.json", manifest)


def _try_write_status(run_dir: Path, state: str, **details) -> None:
    """Status after a failure; on a full or read-only disk it may not be writable, and the error says why."""
    try:
        write_status(run_dir, state, **details)
    except OSError:
        pass


def _train_and_record(spec, ctx: RunContext, method_cls, config, callbacks: Sequence[Callback], out_root: Path,
                      stopped_early: dict | None) -> dict:
    dataset = ctx.dataset
    ctx.log.info(f"run {ctx.run_dir.name}: {method_cls.name} on {dataset.name} with {spec.backbone} "
                 f"({len(dataset.train)} train / {len(dataset.val)} val / {len(dataset.test)} test, "
                 f"{dataset.num_classes} classes) on {ctx.device}")
    for note in dataset.notes:
        ctx.log.info(f"dataset: {note}")
    if dataset.val_carve is not None:
        ctx.log.info("val carve per class (from unused / from train): " + describe_carve(dataset))
    started = time.perf_counter()
    method = method_cls(ctx)
    seed_everything(derived_seed(spec.seed, "setup"))  # new modules initialise alike whatever ran before
    method.setup()
    # each tower's preprocessing as resolved for this run (its library's, under the method's recipe)
    config["preprocessing"] = {tower.name: dataclasses.asdict(ctx.preprocessing(tower))
                               for tower in method.towers()}
    atomic_write_json(ctx.run_dir / "config.json", config)
    if spec.trackers and world().is_main:
        callbacks = [*callbacks, *make_trackers(spec.trackers, config, ctx.run_dir)]
    engine = Engine(method, ctx, callbacks)
    if spec.checkpoint:
        method.import_checkpoint(Path(spec.checkpoint))
        ctx.log.info(f"evaluating checkpoint {spec.checkpoint} (no training)")
        state = TrainingState()
    elif stopped_early:
        state = engine.stop_early()
        if state.phase >= len(method.phases()):  # the stop came after its last epoch: nothing was cut short
            ctx.log.info(f"a scheduler's stop ({stopped_early}) came after the last epoch; recorded as finished")
            stopped_early = None
        else:
            ctx.log.info(f"stopped early ({stopped_early}); evaluating the weights it stopped with")
    else:
        try:
            state = engine.train()
        except TrainingDiverged as diverged:
            state = engine.recover(diverged)
    val, val_logits, val_labels = engine.evaluate_with_logits("val")
    health = state.health + collapse_flags(val_logits, dataset)
    for flag in health[len(state.health):]:
        ctx.warn(f"training health: {flag}")
    test_started = time.perf_counter()
    test, test_logits, test_labels = engine.evaluate_with_logits("test")
    test_seconds = time.perf_counter() - test_started
    # Post-hoc logit adjustment (Menon et al. 2021) for any method: tau chosen on val, then applied to test.
    posthoc = None
    if len(dataset.val):
        posthoc = posthoc_report(val_logits, val_labels, test_logits, test_labels, dataset.train_counts,
                                 ctx.hparams["shot_convention"], metric=ctx.hparams["selection_metric"])
    else:
        ctx.notes.append("no post-hoc logit adjustment: it chooses tau on val, and this run has no val split")
    wall = time.perf_counter() - started

    atomic_write_json(ctx.run_dir / "metrics.json", {"val": val.as_dict(), "test": test.as_dict(), "posthoc": posthoc,
                                                      "history": state.history, "selected": state.selected})
    write_per_class(ctx, val, test)
    record = build_record(spec, ctx, method, config, state, val, test, posthoc, health, stopped_early,
                          wall_s=wall, test_s=test_seconds)
    _store(ctx, ResultsStore(out_root), record, (val_logits, val_labels), (test_logits, test_labels))
    write_status(ctx.run_dir, "complete")
    for callback in callbacks:
        callback.on_run_end(record, ctx.run_dir)
    ctx.log.info(f"test overall {test.overall:.2f} many {test.many:.2f} medium {test.medium:.2f} "
                 f"few {test.few:.2f}")
    return record


def _store(ctx: RunContext, store: ResultsStore, record: dict, val: tuple, test: tuple) -> None:
    """The record into the store, its per-image predictions beside it first (so a stored record always has
    them), after warning of any phase whose val curve was still rising at the end of its budget."""
    for phase in record["convergence"]["still_rising"]:
        ctx.warn(f"convergence: val {ctx.hparams['selection_metric']} was still rising over the last quarter of "
                 f"{phase} by more than its noise ({record['convergence']['phases'][phase]}); this budget does not "
                 "let it converge")
    (val_logits, val_labels), (test_logits, test_labels) = val, test
    record["predictions"] = store.add_predictions(record["run_id"], {
        "val": val_logits.argmax(axis=1), "val_labels": val_labels, "test": test_logits.argmax(axis=1),
        "test_labels": test_labels, "train_counts": np.asarray(ctx.dataset.train_counts)})
    store.add(record, overwrite=True)


def _checkpoint_path(spec: RunSpec, method_cls) -> Path | None:
    if not spec.checkpoint:
        return None
    if not hasattr(method_cls, "import_checkpoint"):
        raise UsageError(f"method {method_cls.name} cannot import checkpoints; `bench eval` supports: "
                         + ", ".join(n for n, cls in METHODS.items() if hasattr(cls, "import_checkpoint")))
    path = Path(spec.checkpoint).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    return path


COLLAPSE_SHARE = 0.95  # val predictions this concentrated on one class mean the model collapsed


def collapse_flags(val_logits: np.ndarray, dataset) -> list[str]:
    """A flag when the val predictions collapse onto one class (never looks at test)."""
    if len(val_logits) == 0 or dataset.num_classes < 2:
        return []
    counts = np.bincount(val_logits.argmax(1), minlength=dataset.num_classes)
    top = int(counts.argmax())
    share = counts[top] / counts.sum()
    if share < COLLAPSE_SHARE:
        return []
    return [f"collapsed: {share:.0%} of val predictions are class {top} ({dataset.class_names[top]!r})"]


CARVE_CLASSES_LOGGED = 50  # beyond this, the per-class carve is in per_class.csv and the record only


def describe_carve(dataset) -> str:
    carve = dataset.val_carve
    shown = min(len(carve.from_unused), CARVE_CLASSES_LOGGED)
    text = ", ".join(f"{dataset.class_names[c]} {carve.from_unused[c]}/{carve.from_train[c]}" for c in range(shown))
    more = len(carve.from_unused) - shown
    return text + (f", … ({more} more classes: see per_class.csv and the record's val_split)" if more else "")


def resume(run: str | Path, console: Console | None = None, out: str | None = None) -> RunResult:
    run_dir = find_run(run, out)
    if read_status(run_dir)["state"] == "complete":
        raise UsageError(f"run {run_dir.name} is already complete; see `bench show {run_dir.name}`")
    try:
        config = read_json(run_dir / "config.json")
        spec = RunSpec(**config["spec"])
        resolved = {**config["hparams"], **config["dataset_options"]}
        # a run started before `selection_metric` existed chose its epochs on val overall: it goes on doing so
        resolved.setdefault("selection_metric", selection.LEGACY_METRIC)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BenchError(f"{run_dir / 'config.json'} is unreadable ({first_line(error)}); the run cannot be "
                         "resumed: start it again with `bench run`") from None
    # The values the run started with, not today's defaults: a default changed since then must not change it.
    spec = dataclasses.replace(spec, overrides={key: as_override(value) for key, value in resolved.items()})
    try:
        return execute(spec, console, run_dir=run_dir)
    except BenchError as error:
        if "--set" in str(error):
            raise BenchError(f"run {run_dir.name} cannot resume with this version of the harness: {error}") from None
        raise

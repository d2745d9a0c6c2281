"""One run: (method, dataset, backbone, hyperparameters, seed) → a run folder and one record in the store. The
run is prepared (`bench.prepare`), its folder's files written (`RunFolder`), its method trained by the engine,
evaluated and recorded, in this order."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from bench.atomic_io import atomic_write_json
from bench.callbacks import Callback
from bench.context import RunContext
from bench.engine import Engine, TrainingDiverged, TrainingState
from bench.errors import BenchError, UsageError
from bench.hparams import SettingError
from bench.manifest import build_manifest
from bench.posthoc import posthoc_report
from bench.prepare import prepare_run
from bench.record import build_record, write_per_class
from bench.run_folder import RunFolder, find_run
from bench.run_spec import RunSpec
from bench.seeding import derived_seed, seed_everything
from bench.store import ResultsStore
from bench.trackers import make_trackers


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    record: dict[str, Any]


def execute(spec: RunSpec, console: Console | None = None, run_dir: Path | None = None,
            callbacks: Sequence[Callback] = (), stopped_early: dict | None = None) -> RunResult:
    """Run `spec` to completion. Passing the `run_dir` of an interrupted run resumes it (or starts a fresh run
    in that folder). `callbacks` hook into training (epoch and phase ends). `stopped_early` (a scheduler's
    decision, e.g. {"reason": "asha", "epoch": 3}) ends the run at its last checkpoint instead: it is evaluated
    as it stands and its record says so."""
    ctx = prepare_run(spec, console, run_dir)  # weights and precision are resolved before any folder is written
    folder = RunFolder(ctx.run_dir)
    with folder.lock():
        if folder.state() == "complete":
            raise UsageError(f"run {folder.path.name} is already complete; see `bench show {folder.path.name}`")
        with folder.running(ctx.log):
            leftovers = folder.remove_leftovers()
            if leftovers:
                ctx.log.info(leftovers)
            for warning in ctx.dataset.warnings:
                ctx.warn(warning)
            record = _train_and_record(ctx, folder, callbacks, stopped_early)
    return RunResult(folder.path.name, folder.path, record)


def _train_and_record(ctx: RunContext, folder: RunFolder, callbacks: Sequence[Callback],
                      stopped_early: dict | None) -> dict:
    _log_start(ctx)
    started = time.perf_counter()
    method, config = _start(ctx, folder)
    if ctx.spec.trackers and ctx.world.is_main:
        callbacks = [*callbacks, *make_trackers(ctx.spec.trackers, config, ctx.run_dir)]
    engine = Engine(method, ctx, callbacks)
    state, stopped_early = _train(ctx, method, engine, stopped_early)
    val, val_logits, val_labels = engine.evaluate_with_logits("val")
    health = state.health + collapse_flags(val_logits, ctx.dataset)
    for flag in health[len(state.health):]:
        ctx.warn(f"training health: {flag}")
    test_started = time.perf_counter()
    test, test_logits, test_labels = engine.evaluate_with_logits("test")
    test_seconds = time.perf_counter() - test_started
    posthoc = _posthoc(ctx, (val_logits, val_labels), (test_logits, test_labels))
    wall = time.perf_counter() - started

    atomic_write_json(ctx.run_dir / "metrics.json", {"val": val.as_dict(), "test": test.as_dict(),
                                                      "posthoc": posthoc, "history": state.history,
                                                      "selected": state.selected})
    write_per_class(ctx, val, test)
    record = build_record(ctx.spec, ctx, method, config, state, val, test, posthoc, health, stopped_early,
                          wall_s=wall, test_s=test_seconds)
    _store(ctx, ResultsStore(folder.out_root), record, (val_logits, val_labels), (test_logits, test_labels))
    folder.mark("complete")
    for callback in callbacks:
        callback.on_run_end(record, ctx.run_dir)
    ctx.log.info(f"test overall {test.overall:.2f} many {test.many:.2f} medium {test.medium:.2f} "
                 f"few {test.few:.2f}")
    return record


def _log_start(ctx: RunContext) -> None:
    dataset = ctx.dataset
    ctx.log.info(f"run {ctx.run_dir.name}: {ctx.method_cls.name} on {dataset.name} with {ctx.spec.backbone} "
                 f"({len(dataset.train)} train / {len(dataset.val)} val / {len(dataset.test)} test, "
                 f"{dataset.num_classes} classes) on {ctx.device}")
    for note in dataset.notes:
        ctx.log.info(f"dataset: {note}")
    if dataset.val_carve is not None:
        ctx.log.info("val carve per class (from unused / from train): " + describe_carve(dataset))


def _start(ctx: RunContext, folder: RunFolder) -> tuple[Any, dict]:
    """The run folder's config.json and status (running), the method set up, then config.json again with each
    tower's preprocessing as resolved for this run (its library's, under the method's recipe) and the manifest:
    the run has started. The first config.json comes before the setup, so a run whose setup fails (a method's
    own check of its options) is listed by `bench runs` and shown by `bench show` with its error."""
    method = ctx.method_cls(ctx)
    config = {"spec": dataclasses.asdict(ctx.spec), "method": ctx.method_cls.name, "dataset": ctx.dataset_name,
              "hparams": dict(ctx.hparams), "dataset_options": dict(ctx.dataset_options),
              "world_size": ctx.world.size}
    folder.write_config(config)
    folder.mark("running")
    seed_everything(derived_seed(ctx.seed, "setup"))  # new modules initialise alike whatever ran before
    method.setup()
    config["preprocessing"] = {tower.name: dataclasses.asdict(ctx.preprocessing(tower)) for tower in method.towers()}
    folder.write_config(config)
    dataset = ctx.dataset
    folder.write_manifest(build_manifest(
        device=ctx.device, amp=ctx.precision, split_files=dataset.split_files,
        split_fingerprints={s.name: s.fingerprint for s in (dataset.train, dataset.val, dataset.test)},
        weights_info=dataclasses.asdict(ctx.backbone.weights_info)))
    return method, config


def _train(ctx: RunContext, method, engine: Engine, stopped_early: dict | None) -> tuple[TrainingState, dict | None]:
    """Trains the method (or imports its checkpoint, or takes the weights a scheduler stopped it with); the
    training state, and the stop that cut it short, if one did."""
    if ctx.spec.checkpoint:
        method.import_checkpoint(Path(ctx.spec.checkpoint))
        ctx.log.info(f"evaluating checkpoint {ctx.spec.checkpoint} (no training)")
        return TrainingState(), stopped_early
    if stopped_early:
        state = engine.stop_early()
        if state.phase >= len(method.phases()):  # the stop came after its last epoch: nothing was cut short
            ctx.log.info(f"a scheduler's stop ({stopped_early}) came after the last epoch; recorded as finished")
            return state, None
        ctx.log.info(f"stopped early ({stopped_early}); evaluating the weights it stopped with")
        return state, stopped_early
    try:
        return engine.train(), stopped_early
    except TrainingDiverged as diverged:
        return engine.recover(diverged), stopped_early


def _posthoc(ctx: RunContext, val: tuple, test: tuple) -> dict | None:
    """Post-hoc logit adjustment (Menon et al. 2021) for any method: tau chosen on val, then applied to test."""
    if not len(ctx.dataset.val):
        ctx.notes.append("no post-hoc logit adjustment: it chooses tau on val, and this run has no val split")
        return None
    return posthoc_report(*val, *test, ctx.dataset.train_counts, ctx.options.shot_convention,
                          metric=ctx.options.selection_metric)


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
    folder = RunFolder(find_run(run, out))
    if folder.state() == "complete":
        raise UsageError(f"run {folder.path.name} is already complete; see `bench show {folder.path.name}`")
    try:
        return execute(folder.resume_spec(), console, run_dir=folder.path)
    except SettingError as error:
        raise BenchError(f"run {folder.path.name} cannot resume with this version of the harness: {error}") from None

"""A finished run's record (one JSON document in the results store, the unit every report reads) and its
per-class CSV. `record_version` says which fields a record has: 1 (none written) for records made before the
field existed, RECORD_VERSION for those made now."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench import selection
from bench.atomic_io import atomic_write_text, file_sha256, read_json
from bench.errors import BenchError
from bench.metrics import shot_groups

if TYPE_CHECKING:
    from bench.engine import TrainingState

# 2: record_version, preprocessing per tower; 3: weights_provenance, world; 4: selection (the rule), convergence,
# predictions (per-image, beside the record), val nll_balanced; a run's epochs chosen on selection_metric
RECORD_VERSION = 4


def record_version(record: dict) -> int:
    return int(record.get("record_version", 1))


def check_readable(records: list[dict]) -> None:
    """Refuse records written by a newer harness: their fields may mean what this version cannot read."""
    newer = [r["run_id"] for r in records if record_version(r) > RECORD_VERSION]
    if newer:
        raise BenchError(f"{len(newer)} record(s) (e.g. {newer[0]}) were written by a newer harness (record "
                         f"version > {RECORD_VERSION}); upgrade lt-bench to read them")


def build_record(spec, ctx, method, config: dict, state: TrainingState, val, test, posthoc: dict | None,
                 health: list[str], stopped_early: dict | None, wall_s: float, test_s: float) -> dict:
    """The record of a finished run: what ran (spec, resolved settings, preprocessing, precision, data), how
    it went (metrics on val and test, post-hoc adjustment, epochs, selection, health) and what it cost."""
    import torch  # here, as the two below: `bench report` reads this module (check_readable), never torch

    from bench.distributed import world  # torch: imported only where a record is built
    from bench.engine import count_parameters

    dataset, backbone = ctx.dataset, ctx.backbone
    metric = ctx.hparams["selection_metric"]
    # the phases that follow a schedule (a probe's grid of weight decays is a search, not one)
    schedules = {phase.name: phase.epochs for phase in method.phases() if phase.fit_epoch is None}
    manifest = read_json(ctx.run_dir / "manifest.json")
    if method.predicts_from_features():
        ctx.notes.append("test time per image not recorded: predictions come from precomputed features")
    record = {
        "record_version": RECORD_VERSION,
        "run_id": ctx.run_dir.name, "method": method.name, "dataset": dataset.name,
        "backbone": spec.backbone, "seed": spec.seed, "sweep": spec.sweep, "tags": spec.tags,
        "hparams": config["hparams"], "dataset_options": config["dataset_options"],
        "val": val.summary(), "test": test.summary(), "posthoc": posthoc,
        "selected": state.selected, "epochs_trained": len(state.history),
        "selection": selection.rule(metric),
        "convergence": selection.convergence(state.history, schedules, metric),
        "health": {"ok": not health, "flags": health}, "stopped_early": stopped_early,
        "trainable_params": count_parameters(method.phases()),
        "checkpoint": {"path": spec.checkpoint, "sha256": file_sha256(Path(spec.checkpoint))} if spec.checkpoint
        else None,
        "total_params": sum(p.numel() for p in method.model().parameters()),
        "train_time_s": round(state.train_time_s, 3), "wall_time_s": round(wall_s, 3),
        "data_wait_share": round(state.data_wait_s / state.train_time_s, 4) if state.train_time_s > 0 else None,
        "test_ms_per_image": None if method.predicts_from_features()  # the backbone's pass is not timed
        else round(1000 * test_s / max(1, len(dataset.test)), 3),  # with data loading
        "device": manifest["device"], "world": {"size": world().size, "devices": world().all_gather(manifest["device"])},
        "threads": torch.get_num_threads(),  # torch threads of each of the run's processes
        "precision": ctx.precision, "data_paths": ctx.data_paths,
        "preprocessing": config["preprocessing"],
        "pretrained": backbone.weights_info.pretrained,
        "weights_source": backbone.weights_info.source, "weights_provenance": backbone.weights_info.provenance,
        "shot_convention": ctx.hparams["shot_convention"],
        "num_classes": dataset.num_classes, "train_size": len(dataset.train),
        "val_split": {"source": dataset.val_source, "size": len(dataset.val),
                      **({"carve": dataset.val_carve.as_record()} if dataset.val_carve is not None else {})},
        "notes": ctx.notes, "run_dir": str(ctx.run_dir),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **method.extra_record(),
    }
    return record


def write_per_class(ctx, val, test) -> None:
    dataset = ctx.dataset
    groups = shot_groups(dataset.train_counts, ctx.hparams["shot_convention"])
    val_counts = np.bincount(dataset.val.labels, minlength=dataset.num_classes)
    carve = dataset.val_carve
    lines = ["class,name,train_count,group,val_count,val_from_train,val_acc,test_acc"]
    for c in range(dataset.num_classes):
        name = dataset.class_names[c].replace('"', "'")
        lines.append(f'{c},"{name}",{dataset.train_counts[c]},{groups[c]},{val_counts[c]},'
                     f"{carve.from_train[c] if carve is not None else 0},"
                     f"{_fmt(val.per_class[c])},{_fmt(test.per_class[c])}")
    atomic_write_text(ctx.run_dir / "per_class.csv", "\n".join(lines) + "\n")



def _fmt(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.4f}"

"""A finished run's record (one JSON document in the results store, the unit every report reads), typed as
`RunRecord`, and its per-class CSV. `record_version` says which fields a record has: 1 (none written) for records
made before the field existed, RECORD_VERSION for those made now; `RunRecord.from_json` reads every version and
upgrades the older ones."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench import selection
from bench.atomic_io import atomic_write_text, file_sha256, read_json
from bench.errors import BenchError
from bench.metrics import shot_groups

if TYPE_CHECKING:
    from bench.engine import TrainingState

# 2: record_version, preprocessing per tower; 3: weights_provenance, world; 4: selection (the rule), convergence,
# predictions (per-image, beside the record), val nll_balanced; a run's epochs chosen on selection_metric;
# 5: the method's own fields under EXTRAS (before, at the top level beside the record's); report_order
RECORD_VERSION = 5
EXTRAS = "extras"


def record_version(record: Mapping) -> int:
    return int(record.get("record_version", 1))


def check_readable(records: list[dict]) -> None:
    """Refuse records written by a newer harness: their fields may mean what this version cannot read."""
    newer = [r["run_id"] for r in records if record_version(r) > RECORD_VERSION]
    if newer:
        raise BenchError(f"{len(newer)} record(s) (e.g. {newer[0]}) were written by a newer harness (record "
                         f"version > {RECORD_VERSION}); upgrade lt-bench to read them")


@dataclass
class Health:
    ok: bool  # no flag raised
    flags: list[str]  # diverged, exploded, collapsed, ...


@dataclass
class Checkpoint:
    path: str  # the checkpoint `bench eval` imported
    sha256: str


@dataclass
class World:
    size: int  # processes of the run
    devices: list[str]  # each process's device


@dataclass
class ValSplit:
    source: str  # where val came from: the dataset's own split, or carved from train
    size: int
    carve: dict | None = None  # how it was carved from train (carved splits only)

    def to_json(self) -> dict:
        return {"source": self.source, "size": self.size, **({"carve": self.carve} if self.carve is not None else {})}


@dataclass
class RunRecord:
    """One run's record. A field an older record lacks is None (as readers of the JSON form read it with
    `.get`); `extras` holds the method's own fields (`Method.extra_record`)."""

    run_id: str
    method: str | None = None
    report_order: list | None = None  # where reports list the method (bench.method_groups.order_key)
    dataset: str | None = None
    backbone: str | None = None
    seed: int | None = None
    sweep: str | None = None
    tags: dict | None = None
    hparams: dict | None = None  # resolved hyperparameters
    dataset_options: dict | None = None
    val: dict | None = None  # headline metric name → value (None where undefined), `Metrics.summary`
    test: dict | None = None
    posthoc: dict | None = None  # post-hoc logit adjustment: its tau and metrics
    selected: list | None = None  # each phase's chosen epoch
    epochs_trained: int | None = None
    selection: dict | None = None  # the rule every choice on val followed (`selection.rule`)
    convergence: dict | None = None  # `selection.convergence`
    health: Health | None = None
    stopped_early: dict | None = None  # a scheduler's decision
    trainable_params: int | None = None
    checkpoint: Checkpoint | None = None
    total_params: int | None = None
    train_time_s: float | None = None
    wall_time_s: float | None = None
    data_wait_share: float | None = None
    test_ms_per_image: float | None = None
    device: str | None = None
    world: World | None = None
    threads: int | None = None
    precision: str | None = None
    data_paths: dict | None = None
    preprocessing: dict | None = None
    pretrained: bool | None = None
    weights_source: str | None = None
    weights_provenance: dict | None = None
    shot_convention: str | None = None
    num_classes: int | None = None
    train_size: int | None = None
    val_split: ValSplit | None = None
    notes: list[str] | None = None
    run_dir: str | None = None
    finished_at: str | None = None  # ISO 8601, UTC
    extras: dict[str, Any] = field(default_factory=dict)
    predictions: dict | None = None  # the per-image file beside the record: its name, sha256, dtype, sizes
    record_version: int = RECORD_VERSION

    def to_json(self) -> dict[str, Any]:
        """The record as the store writes it (RECORD_VERSION's layout)."""
        record: dict[str, Any] = {"record_version": self.record_version}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "record_version":
                continue
            if item.name in _NESTED and value is not None:
                value = value.to_json() if isinstance(value, ValSplit) else dataclasses.asdict(value)
            record[item.name] = value
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> RunRecord:
        """A record of any version up to RECORD_VERSION (a newer one is refused), upgraded to the current
        layout: the fields an older version lacks are None, and its method's fields move into `extras`."""
        check_readable([record])
        values = {name: record.get(name) for name in _DECLARED}
        for name, nested in _NESTED.items():
            if values[name] is not None:
                try:
                    values[name] = nested(**values[name])
                except TypeError:
                    raise BenchError(f"record {record.get('run_id')}: its {name} {values[name]!r} does not have "
                                     f"the fields of a {nested.__name__}") from None
        return cls(**values, extras=method_extras(record), record_version=RECORD_VERSION)


_NESTED = {"health": Health, "checkpoint": Checkpoint, "world": World, "val_split": ValSplit}
_DECLARED = tuple(item.name for item in dataclasses.fields(RunRecord) if item.name not in (EXTRAS, "record_version"))


def method_extras(record: Mapping[str, Any]) -> dict[str, Any]:
    """The method's own fields of a record in its JSON form, of any version: the keys under EXTRAS, and any
    top-level key `RunRecord` does not declare (where versions before 5 kept them)."""
    declared = {*_DECLARED, EXTRAS, "record_version"}
    return {**{key: value for key, value in record.items() if key not in declared}, **(record.get(EXTRAS) or {})}


def build_record(spec, ctx, method, config: dict, state: TrainingState, val, test, posthoc: dict | None,
                 health: list[str], stopped_early: dict | None, wall_s: float, test_s: float) -> dict:
    """The record of a finished run in its JSON form (`RunRecord.to_json`; the runner adds `predictions`):
    what ran (spec, resolved settings, preprocessing, precision, data), how it went (metrics on val and test,
    post-hoc adjustment, epochs, selection, health) and what it cost."""
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
    return RunRecord(
        run_id=ctx.run_dir.name, method=method.name, report_order=list(method.report_order()),
        dataset=dataset.name,
        backbone=spec.backbone, seed=spec.seed, sweep=spec.sweep, tags=spec.tags,
        hparams=config["hparams"], dataset_options=config["dataset_options"],
        val=val.summary(), test=test.summary(), posthoc=posthoc,
        selected=state.selected, epochs_trained=len(state.history),
        selection=selection.rule(metric),
        convergence=selection.convergence(state.history, schedules, metric),
        health=Health(ok=not health, flags=health), stopped_early=stopped_early,
        trainable_params=count_parameters(method.phases()),
        checkpoint=Checkpoint(spec.checkpoint, file_sha256(Path(spec.checkpoint))) if spec.checkpoint else None,
        total_params=sum(p.numel() for p in method.model().parameters()),
        train_time_s=round(state.train_time_s, 3), wall_time_s=round(wall_s, 3),
        data_wait_share=round(state.data_wait_s / state.train_time_s, 4) if state.train_time_s > 0 else None,
        test_ms_per_image=None if method.predicts_from_features()  # the backbone's pass is not timed
        else round(1000 * test_s / max(1, len(dataset.test)), 3),  # with data loading
        device=manifest["device"], world=World(world().size, world().all_gather(manifest["device"])),
        threads=torch.get_num_threads(),  # torch threads of each of the run's processes
        precision=ctx.precision, data_paths=ctx.data_paths,
        preprocessing=config["preprocessing"],
        pretrained=backbone.weights_info.pretrained,
        weights_source=backbone.weights_info.source, weights_provenance=backbone.weights_info.provenance,
        shot_convention=ctx.hparams["shot_convention"],
        num_classes=dataset.num_classes, train_size=len(dataset.train),
        val_split=ValSplit(dataset.val_source, len(dataset.val),
                           dataset.val_carve.as_record() if dataset.val_carve is not None else None),
        notes=ctx.notes, run_dir=str(ctx.run_dir),
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        extras=method.extra_record(),
    ).to_json()


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

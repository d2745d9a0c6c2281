"""What plots read from a configuration's run folders besides the records: per-class test accuracy (its runs'
per_class.csv) and val learning curves (their metrics.json histories). A run folder is looked for where the
record says, then under `<results>/runs/<run_id>/`, since stores get moved; a damaged or foreign file is treated
as absent."""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterable
from pathlib import Path

from bench.report.aggregate import Configuration
from bench.selection import DEFAULT_METRIC

PER_CLASS_FILE = "per_class.csv"
METRICS_FILE = "metrics.json"


def run_file(record: dict, results_root: Path | None, name: str) -> Path | None:
    candidates = []
    if record.get("run_dir"):
        candidates.append(Path(record["run_dir"]) / name)
    if results_root is not None:
        candidates.append(Path(results_root) / "runs" / record["run_id"] / name)
    return next((path for path in candidates if path.is_file()), None)


def read_per_class(path: Path) -> dict[int, tuple[int, float | None]]:
    """class → (training count, test accuracy in %, None when the class has no test image)."""
    with path.open(newline="", encoding="utf-8") as handle:
        return {int(row["class"]): (int(row["train_count"]),
                                    float(row["test_acc"]) if row["test_acc"] else None)
                for row in csv.DictReader(handle)}


def configuration_per_class(configuration: Configuration,
                            results_root: Path | None) -> list[tuple[int, float]] | None:
    """(training count, test accuracy averaged over the seeds that have a per_class.csv) per class, by class
    index; None when no run of the configuration has one."""
    tables = []
    for record in configuration.records:
        path = run_file(record, results_root, PER_CLASS_FILE)
        if path is None:
            continue
        try:
            tables.append(read_per_class(path))
        except (OSError, KeyError, ValueError):
            continue
    if not tables:
        return None
    return [(tables[0][label][0], accuracy) for label in sorted(tables[0])
            if (accuracy := _mean(table.get(label, (0, None))[1] for table in tables)) is not None]


def configuration_curve(configuration: Configuration, results_root: Path | None
                        ) -> tuple[str, list[tuple[int, float]], list[int]] | None:
    """(the val metric the runs selected on, (epoch, its value averaged over the seeds that validated that
    epoch) for every validated epoch, counting epochs across phases from 1, the last epoch of every phase but
    the last); None when no run of the configuration has a history with val."""
    curves, boundaries, metric = [], [], None
    for record in configuration.records:
        path = run_file(record, results_root, METRICS_FILE)
        metric = metric or (record.get("hparams") or {}).get("selection_metric", DEFAULT_METRIC)
        try:
            history = json.loads(path.read_text())["history"] if path is not None else []
            curve = {epoch: entry["val"][metric] for epoch, entry in enumerate(history, start=1)
                     if (entry.get("val") or {}).get(metric) is not None}
        except (OSError, KeyError, TypeError, ValueError):
            continue
        if curve:
            curves.append(curve)
            boundaries = boundaries or [epoch for epoch, (entry, after) in
                                        enumerate(itertools.pairwise(history), start=1)
                                        if entry["phase"] != after["phase"]]
    if not curves:
        return None
    epochs = sorted(set().union(*curves))
    return metric, [(epoch, _mean(curve.get(epoch) for curve in curves)) for epoch in epochs], boundaries


def _mean(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None

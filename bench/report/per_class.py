"""Per-class test accuracy of a configuration, from its runs' per_class.csv (the one input that is not a
record: plots need accuracy per class). A run folder is looked for where the record says, then under
`<results>/runs/<run_id>/`, since stores get moved."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from bench.report.aggregate import Configuration

PER_CLASS_FILE = "per_class.csv"


def per_class_path(record: dict, results_root: Path | None) -> Path | None:
    candidates = []
    if record.get("run_dir"):
        candidates.append(Path(record["run_dir"]) / PER_CLASS_FILE)
    if results_root is not None:
        candidates.append(Path(results_root) / "runs" / record["run_id"] / PER_CLASS_FILE)
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
        path = per_class_path(record, results_root)
        if path is None:
            continue
        try:
            tables.append(read_per_class(path))
        except (OSError, KeyError, ValueError):  # a damaged or foreign file is treated as absent
            continue
    if not tables:
        return None
    return [(tables[0][label][0], accuracy) for label in sorted(tables[0])
            if (accuracy := _mean(table.get(label, (0, None))[1] for table in tables)) is not None]


def _mean(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None

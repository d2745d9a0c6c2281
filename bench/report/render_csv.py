"""The leaderboards as plain numbers: one row per configuration shown, with mean, std and n per metric."""

from __future__ import annotations

import csv
import io

from bench.report.aggregate import METRICS, Configuration, Stat
from bench.report.tables import Report

STAT_PARTS = ("mean", "std", "n")
COLUMNS = ["dataset", "protocol", "method", "backbone", "image_size", "pretrained", "shot_convention", "seeds",
           "configs",
           *(f"test_{metric}_{part}" for metric in METRICS for part in STAT_PARTS),
           *(f"val_overall_{part}" for part in STAT_PARTS),
           "trainable_params", "train_time_s", "device", "test_ms_per_image", "run_ids"]


def render_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for section in report.datasets:
        for row in section.leaderboard:
            configuration = row.configuration
            writer.writerow([
                section.dataset, section.protocol or "", configuration.method, configuration.backbone or "",
                "" if configuration.image_size is None else configuration.image_size,
                str(configuration.pretrained).lower(), configuration.shot_convention, configuration.seeds,
                row.candidates,
                *(cell for metric in METRICS for cell in _stat_cells(configuration.metric("test", metric))),
                *_stat_cells(configuration.metric("val", "overall")),
                _mean(configuration, "trainable_params", integer=True), _mean(configuration, "train_time_s"),
                "; ".join(configuration.devices()), _mean(configuration, "test_ms_per_image"),
                " ".join(record["run_id"] for record in configuration.records)])
    return buffer.getvalue()


def _stat_cells(stat: Stat | None) -> list[str]:
    if stat is None:
        return ["", "", "0"]
    return [repr(stat.mean), "" if stat.std is None else repr(stat.std), str(stat.n)]


def _mean(configuration: Configuration, name: str, integer: bool = False) -> str:
    stat = configuration.field(name)
    if stat is None:
        return ""
    return str(round(stat.mean)) if integer else repr(stat.mean)

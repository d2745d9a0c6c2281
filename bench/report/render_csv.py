"""The leaderboards as plain numbers: one row per configuration shown, with mean, std and n per metric."""

from __future__ import annotations

import csv
import io

from bench.report.aggregate import LEADERBOARD_METRICS, Configuration, Stat
from bench.report.significance import Evidence
from bench.report.tables import Report

STAT_PARTS = ("mean", "std", "n")
COLUMNS = ["dataset", "protocol", "method", "backbone", "image_size", "pretrained", "shot_convention", "seeds",
           "configs",
           *(f"test_{metric}_{part}" for metric in LEADERBOARD_METRICS for part in STAT_PARTS),
           "test_overall_ci_low", "test_overall_ci_high", "test_few_ci_low", "test_few_ci_high",
           "below_best", "p_not_below_best", "selection_metric", *(f"val_selection_{part}" for part in STAT_PARTS),
           "converged", "trainable_params", "train_time_s", "device", "test_ms_per_image", "run_ids"]


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
                *(cell for metric in LEADERBOARD_METRICS for cell in _stat_cells(configuration.metric("test", metric))),
                *_evidence_cells(row.evidence), section.metric,
                *_stat_cells(configuration.metric("val", section.metric)),
                str(not configuration.still_rising).lower(), _mean(configuration, "trainable_params", integer=True), _mean(configuration, "train_time_s"),
                "; ".join(configuration.devices()), _mean(configuration, "test_ms_per_image"),
                " ".join(record["run_id"] for record in configuration.records)])
    return buffer.getvalue()


def _evidence_cells(evidence: Evidence | None) -> list[str]:
    if evidence is None:
        return [""] * 6
    few = [repr(evidence.few.low), repr(evidence.few.high)] if evidence.few else ["", ""]
    return [repr(evidence.overall.low), repr(evidence.overall.high), *few, str(evidence.below_best).lower(),
            repr(evidence.p_value)]


def _stat_cells(stat: Stat | None) -> list[str]:
    if stat is None:
        return ["", "", "0"]
    return [repr(stat.mean), "" if stat.std is None else repr(stat.std), str(stat.n)]


def _mean(configuration: Configuration, name: str, integer: bool = False) -> str:
    stat = configuration.field(name)
    if stat is None:
        return ""
    return str(round(stat.mean)) if integer else repr(stat.mean)

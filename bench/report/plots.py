"""Report figures, one set per dataset, as PNG bytes. Deterministic: fixed size and dpi, no date or software
metadata, and the object-oriented matplotlib API (no pyplot state, no backend switch)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.report.formatting import devices, method_label
from bench.report.run_files import configuration_curve, configuration_per_class
from bench.report.tables import DatasetReport, LeaderboardRow, Report

FIGURE_SIZE = (8.0, 4.8)
DPI = 100
SHOT_GROUPS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#2ca02c"}  # group → bar colour
MARKERS = "osD^vP*Xhp<>"
LABEL_MERGE = 0.04  # fraction of the plotted span within which point labels are merged
RUN_FOLDERS = "(looked in each record's run_dir, then in runs/ beside the records)"


@dataclass(frozen=True)
class Plot:
    dataset: str
    filename: str  # relative to the report folder
    title: str
    png: bytes


@dataclass
class Plots:
    images: list[Plot] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)  # dataset → what could not be plotted, and why


def make_plots(report: Report, results_root: Path | None) -> Plots:
    plots = Plots()
    for section in report.datasets:
        if section.leaderboard:
            _dataset_plots(section, results_root, plots)
    return plots


def row_label(row: LeaderboardRow) -> str:
    return method_label(row.configuration.method, row.configuration.pretrained,
                        bool(row.configuration.health_flags), bool(row.configuration.still_rising))


def _dataset_plots(section: DatasetReport, results_root: Path | None, plots: Plots) -> None:
    notes = plots.notes.setdefault(section.key, [])
    makers: list[tuple[str, str, Callable]] = [
        ("shot_groups", "test accuracy by shot group", _shot_groups),
        ("accuracy_vs_params", "test overall vs trainable parameters", _against("trainable_params",
                                                                                  "trainable parameters")),
        ("accuracy_vs_train_time", "test overall vs training time", _against("train_time_s",
                                                                               "training time (s)")),
        ("per_class", "per-class test accuracy vs training images", _per_class(results_root)),
        ("val_curves", "val learning curves", _val_curves(results_root)),
    ]
    for kind, title, draw in makers:
        figure = _figure()
        if draw(figure.axes[0], section.leaderboard, notes):
            figure.axes[0].set_title(f"{section.title}: {title}")
            plots.images.append(Plot(section.key, f"plots/{section.key}_{kind}.png",
                                     f"{section.title}: {title}", _png(figure)))
    if not notes:
        del plots.notes[section.key]


def _figure():
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    figure.add_subplot()
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _style(index: int) -> dict:
    from matplotlib import colormaps

    # tab10: no two neighbours share a hue (tab20 pairs a colour with its light shade); (colour, marker) repeats
    # after 60 rows
    return {"color": colormaps["tab10"](index % 10), "marker": MARKERS[index % len(MARKERS)]}


def _shot_groups(axes, rows: list[LeaderboardRow], notes: list[str]) -> bool:
    width, drawn = 0.8 / len(SHOT_GROUPS), False
    for offset, (group, color) in enumerate(SHOT_GROUPS.items()):
        positions, heights, errors = [], [], []
        for index, row in enumerate(rows):
            value = row.configuration.metric("test", group)
            if value is not None:
                positions.append(index + (offset - 1) * width)
                heights.append(value.mean)
                errors.append(value.std or 0.0)
        if not positions:
            notes.append(f"The shot-group plot has no {group} bars: that group is empty in every run.")
            continue
        axes.bar(positions, heights, width, yerr=errors if any(errors) else None, capsize=2, label=group,
                 color=color)
        drawn = True
    if not drawn:
        return False
    axes.set_xticks(range(len(rows)), [row_label(row) for row in rows], rotation=35, ha="right")
    axes.set_ylabel("test accuracy (%)")
    axes.set_ylim(0, 100)
    axes.legend(loc="upper right", fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    return True


def _against(field_name: str, label: str) -> Callable:
    def draw(axes, rows: list[LeaderboardRow], notes: list[str]) -> bool:
        left_out, points = [], []
        for index, row in enumerate(rows):
            x, y = row.configuration.field(field_name), row.configuration.metric("test", "overall")
            if x is None or x.mean <= 0 or y is None:
                left_out.append(row.configuration.method)
                continue
            axes.errorbar(x.mean, y.mean, yerr=y.std or 0.0, capsize=2, linestyle="none", **_style(index))
            points.append((math.log10(x.mean), y.mean, row_label(row)))
        for (x, y), names in _label_clusters(points).items():
            axes.annotate(", ".join(names), (10 ** x, y), xytext=(4, 3), textcoords="offset points",
                          fontsize="x-small")
        if left_out:
            notes.append(f"The {label} plot leaves out {', '.join(left_out)}: no positive {field_name} "
                         "or no test overall in the records.")
        if not points:
            return False
        axes.set_xscale("log")
        where = devices([d for row in rows for d in row.configuration.devices()])
        axes.set_xlabel(f"{label}, log scale" + (f" (on {where})" if field_name == "train_time_s" else ""))
        axes.set_ylabel("test overall accuracy (%)")
        axes.grid(alpha=0.3, which="both")
        return True

    return draw


def _label_clusters(points: list[tuple[float, float, str]]) -> dict[tuple[float, float], list[str]]:
    """Labels of points closer than LABEL_MERGE of the plotted span, joined so that they never overprint."""
    if not points:
        return {}
    x_span = (max(p[0] for p in points) - min(p[0] for p in points)) or 1.0
    y_span = (max(p[1] for p in points) - min(p[1] for p in points)) or 1.0
    clusters: dict[tuple[float, float], list[str]] = {}
    for x, y, name in points:
        anchor = next((a for a in clusters if abs(a[0] - x) < LABEL_MERGE * x_span
                       and abs(a[1] - y) < LABEL_MERGE * y_span), (x, y))
        clusters.setdefault(anchor, []).append(name)
    return clusters


def _say_missing(notes: list[str], plot: str, file: str, missing: list[str], rows: list[LeaderboardRow]) -> bool:
    """Note the rows a plot read from run folders leaves out for want of `file`; False when it has none left."""
    if missing and len(missing) == len(rows):
        notes.append(f"No {plot} plot: no {file} for {', '.join(missing)} {RUN_FOLDERS}.")
    elif missing:
        notes.append(f"The {plot} plot leaves out {', '.join(missing)}: no {file} {RUN_FOLDERS}.")
    return len(missing) < len(rows)


def _per_class(results_root: Path | None) -> Callable:
    def draw(axes, rows: list[LeaderboardRow], notes: list[str]) -> bool:
        missing = []
        for index, row in enumerate(rows):
            points = configuration_per_class(row.configuration, results_root)
            if points is None:
                missing.append(row.configuration.method)
                continue
            points.sort()
            axes.plot([count for count, _ in points], [accuracy for _, accuracy in points], linewidth=0.8,
                      markersize=4, alpha=0.85, label=row_label(row), **_style(index))
        if not _say_missing(notes, "per-class", "per_class.csv", missing, rows):
            return False
        axes.set_xscale("log")
        axes.set_xlabel("training images of the class, log scale")
        axes.set_ylabel("test accuracy (%)")
        axes.set_ylim(-2, 102)
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
        return True

    return draw


def _val_curves(results_root: Path | None) -> Callable:
    """Each row's val selection metric per epoch (mean over its seeds; epochs counted across phases, a dot at
    the end of each phase but the last): whether a budget let each method's curve flatten."""
    def draw(axes, rows: list[LeaderboardRow], notes: list[str]) -> bool:
        missing, metrics = [], set()
        for index, row in enumerate(rows):
            found = configuration_curve(row.configuration, results_root)
            if found is None:
                missing.append(row.configuration.method)
                continue
            metric, points, boundaries = found
            metrics.add(metric)
            style = _style(index)
            axes.plot([epoch for epoch, _ in points], [value for _, value in points], linewidth=0.9, alpha=0.85,
                      color=style["color"], label=row_label(row))
            ends = [(epoch, value) for epoch, value in points if epoch in boundaries]
            axes.plot([e for e, _ in ends], [v for _, v in ends], linestyle="none", **style)
        if not _say_missing(notes, "val-curve", "metrics.json with val epochs", missing, rows):
            return False
        axes.set_xlabel("epoch, across phases (a marker ends each phase but the last)")
        axes.set_ylabel(f"val {' / '.join(sorted(metrics))} (%)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
        return True

    return draw

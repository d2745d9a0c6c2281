"""`bench report`: leaderboards, ablation tables, sweep summaries and plots, read from the results store only.

records → tables.build_report (configurations, best-on-val, mean ± std) → document.build_document (cell text)
→ render_md / render_html / render_tex / render_csv; plots.make_plots draws the figures.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.atomic_io import atomic_write_bytes
from bench.errors import BenchError, UsageError
from bench.method_groups import UNKNOWN_ORDER
from bench.record import check_readable
from bench.report.document import Block, build_document
from bench.report.formatting import RISING_MARK
from bench.report.plots import make_plots
from bench.report.render_console import console_tables
from bench.report.render_csv import render_csv
from bench.report.render_html import render_html
from bench.report.render_md import render_markdown
from bench.report.render_tex import render_tex
from bench.report.tables import Report, build_report, protocol_of
from bench.store import ResultsStore

FILES = {"md": "leaderboard.md", "html": "report.html", "tex": "leaderboard.tex", "csv": "leaderboard.csv"}
DEFAULT_FORMATS = "md,html"
PLOTTED_FORMATS = ("md", "html")  # the formats that show the plots (markdown links them, HTML embeds them)
# published rows for: the datasets with records | every dataset that has some | none
PUBLISHED_CHOICES = ("store", "all", "none")
ALL_RUNS = "all"  # the report folder of every run in the store: <results>/reports/all/

__all__ = [
    "DEFAULT_FORMATS",
    "FILES",
    "PUBLISHED_CHOICES",
    "RISING_MARK",
    "NothingToReport",
    "Report",
    "ReportResult",
    "build_report",
    "console_tables",
    "load_records",
    "method_order",
    "parse_formats",
    "protocol_of",
    "render_report",
    "report_folder",
    "write_files",
    "write_report",
]
REQUIRED_FIELDS = ("run_id", "method", "dataset")


class NothingToReport(BenchError):
    """The store has no records (to report on): said plainly, and nothing is written."""


@dataclass
class ReportResult:
    folder: Path
    written: list[Path]
    records: list[dict]  # the records reported on
    report: Report  # the tables (leaderboards, ablations, sweeps) per dataset
    blocks: list[Block]  # the document they were rendered from (`console_tables(blocks)` prints it)


def report_folder(root: Path, protocol: str | None = None, dataset: str | None = None) -> Path:
    """Where a report goes: <results>/reports/<protocol>/ for one protocol's runs (where `bench benchmark` puts
    its report), <results>/reports/all/ for the whole store; one dataset's adds -<dataset>."""
    return root / "reports" / "-".join(part for part in (protocol or ALL_RUNS, dataset) if part)


def write_report(root: Path, *, dataset: str | None = None, protocol: str | None = None,
                 formats: Sequence[str] = ("md", "html"), report_dir: Path | None = None, published: str = "store",
                 source: str | None = None) -> ReportResult:
    """The report of the records in the results store at `root` (of one dataset, a name or alias; of one
    protocol: its name, or its name and hash as runs are tagged), written to `report_dir` (default:
    `report_folder`); `source` names the store in the report (default: `root`, relative to the working folder
    when under it). Raises NothingToReport, writing nothing, when there are no such records."""
    if published not in PUBLISHED_CHOICES:
        raise UsageError(f"published={published!r}: choose one of {', '.join(PUBLISHED_CHOICES)}")
    store = ResultsStore(root)
    records = load_records(store, dataset)
    if protocol is not None:
        records = [r for r in records if protocol in ((protocol_of(r) or "").split(" ")[0], protocol_of(r))]
        if not records:
            raise NothingToReport(f"no records of protocol {protocol} in {root}/records "
                                  "(run `bench benchmark` first)")
    if source is None:
        source = str(root.relative_to(Path.cwd()) if root.is_relative_to(Path.cwd()) else root)
    folder = report_dir or report_folder(root, protocol, records[0]["dataset"] if dataset is not None else None)
    built = build_report(records, method_order(records), source, published, predictions=store.predictions)
    files, blocks = render_report(built, formats, store.root)
    return ReportResult(folder, write_files(folder, files), records, built, blocks)


def parse_formats(text: str) -> list[str]:
    names = list(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in FILES]
    if unknown or not names:
        raise UsageError(f"unknown report format {', '.join(unknown) or repr(text)}: choose from "
                         f"{', '.join(FILES)} (comma-separated)")
    return names


def load_records(store: ResultsStore, dataset: str | None = None) -> list[dict]:
    """The store's records, of one dataset (a registered name or alias) when given; a record without a run id,
    method or dataset is skipped with a warning."""
    records = []
    for record in store.records():
        missing = [name for name in REQUIRED_FIELDS if not isinstance(record.get(name), str)]
        if missing:
            warnings.warn(f"skipping record {record.get('run_id', '?')}: no {', '.join(missing)}",
                          stacklevel=2)
        else:
            records.append(record)
    if not records:
        raise NothingToReport(f"no records in {store.folder}: run `bench run` first")
    check_readable(records)
    if dataset is None:
        return records
    present = {record["dataset"] for record in records}
    if dataset not in present:
        import bench.datasets  # noqa: F401  (registers the datasets)
        from bench.datasets.base import DATASETS

        dataset = DATASETS.canonical(dataset)
    selected = [record for record in records if record["dataset"] == dataset]
    if not selected:
        raise NothingToReport(f"no records of dataset {dataset} in {store.folder} (it has "
                              f"{', '.join(sorted(present))})")
    return selected


def method_order(records: Sequence[dict]) -> list[str]:
    """The methods of `records` in report order (bench.method_groups, the order of every table's rows), from the
    `report_order` each record carries. Records written before they carried it are placed by the method registry,
    imported (with torch) only then; a method neither recorded with its order nor registered comes last, by name."""
    order = {record["method"]: tuple(record["report_order"]) for record in records if record.get("report_order")}
    unplaced = {record["method"] for record in records} - order.keys()
    if unplaced:
        import bench.methods  # noqa: F401  (registers the names)
        from bench.methods.base import METHODS

        registered = dict(METHODS.items())
        order |= {name: registered[name].report_order() if name in registered else UNKNOWN_ORDER for name in unplaced}
    return sorted(order, key=lambda name: (order[name], name))


def render_report(report: Report, formats: Sequence[str],
                  results_root: Path | None) -> tuple[dict[str, bytes], list[Block]]:
    """({path relative to the report folder: content}, the document's blocks); nothing is written here."""
    plots = make_plots(report, results_root) if set(formats) & set(PLOTTED_FORMATS) else None
    blocks = build_document(report, plots)
    renderers = {"md": lambda: render_markdown(blocks), "html": lambda: render_html(blocks),
                 "tex": lambda: render_tex(blocks), "csv": lambda: render_csv(report)}
    files = {FILES[name]: renderers[name]().encode("utf-8") for name in formats}
    for plot in plots.images if plots else []:
        files[plot.filename] = plot.png
    return files, blocks


def write_files(out: Path, files: dict[str, bytes]) -> list[Path]:
    paths = []
    for relative, content in files.items():
        atomic_write_bytes(out / relative, content)
        paths.append(out / relative)
    return paths

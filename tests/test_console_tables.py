"""What the commands print, at 80 columns and into a pipe (no name cut with "…", no number or header split over
lines); `bench list hparams` with the defaults `bench run` uses; `bench runs` and `bench show latest`."""

from __future__ import annotations

import io
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

import bench.cli
from bench.atomic_io import atomic_write_json
from bench.cli import app
from bench.console_tables import RunRow, hparams_tables, metrics_table, runs_table, settings_table
from bench.report import build_report, console_tables, load_records, method_order, render_report
from bench.store import ResultsStore

sys.path.insert(0, str(Path(__file__).parent))
from test_report import fixed_records, write_store

WIDTH = 80
LONG_ID = "digits_lt-lptpp_no_group_prompts-20260101-120000-abcdef"


def piped(width: int = WIDTH) -> Console:
    """A console as a pipe gets one: not a terminal, `width` columns."""
    return Console(file=io.StringIO(), width=width, record=True)


def assert_intact(table: Table, console: Console | None = None) -> None:
    """Rendered at 80 columns, nothing is cut, and every header and cell of a column that does not wrap stands
    whole on one line; in a column that wraps (prose, a list of values) every word and number does."""
    console = console or piped()
    console.print(table)
    lines = console.export_text().splitlines()
    assert all(len(line) <= WIDTH for line in lines)
    assert not any("…" in line for line in lines), "\n".join(lines)
    for column in table.columns:
        for cell in (column.header, *column.cells):
            for part in [str(cell)] if column.no_wrap else str(cell).split():
                assert any(part in line for line in lines), f"{part!r} is split or cut:\n" + "\n".join(lines)


def a_record(run_id: str = LONG_ID, method: str = "lptpp_no_group_prompts") -> dict:
    metrics = {"overall": 100.0, "mean_per_class": 100.0, "many": 100.0, "medium": 99.99, "few": 100.0,
               "worst_class": 100.0, "harmonic_mean": 100.0, "macro_f1": 100.0}
    return {"run_id": run_id, "method": method, "dataset": "digits_lt", "backbone": "vit_micro.fmnist",
            "pretrained": True, "seed": 0, "val": metrics, "test": metrics, "posthoc": {"tau": 1.0, "test": metrics},
            "trainable_params": 204352, "train_time_s": 12.5, "device": "cpu (x86_64, 2 threads)",
            "precision": "fp32", "shot_convention": "standard", "finished_at": "2026-01-01T12:00:00+00:00"}


def test_every_table_fits_80_columns_without_cutting_or_splitting(tmp_path):
    assert_intact(metrics_table(a_record()))
    assert_intact(settings_table("hyperparameters", {"vl_backbone": "open_clip:ViT-B-16-quickgelu@openai",
                                                     "shared_prefix": True, "lr": 0.02}))
    rows = [RunRow(LONG_ID, "interrupted", "lptpp_no_group_prompts", "cifar100_lt", 100.0,
                   "2026-01-01T12:00:00+00:00"), RunRow("digits_lt-lpt-20260101-120001-abcdef", "running", "lpt",
                                                        "digits_lt", None, None)]
    console = piped()
    table = runs_table(rows, console, "2 of 2 runs")
    assert_intact(table, console)
    assert "left out at this width: dataset, method and finished" in str(table.caption)
    assert [column.header for column in runs_table(rows, piped(200), "").columns] == [
        "run", "state", "method", "dataset", "test", "finished"]  # all of them where they fit

    for method in ("lpt", "lptpp", "finetune", "vpt_deep"):
        for table in hparams_tables(method, "digits_lt", None)[1]:
            assert_intact(table)

    store = write_store(tmp_path / "fixed", fixed_records())
    report = build_report(records := load_records(store), method_order(records), "results")
    blocks = render_report(report, ["csv"], None)[1]
    for table in console_tables(blocks, piped()):
        assert_intact(table)

    from bench.sweeps.summary import ablation_summary

    ablation = [{**a_record(f"a-{variant}-s{seed}", variant), "seed": seed}
                for variant in ("lptpp", "lptpp_no_group_prompts") for seed in (0, 1)]
    sweep = SimpleNamespace(name="ablate-lptpp-digits_lt-20260101-120000", num_trials=4, records=lambda: ablation,
                            metric="val_mean_per_class",
                            trials=[SimpleNamespace(method=r["method"]) for r in ablation])
    console = piped()
    ablation_summary(sweep, console)
    text = console.export_text()
    assert "…" not in text and "lptpp_no_group_prompts" in text and "100.00 ± 0.00" in text


def test_list_hparams_shows_what_bench_run_uses(monkeypatch):
    embedded = {table.title: table for table in hparams_tables("lpt", "digits_lt", None)[1]}
    declared = {table.title: table for table in hparams_tables("lpt", "digits_lt", "vit_micro.fmnist")[1]}

    def defaults(tables, title):
        table = tables[title]
        return dict(zip(map(str, table.columns[0].cells), map(str, table.columns[1].cells), strict=True))

    assert defaults(embedded, "method lpt")["lr"] == "0.1" and defaults(declared, "method lpt")["lr"] == "0.02"
    assert defaults(embedded, "method lpt")["phase1_epochs"] == "6"
    assert defaults(declared, "method lpt")["phase1_epochs"] == "90"
    assert defaults(embedded, "common")["image_size"] == "16"
    assert defaults(declared, "common")["image_size"] == "0"  # 0: the tower's own

    monkeypatch.setattr(bench.cli, "console", piped())
    shown = CliRunner().invoke(app, ["list", "hparams", "--method", "lpt"])
    assert shown.exit_code == 0, shown.output
    text = " ".join(bench.cli.console.export_text().split())  # a cell may wrap onto the next line
    assert "preset, declared 0.02" in text and "vit_micro.fmnist" in shown.output


def fabricated_run(root: Path, run_id: str, state: str, seconds_ago: int, record: dict | None) -> None:
    folder = root / "runs" / run_id
    atomic_write_json(folder / "config.json", {"method": "lpt", "dataset": "digits_lt", "hparams": {"lr": 0.1},
                                               "dataset_options": {"imbalance_factor": 20.0}})
    atomic_write_json(folder / "status.json", {"state": state})
    stamp = (folder / "config.json").stat().st_mtime - seconds_ago
    os.utime(folder / "config.json", (stamp, stamp))
    if record:
        ResultsStore(root).add(record)


def test_runs_lists_the_latest_first_and_show_latest_shows_it(tmp_path, monkeypatch):
    older, newer = "digits_lt-lpt-20260101-120000-aaaaaa", "digits_lt-lpt-20260101-130000-bbbbbb"
    fabricated_run(tmp_path, older, "complete", 60, {**a_record(older, "lpt"), "test": {"overall": 81.4}})
    fabricated_run(tmp_path, newer, "failed", 0, None)
    monkeypatch.setattr(bench.cli, "console", piped())
    listed = CliRunner().invoke(app, ["runs", "--out", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    lines = bench.cli.console.export_text().splitlines()
    assert "…" not in "".join(lines)
    first, second = (next(i for i, line in enumerate(lines) if run in line) for run in (newer, older))
    assert first < second and "failed" in lines[first] and "81.40" in lines[second]

    monkeypatch.setattr(bench.cli, "console", piped())
    shown = CliRunner().invoke(app, ["show", "latest", "--out", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    text = bench.cli.console.export_text()
    assert newer in text and re.search(r"\nlr +0\.1", text) and re.search(r"\nimbalance_factor +20\.0", text)
    assert "{" not in text

    for args, message in ((["runs", "--out", str(tmp_path / "none")], "no runs under"),
                          (["show", "latest", "--out", str(tmp_path / "none")], "no runs under"),
                          (["runs", "--out", str(tmp_path), "--method", "finetune"], "no runs of method finetune")):
        refused = CliRunner().invoke(app, args)
        assert refused.exit_code == 1 and message in refused.output


def test_runs_refuses_a_negative_count(tmp_path):
    refused = CliRunner().invoke(app, ["runs", "--out", str(tmp_path), "--last", "-1"])
    assert refused.exit_code == 2 and "--last -1" in refused.output


def test_report_writes_to_reports_all_by_default(tmp_path, monkeypatch):
    store = write_store(tmp_path, fixed_records())
    monkeypatch.setattr(bench.cli, "console", piped())
    made = CliRunner().invoke(app, ["report", "--out", str(store.root), "--format", "md"])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "reports" / "all" / "leaderboard.md").exists() and not (tmp_path / "report").exists()
    assert "…" not in bench.cli.console.export_text()

"""The committed benchmark stores under results/published/: each one's report is what `bench report` rebuilds
from its records and run files alone, so the README's leaderboard stays traceable to the runs behind it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app

PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published"
STORES = sorted(path for path in PUBLISHED.glob("*") if (path / "records").is_dir()) if PUBLISHED.is_dir() else []


def report_lines(leaderboard: Path) -> list[str]:
    """The report's lines but the one naming the folder its records were read from."""
    return [line for line in leaderboard.read_text(encoding="utf-8").splitlines() if "records read from" not in line]


@pytest.mark.skipif(not STORES, reason="no published benchmark store in this checkout")
@pytest.mark.parametrize("store", STORES, ids=[store.name for store in STORES])
def test_a_published_report_is_rebuilt_from_its_store_alone(tmp_path, store):
    copy = tmp_path / store.name
    shutil.copytree(store / "records", copy / "records")
    shutil.copytree(store / "runs", copy / "runs")
    # the records name the run folders where they ran; their copies here are found by run id, as a moved store's
    result = CliRunner().invoke(app, ["report", "--out", str(copy), "--protocol", store.name, "--format", "md"])
    assert result.exit_code == 0, result.output
    committed = report_lines(store / "reports" / store.name / "leaderboard.md")
    rebuilt = report_lines(copy / "reports" / store.name / "leaderboard.md")
    assert sum(line.startswith("| ") for line in committed) >= 3  # a header and rows
    assert rebuilt == committed  # every figure, note and plot (a plot short of run files would add a note)

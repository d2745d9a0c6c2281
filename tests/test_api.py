"""The Python API (`bench.api`): run, sweep, benchmark and report as plain functions, and where reports go."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import PROBE_ONLY
from rich.console import Console

from bench import api
from bench.report import NothingToReport


def test_run_sweep_benchmark_and_report_from_python(tmp_path):
    quiet, out = Console(quiet=True), str(tmp_path)
    result = api.run("finetune", settings={"epochs": 1}, out=out, console=quiet)  # the embedded default
    record = result.record
    assert record["backbone"] == "vit_micro.fmnist" and record["pretrained"]
    assert record["hparams"]["epochs"] == 1 and record["hparams"]["image_size"] == 16  # the preset, then settings

    swept = api.sweep("finetune", trials=1, search="random", scheduler="none", executor="local",
                      settings={"epochs": 1}, out=out, console=quiet)
    assert [r["run_id"] for r in swept.records] == [swept.best["run_id"]]
    assert swept.rerun.startswith("bench run --method finetune --dataset digits_lt")

    protocol = tmp_path / "mine.toml"
    protocol.write_text(PROBE_ONLY)
    done = api.benchmark(str(protocol), out=out, formats=["csv"], console=quiet)
    assert done.planned == 1 and len(done.report.records) == 1
    assert done.report.written == [tmp_path / "reports" / "mine" / "leaderboard.csv"]

    everything = api.report(out, formats="md")
    assert everything.folder == tmp_path / "reports" / "all" and len(everything.records) == 3
    assert (everything.folder / "leaderboard.md").exists()
    one = api.report(out, protocol="mine", dataset="digits", formats="csv")  # an alias: the canonical name
    assert one.folder == tmp_path / "reports" / "mine-digits_lt" and len(one.records) == 1
    with pytest.raises(NothingToReport, match="no records"):
        api.report(tmp_path / "empty")


def test_importing_the_api_does_not_import_torch():
    done = subprocess.run([sys.executable, "-c", "import sys, bench.api; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr

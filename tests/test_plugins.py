"""Plugins: a package installed beside lt-bench adds a method and a dataset through entry points, with no edit
here (the method order included). The method is the README's "Add your own method" example, taken from it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASET_PLUGIN = '''from bench.datasets.base import DATASETS, register_dataset

digits = DATASETS.get("digits_lt")
register_dataset("digits_again", description="the embedded digits, registered by a plugin",
                 options=digits.options)(digits.build)
'''


def readme_example() -> tuple[str, str]:
    section = (ROOT / "README.md").read_text().split("### Add your own method", 1)[1].split("\n### ", 1)[0]
    python, toml = re.findall(r"```(?:python|toml)\n(.*?)```", section, re.DOTALL)
    return python, toml


def install_plugin(site: Path) -> None:
    """What pip install puts in site-packages: the modules and a dist-info folder with the entry points."""
    code, entry_points = readme_example()
    (site / "my_lt_method").mkdir(parents=True)
    (site / "my_lt_method" / "__init__.py").write_text(code)
    (site / "my_lt_datasets.py").write_text(DATASET_PLUGIN)
    (site / "broken_plugin.py").write_text("raise ImportError('a broken plugin')\n")
    info = site / "my_lt_method-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-lt-method\nVersion: 0.1\n")
    declared = tomllib.loads(entry_points)["project"]["entry-points"]["lt_bench.methods"]  # the README's
    methods = "".join(f"{name} = {target}\n" for name, target in declared.items())
    (info / "entry_points.txt").write_text(f"[lt_bench.methods]\n{methods}broken = broken_plugin\n\n"
                                           "[lt_bench.datasets]\ndigits_again = my_lt_datasets\n")


def bench(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "bench", *args], check=False, capture_output=True, text=True,
                          env=env, cwd=site, timeout=600)


def test_an_installed_plugin_adds_a_method_and_a_dataset(tmp_path):
    site = tmp_path / "site"
    install_plugin(site)
    listed = bench(site, "list", "methods")
    assert listed.returncode == 0, listed.stderr
    assert "head_only" in listed.stdout and "an example plugin" in listed.stdout
    assert "plugin broken = 'broken_plugin'" in listed.stderr and "skipped" in listed.stderr
    assert "digits_again" in bench(site, "list", "datasets").stdout
    out = tmp_path / "results"
    ran = bench(site, "run", "--method", "head_only", "--dataset", "digits_again", "--backbone", "vit_micro",
                "--random-init", "--set", "epochs=1", "--set", "image_size=8", "--out", str(out))
    assert ran.returncode == 0, ran.stderr
    (record,) = [json.loads(path.read_text()) for path in (out / "records").glob("*.json")]
    assert record["method"] == "head_only" and "digits_again" in record["run_id"]  # built by digits_lt
    assert record["trainable_params"] == 64 * 10 + 10  # the head alone: the backbone stayed frozen

"""The README is the contract: it names every registered method and dataset and the commands CI runs."""

from __future__ import annotations

from pathlib import Path

import bench.datasets
import bench.methods  # noqa: F401
from bench.datasets.base import DATASETS
from bench.methods.base import METHODS

ROOT = Path(__file__).resolve().parents[1]


def test_readme_lists_every_method_and_dataset():
    readme = (ROOT / "README.md").read_text()
    for name in METHODS.names() + DATASETS.names():
        assert f"`{name}`" in readme, f"README does not mention {name}"


def test_ci_runs_the_readme_install_and_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && pytest' in readme
    assert 'pip install -q -e ".[test]"' in ci and "\npytest" in ci

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


def test_readme_commands_use_only_existing_options():
    import re

    import typer

    from bench.cli import app

    commands = typer.main.get_command(app).commands
    readme = (ROOT / "README.md").read_text()
    lines = re.sub(r"\\\n\s*", " ", readme).splitlines()  # join continued command lines
    checked = 0
    for line in lines:
        found = re.match(r"\s*bench (\w+)(.*)", line)
        if not found or found.group(1) not in commands:
            continue
        known = {opt for param in commands[found.group(1)].params for opt in param.opts}
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", found.group(2).split("#")[0]):
            assert flag in known, f"README: `bench {found.group(1)} ... {flag}` is not an option"
            checked += 1
    assert checked > 20

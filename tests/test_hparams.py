"""Hyperparameter declarations: typed --set parsing, and sampling that is stable per name."""

from __future__ import annotations

import pytest

from bench.errors import BenchError
from bench.hparams import Choice, HParam, LogUniform, parse_assignments, resolve, sample

DECLARED = {
    "lr": HParam(0.1, LogUniform(1e-3, 1.0)),
    "epochs": HParam(10),
    "use_ema": HParam(False),
    "optimizer": HParam("sgd", Choice(("sgd", "adamw")), choices=("sgd", "adamw")),
}


def test_overrides_are_parsed_to_the_declared_types():
    values = resolve(DECLARED, parse_assignments(["lr=0.5", "epochs=3", "use_ema=yes", "optimizer=adamw"]))
    assert values == {"lr": 0.5, "epochs": 3, "use_ema": True, "optimizer": "adamw"}


@pytest.mark.parametrize("assignment, message", [
    ("epochs=3.5", "expected int"), ("use_ema=maybe", "expected bool"), ("optimizer=adam", "must be one of"),
    ("epoch=3", "did you mean epochs"),
])
def test_bad_overrides_are_refused(assignment, message):
    with pytest.raises(BenchError, match=message):
        resolve(DECLARED, parse_assignments([assignment]))


def test_adding_a_hyperparameter_keeps_the_others_sampled_values():
    before = sample(DECLARED, trial_seed=7)
    after = sample({**DECLARED, "momentum": HParam(0.9, LogUniform(0.5, 0.99))}, trial_seed=7)
    assert {k: after[k] for k in before} == before
    assert 1e-3 <= before["lr"] <= 1.0 and before["epochs"] == 10
    assert sample(DECLARED, trial_seed=8)["lr"] != before["lr"]


@pytest.mark.parametrize("method, assignment, message", [
    ("finetune", "epochs=-1", r"--set epochs=-1: epochs must lie in \[0, inf\)"),
    ("lpt", "phase1_epochs=-1", r"phase1_epochs must lie in \[0, inf\)"),
    ("lptpp", "adapter_epochs=-2", r"adapter_epochs must lie in \[0, inf\)"),
    ("finetune", "lr=nan", "--set lr=nan: must be a finite number"),
    ("finetune", "lr=inf", "must be a finite number"),
    ("finetune", "lr=0", r"lr must lie in \(0, inf\)"),
    ("lpt", "head_dropout=1.5", r"head_dropout must lie in \[0, 1\)"),
    ("lpt", "batch_size=0", r"batch_size must lie in \[1, inf\)"),
    ("la", "la_tau=-1", r"la_tau must lie in \[0, inf\)"),
    ("finetune", "num_workers=-2", r"num_workers must lie in \[-1, inf\)"),
    ("linear_probe", "val_per_class=0", r"val_per_class must lie in \[1, inf\)"),
])
def test_out_of_range_numbers_are_refused_at_parse_time(method, assignment, message):
    from bench.options import declared_options

    with pytest.raises(BenchError, match=message):
        resolve(declared_options(method, "digits_lt"), parse_assignments([assignment]))


def test_every_declared_default_lies_inside_its_bounds():
    import bench.datasets
    import bench.methods  # noqa: F401
    from bench.datasets.base import DATASETS
    from bench.hparams import check_value
    from bench.methods.base import METHODS
    from bench.options import declared_options

    for method in METHODS.names():
        for dataset in DATASETS.names():
            for name, declared in declared_options(method, dataset).items():
                check_value(name, declared.default, declared, f"{method}/{dataset} default {name}")


def test_a_space_file_range_outside_the_bounds_is_refused(tmp_path):
    from bench.options import declared_options
    from bench.sweeps.space import apply_space_file

    declared = declared_options("finetune", "digits_lt")
    with pytest.raises(BenchError, match=r"space.yaml: lr: log_uniform \[0.0, 0.1\]: lr must lie in \(0, inf\)"):
        apply_space_file({}, {"lr": {"log_uniform": [0.0, 0.1]}}, declared, "space.yaml")
    with pytest.raises(BenchError, match="epochs must lie"):
        apply_space_file({}, {"epochs": {"int": [-3, 5]}}, declared, "space.yaml")


def test_list_hparams_shows_every_declared_option_with_its_source():
    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, ["list", "hparams", "--method", "lpt", "--dataset", "cifar10_lt"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    rows = {line.split()[0]: line for line in lines if line}
    assert {"phase2_epochs", "lr", "imbalance_factor", "amp", "data_cache"} <= set(rows)
    assert "official default 90" in rows["phase2_epochs"] and "log-uniform[0.002, 0.2]" in rows["lr"]
    where = [lines.index(line) for line in ("method lpt", rows["phase2_epochs"], "dataset cifar10_lt",
                                             rows["imbalance_factor"], "common", rows["amp"])]
    assert where == sorted(where)  # a table per declaration: the method's, the dataset's, the common options
    unknown = CliRunner().invoke(app, ["list", "hparams", "--method", "lpf"])
    assert unknown.exit_code == 2 and "unknown method 'lpf'" in unknown.output


def test_version_is_the_installed_one():
    from importlib.metadata import version

    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"bench {version('lt-bench')}"


@pytest.mark.parametrize(("args", "named"), [
    (["run", "--resume", "some-run", "--set", "lr=1", "--seed", "3"], "--set, --seed"),
    (["sweep", "--resume", "--name", "s", "--trials", "3"], "--trials"),
    (["ablate", "--resume", "--name", "a", "--seeds", "4"], "--seeds"),
])
def test_resume_refuses_options_it_would_ignore(args, named, tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and f"so {named} would be ignored" in result.output
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("args", [["sweep", "--executor", "nope"], ["sweep", "--search", "bayes"],
                                  ["sweep", "--scheduler", "hyperband"], ["report", "--published", "some"],
                                  ["list", "bogus"], ["benchmark", "embedded", "--executor", "slurm"]])
def test_choices_are_typed_usage_errors(args):
    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Invalid value" in result.output


def test_shell_completion_offers_registered_names_and_aliases():
    from bench.cli import _names

    assert {"cifar10_lt", "cifar100_lt", "cifar10", "cifar100"} <= set(_names("dataset")("cif"))
    assert "lpt" in _names("method")("lp") and "vit_micro" in _names("backbone")("vit_m")
    assert _names("method")("zzz") == []


def test_exit_codes_usage_2_runtime_1_interrupt_130(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import bench.run_folder
    from bench.cli import app

    usage = CliRunner().invoke(app, ["show", "x", "--out", str(tmp_path)], catch_exceptions=False)
    assert usage.exit_code == 1 and "no run 'x'" in usage.output  # well formed, but there is no such run
    wrong = CliRunner().invoke(app, ["list", "hparams", "--method", "lpf"])
    assert wrong.exit_code == 2 and "unknown method 'lpf'" in wrong.output

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.run_folder, "find_run", interrupted)
    stopped = CliRunner().invoke(app, ["show", "x", "--out", str(tmp_path)])
    assert stopped.exit_code == 130

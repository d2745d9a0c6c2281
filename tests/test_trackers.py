"""Experiment trackers: TensorBoard event files read back (scalars by epoch, test metrics, hyperparameters), per
trial in a sweep; a missing tracker package is one line."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from bench import runner
from bench.cli import app
from bench.store import ResultsStore

FAST = {"epochs": "2", "image_size": "8", "batch_size": "64", "val_every": "1"}


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def test_tensorboard_logs_scalars_hyperparameters_and_final_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    spec = runner.RunSpec(method="finetune", dataset="digits_lt", backbone="vit_micro", allow_random_init=True,
                          out=str(tmp_path), overrides=FAST, trackers=["tensorboard"])
    result = runner.execute(spec)
    events = read_events(result.run_dir / "tensorboard")
    losses = events.Scalars("train/loss")
    history = result.record["epochs_trained"]
    assert [event.step for event in losses] == [1, 2] == list(range(1, history + 1))  # epochs from 1, as the log
    assert [event.step for event in events.Scalars("val/overall")] == [1, 2]
    selection = events.Scalars("val/mean_per_class")  # the selection metric is tracked too
    history = json.loads((result.run_dir / "metrics.json").read_text())["history"]
    assert [event.value for event in selection] == pytest.approx([e["val"]["mean_per_class"] for e in history])
    (test,) = events.Scalars("test/overall")
    assert test.value == pytest.approx(result.record["test"]["overall"])
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["method"].string_value == "finetune"
    assert start.hparams["lr"].number_value == pytest.approx(result.record["hparams"]["lr"])
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "test/overall" in {info.name.tag for info in experiment.metric_infos}


def test_a_sweep_logs_each_trial_to_its_own_run_with_threads_that_fit(tmp_path):
    """Also: the local executor runs one trial at a time with the CPUs this process may use (recorded)."""
    pytest.importorskip("tensorboard")
    from bench.distributed import allowed_cpus

    out = tmp_path / "results"
    result = CliRunner().invoke(app, [
        "sweep", "--method", "finetune", "--backbone", "vit_micro", "--random-init", "--executor", "local",
        "--search", "random", "--scheduler", "none", "--trials", "2", "--out", str(out), "--name", "tracked",
        "--tracker", "tensorboard", *(part for key, value in FAST.items() for part in ("--set", f"{key}={value}"))])
    assert result.exit_code == 0, result.output
    records = ResultsStore(out).records()
    assert len(records) == 2
    for record in records:
        assert record["threads"] == allowed_cpus()
        events = read_events(out / "runs" / record["run_id"] / "tensorboard")
        assert events.Scalars("test/overall")[0].value == pytest.approx(record["test"]["overall"])


def test_local_trials_never_ask_for_more_cpus_than_the_process_may_use(tmp_path):
    from bench.distributed import allowed_cpus

    too_many = allowed_cpus() + 1
    result = CliRunner().invoke(app, ["sweep", "--executor", "local", "--cpus-per-trial", str(too_many), "--out",
                                      str(tmp_path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"--cpus-per-trial {too_many}: the local executor runs one trial at a time" in result.output
    assert not (tmp_path / "sweeps").exists()


def test_a_missing_tracker_package_is_one_line(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    result = CliRunner().invoke(app, ["run", "--method", "linear_probe", "--out", str(tmp_path), "--tracker",
                                      "mlflow"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "--tracker mlflow needs the mlflow package" in result.output
    assert "pip install 'lt-bench[mlflow]'" in result.output
    assert not (tmp_path / "runs").exists()


def test_mlflow_logs_to_a_local_file_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    spec = runner.RunSpec(method="finetune", dataset="digits_lt", backbone="vit_micro", allow_random_init=True,
                          out=str(tmp_path), overrides=FAST, trackers=["mlflow"])
    result = runner.execute(spec)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("lt-bench").experiment_id])
    assert run.info.run_name == result.run_id and run.info.status == "FINISHED"
    assert run.data.params["method"] == "finetune"
    assert run.data.metrics["test/overall"] == pytest.approx(result.record["test"]["overall"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]

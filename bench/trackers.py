"""Experiment trackers (`--tracker tensorboard`, `--tracker mlflow`): callbacks that log a run's training
scalars per epoch, and its hyperparameters and final metrics when it ends, beside the run's own files.

- tensorboard: event files in `<run folder>/tensorboard/` (`tensorboard --logdir results/runs` shows every run,
  a sweep's trials included); scalars `train/loss`, `train/lr`, `val/<metric>` by epoch (counted over all
  phases, from 1), `test/<metric>` at the end, and the hyperparameters with the final metrics (HPARAMS tab).
- mlflow: a local store in one file, `<results>/mlflow.db` (SQLite, MLflow's recommended local backend; `mlflow ui
  --backend-store-uri sqlite:///results/mlflow.db`; no server), one MLflow run per run, in an experiment named after its sweep, ablation or benchmark stage (else
  `lt-bench`): the same parameters and metrics.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bench.callbacks import Callback
from bench.errors import BenchError
from bench.metrics import ACCURACIES  # every accuracy a run reports, the selection metric among them

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # name → the package it needs


def check_trackers(names: list[str]) -> None:
    """Each tracker's package is installed (one line naming the install command otherwise)."""
    for name in names:
        if name not in TRACKERS:
            raise BenchError(f"unknown tracker {name!r}: one of {', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise BenchError(f"--tracker {name} needs the {TRACKERS[name]} package, which is not installed: "
                             f"pip install 'lt-bench[{name}]'")


def make_trackers(names: list[str], config: dict, run_dir: Path) -> list[Callback]:
    check_trackers(names)
    kinds = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker}
    return [kinds[name](config, run_dir) for name in names]


def run_params(config: dict) -> dict[str, str | int | float | bool]:
    """What a run is, flat: method, dataset, backbone, seed, then its hyperparameters and dataset options."""
    spec = config["spec"]
    params = {"method": config["method"], "dataset": config["dataset"], "backbone": spec["backbone"],
              "seed": spec["seed"], **config["hparams"], **config["dataset_options"]}
    return {key: value if isinstance(value, (str, int, float, bool)) else str(value) for key, value in params.items()}


def epoch_scalars(entry: dict) -> dict[str, float]:
    scalars = {"train/loss": entry["loss"], **({"train/lr": entry["lr"]} if entry["lr"] is not None else {})}
    val = entry.get("val") or {}
    scalars.update({f"val/{name}": val[name] for name in ACCURACIES if val.get(name) is not None})
    return scalars


def final_scalars(record: dict) -> dict[str, float]:
    return {f"{split}/{name}": record[split][name] for split in ("val", "test") for name in ACCURACIES
            if record[split].get(name) is not None}


class TensorBoardTracker(Callback):
    def __init__(self, config: dict, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.params = run_params(config)
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.step = 0

    def on_epoch_end(self, entry: dict, run_dir: Path) -> None:
        self.step = entry["step"]
        for tag, value in epoch_scalars(entry).items():
            self.writer.add_scalar(tag, value, self.step)
        self.writer.flush()  # an interrupted run keeps what it logged

    def on_run_end(self, record: dict, run_dir: Path) -> None:
        from torch.utils.tensorboard.summary import hparams

        final = final_scalars(record)
        step = record.get("epochs_trained", self.step)
        for tag, value in final.items():
            if tag.startswith("test/"):
                self.writer.add_scalar(tag, value, step)
        for summary in hparams(self.params, final):  # the HPARAMS tab: this run's settings and results
            self.writer.file_writer.add_summary(summary, step)
        self.writer.close()


class MLflowTracker(Callback):
    def __init__(self, config: dict, run_dir: Path):
        from mlflow.tracking import MlflowClient

        store = (run_dir.parents[1] / "mlflow.db").resolve()
        self.client = MlflowClient(tracking_uri=f"sqlite:///{store}")
        experiment = config["spec"].get("sweep") or "lt-bench"
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        for key, value in run_params(config).items():
            self.client.log_param(self.run_id, key, value)

    def on_epoch_end(self, entry: dict, run_dir: Path) -> None:
        for key, value in epoch_scalars(entry).items():
            self.client.log_metric(self.run_id, key, value, step=entry["step"])

    def on_run_end(self, record: dict, run_dir: Path) -> None:
        for key, value in final_scalars(record).items():
            self.client.log_metric(self.run_id, key, value, step=record.get("epochs_trained", 0))
        self.client.set_terminated(self.run_id)

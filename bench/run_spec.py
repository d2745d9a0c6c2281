"""The one specification of a run, shared by `bench run`, sweeps, ablations and benchmarks (a trial is a run
spec with its method, seed, backbone and --set values filled in). Light: no torch, so sweep definitions and
reports load fast."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunSpec:
    method: str
    dataset: str
    backbone: str | None = None  # None: the embedded micro tower on the embedded dataset, else the method's own
    weights: str | None = None
    data_root: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)  # --set key=value (hyperparameters, dataset options)
    seed: int = 0
    out: str | None = None
    device: str = "auto"
    allow_download: bool = False
    allow_random_init: bool = False
    sweep: str | None = None  # the sweep, ablation or benchmark stage the run belongs to
    tags: dict[str, str] = field(default_factory=dict)
    checkpoint: str | None = None  # evaluate this trained checkpoint (method format) instead of training
    trackers: list[str] = field(default_factory=list)  # experiment trackers: tensorboard, mlflow (bench.trackers)

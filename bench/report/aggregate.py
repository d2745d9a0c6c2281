"""Records → configurations (every setting but the seed) → mean ± std over seeds; the best-on-val choice."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.record import method_extras
from bench.selection import DEFAULT_METRIC, TIE_BREAK

LEADERBOARD_METRICS = ("overall", "many", "medium", "few")  # the test columns of a leaderboard
CONFIGURATION_FIELDS = ("method", "dataset", "backbone", "hparams", "dataset_options", "shot_convention",
                        "pretrained")


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None  # sample standard deviation (ddof = 1); None for a single value
    n: int


def mean_std(values: Iterable[Any]) -> Stat | None:
    """Mean ± sample std of the defined values (None and NaN are undefined and left out); None if none is."""
    present = [float(value) for value in values if isinstance(value, (int, float)) and math.isfinite(value)]
    if not present:
        return None
    std = statistics.stdev(present) if len(present) > 1 else None
    return Stat(statistics.fmean(present), std, len(present))


def device_kind(description: str | None) -> str | None:
    """"cpu" for any CPU (its thread count aside), else the accelerator's name."""
    return "cpu" if description and description.startswith("cpu") else description


def conditions(record: dict) -> dict[str, Any]:
    """What a run ran under besides its settings that can change its numbers: the precision, the kind of
    device and the world size. Runs that differ in them are never one row."""
    return {"precision": record.get("precision"), "device_kind": device_kind(record.get("device")),
            "world_size": (record.get("world") or {}).get("size", 1)}


def configuration_key(record: dict) -> str:
    return json.dumps({**{name: record.get(name) for name in CONFIGURATION_FIELDS}, **conditions(record)},
                      sort_keys=True, default=str)


def stopped_early(record: dict) -> bool:
    return bool(record.get("stopped_early"))


class Configuration:
    """The runs of one configuration, one per seed (ordered by seed): where one seed ran more than once under
    the same configuration, the newest run counts and the others are `superseded`."""

    def __init__(self, records: Sequence[dict]):
        newest: dict[int, dict] = {}
        for record in sorted(records, key=lambda record: (record.get("finished_at") or "", record["run_id"])):
            newest[record.get("seed", 0)] = record
        self.records = [newest[seed] for seed in sorted(newest)]
        self.superseded = len(records) - len(self.records)
        first = self.records[0]
        self.precision: str | None = first.get("precision")
        self.world_size: int = conditions(first)["world_size"]
        self.method: str = first["method"]
        self.dataset: str = first["dataset"]
        self.backbone: str | None = first.get("backbone")
        # every tower pretrained: the backbone and, for mixtures (LPT++), each expert's own tower
        self.pretrained: bool = first.get("pretrained", True) is not False and all(
            expert.get("pretrained", True) is not False for expert in method_extras(first).get("experts") or [])
        self.shot_convention: str = first.get("shot_convention") or "standard"
        # training-health flags of any seed (diverged, exploded, collapsed): the row is marked, never preferred
        self.health_flags: list[str] = [flag for record in self.records
                                        for flag in (record.get("health") or {}).get("flags", [])]
        self.image_size = (first.get("hparams") or {}).get("image_size")  # 0: the backbone's native size
        # per seed whose val curve was still rising when its budget ended: {phase: its convergence entry}
        self.still_rising: list[dict[str, dict]] = [
            {phase: convergence["phases"][phase] for phase in convergence["still_rising"]}
            for convergence in (record.get("convergence") or {} for record in self.records)
            if convergence.get("still_rising")]

    @property
    def seeds(self) -> int:
        """Distinct seeds (never repeated runs of one seed)."""
        return len(self.records)

    @property
    def earliest(self) -> tuple[str, str]:
        return min((record.get("finished_at") or "~", record["run_id"]) for record in self.records)

    def metric(self, split: str, name: str) -> Stat | None:
        return mean_std((record.get(split) or {}).get(name) for record in self.records)

    def selection_score(self, name: str) -> Stat | None:
        """Mean val `name` of the runs the choice is made on: a benchmark's search runs where there are any
        (the protocol chose on them, at its first seed), else every seed."""
        searched = [r for r in self.records if (r.get("tags") or {}).get("stage") == "search"]
        return mean_std((record.get("val") or {}).get(name) for record in searched or self.records)

    def field(self, name: str) -> Stat | None:
        return mean_std(record.get(name) for record in self.records)

    def devices(self) -> list[str]:
        return list(dict.fromkeys(record["device"] for record in self.records if record.get("device")))


def group_configurations(records: Iterable[dict]) -> list[Configuration]:
    """One Configuration per distinct configuration key, in order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(configuration_key(record), []).append(record)
    return [Configuration(group) for group in groups.values()]


def best_on_val(configurations: Sequence[Configuration], metric: str = DEFAULT_METRIC) -> Configuration:
    """The configuration with the best mean val `metric` (never test) among those whose training was not flagged
    (a flagged one only when every one is); ties: the lower mean class-balanced val NLL, then more seeds, then
    the earliest run."""
    def rank(configuration: Configuration) -> tuple:
        val, nll = configuration.selection_score(metric), configuration.selection_score(TIE_BREAK)
        return (bool(configuration.health_flags), val is None, -val.mean if val else 0.0,
                nll.mean if nll else math.inf, -configuration.seeds, configuration.earliest)

    return min(configurations, key=rank)


def method_order_key(method_order: Sequence[str]) -> Callable[[str], tuple]:
    """Sort key: registered methods in registry order, then unknown ones alphabetically."""
    position = {name: index for index, name in enumerate(method_order)}
    return lambda method: (0, position[method], "") if method in position else (1, 0, method)

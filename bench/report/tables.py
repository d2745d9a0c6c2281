"""The report as data: per dataset a leaderboard (+ published rows), ablation tables and sweep summaries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.report.aggregate import (
    Configuration,
    best_on_val,
    group_configurations,
    method_order_key,
    stopped_early,
)
from bench.report.importance import param_importances
from bench.report.published import PublishedResult, published_datasets, published_for

SELECTION_METRIC = "overall"  # on val: picks a method's configuration and ranks sweep trials
TOP_TRIALS = 5


@dataclass
class LeaderboardRow:
    configuration: Configuration
    candidates: int  # configurations of this method the choice was made among


@dataclass
class AblationRow:
    variant: str
    configuration: Configuration
    delta_overall: float | None  # test overall minus the full method's; None without both


@dataclass
class Ablation:
    name: str
    base_method: str
    rows: list[AblationRow]


@dataclass
class Sweep:
    name: str
    methods: list[str]
    searched: list[str]
    finished: list[dict]  # ranked by val SELECTION_METRIC, best first
    stopped: int
    importance: dict[str, float] | None

    @property
    def top(self) -> list[dict]:
        return self.finished[:TOP_TRIALS]


@dataclass
class DatasetReport:
    dataset: str
    leaderboard: list[LeaderboardRow]
    stopped_excluded: int
    published: list[PublishedResult]
    ablations: list[Ablation] = field(default_factory=list)
    sweeps: list[Sweep] = field(default_factory=list)


@dataclass
class Report:
    source: str  # where the records came from, as shown to the reader
    record_count: int
    datasets: list[DatasetReport]


def build_report(records: Sequence[dict], method_order: Sequence[str], source: str,
                 published: str = "store") -> Report:
    """`published`: "store" shows published rows for the datasets that have records, "all" for every dataset
    that has published rows, "none" hides them."""
    by_dataset: dict[str, list[dict]] = {}
    for record in records:
        by_dataset.setdefault(record["dataset"], []).append(record)
    names = set(by_dataset) | (set(published_datasets()) if published == "all" else set())
    order = method_order_key(method_order)
    sections = []
    for dataset in sorted(names):
        dataset_records = by_dataset.get(dataset, [])
        ranked = [record for record in dataset_records if not stopped_early(record)]
        sections.append(DatasetReport(
            dataset=dataset, leaderboard=leaderboard(ranked, order),
            stopped_excluded=len(dataset_records) - len(ranked),
            published=published_for(dataset) if published != "none" else [],
            ablations=ablations(ranked, order), sweeps=sweeps(dataset_records)))
    return Report(source=source, record_count=len(records), datasets=sections)


def _by_method(records: Sequence[dict], order) -> dict[str, list[Configuration]]:
    methods: dict[str, list[Configuration]] = {}
    for configuration in group_configurations(records):
        methods.setdefault(configuration.method, []).append(configuration)
    return {method: methods[method] for method in sorted(methods, key=order)}


def leaderboard(records: Sequence[dict], order) -> list[LeaderboardRow]:
    """One row per method in registry order: its configuration with the best mean val score."""
    return [LeaderboardRow(best_on_val(configurations, SELECTION_METRIC), len(configurations))
            for configurations in _by_method(records, order).values()]


def _kind(record: dict) -> str | None:
    return (record.get("tags") or {}).get("kind")


def ablations(records: Sequence[dict], order) -> list[Ablation]:
    groups: dict[str, list[dict]] = {}
    for record in records:
        if _kind(record) == "ablation":
            groups.setdefault(record["tags"].get("ablation") or record.get("sweep") or "", []).append(record)
    return [ablation(name, groups[name], order) for name in sorted(groups)]


def ablation(name: str, records: Sequence[dict], order) -> Ablation:
    base = next((record["tags"]["base_method"] for record in records if record["tags"].get("base_method")),
                records[0]["method"])
    variants: dict[str, list[dict]] = {}
    for record in records:
        variants.setdefault(record["tags"].get("variant") or record["method"], []).append(record)
    chosen = {variant: best_on_val(group_configurations(group), SELECTION_METRIC)
              for variant, group in variants.items()}
    base_overall = chosen[base].metric("test", "overall") if base in chosen else None
    rows = []
    for variant in sorted(chosen, key=lambda variant: (variant != base, order(variant))):
        overall = chosen[variant].metric("test", "overall")
        delta = overall.mean - base_overall.mean if overall and base_overall else None
        rows.append(AblationRow(variant, chosen[variant], delta))
    return Ablation(name, base, rows)


def sweeps(records: Sequence[dict]) -> list[Sweep]:
    groups: dict[str, list[dict]] = {}
    for record in records:
        if _kind(record) == "sweep":
            groups.setdefault(record["tags"].get("sweep") or record.get("sweep") or "", []).append(record)
    return [sweep(name, groups[name]) for name in sorted(groups)]


def sweep(name: str, records: Sequence[dict]) -> Sweep:
    searched = list(dict.fromkeys(key for record in records
                                  for key in (record["tags"].get("searched") or "").split(",") if key))
    finished = sorted((record for record in records if not stopped_early(record)), key=_trial_rank)
    scored = [(searched_values(record, searched), _val(record)) for record in finished]
    return Sweep(name=name, methods=list(dict.fromkeys(record["method"] for record in records)),
                 searched=searched, finished=finished, stopped=len(records) - len(finished),
                 importance=param_importances([(params, val) for params, val in scored if val is not None]))


def searched_values(record: dict, searched: Sequence[str]) -> dict[str, Any]:
    """A trial's values of the searched hyperparameters (or dataset options)."""
    settings = {**(record.get("dataset_options") or {}), **(record.get("hparams") or {})}
    return {name: settings.get(name) for name in searched}


def _val(record: dict) -> float | None:
    return (record.get("val") or {}).get(SELECTION_METRIC)


def _trial_rank(record: dict) -> tuple:
    value = _val(record)
    return (value is None, -value if value is not None else 0.0, record["run_id"])

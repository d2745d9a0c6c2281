"""The report as data: per dataset a leaderboard (+ published rows), ablation tables and sweep summaries."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import selection
from bench.report.aggregate import (
    Configuration,
    best_on_val,
    group_configurations,
    method_order_key,
    stopped_early,
)
from bench.report.importance import param_importances
from bench.report.published import PublishedResult, published_datasets, published_for
from bench.report.significance import Evidence, leaderboard_evidence

TOP_TRIALS = 5
Predictions = Callable[[dict], "dict | None"]  # a record → its stored per-image arrays (ResultsStore.predictions)


@dataclass
class LeaderboardRow:
    configuration: Configuration
    candidates: int  # configurations of this method the choice was made among
    evidence: Evidence | None = None  # bootstrap intervals and the comparison with the best row


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
    metric: str  # the val metric each variant's configuration was chosen on


@dataclass
class Sweep:
    name: str
    methods: list[str]
    searched: list[str]
    metric: str  # the val metric its trials are ranked on (the sweep's selection rule)
    finished: list[dict]  # ranked by it, best first
    stopped: int
    importance: dict[str, float] | None

    @property
    def top(self) -> list[dict]:
        return self.finished[:TOP_TRIALS]


@dataclass
class DatasetReport:
    """One dataset's runs under one protocol (`protocol`: "name hash"), or its runs outside any protocol."""

    dataset: str
    leaderboard: list[LeaderboardRow]
    stopped_excluded: int
    metric: str  # the val metric each method's configuration was chosen on
    published: list[PublishedResult]
    ablations: list[Ablation] = field(default_factory=list)
    sweeps: list[Sweep] = field(default_factory=list)
    protocol: str | None = None
    outside_protocols: bool = False  # runs outside any protocol, shown apart from the dataset's protocol tables

    @property
    def key(self) -> str:
        """Filename-safe identity of the section (plots, anchors)."""
        if self.protocol:
            return f"{self.dataset}_{self.protocol.replace(' ', '_')}"
        return f"{self.dataset}_other" if self.outside_protocols else self.dataset

    @property
    def title(self) -> str:
        if self.protocol:
            return f"{self.dataset} · protocol {self.protocol}"
        return f"{self.dataset} · runs outside any protocol" if self.outside_protocols else self.dataset

    @property
    def about(self) -> list[str]:
        if self.protocol:
            return [PROTOCOL_NOTE]
        return [OUTSIDE_NOTE] if self.outside_protocols else []


PROTOCOL_NOTE = ("Every row ran under this protocol (`bench benchmark`): the same data and splits, backbone, "
                 "resolution, training budget, search budget on val, selection rule and seeds.")
OUTSIDE_NOTE = ("Runs that belong to no protocol: their settings, budgets and searches may differ from row to "
                "row and from the protocol tables above, so they are not a comparison.")


@dataclass
class Report:
    source: str  # where the records came from, as shown to the reader
    record_count: int
    datasets: list[DatasetReport]


def build_report(records: Sequence[dict], method_order: Sequence[str], source: str,
                 published: str = "store", predictions: Predictions | None = None) -> Report:
    """`published`: "store" shows published rows for the datasets that have records, "all" for every dataset
    that has published rows, "none" hides them. `predictions` (a record → its per-image arrays) gives the
    leaderboards their bootstrap intervals and significance; without it they have none."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["dataset"], protocol_of(record) or ""), []).append(record)
    for dataset in published_datasets() if published == "all" else ():
        if not any(key[0] == dataset for key in groups):
            groups[(dataset, "")] = []
    order = method_order_key(method_order)
    sections = []
    for dataset, protocol in sorted(groups, key=lambda key: (key[0], key[1] == "", key[1])):
        group = groups[(dataset, protocol)]
        ranked = [record for record in group if not stopped_early(record)]
        has_protocols = any(key[0] == dataset and key[1] for key in groups)
        metric = selection_metric(group)
        sections.append(DatasetReport(
            dataset=dataset, leaderboard=leaderboard(ranked, order, metric, predictions),
            stopped_excluded=len(group) - len(ranked), metric=metric,
            published=published_for(dataset) if published != "none" and not protocol else [],
            ablations=ablations(ranked, order), sweeps=sweeps(group), protocol=protocol or None,
            outside_protocols=not protocol and has_protocols))
    return Report(source=source, record_count=len(records), datasets=sections)


def protocol_of(record: dict) -> str | None:
    """"name hash" of the protocol a record ran under (bench benchmark), None for any other run."""
    tags = record.get("tags") or {}
    return f"{tags['protocol']} {tags.get('protocol_hash', '?')}" if tags.get("protocol") else None


def _by_method(records: Sequence[dict], order) -> dict[str, list[Configuration]]:
    methods: dict[str, list[Configuration]] = {}
    for configuration in group_configurations(records):
        methods.setdefault(configuration.method, []).append(configuration)
    return {method: methods[method] for method in sorted(methods, key=order)}


def selection_metric(records: Sequence[dict]) -> str:
    """The val metric configurations are chosen on: the protocol's selection rule, else the rule the runs
    chose their own epochs by when they share one, else the default (`bench.selection`)."""
    chosen = {(record.get("tags") or {}).get("selection") for record in records} - {None}
    if len(chosen) == 1:
        return chosen.pop().removeprefix("val_")
    rules = {selection.record_metric(record) for record in records}
    return rules.pop() if len(rules) == 1 else selection.DEFAULT_METRIC


def leaderboard(records: Sequence[dict], order, metric: str = selection.DEFAULT_METRIC,
                predictions: Predictions | None = None) -> list[LeaderboardRow]:
    """One row per method in registry order: its configuration with the best mean val `metric`, with bootstrap
    evidence when `predictions` can load the runs' per-image predictions."""
    rows = [LeaderboardRow(best_on_val(configurations, metric), len(configurations))
            for configurations in _by_method(records, order).values()]
    if predictions is not None and rows:
        evidence = leaderboard_evidence([row.configuration.records for row in rows], predictions,
                                        lambda records: records[0].get("shot_convention") or "standard")
        for row, found in zip(rows, evidence, strict=True):
            row.evidence = found
    return rows


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
    metric = selection_metric(records)
    chosen = {variant: best_on_val(group_configurations(group), metric) for variant, group in variants.items()}
    base_overall = chosen[base].metric("test", "overall") if base in chosen else None
    rows = []
    for variant in sorted(chosen, key=lambda variant: (variant != base, order(variant))):
        overall = chosen[variant].metric("test", "overall")
        delta = overall.mean - base_overall.mean if overall and base_overall else None
        rows.append(AblationRow(variant, chosen[variant], delta))
    return Ablation(name, base, rows, metric)


def sweeps(records: Sequence[dict]) -> list[Sweep]:
    groups: dict[str, list[dict]] = {}
    for record in records:
        if _kind(record) == "sweep":
            groups.setdefault(record["tags"].get("sweep") or record.get("sweep") or "", []).append(record)
    return [sweep(name, groups[name]) for name in sorted(groups)]


def sweep(name: str, records: Sequence[dict]) -> Sweep:
    searched = list(dict.fromkeys(key for record in records
                                  for key in (record["tags"].get("searched") or "").split(",") if key))
    metric = selection_metric(records)
    finished = sorted((record for record in records if not stopped_early(record)),
                      key=lambda record: _trial_rank(record, metric))
    scored = [(searched_values(record, searched), (record.get("val") or {}).get(metric)) for record in finished]
    return Sweep(name=name, methods=list(dict.fromkeys(record["method"] for record in records)),
                 searched=searched, metric=metric, finished=finished, stopped=len(records) - len(finished),
                 importance=param_importances([(params, val) for params, val in scored if val is not None]))


def searched_values(record: dict, searched: Sequence[str]) -> dict[str, Any]:
    """A trial's values of the searched hyperparameters (or dataset options)."""
    settings = {**(record.get("dataset_options") or {}), **(record.get("hparams") or {})}
    return {name: settings.get(name) for name in searched}


def _trial_rank(record: dict, metric: str) -> tuple:
    value, nll = selection.selection_key(record.get("val"), metric)
    return -value, -nll, record["run_id"]

"""Benchmark protocols: TOML files that fix everything a comparison depends on, validated on load.

A protocol names the dataset and its options, one backbone and its weights (and, for a method that cannot run on
it, that method's own tower in `method_backbones`, e.g. LMPT's CLIP), the settings every method runs
with (resolution, augmentation, precision, ...), the training budget (one scale applied to every method's
reference schedule), the search budget on val (the same number of configurations for every method), the
selection rule, the seeds and the methods. Its hash covers what makes rows comparable and what a run is (not
the seeds, the method list or the prose), so adding a seed or a method keeps earlier runs; every run records the
protocol's name and hash, and reports never put two protocols in one table.

The shipped protocols are this package's data (`bench/protocols/*.toml`), found through importlib.resources, so
an installed wheel has them as an editable checkout does. They name their backbone's weights by its timm /
open_clip pretrained tag, never by a local path; `bench benchmark --weights FILE` supplies them offline.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from bench import selection as selection_rule
from bench.errors import BenchError, UsageError
from bench.hparams import as_override

TOP_KEYS = {"name", "description", "source", "dataset", "backbone", "weights", "random_init", "seeds", "methods",
            "dataset_options", "settings", "budget", "search", "method_settings", "method_backbones"}
REQUIRED = ("name", "description", "dataset", "backbone", "seeds", "methods")
BUDGET_KEYS = {"epoch_scale"}
SEARCH_KEYS = {"trials", "seed", "selection", "searched"}
WARMUP = "warmup_epochs"
BUDGET_RULE = 2  # how epoch_scale maps to each method's epochs (in the hash: a new rule never reuses old runs)


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    path: Path
    dataset: str
    backbone: str
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    source: str = ""
    weights: str | None = None  # a user protocol's file, as written: relative to the protocol file (its hash uses
    # this text); shipped protocols name none (their backbone's pretrained tag names the weights)
    random_init: bool = False  # a randomly initialised backbone is allowed (said in every report row)
    dataset_options: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)  # --set for every method that declares the option
    epoch_scale: float = 1.0
    trials: int = 0  # configurations per method searched on val (the first: the method's defaults); 0: none
    search_seed: int = 0
    selection: str = f"val_{selection_rule.DEFAULT_METRIC}"
    searched: tuple[str, ...] = ()  # the hyperparameters searched, of those a method declares a space for; (): all
    method_settings: dict[str, dict[str, str]] = field(default_factory=dict)
    method_backbones: dict[str, str] = field(default_factory=dict)  # a method's own tower (weights by its
    # pretrained tag; --weights names the protocol backbone's), said in every report row's backbone column

    def backbone_for(self, method: str) -> str:
        return self.method_backbones.get(method, self.backbone)

    @property
    def hash(self) -> str:
        comparable = {"budget_rule": BUDGET_RULE, "dataset": self.dataset, "dataset_options": self.dataset_options,
                      "backbone": self.backbone,
                      "weights": self.weights, "random_init": self.random_init, "settings": self.settings,
                      "epoch_scale": self.epoch_scale, "trials": self.trials, "search_seed": self.search_seed,
                      "selection": self.selection}
        if self.method_settings:
            comparable["method_settings"] = self.method_settings
        if self.method_backbones:
            comparable["method_backbones"] = self.method_backbones
        if self.searched:
            comparable["searched"] = list(self.searched)
        return hashlib.sha256(json.dumps(comparable, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def weights_path(self) -> str | None:
        return str((self.path.parent / Path(self.weights).expanduser()).resolve()) if self.weights else None

    def overrides(self, method: str) -> dict[str, str]:
        """The --set values of `method`'s runs: the dataset options, the shared settings it declares, its own
        settings, and its epoch hyperparameters scaled by the budget."""
        from bench.options import declared_options

        declared = declared_options(method, self.dataset)
        pins = selection_rule.pinned({**self.dataset_options, **{k: v for k, v in self.settings.items()
                                                                 if k in declared},
                                      **self.method_settings.get(method, {})}, self.selection,
                                     f"{self.path.name}'s [search] selection")
        if self.epoch_scale != 1.0:
            scaled = []
            for name, hp in declared.items():
                if name.endswith("epochs") and name != WARMUP and isinstance(hp.default, int):
                    reference = int(pins.get(name, hp.default))
                    pins[name] = str(max(1, round(reference * self.epoch_scale)) if reference else 0)
                    scaled += [int(pins[name])] if reference else []
            if WARMUP in declared:
                pins[WARMUP] = str(scaled_warmup(int(pins.get(WARMUP, declared[WARMUP].default)), self.epoch_scale,
                                                 min(scaled, default=0)))
        return pins

    def describe(self) -> str:
        over = f" of {', '.join(self.searched)}" if self.searched else ""
        search = (f"{self.trials} configurations per method on val (the defaults and {self.trials - 1} random"
                  f"{over}), chosen by {self.selection}" if self.trials else "each method's defaults (no search)")
        own = "".join(f" ({method} on {backbone})" for method, backbone in self.method_backbones.items())
        return (f"{self.name} ({self.hash}): {self.dataset} with {self.backbone}{own}; budget × {self.epoch_scale:g} of "
                f"each reference schedule; {search}; seeds {', '.join(map(str, self.seeds))}; "
                f"{len(self.methods)} methods")


def scaled_warmup(reference: int, scale: float, shortest_phase: int) -> int:
    """A reference warm-up scaled with its schedule, kept (at least one epoch) where the reference has one —
    dropping it can wreck a recipe that relies on it (VPT's head starts with huge logits) — and always shorter
    than the shortest scaled phase."""
    if reference == 0:
        return 0
    return max(0, min(max(1, round(reference * scale)), shortest_phase - 1))


def find_protocol(name_or_path: str) -> Path:
    """A shipped protocol's name (bench/protocols/<name>.toml, package data) or a file path."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UsageError(f"protocol file {path} not found")
        return path
    shipped = {path.stem: path for path in shipped_protocols()}
    if name_or_path not in shipped:
        names = ", ".join(shipped) or "none"
        raise UsageError(f"unknown protocol {name_or_path!r}: give a .toml file or one of the shipped ones ({names})")
    return shipped[name_or_path]


def shipped_protocols() -> list[Path]:
    """The protocol files shipped in this package, by name."""
    return sorted(Path(str(entry)) for entry in files(__name__).iterdir() if entry.name.endswith(".toml"))


def load_protocol(name_or_path: str) -> Protocol:
    """The protocol, validated: unknown keys, unknown methods, datasets, backbones or options, bad budgets and
    selection rules are one-line errors naming the file."""
    path = find_protocol(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"protocol {path}: not valid TOML ({error})") from None
    try:
        return _validated(data, path)
    except (_Invalid, BenchError) as error:
        raise UsageError(f"protocol {path}: {error}") from None


class _Invalid(Exception):
    pass


def _table(data: dict, key: str, allowed: set[str] | None = None) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise _Invalid(f"[{key}] must be a table")
    unknown = sorted(set(value) - allowed) if allowed is not None else []
    if unknown:
        raise _Invalid(f"[{key}] has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return value


def _strings(values: dict[str, Any], where: str) -> dict[str, str]:
    for key, value in values.items():
        if isinstance(value, (dict, list)):
            raise _Invalid(f"{where}.{key} must be a single value, not a {type(value).__name__}")
    return {key: as_override(value) for key, value in values.items()}


def _search(search: dict, methods: tuple[str, ...]) -> tuple[int, int, str, list[str]]:
    """The [search] table's (trials, seed, selection, searched), validated against the protocol's methods."""
    from bench.methods.base import METHODS
    from bench.selection import METRICS

    trials, seed = search.get("trials", 0), search.get("seed", 0)
    if not isinstance(trials, int) or trials < 0:
        raise _Invalid(f"search.trials = {trials!r}: a non-negative integer (configurations per method)")
    selection = search.get("selection", Protocol.selection)
    if selection not in METRICS:
        raise _Invalid(f"search.selection = {selection!r}: one of {', '.join(METRICS)} (validation only)")
    searched = search.get("searched", [])
    if not isinstance(searched, list) or not all(isinstance(name, str) for name in searched):
        raise _Invalid(f"search.searched = {searched!r}: a list of hyperparameter names (e.g. [\"lr\", "
                       "\"weight_decay\"])")
    spaced = {name for method in methods for name, hp in METHODS.get(method).hparams.items() if hp.space is not None}
    never = sorted(set(searched) - spaced)
    if never:
        raise _Invalid(f"search.searched: {never[0]} has a search space in none of the methods")
    return trials, seed, selection, searched


def _validated(data: dict, path: Path) -> Protocol:
    import bench.datasets
    import bench.methods  # noqa: F401  (registers the methods)
    from bench.backbones import parse_backbone
    from bench.datasets.base import DATASETS
    from bench.methods.base import METHODS

    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise _Invalid(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOP_KEYS))}")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise _Invalid(f"missing {', '.join(missing)}")
    if data["name"] != path.stem:
        raise _Invalid(f"name = {data['name']!r} must match the file name ({path.stem!r})")
    dataset = DATASETS.canonical(data["dataset"])
    methods = tuple(METHODS.canonical(m) for m in data["methods"])
    if not methods or len(set(methods)) != len(methods):
        raise _Invalid("methods must list at least one method, each once")
    seeds = _seeds(data["seeds"])
    backbone = str(data["backbone"])
    parse_backbone(backbone)
    weights = data.get("weights")
    if weights is not None and not isinstance(weights, str):
        raise _Invalid(f"weights = {weights!r}: a file path (relative to the protocol file)")
    budget = _table(data, "budget", BUDGET_KEYS)
    scale = budget.get("epoch_scale", 1.0)
    if not isinstance(scale, (int, float)) or not 0 < scale <= 10:
        raise _Invalid(f"budget.epoch_scale = {scale!r}: a number in (0, 10]")
    trials, search_seed, selection, searched = _search(_table(data, "search", SEARCH_KEYS), methods)
    dataset_options = _strings(_table(data, "dataset_options"), "dataset_options")
    settings = _strings(_table(data, "settings"), "settings")
    per_method = _table(data, "method_settings")
    strangers = sorted(set(per_method) - set(methods))
    if strangers:
        raise _Invalid(f"[method_settings.{strangers[0]}] is not one of the protocol's methods")
    method_settings = {METHODS.canonical(m): _strings(_table(per_method, m), f"method_settings.{m}")
                       for m in per_method}
    method_backbones = _method_backbones(_table(data, "method_backbones"), methods, backbone)
    protocol = Protocol(
        name=data["name"], description=str(data["description"]), path=path, dataset=dataset, backbone=backbone,
        seeds=tuple(seeds), methods=methods, source=str(data.get("source", "")), weights=weights,
        random_init=bool(data.get("random_init", False)), dataset_options=dataset_options, settings=settings,
        epoch_scale=float(scale), trials=trials, search_seed=search_seed, selection=selection,
        searched=tuple(searched), method_settings=method_settings, method_backbones=method_backbones)
    _check_settings(protocol)
    return protocol


def _method_backbones(table: dict[str, Any], methods: tuple[str, ...], backbone: str) -> dict[str, str]:
    """[method_backbones]: method = "backbone", for the protocol's methods, each a known backbone other than the
    protocol's own."""
    from bench.backbones import parse_backbone
    from bench.methods.base import METHODS

    chosen = {}
    for given, name in table.items():
        method = METHODS.canonical(given)
        if method not in methods:
            raise _Invalid(f"[method_backbones] {given} is not one of the protocol's methods")
        if not isinstance(name, str) or name == backbone:
            raise _Invalid(f"method_backbones.{given} = {name!r}: a backbone name other than the protocol's "
                           f"({backbone}), or leave the method out of [method_backbones]")
        parse_backbone(name)
        chosen[method] = name
    return chosen


def _seeds(seeds: Any) -> list[int]:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise _Invalid(f"seeds = {seeds!r}: a list of distinct non-negative integers")
    return seeds


def _check_settings(protocol: Protocol) -> None:
    """Each method's settings resolve (known keys, well-typed values), and each protocol-wide setting is declared
    by a method or the dataset."""
    from bench.hparams import resolve
    from bench.options import declared_options

    used = set(protocol.dataset_options)
    for method in protocol.methods:
        declared = declared_options(method, protocol.dataset)
        used |= set(declared)
        try:
            resolve(declared, protocol.overrides(method))
        except BenchError as error:
            raise _Invalid(f"{method}: {error}") from None
    unused = sorted(set(protocol.settings) - used)
    if unused:
        raise _Invalid(f"settings.{unused[0]} is declared by none of the methods or the dataset; "
                       "see `bench run --help` and each method's options")

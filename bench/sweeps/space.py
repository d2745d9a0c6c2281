"""What a sweep searches: the method's declared spaces, changed by a small YAML or TOML file and by --set pins.

A space file maps hyperparameter names to a space, a pinned value, or `default` (not searched):

    lr: {log_uniform: [1.0e-4, 1.0e-1]}
    weight_decay: {uniform: [0.0, 0.1]}
    shared_layers: {int: [1, 3]}          # inclusive
    prompt_length: {choice: [5, 10, 20]}
    phase2_epochs: 20                     # pinned
    top_k: default                        # keeps its default, not searched
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.errors import UsageError
from bench.hparams import (
    Choice,
    HParam,
    IntRange,
    LogUniform,
    Space,
    Uniform,
    check_value,
    parse_value,
    sample,
)
from bench.registry import nearest

SPACE_KINDS = {"uniform": Uniform, "log_uniform": LogUniform, "int": IntRange, "choice": Choice}


def default_space(method_hparams: Mapping[str, HParam]) -> dict[str, Space]:
    """The method's own declared spaces (common and dataset options are searched only when a file asks)."""
    return {name: hp.space for name, hp in method_hparams.items() if hp.space is not None}


def read_space_file(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"--space {path}: no such file (a YAML or TOML file of name: space)")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            content = tomllib.loads(text)
        else:
            import yaml

            content = yaml.safe_load(text)
    except Exception as error:  # noqa: BLE001  (any parser error becomes one line naming the file)
        raise UsageError(f"--space {path}: cannot parse it ({type(error).__name__}: {error})") from None
    if not isinstance(content, dict):
        raise UsageError(f"--space {path}: expected a mapping of hyperparameter names, got {type(content).__name__}")
    return content


def apply_space_file(space: dict[str, Space], content: Mapping[str, Any], declared: Mapping[str, HParam],
                     source: str) -> tuple[dict[str, Space], dict[str, str]]:
    """(searched spaces, pinned values as --set strings) after a space file's entries."""
    space, pins = dict(space), {}
    for name, entry in content.items():
        if name not in declared:
            raise UsageError(f"{source}: unknown hyperparameter {name!r}; {nearest(name, list(declared))}")
        if entry == "default":
            space.pop(name, None)
        elif isinstance(entry, dict):
            space[name] = _parse_space(name, entry, declared[name], source)
        else:
            text = str(entry).lower() if isinstance(entry, bool) else str(entry)
            parse_value(name, text, declared[name])  # refuses ill-typed values now, not in a trial
            space.pop(name, None)
            pins[name] = text
    return space, pins


def _parse_space(name: str, entry: dict, declared: HParam, source: str) -> Space:
    if len(entry) != 1 or next(iter(entry)) not in SPACE_KINDS:
        raise UsageError(f"{source}: {name}: expected one of {', '.join(f'{{{k}: [...]}}' for k in SPACE_KINDS)}")
    kind, values = next(iter(entry.items()))
    if not isinstance(values, list) or not values:
        raise UsageError(f"{source}: {name}: {kind} needs a list, e.g. {{{kind}: [low, high]}}")
    if kind == "choice":
        return Choice(tuple(parse_value(name, str(v).lower() if isinstance(v, bool) else str(v), declared)
                            for v in values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or values[0] > values[1]:
        raise UsageError(f"{source}: {name}: {kind} needs [low, high] with low <= high")
    for value in values:  # a range inside the declared bounds samples only valid values
        check_value(name, value, declared, f"{source}: {name}: {kind} {values}")
    if kind == "int":
        return IntRange(int(values[0]), int(values[1]))
    if kind == "log_uniform" and values[0] <= 0:
        raise UsageError(f"{source}: {name}: log_uniform needs low > 0")
    return SPACE_KINDS[kind](float(values[0]), float(values[1]))


def grid(space: Mapping[str, Space]) -> list[dict[str, Any]]:
    """Every combination of the values of discrete spaces (continuous ones cannot be gridded)."""
    continuous = [name for name, s in space.items() if isinstance(s, (Uniform, LogUniform))]
    if continuous:
        raise UsageError(f"--search grid: {', '.join(continuous)} {'is' if len(continuous) == 1 else 'are'} "
                         "continuous; give {choice: [...]} lists in --space, pin with --set, or use "
                         "--search random|optuna")
    names = sorted(space)
    values = [_values(space[name]) for name in names]
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def _values(space: Space) -> tuple:
    return tuple(range(space.low, space.high + 1)) if isinstance(space, IntRange) else space.values


def random_configs(space: Mapping[str, Space], trials: int, seed: int) -> list[dict[str, Any]]:
    """DomainBed-style (bench.hparams.sample): each name from its own stream seeded by (sweep seed, trial,
    name), so adding a searched name never changes the values drawn for the others."""
    declared = {name: HParam(None, s) for name, s in space.items()}
    return [sample(declared, trial_seed=f"{seed}.{trial}") for trial in range(trials)]


def optuna_distributions(space: Mapping[str, Space]) -> dict[str, Any]:
    import optuna.distributions as od

    converted = {}
    for name, s in space.items():
        if isinstance(s, Uniform):
            converted[name] = od.FloatDistribution(s.low, s.high)
        elif isinstance(s, LogUniform):
            converted[name] = od.FloatDistribution(s.low, s.high, log=True)
        elif isinstance(s, IntRange):
            converted[name] = od.IntDistribution(s.low, s.high)
        else:
            converted[name] = od.CategoricalDistribution(s.values)
    return converted


def describe(space: Mapping[str, Space]) -> str:
    parts = []
    for name in sorted(space):
        s = space[name]
        if isinstance(s, Choice):
            parts.append(f"{name} ∈ {{{', '.join(map(str, s.values))}}}")
        else:
            kind = {Uniform: "uniform", LogUniform: "log-uniform", IntRange: "int"}[type(s)]
            parts.append(f"{name} ~ {kind}[{s.low:g}, {s.high:g}]")
    return "; ".join(parts)


def to_entries(space: Mapping[str, Space]) -> dict[str, dict]:
    """The space as space-file entries (how a sweep saves what it searches)."""
    kinds = {cls: kind for kind, cls in SPACE_KINDS.items()}
    return {name: {kinds[type(s)]: list(s.values) if isinstance(s, Choice) else [s.low, s.high]}
            for name, s in space.items()}


def from_entries(entries: Mapping[str, dict]) -> dict[str, Space]:
    space = {}
    for name, entry in entries.items():
        (kind, values), = entry.items()
        space[name] = Choice(tuple(values)) if kind == "choice" else SPACE_KINDS[kind](*values)
    return space

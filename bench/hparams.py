"""Hyperparameter declarations: one default and one search space per name, read by `run` and `sweep`.

As in DomainBed's registry, each name is sampled from its own random stream (seeded by the trial seed and the
name), so declaring a new hyperparameter never changes the values sampled for the others.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.errors import UsageError
from bench.registry import nearest


@dataclass(frozen=True)
class Space:
    def sample(self, rng: np.random.Generator) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Uniform(Space):
    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))


@dataclass(frozen=True)
class LogUniform(Space):
    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


@dataclass(frozen=True)
class IntRange(Space):
    low: int
    high: int  # inclusive

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high + 1))


@dataclass(frozen=True)
class Choice(Space):
    values: tuple

    def sample(self, rng: np.random.Generator) -> Any:
        return self.values[int(rng.integers(len(self.values)))]


@dataclass(frozen=True)
class Bounds:
    """The values a number may take: low ≤ x ≤ high (strict where `open`); None is unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        low = "(-inf" if self.low is None else f"{'(' if self.low_open else '['}{self.low:g}"
        high = "inf)" if self.high is None else f"{self.high:g}{')' if self.high_open else ']'}"
        return f"{low}, {high}"


class SettingError(UsageError):
    """A setting its declaration does not admit: an unknown key, a value of the wrong type, outside its choices
    or its bounds."""


NON_NEGATIVE = Bounds(0)  # epochs, weight decay, loss weights
POSITIVE = Bounds(0, low_open=True)  # learning rates, logit scales
AT_LEAST_ONE = Bounds(1)  # batch sizes, widths, counts
FRACTION = Bounds(0, 1, high_open=True)  # dropout, label smoothing
AUTO_OR_NON_NEGATIVE = Bounds(-1)  # -1 = chosen by the harness


@dataclass(frozen=True)
class HParam:
    default: Any
    space: Space | None = None
    help: str = ""
    choices: tuple | None = field(default=None)
    bounds: Bounds | None = None  # for numbers; every float must also be finite

    @property
    def kind(self) -> type:
        return type(self.default)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(text)


def parse_value(name: str, text: str, declared: HParam) -> Any:
    kind = declared.kind
    try:
        if kind is bool:
            value = _parse_bool(text)
        elif kind is int:
            value = int(text)
        elif kind is float:
            value = float(text)
        elif declared.default is None:
            value = None if text.lower() in {"none", "null", ""} else text
        else:
            value = text
    except ValueError:
        raise SettingError(
            f"--set {name}={text}: expected {kind.__name__} (default {declared.default!r})"
        ) from None
    if declared.choices is not None and value not in declared.choices:
        raise SettingError(f"--set {name}={text}: must be one of {', '.join(map(str, declared.choices))}")
    check_value(name, value, declared, f"--set {name}={text}")
    return value


def check_value(name: str, value: Any, declared: HParam, where: str) -> None:
    """A number must be finite and inside the declared bounds; `where` names the setting in the message."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(f"{where}: must be a finite number")
    if declared.bounds is not None and not declared.bounds.admits(value):
        raise SettingError(f"{where}: {name} must lie in {declared.bounds}")


def as_override(value: Any) -> str:
    """A value as the --set string that parses back to it exactly (a searched value, a resumed run's own)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in assignments:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expected key=value, e.g. --set lr=0.01")
        key, value = item.split("=", 1)
        pairs[key.strip()] = value.strip()
    return pairs


def resolve(declared: Mapping[str, HParam], overrides: Mapping[str, str]) -> dict[str, Any]:
    """Defaults with `overrides` (raw strings from --set) parsed to each declared type."""
    unknown = [key for key in overrides if key not in declared]
    if unknown:
        key = unknown[0]
        raise SettingError(f"--set {key}: unknown key; {nearest(key, list(declared))}")
    values = {name: hp.default for name, hp in declared.items()}
    for key, text in overrides.items():
        values[key] = parse_value(key, text, declared[key])
    return values


def merge_declarations(*groups: tuple[str, Mapping[str, HParam]]) -> dict[str, HParam]:
    merged: dict[str, HParam] = {}
    owner: dict[str, str] = {}
    for group_name, group in groups:
        for key, hp in group.items():
            if key in merged:
                raise ValueError(f"hyperparameter {key!r} declared by both {owner[key]} and {group_name}")
            merged[key] = hp
            owner[key] = group_name
    return merged


def sample(declared: Mapping[str, HParam], trial_seed: int | str) -> dict[str, Any]:
    """One random configuration; names without a space keep their default. `trial_seed` is any label unique
    to the trial (an int, or e.g. "<sweep seed>.<trial index>")."""
    values = {}
    for name, hp in declared.items():
        if hp.space is None:
            values[name] = hp.default
            continue
        digest = hashlib.sha256(f"{trial_seed}:{name}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        values[name] = hp.space.sample(rng)
    return values

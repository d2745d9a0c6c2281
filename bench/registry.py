"""Name → object registries for methods, datasets and backbones, with nearest-name suggestions, and the
entry points through which other installed packages add methods and datasets."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from bench.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names → objects; listed in registration order, or by `order` (a key of the object) where given."""

    def __init__(self, kind: str, order: Callable[[T], Any] | None = None):
        self.kind = kind
        self.order = order
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, obj: T, aliases: tuple[str, ...] = ()) -> None:
        if name in self._entries or name in self._aliases:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = obj
        for alias in aliases:
            if alias in self._entries or alias in self._aliases:
                raise ValueError(f"{self.kind} alias {alias!r} registered twice")
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        hint = nearest(name, list(self._entries) + list(self._aliases))
        raise UsageError(f"unknown {self.kind} {name!r}: {hint} (see `bench list {self.kind}s`)")

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        return [name for name, _ in self.items()]

    def aliases_of(self, name: str) -> list[str]:
        return [alias for alias, target in self._aliases.items() if target == name]

    def items(self) -> list[tuple[str, T]]:
        if self.order is None:
            return list(self._entries.items())
        return sorted(self._entries.items(), key=lambda item: self.order(item[1]))


def load_plugins(group: str) -> None:
    """Import what installed packages declare in the entry-point `group` (`lt_bench.methods`,
    `lt_bench.datasets`): a module (or an object in one) that registers with `register_method` /
    `register_dataset` as this package's own modules do. A plugin that fails to import is skipped, said in one
    line, so that it cannot break every command."""
    for entry in entry_points(group=group):
        try:
            entry.load()
        except Exception as error:  # noqa: BLE001  (whatever a third-party import raises)
            print(f"warning: plugin {entry.name} = {entry.value!r} (entry point group {group}) failed to load and "
                  f"is skipped: {type(error).__name__}: {error}", file=sys.stderr)


KNOWN_SHOWN = 30  # a vocabulary longer than this (timm's model names) is cut in the message


def nearest(name: str, vocabulary: list[str]) -> str:
    """'did you mean a, b?' with up to three close names (each once), else the known names."""
    names = list(dict.fromkeys(vocabulary))
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    if close:
        return f"did you mean {', '.join(close)}?"
    known = sorted(names)
    more = f", … ({len(known) - KNOWN_SHOWN} more)" if len(known) > KNOWN_SHOWN else ""
    return f"known: {', '.join(known[:KNOWN_SHOWN])}{more}"



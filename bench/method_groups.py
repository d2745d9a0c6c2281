"""The groups in which reports list methods, in this order: the baselines (probe, full fine-tuning, long-tail
losses and samplers, parameter-efficient tuning, decoupled classifiers, CLIP), LPT, LPT++, then the comparators
named beside LPT++ (CPE, LMPT, PEMT). A method declares its group and its place in it where it registers
(`register_method(name, group=..., place=...)` in its own file); an ablation variant is listed right after its
parent, in the order the variants register; a plugin's method (another package's) comes after every group.

Light on purpose: a record carries its method's `report_order` (`order_key`), so `bench report` orders rows
without importing the methods (and torch)."""

from __future__ import annotations

METHOD_GROUPS = ("baseline", "lpt", "lptpp", "comparator")
PLUGIN_GROUP = "plugin"  # a method registered outside this package without a group


def order_key(group: str, place: float, variant: int = 0) -> tuple[int, float, int]:
    """Where a method stands in reports: its group's rank, its place in the group, and 0 for the method itself or
    n for its n-th registered ablation variant."""
    rank = METHOD_GROUPS.index(group) if group in METHOD_GROUPS else len(METHOD_GROUPS)
    return rank, float(place), int(variant)


UNKNOWN_ORDER = (len(METHOD_GROUPS) + 1, 0.0, 0)  # a method neither recorded with its order nor registered here

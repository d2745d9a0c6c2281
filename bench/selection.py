"""The one rule every choice on val is made by, and the check that a chosen run's val curve had flattened.

Test sets are balanced, so the test's overall accuracy is its mean per-class accuracy; a val split carved from
a long-tailed train set is long-tailed, and its overall accuracy is dominated by the head classes. Every
choice (a phase's best epoch, a probe's weight decay, post-hoc τ, a sweep's or a benchmark's winner, a
leaderboard's configuration) therefore maximises val **mean per-class accuracy** by default (`selection_metric`),
and equal scores are broken by the **lower class-balanced val NLL** (`nll_balanced`), not by list order. On a
balanced val the two accuracies are equal, so nothing changes there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from bench.errors import UsageError
from bench.metrics import ACCURACIES

DEFAULT_METRIC = "mean_per_class"
METRIC_CHOICES = ACCURACIES
METRICS = tuple(f"val_{name}" for name in METRIC_CHOICES)  # as `--metric` and a protocol's search.selection name them
TIE_BREAK = "nll_balanced"
LEGACY_METRIC = "overall"  # what records and runs made before `selection_metric` existed chose on
CONVERGENCE_QUARTER = 0.25  # the tail of a phase's schedule over which its val curve must have flattened
NOISE_Z = 1.96  # a rise counts when it exceeds this many standard errors of the difference


def _defined(value, undefined: float = -math.inf) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else undefined


def selection_key(summary: Mapping | None, metric: str) -> tuple[float, float]:
    """Sort key of a val summary, larger is better: the metric, then the negated class-balanced NLL (an
    undefined value ranks last)."""
    summary = summary or {}
    return _defined(summary.get(metric)), -_defined(summary.get(TIE_BREAK), math.inf)


def rule(metric: str) -> dict[str, str]:
    """The rule as a record keeps it."""
    return {"metric": f"val_{metric}", "tie_break": f"lower val_{TIE_BREAK}, then the earlier candidate"}


def record_metric(record: Mapping) -> str:
    """The val metric a record's run chose its epochs (and probe grid, τ) on."""
    return ((record.get("hparams") or {}).get("selection_metric")) or LEGACY_METRIC


def convergence(history: Sequence[Mapping], schedules: Mapping[str, int], metric: str) -> dict:
    """Whether each trained phase's val `metric` was still rising over the last quarter of its schedule by more
    than its noise. `schedules`: phase name → epochs, for the phases that follow a schedule (a probe's grid of
    weight decays is a search, not a schedule). The rise is the metric at the phase's last validated epoch
    minus its value at the last validated epoch before the quarter began; the noise is the standard error of
    that difference from each epoch's stratified-bootstrap standard error (`val_se`), taken as independent,
    which overstates it (the two epochs score the same images), so a flag is conservative."""
    phases = {}
    for name, epochs in schedules.items():
        validated = [entry for entry in history if entry["phase"] == name and entry.get("val")
                     and entry.get("val_se") is not None and _defined(entry["val"].get(metric)) > -math.inf]
        quarter_starts = epochs - math.ceil(CONVERGENCE_QUARTER * epochs)
        before = [entry for entry in validated if entry["epoch"] < quarter_starts]
        if epochs < 2 or not before or validated[-1]["epoch"] != epochs - 1:
            phases[name] = {"assessed": False}
            continue
        start, end = before[-1], validated[-1]
        rise = end["val"][metric] - start["val"][metric]
        noise = NOISE_Z * math.hypot(start["val_se"], end["val_se"])
        phases[name] = {"assessed": True, "from_epoch": start["epoch"] + 1, "to_epoch": end["epoch"] + 1,
                        "rise": round(rise, 4), "noise": round(noise, 4), "still_rising": rise > noise}
    rising = [name for name, result in phases.items() if result.get("still_rising")]
    return {"metric": f"val_{metric}", "phases": phases, "still_rising": rising,
            "converged": not rising if any(result["assessed"] for result in phases.values()) else None}


def pinned(pins: Mapping[str, str], metric: str, where: str) -> dict[str, str]:
    """`pins` with `selection_metric` set to `metric` (a "val_..." name): the runs of a sweep or a protocol
    choose their epochs by the same rule that chooses among them. A different value pinned by hand is refused."""
    wanted = metric.removeprefix("val_")
    given = pins.get("selection_metric")
    if given is not None and given != wanted:
        raise UsageError(f"selection_metric={given} contradicts {where} {metric}: every choice follows one rule; "
                         f"drop the --set, or choose on val_{given}")
    return {**pins, "selection_metric": wanted}

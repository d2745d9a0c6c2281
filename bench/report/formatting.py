"""How numbers read in every report format: accuracies with two decimals, "–" for undefined, never 0."""

from __future__ import annotations

import re
from typing import Any

from bench.report.aggregate import Stat

UNDEFINED = "–"
MINUS = "−"
RANDOM_INIT_MARK = "†"
HEALTH_MARK = "⚠"
RISING_MARK = "↗"  # the val curve was still rising when the budget ended
BELOW_MARK = "▼"  # significantly below the best row


def accuracy(value: float | None) -> str:
    return UNDEFINED if value is None else f"{value:.2f}"


def stat(value: Stat | None, seeds: int | None = None) -> str:
    """"73.00 ± 3.61"; one value shows no ±; "(n=2)" when fewer seeds than the row's define the metric."""
    if value is None:
        return UNDEFINED
    text = accuracy(value.mean) if value.std is None else f"{value.mean:.2f} ± {value.std:.2f}"
    return text if seeds is None or value.n == seeds else f"{text} (n={value.n})"


def signed(value: float | None) -> str:
    if value is None:
        return UNDEFINED
    return f"+{value:.2f}" if value >= 0 else f"{MINUS}{-value:.2f}"


def parameters(count: float | None) -> str:
    """259.2K, 6.04M, 1.20B."""
    if count is None:
        return UNDEFINED
    for scale, suffix, decimals in ((1e9, "B", 2), (1e6, "M", 2), (1e3, "K", 1)):
        if count >= scale:
            return f"{count / scale:.{decimals}f}{suffix}"
    return f"{count:.0f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return UNDEFINED
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def image_size(value: int | None) -> str:
    return UNDEFINED if value is None else "native" if value == 0 else str(value)


def milliseconds(value: float | None) -> str:
    return UNDEFINED if value is None else f"{value:.2f}"


_CPU = re.compile(r"^cpu \((?:.*, )?(\d+) threads?\)$")


def device(description: str) -> str:
    """"cpu (x86_64, 2 threads)" → "cpu ×2"; "NVIDIA H100 80GB HBM3" → "H100 80GB HBM3"."""
    match = _CPU.match(description)
    if match:
        return f"cpu ×{match.group(1)}"
    return description.removeprefix("NVIDIA ")


def devices(descriptions: list[str]) -> str:
    return ", ".join(dict.fromkeys(device(description) for description in descriptions)) or UNDEFINED


def setting(value: Any) -> str:
    """A hyperparameter value: floats with 4 significant digits, booleans lower-case."""
    if value is None:
        return UNDEFINED
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def method_label(method: str, pretrained: bool, flagged: bool = False, rising: bool = False) -> str:
    """The method's name, marked when its backbone was not pretrained, when its training was flagged and when
    its val curve had not flattened."""
    return (method + ("" if pretrained else RANDOM_INIT_MARK) + (HEALTH_MARK if flagged else "")
            + (RISING_MARK if rising else ""))


def interval(value: Any) -> str:
    """"[77.10, 81.50]" for a bootstrap interval; "–" without one."""
    return UNDEFINED if value is None else f"[{value.low:.2f}, {value.high:.2f}]"


def p_value(p: float, replicates: int) -> str:
    floor = 1 / replicates
    return f"p<{floor:.0e}" if p < floor else f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"


def versus_best(evidence: Any, replicates: int) -> str:
    """"best", "▼ p=0.004" (significantly below the best row) or "n.s. p=0.21"; "–" without evidence."""
    if evidence is None:
        return UNDEFINED
    if evidence.is_best:
        return "best"
    mark = BELOW_MARK if evidence.below_best else "n.s."
    return f"{mark} {p_value(evidence.p_value, replicates)}"

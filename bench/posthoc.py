"""Post-hoc logit adjustment (Menon et al., ICLR 2021) at evaluation time, for any method, without retraining.

The adjusted score is logits - tau * log(prior), prior = training counts / their sum. tau is chosen on the
validation split only (`choose_tau`); `posthoc_report` then applies that tau to the test split.
"""

from __future__ import annotations

import math

import numpy as np

from bench.errors import BenchError
from bench.metrics import ACCURACIES, DEFAULT_CONVENTION, evaluate_logits
from bench.selection import DEFAULT_METRIC, selection_key

DEFAULT_TAUS = np.linspace(0.0, 2.0, 21)


def log_prior(counts) -> np.ndarray:
    values = np.asarray(counts, dtype=np.float64).reshape(-1)
    if values.size == 0 or (values <= 0).any():
        raise BenchError("post-hoc adjustment needs at least one training image in every class")
    return np.log(values / values.sum())


def adjust(logits, counts, tau: float) -> np.ndarray:
    """logits - tau * log(prior), as numpy."""
    logits = np.asarray(logits)
    return logits - (tau * log_prior(counts)).astype(np.result_type(logits.dtype, np.float32), copy=False)


def _to_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def choose_tau(val_logits, val_labels, counts, taus=DEFAULT_TAUS, metric: str = DEFAULT_METRIC,
               convention: str = DEFAULT_CONVENTION) -> tuple[float, np.ndarray]:
    """The tau in `taus` that maximises `metric` on the validation split by the selection rule (ties: the lower
    class-balanced NLL of the adjusted scores, then the smallest tau; an undefined score never wins), and the
    score of every tau, in the order given."""
    if metric not in ACCURACIES:
        raise BenchError(f"unknown metric {metric!r}; choose one of {', '.join(ACCURACIES)}")
    taus = np.asarray(taus, dtype=np.float64).reshape(-1)
    if taus.size == 0:
        raise BenchError("choose_tau needs at least one candidate tau")
    logits, labels = _to_numpy(val_logits), _to_numpy(val_labels)
    summaries = [evaluate_logits(labels, adjust(logits, counts, float(tau)), counts, convention).summary()
                 for tau in taus]
    keys = [(selection_key(summary, metric), -float(tau)) for summary, tau in zip(summaries, taus, strict=True)]
    best = max(range(len(taus)), key=keys.__getitem__)
    scores = np.array([math.nan if s[metric] is None else s[metric] for s in summaries], dtype=np.float64)
    return float(taus[best]), scores


def posthoc_report(val_logits, val_labels, test_logits, test_labels, counts,
                   convention: str = DEFAULT_CONVENTION, taus=DEFAULT_TAUS,
                   metric: str = DEFAULT_METRIC) -> dict:
    """{"tau": tau chosen on val, "val": summary at tau, "test": summary at tau}. The test split is read only
    after tau is fixed."""
    tau, _ = choose_tau(val_logits, val_labels, counts, taus, metric, convention)
    summaries = {}
    for split, logits, labels in (("val", val_logits, val_labels), ("test", test_logits, test_labels)):
        adjusted = adjust(_to_numpy(logits), counts, tau)
        summaries[split] = evaluate_logits(_to_numpy(labels), adjusted, counts, convention).summary()
    return {"tau": tau, **summaries}

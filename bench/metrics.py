"""Accuracy metrics for long-tailed classification: overall, per-class, many/medium/few-shot and friends.

All accuracies are percentages (0–100). Shot groups derive from training counts under a named convention;
the thresholds live only in `SHOT_CONVENTIONS`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from bench.errors import BenchError, UsageError

GROUPS = ("many", "medium", "few")
# nll_balanced: the class-balanced negative log-likelihood of the scores' softmax (defined only from scores)
HEADLINE = ("overall", "mean_per_class", "many", "medium", "few", "worst_class", "harmonic_mean", "macro_f1",
            "nll_balanced")
ACCURACIES = HEADLINE[:-1]


@dataclass(frozen=True)
class ShotConvention:
    """many: more than `many_above` training images; few: at most `few_up_to`; medium: the rest."""

    many_above: int
    few_up_to: int
    description: str


SHOT_CONVENTIONS: dict[str, ShotConvention] = {
    "standard": ShotConvention(100, 19, "many > 100, medium 20–100, few < 20 (OLTR, decoupling, most work)"),
    # The official LPT evaluation script counts exactly-20-image classes as few (6 such classes on Places-LT).
    "lpt": ShotConvention(100, 20, "many > 100, medium (20, 100], few ≤ 20 (official LPT evaluation script)"),
}
DEFAULT_CONVENTION = "standard"


def _convention(name: str) -> ShotConvention:
    try:
        return SHOT_CONVENTIONS[name]
    except KeyError:
        known = ", ".join(SHOT_CONVENTIONS)
        raise UsageError(f"unknown shot convention {name!r}; choose one of {known}") from None


def shot_groups(train_counts: np.ndarray, convention: str = DEFAULT_CONVENTION) -> np.ndarray:
    """'many' / 'medium' / 'few' for each class, from its number of training images."""
    rule = _convention(convention)
    counts = np.asarray(train_counts)
    return np.where(counts > rule.many_above, "many", np.where(counts <= rule.few_up_to, "few", "medium"))


@dataclass(frozen=True)
class Metrics:
    convention: str
    num_samples: int
    overall: float  # sample-level top-1
    mean_per_class: float
    many: float
    medium: float
    few: float
    worst_class: float
    harmonic_mean: float
    macro_f1: float
    per_class: np.ndarray = field(repr=False)  # NaN where a class has no evaluation samples
    group_sizes: dict[str, int] = field(default_factory=dict)  # classes per shot group (all classes)
    evaluated_classes: int = 0  # classes with at least one evaluation sample
    nll_balanced: float = math.nan  # mean over classes of the class's mean NLL; NaN without scores
    support: np.ndarray = field(default=None, repr=False)  # evaluation samples per class
    groups: np.ndarray = field(default=None, repr=False)  # each class's shot group

    def standard_error(self, name: str) -> float:
        """The standard error of accuracy `name` under a bootstrap of the evaluation images resampled within
        their classes (exact, not simulated: class c's accuracy varies as p_c(1 - p_c)/n_c, independently of
        the others). Defined for the class means (mean_per_class, many, medium, few) and overall; NaN for the
        rest."""
        present = self.support > 0
        p = np.where(present, self.per_class, 0.0) / 100.0
        variance = np.zeros_like(p)
        variance[present] = p[present] * (1 - p[present]) / self.support[present]
        if name == "overall":
            total = self.support.sum()
            return float(100.0 * np.sqrt((self.support.astype(float) ** 2 * variance).sum()) / total) \
                if total else math.nan
        if name not in ("mean_per_class", *GROUPS):
            return math.nan
        members = present if name == "mean_per_class" else present & (self.groups == name)
        if not members.any():
            return math.nan
        return float(100.0 * np.sqrt(variance[members].sum()) / members.sum())

    def summary(self) -> dict[str, float | None]:
        """The headline numbers a record keeps. Undefined values (NaN) are None, so a record compares equal
        before and after a round trip through JSON."""
        return {name: none_if_nan(getattr(self, name)) for name in HEADLINE}

    def as_dict(self) -> dict[str, float | int | str]:
        """Every scalar, flat: the headline numbers (NaN kept), sample and class counts, the convention."""
        flat: dict[str, float | int | str] = {name: getattr(self, name) for name in HEADLINE}
        flat["num_samples"] = self.num_samples
        flat["evaluated_classes"] = self.evaluated_classes
        for group in GROUPS:
            flat[f"{group}_classes"] = self.group_sizes.get(group, 0)
        flat["convention"] = self.convention
        return flat


def none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _class_indices(labels, preds, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions as flat int64 class indices, checked to pair up and to lie in 0 .. num_classes - 1."""
    labels = np.asarray(labels).reshape(-1)
    preds = np.asarray(preds).reshape(-1)
    if labels.shape != preds.shape:
        raise BenchError(f"{labels.size} labels but {preds.size} predictions; they must match one to one")
    for what, values in (("label", labels), ("prediction", preds)):
        if values.size and not np.issubdtype(values.dtype, np.integer):
            raise BenchError(f"{what}s must be integer class indices, got dtype {values.dtype}")
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise BenchError(f"{what} out of range: classes are 0..{num_classes - 1} (from the training "
                             f"counts), got {values.min()}..{values.max()}")
    return labels.astype(np.int64), preds.astype(np.int64)


def evaluate(labels, preds, train_counts, convention: str = DEFAULT_CONVENTION) -> Metrics:
    """Metrics of predicted class indices against true ones; classes are 0 .. len(train_counts) - 1."""
    groups = shot_groups(train_counts, convention)
    num_classes = len(groups)
    labels, preds = _class_indices(labels, preds, num_classes)

    correct = labels == preds
    support = np.bincount(labels, minlength=num_classes)
    true_positives = np.bincount(labels[correct], minlength=num_classes)
    predicted = np.bincount(preds, minlength=num_classes)
    present = support > 0

    per_class = np.full(num_classes, math.nan)
    per_class[present] = 100.0 * true_positives[present] / support[present]
    present_acc = per_class[present]

    # F1 = 2TP / (2TP + FP + FN) = 2TP / (predicted + support); support > 0 keeps it defined.
    f1 = 2.0 * true_positives[present] / (predicted[present] + support[present])
    if present_acc.size == 0:
        harmonic = math.nan
    elif (present_acc == 0).any():
        harmonic = 0.0
    else:
        harmonic = float(present_acc.size / np.sum(1.0 / present_acc))

    return Metrics(
        convention=convention,
        num_samples=int(labels.size),
        overall=100.0 * int(correct.sum()) / labels.size if labels.size else math.nan,
        mean_per_class=_mean_or_nan(present_acc),
        many=_mean_or_nan(per_class[present & (groups == "many")]),
        medium=_mean_or_nan(per_class[present & (groups == "medium")]),
        few=_mean_or_nan(per_class[present & (groups == "few")]),
        worst_class=float(present_acc.min()) if present_acc.size else math.nan,
        harmonic_mean=harmonic,
        macro_f1=float(100.0 * f1.mean()) if f1.size else math.nan,
        per_class=per_class,
        group_sizes={group: int(np.count_nonzero(groups == group)) for group in GROUPS},
        evaluated_classes=int(np.count_nonzero(present)),
        support=support,
        groups=groups,
    )


def evaluate_logits(labels, logits, train_counts, convention: str = DEFAULT_CONVENTION) -> Metrics:
    """`evaluate` on the argmax of scores shaped [samples, classes] (logits, probabilities, similarities)."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] != len(train_counts):
        raise BenchError(f"scores have shape {logits.shape}; expected [samples, {len(train_counts)}] "
                         f"(one column per class in the training counts)")
    metrics = evaluate(labels, logits.argmax(axis=1), train_counts, convention)
    return dataclasses.replace(metrics, nll_balanced=balanced_nll(labels, logits))


def balanced_nll(labels, scores) -> float:
    """Mean over the classes present of the mean negative log-likelihood of softmax(scores) on that class's
    samples: the log loss with every class weighted equally, as a balanced test weighs them."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if labels.size == 0:
        return math.nan
    return class_balanced_mean(labels, sample_nll(labels, scores))


def sample_nll(labels, scores) -> np.ndarray:
    """Each sample's negative log-likelihood of its label under softmax(scores)."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    shifted = scores - scores.max(axis=1, keepdims=True)
    return np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(labels.size), labels]


def class_balanced_mean(labels: np.ndarray, values: np.ndarray) -> float:
    """The mean over the classes present of the mean of `values` over each class's samples."""
    support = np.bincount(labels)
    per_class = np.bincount(labels, weights=values, minlength=support.size)
    present = support > 0
    return float((per_class[present] / support[present]).mean())

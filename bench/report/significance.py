"""Whether a leaderboard's differences are larger than their noise: a paired, class-stratified bootstrap over the
test images, pooled over seeds.

Each replicate resamples the test images with replacement **within their classes** (so a balanced test stays
balanced and the per-class metrics keep their meaning), the same images for every row (paired: rows scored on
one resample are compared on it), and each row's seeds with replacement (so seed-to-seed variation is in the
interval as well as test-set sampling). A row's value in a replicate is the mean over its drawn seeds. From
`REPLICATES` replicates (seeded: a report is reproducible) come a 95 % percentile interval for overall and
few-shot accuracy, and for each row the bootstrap distribution of its difference to the best row (the highest
mean test overall): the row is significantly below the best when the difference's 95 % interval lies above 0
(two-sided), and `p` is the share of replicates in which the row was not below the best (one-sided).

Only rows whose runs kept their per-image predictions (records since version 4) on the same test images (the
same labels in the same order) take part; the others show no interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from bench.metrics import shot_groups

REPLICATES = 2000
SEED = 0
LEVEL = 0.95
CHUNK = 100  # replicates drawn at once (bounds memory: CHUNK × test images weights)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class Evidence:
    """A row's intervals and its comparison with the best row (`is_best` for that row itself)."""

    overall: Interval
    few: Interval | None  # None: no few-shot class in the test set
    is_best: bool
    below_best: bool  # significantly below the best row (95 %, two-sided)
    p_value: float  # share of replicates in which the row was not below the best row (one-sided)
    difference: Interval  # best row's overall minus this row's, 95 %


@dataclass(frozen=True)
class RunPredictions:
    predicted: np.ndarray
    labels: np.ndarray
    train_counts: np.ndarray


def leaderboard_evidence(rows: Sequence[Sequence[dict]], load: Callable[[dict], dict | None],
                         convention_of: Callable[[Sequence[dict]], str],
                         replicates: int = REPLICATES, seed: int = SEED) -> list[Evidence | None]:
    """One Evidence per row (a row: its runs, one per seed), None for rows that cannot take part. `load` gives a
    record's stored arrays (`ResultsStore.predictions`)."""
    runs = [_row_predictions(records, load) for records in rows]
    reference = next((row[0] for row in runs if row), None)
    if reference is None:
        return [None] * len(rows)
    comparable = [bool(row) and all(np.array_equal(run.labels, reference.labels)
                                    and np.array_equal(run.train_counts, reference.train_counts) for run in row)
                  for row in runs]
    members = [index for index, ok in enumerate(comparable) if ok]
    if not members:
        return [None] * len(rows)
    few = shot_groups(reference.train_counts, convention_of(rows[members[0]])) == "few"
    overall, few_values = _replicate_values([runs[i] for i in members], reference, few, replicates, seed)
    observed = np.array([np.mean([_accuracy(run.predicted == run.labels) for run in runs[i]]) for i in members])
    best = int(np.argmax(observed))
    evidence: list[Evidence | None] = [None] * len(rows)
    tail = 100 * (1 - LEVEL) / 2
    for position, index in enumerate(members):
        difference = overall[best] - overall[position]
        low, high = np.percentile(difference, [tail, 100 - tail])
        evidence[index] = Evidence(
            overall=_interval(overall[position], tail),
            few=_interval(few_values[position], tail) if few.any() else None,
            is_best=position == best, below_best=bool(position != best and low > 0),
            p_value=1.0 if position == best else float(np.mean(difference <= 0)),
            difference=Interval(float(low), float(high)))
    return evidence


def _interval(values: np.ndarray, tail: float) -> Interval:
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high))


def _accuracy(correct: np.ndarray) -> float:
    return 100.0 * float(correct.mean()) if correct.size else float("nan")


def _row_predictions(records: Sequence[dict], load: Callable[[dict], dict | None]) -> list[RunPredictions]:
    """The row's runs' test predictions; empty when any run lacks them (a row is whole or left out)."""
    runs = []
    for record in records:
        arrays = load(record)
        if arrays is None or "test" not in arrays or arrays["test"].size == 0:
            return []
        runs.append(RunPredictions(arrays["test"], arrays["test_labels"], arrays["train_counts"]))
    return runs


def _replicate_values(rows: list[list[RunPredictions]], reference: RunPredictions, few: np.ndarray,
                      replicates: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[rows, replicates] overall and few-shot accuracy (%): each replicate's class-stratified resample of the
    test images, shared by every row, and each row's seeds resampled with replacement."""
    rng = np.random.default_rng(seed)
    labels = reference.labels
    num_classes = len(reference.train_counts)
    classes = [np.flatnonzero(labels == c) for c in range(num_classes)]
    support = np.bincount(labels, minlength=num_classes).astype(np.float64)
    few_present = few & (support > 0)
    # per run: a sparse [test images, classes] one-hot of its correct predictions: weights @ it counts hits per class
    hits = [[_class_hits(run.predicted == labels, labels, num_classes) for run in row] for row in rows]
    overall = np.empty((len(rows), replicates))
    few_values = np.full((len(rows), replicates), np.nan)
    for start in range(0, replicates, CHUNK):
        size = min(CHUNK, replicates - start)
        weights = np.zeros((size, labels.size))
        for members in classes:
            if members.size:
                weights[:, members] = rng.multinomial(members.size, np.full(members.size, 1 / members.size),
                                                      size=size)
        for r, row in enumerate(hits):
            per_seed_class = np.stack([(run.T @ weights.T).T for run in row])  # [seeds, size, classes]
            drawn = rng.integers(0, len(row), size=(size, len(row)))  # seeds with replacement, per replicate
            chosen = per_seed_class[drawn, np.arange(size)[:, None]]  # [size, seeds drawn, classes]
            accuracy = 100.0 * chosen / np.where(support > 0, support, 1.0)
            overall[r, start:start + size] = 100.0 * chosen.sum(-1).mean(-1) / labels.size
            if few_present.any():
                few_values[r, start:start + size] = accuracy[..., few_present].mean(-1).mean(-1)
    return overall, few_values


def _class_hits(correct: np.ndarray, labels: np.ndarray, num_classes: int) -> sparse.csr_matrix:
    rows = np.flatnonzero(correct)
    return sparse.csr_matrix((np.ones(rows.size), (rows, labels[correct])), shape=(labels.size, num_classes))

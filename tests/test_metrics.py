"""Metrics against values worked out by hand, the two shot conventions at their boundaries, and scale."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss, recall_score

from bench.errors import BenchError
from bench.metrics import (
    ACCURACIES,
    SHOT_CONVENTIONS,
    balanced_nll,
    evaluate,
    evaluate_logits,
    shot_groups,
)

PLACES_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "splits" / "Places_LT_train.txt"

# Six classes. Training counts sit on the group boundaries; class 5 (many) has no evaluation samples.
#   class:          0     1     2     3     4     5
TRAIN_COUNTS = [101, 100, 20, 19, 5, 300]
#   standard:     many  med   med   few   few   many
#   lpt:          many  med   few   few   few   many
SAMPLES = {  # true class -> predictions for its evaluation samples
    0: [0, 0, 0, 1],     # 3/4 correct = 75 %
    1: [1, 2],           # 1/2         = 50 %
    2: [2, 2, 2, 2, 2],  # 5/5         = 100 %
    3: [3, 0, 0, 4],     # 1/4         = 25 %
    4: [4, 4, 5, 1, 2],  # 2/5         = 40 % (one prediction of class 5, which has no samples)
}
LABELS = np.array([c for c, preds in SAMPLES.items() for _ in preds])
PREDS = np.array([p for preds in SAMPLES.values() for p in preds])


def test_hand_computed_standard_convention():
    m = evaluate(LABELS, PREDS, TRAIN_COUNTS)
    assert m.convention == "standard"
    assert m.num_samples == 20
    # 3 + 1 + 5 + 1 + 2 = 12 correct of 20
    assert m.overall == 60.0
    np.testing.assert_array_equal(m.per_class[:5], [75.0, 50.0, 100.0, 25.0, 40.0])
    assert math.isnan(m.per_class[5])
    # (75 + 50 + 100 + 25 + 40) / 5; class 5 has no samples and is left out
    assert m.mean_per_class == 58.0
    assert m.many == 75.0                 # class 0 only (class 5 is many but unevaluated)
    assert m.medium == 75.0               # (50 + 100) / 2
    assert m.few == 32.5                  # (25 + 40) / 2
    assert m.worst_class == 25.0
    # 5 / (1/75 + 1/50 + 1/100 + 1/25 + 1/40) = 5 / ((8 + 12 + 6 + 24 + 15) / 600) = 3000 / 65 = 600 / 13
    assert m.harmonic_mean == pytest.approx(600 / 13, rel=1e-12)
    # F1_c = 2 TP / (predicted_c + support_c); predicted counts of classes 0..4 are 5, 3, 7, 1, 3:
    #   6/9, 2/5, 10/12, 2/5, 4/8 = (20 + 12 + 25 + 12 + 15) / 30 = 84/30 over 5 classes = 0.56
    assert m.macro_f1 == pytest.approx(56.0, rel=1e-12)
    sklearn_f1 = f1_score(LABELS, PREDS, labels=range(5), average="macro")
    assert m.macro_f1 == pytest.approx(100 * sklearn_f1, rel=1e-12)
    assert m.group_sizes == {"many": 2, "medium": 2, "few": 2}
    assert m.evaluated_classes == 5


def test_hand_computed_lpt_convention_moves_the_20_image_class_to_few():
    m = evaluate(LABELS, PREDS, TRAIN_COUNTS, convention="lpt")
    assert m.convention == "lpt"
    assert m.many == 75.0                 # class 0
    assert m.medium == 50.0               # class 1 only: 100 images is medium in both conventions
    assert m.few == 55.0                  # (100 + 25 + 40) / 3: class 2 (20 images) is now few
    assert m.group_sizes == {"many": 2, "medium": 1, "few": 3}
    # nothing else depends on the convention
    standard = evaluate(LABELS, PREDS, TRAIN_COUNTS).as_dict()
    for name in ("overall", "mean_per_class", "worst_class", "harmonic_mean", "macro_f1", "num_samples"):
        assert m.as_dict()[name] == standard[name]


def test_shot_group_boundaries():
    counts = np.array([19, 20, 21, 100, 101])
    assert shot_groups(counts).tolist() == ["few", "medium", "medium", "medium", "many"]
    assert shot_groups(counts, "standard").tolist() == ["few", "medium", "medium", "medium", "many"]
    assert shot_groups(counts, "lpt").tolist() == ["few", "few", "medium", "medium", "many"]
    assert set(SHOT_CONVENTIONS) == {"standard", "lpt"}


def test_unknown_convention_lists_the_known_ones():
    with pytest.raises(BenchError, match="standard, lpt"):
        shot_groups(np.array([5]), "oltr")
    with pytest.raises(BenchError, match="unknown shot convention 'oltr'"):
        evaluate(LABELS, PREDS, TRAIN_COUNTS, convention="oltr")


def test_all_correct_is_100_everywhere():
    m = evaluate(LABELS, LABELS, TRAIN_COUNTS)
    for name in ACCURACIES:
        assert getattr(m, name) == 100.0, name
    np.testing.assert_array_equal(m.per_class[:5], 100.0)


def test_zero_class_makes_harmonic_mean_zero_and_empty_group_nan():
    # only classes 0 and 3 evaluated; class 3 entirely wrong
    m = evaluate([0, 0, 3], [0, 0, 0], TRAIN_COUNTS)
    assert m.harmonic_mean == 0.0
    assert m.worst_class == 0.0
    assert math.isnan(m.medium)           # classes 1 and 2 have no samples
    summary = m.summary()
    assert summary["medium"] is None and summary["many"] == 100.0 and summary["few"] == 0.0
    flat = m.as_dict()
    assert math.isnan(flat["medium"])
    assert flat["convention"] == "standard" and flat["medium_classes"] == 2 and flat["num_samples"] == 3


def test_evaluate_logits_takes_the_argmax():
    logits = np.full((len(PREDS), 6), -1.0)
    logits[np.arange(len(PREDS)), PREDS] = 3.0
    from_logits = evaluate_logits(LABELS, logits, TRAIN_COUNTS)
    from_preds = evaluate(LABELS, PREDS, TRAIN_COUNTS).as_dict()
    assert math.isnan(from_preds.pop("nll_balanced")) and from_logits.as_dict().pop("nll_balanced") > 0
    assert {k: v for k, v in from_logits.as_dict().items() if k != "nll_balanced"} == from_preds
    assert evaluate_logits(LABELS, logits, TRAIN_COUNTS, "lpt").few == 55.0
    with pytest.raises(BenchError, match=r"expected \[samples, 5\]"):
        evaluate_logits(LABELS, logits, TRAIN_COUNTS[:5])


@pytest.mark.parametrize("labels, preds, message", [
    ([0, 1], [0], "must match"),
    ([0, 6], [0, 0], "label out of range"),
    ([0, 1], [0, -1], "prediction out of range"),
    ([0.0, 1.0], [0, 1], "integer class indices"),
])
def test_bad_inputs_are_bench_errors(labels, preds, message):
    with pytest.raises(BenchError, match=message):
        evaluate(np.array(labels), np.array(preds), TRAIN_COUNTS)


def test_inaturalist_scale_matches_sklearn():
    # iNaturalist 2018: 8,142 classes, 3 validation images each
    rng = np.random.default_rng(0)
    num_classes = 8142
    counts = rng.integers(2, 1001, num_classes)
    labels = np.repeat(np.arange(num_classes), 3)
    preds = np.where(rng.random(labels.size) < 0.7, labels, rng.integers(0, num_classes, labels.size))
    started = time.perf_counter()
    m = evaluate(labels, preds, counts)
    assert time.perf_counter() - started < 1.0  # ~2 ms; a per-class Python loop or a C×C matrix is far slower
    assert m.overall == pytest.approx(100 * accuracy_score(labels, preds), rel=1e-12)
    assert m.mean_per_class == pytest.approx(
        100 * recall_score(labels, preds, labels=np.arange(num_classes), average="macro"), rel=1e-12)
    assert m.macro_f1 == pytest.approx(
        100 * f1_score(labels, preds, labels=np.arange(num_classes), average="macro"), rel=1e-12)
    assert sum(m.group_sizes.values()) == num_classes


@pytest.mark.skipif(not PLACES_TRAIN.exists(), reason="../shared/splits not present")
def test_places_lt_group_sizes_under_both_conventions():
    labels = np.loadtxt(PLACES_TRAIN, dtype=str, usecols=1).astype(int)
    counts = np.bincount(labels)
    for convention, expected in (("standard", (131, 163, 71)), ("lpt", (131, 157, 77))):
        groups = shot_groups(counts, convention)
        assert tuple(int((groups == g).sum()) for g in ("many", "medium", "few")) == expected


def test_balanced_nll_is_the_log_loss_with_every_class_weighted_equally():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [50, 20, 5, 1])
    scores = rng.normal(size=(labels.size, 4)) * 3
    support = np.bincount(labels)
    probabilities = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    expected = log_loss(labels, probabilities, sample_weight=1.0 / support[labels])
    assert balanced_nll(labels, scores) == pytest.approx(expected, rel=1e-9)
    assert evaluate_logits(labels, scores, [100, 50, 10, 5]).nll_balanced == pytest.approx(expected, rel=1e-9)
    # the plain (sample-weighted) log loss differs: the head would dominate it
    assert log_loss(labels, probabilities) != pytest.approx(expected, rel=1e-3)


def test_standard_error_is_the_stratified_bootstrap_one():
    """The closed form against a simulated bootstrap of the images resampled within their classes."""
    rng = np.random.default_rng(1)
    counts = np.array([200, 150, 60, 40, 12, 6])
    labels = np.repeat(np.arange(6), [40, 30, 20, 10, 5, 3])
    preds = np.where(rng.random(labels.size) < np.linspace(0.9, 0.3, 6)[labels], labels, (labels + 1) % 6)
    metrics = evaluate(labels, preds, counts)
    draws = {name: [] for name in ("overall", "mean_per_class", "few", "many")}
    members = [np.flatnonzero(labels == c) for c in range(6)]
    for _ in range(4000):
        index = np.concatenate([rng.choice(m, size=m.size) for m in members])
        resampled = evaluate(labels[index], preds[index], counts)
        for name, values in draws.items():
            values.append(getattr(resampled, name))
    for name, values in draws.items():
        assert metrics.standard_error(name) == pytest.approx(np.std(values), rel=0.06), name
    assert math.isnan(metrics.standard_error("worst_class"))

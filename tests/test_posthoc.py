"""Post-hoc logit adjustment: the formula, and tau chosen on validation only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.metrics import evaluate_logits
from bench.posthoc import adjust, choose_tau, posthoc_report

COUNTS = np.round(1000 * 0.6 ** np.arange(10)).astype(int)  # 1000 down to 10


def biased_logits(labels, seed):
    """Class evidence plus log prior: a model that learnt the training imbalance, so it favours head
    classes."""
    rng = np.random.default_rng(seed)
    evidence = rng.normal(0.0, 1.0, (labels.size, COUNTS.size))
    evidence[np.arange(labels.size), labels] += 1.5
    return evidence + np.log(COUNTS / COUNTS.sum())


def balanced_labels(per_class, seed):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(COUNTS.size), per_class))


def test_adjust_subtracts_tau_log_prior():
    logits = np.array([[0.0, 0.0], [1.0, -1.0]])
    expected = logits - 0.5 * np.array([math.log(0.75), math.log(0.25)])
    np.testing.assert_allclose(adjust(logits, [3, 1], 0.5), expected, atol=1e-12)
    # The tail column is raised more than the head one (sign check): [0, 0] → tail wins after adjustment.
    assert adjust(logits, [3, 1], 1.0)[0].argmax() == 1
    np.testing.assert_array_equal(adjust(logits, [3, 1], 0.0), logits)


def test_choose_tau_removes_the_head_bias():
    labels = balanced_labels(60, 0)
    logits = biased_logits(labels, 1)
    taus = np.linspace(0, 2, 21)
    tau, scores = choose_tau(logits, labels, COUNTS, taus)
    assert scores.shape == taus.shape
    assert 0.5 <= tau <= 1.5  # the bias is exactly log prior, so tau near 1 undoes it
    assert scores[taus == tau][0] == scores.max()
    assert scores.max() > scores[0] + 5  # mean-per-class improves by several points over no adjustment
    adjusted = adjust(logits, COUNTS, tau)
    assert scores.max() == pytest.approx(evaluate_logits(labels, adjusted, COUNTS).mean_per_class)


def test_choose_tau_ties_go_to_the_smallest_tau():
    labels = balanced_labels(5, 2)
    logits = biased_logits(labels, 3)
    uniform = np.full(COUNTS.size, 7)  # uniform prior: every tau gives the same predictions
    tau, scores = choose_tau(logits, labels, uniform, taus=[1.5, 0.5, 1.0])
    assert tau == 0.5 and len(set(scores.tolist())) == 1


def test_report_chooses_tau_on_val_and_never_on_test():
    val_labels = balanced_labels(60, 4)
    val_logits = biased_logits(val_labels, 5)
    # A test split of head-class images only: on it, no adjustment (tau = 0) would be best.
    test_labels = np.random.default_rng(6).choice(2, 600)
    test_logits = biased_logits(test_labels, 7)
    test_tau, _ = choose_tau(test_logits, test_labels, COUNTS)
    val_tau, _ = choose_tau(val_logits, val_labels, COUNTS)
    assert test_tau == 0.0 and val_tau > 0.5

    report = posthoc_report(val_logits, val_labels, test_logits, test_labels, COUNTS, "standard")
    assert set(report) == {"tau", "val", "test"}
    assert report["tau"] == val_tau
    assert report["val"] == evaluate_logits(val_labels, adjust(val_logits, COUNTS, val_tau), COUNTS).summary()
    assert report["test"] == evaluate_logits(test_labels, adjust(test_logits, COUNTS, val_tau),
                                             COUNTS).summary()
    # Changing the test split changes nothing about tau.
    other = posthoc_report(val_logits, val_labels, test_logits, np.zeros_like(test_labels), COUNTS,
                           "standard")
    assert other["tau"] == val_tau

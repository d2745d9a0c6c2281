"""Long-tail losses against values worked out by hand (log-sum-exp written out with `math`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.errors import BenchError
from bench.hparams import resolve
from bench.methods.losses import (
    LOSS_HPARAMS,
    LOSSES,
    balanced_softmax_loss,
    class_balanced_loss,
    class_balanced_weights,
    cross_entropy,
    focal_loss,
    logit_adjusted_loss,
    make_loss,
)

LOGITS = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
LABELS = [0, 2]
COUNTS = [60, 30, 10]  # prior 0.6, 0.3, 0.1


def tensors():
    return torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(LABELS)


def hand_ce_rows(logits, labels, offset=(0.0, 0.0, 0.0)):
    """-log softmax(logits + offset)[y] per row, with the log-sum-exp written out."""
    rows = []
    for row, y in zip(logits, labels):
        z = [v + o for v, o in zip(row, offset)]
        rows.append(math.log(sum(math.exp(v) for v in z)) - z[y])
    return rows


def hand_la(tau):
    total = sum(COUNTS)
    offset = [tau * math.log(n / total) for n in COUNTS]
    rows = hand_ce_rows(LOGITS, LABELS, offset)
    return sum(rows) / len(rows)


def test_cross_entropy_matches_hand_value():
    logits, labels = tensors()
    rows = hand_ce_rows(LOGITS, LABELS)
    assert cross_entropy(logits, labels).item() == pytest.approx(sum(rows) / 2, abs=1e-12)


@pytest.mark.parametrize("tau", [1.0, 0.0, 1.5])
def test_logit_adjusted_loss_matches_hand_value(tau):
    logits, labels = tensors()
    assert logit_adjusted_loss(logits, labels, COUNTS, tau).item() == pytest.approx(hand_la(tau), abs=1e-12)


def test_logit_adjusted_loss_discriminates_sign_and_missing_prior():
    logits, labels = tensors()
    value = logit_adjusted_loss(logits, labels, COUNTS, 1.0).item()
    # The hand values with the adjustment's sign flipped, or with no prior, are far from the right one ...
    assert abs(hand_la(-1.0) - hand_la(1.0)) > 0.5
    assert abs(hand_la(0.0) - hand_la(1.0)) > 0.1
    # ... and the implementation agrees with neither.
    assert value != pytest.approx(hand_la(-1.0), abs=1e-3)
    assert value != pytest.approx(cross_entropy(logits, labels).item(), abs=1e-3)
    assert logit_adjusted_loss(logits, labels, COUNTS, 0.0).item() == pytest.approx(
        cross_entropy(logits, labels).item(), abs=1e-12)
    # Worked number, so a change in convention is visible in the diff: tau = 1.
    # Row 1: z = (1 + ln .6, 2 + ln .3, .5 + ln .1), lse 1.38946 - z_0 0.48917 = 0.90029;
    # row 2: z = (ln .6, -1 + ln .3, 3 + ln .1), lse 1.00022 - z_2 0.69741 = 0.30281; mean 0.60155.
    assert value == pytest.approx(0.60155, abs=1e-4)


def test_balanced_softmax_equals_logit_adjusted_with_tau_one():
    logits, labels = tensors()
    bs = balanced_softmax_loss(logits, labels, COUNTS).item()
    assert bs == pytest.approx(logit_adjusted_loss(logits, labels, COUNTS, 1.0).item(), abs=1e-12)
    assert bs == pytest.approx(hand_la(1.0), abs=1e-12)


def hand_cb_weights(counts, beta):
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]
    return [w * len(counts) / sum(raw) for w in raw]


def test_class_balanced_weights_match_hand_formula():
    weights = class_balanced_weights([100, 10, 1], beta=0.99).tolist()
    # (1 - 0.99) / (1 - 0.99^n): n=100 → 0.01/0.633968, n=10 → 0.01/0.095618, n=1 → 1; then scaled to sum 3.
    raw = [0.01 / (1 - 0.99 ** 100), 0.01 / (1 - 0.99 ** 10), 1.0]
    expected = [3 * w / sum(raw) for w in raw]
    assert weights == pytest.approx(expected, abs=1e-12)
    assert weights == pytest.approx(hand_cb_weights([100, 10, 1], 0.99), abs=1e-12)
    assert sum(weights) == pytest.approx(3.0, abs=1e-12)
    assert weights[0] < weights[1] < weights[2]  # rarer classes weigh more
    # raw 0.015774, 0.104583, 1 (sum 1.120357) → × 3 / 1.120357:
    assert weights == pytest.approx([0.042237, 0.280044, 2.677719], abs=1e-5)


def test_class_balanced_loss_matches_hand_value():
    logits, labels = tensors()
    w = hand_cb_weights(COUNTS, 0.9)
    rows = hand_ce_rows(LOGITS, LABELS)
    expected = (w[0] * rows[0] + w[2] * rows[1]) / (w[0] + w[2])
    assert class_balanced_loss(logits, labels, COUNTS, beta=0.9).item() == pytest.approx(expected, abs=1e-12)
    # A plain (unweighted) mean would differ: the test can tell.
    assert abs(expected - sum(rows) / 2) > 0.05


def test_focal_loss_gamma_zero_is_ce_and_gamma_two_matches_hand_value():
    logits, labels = tensors()
    assert focal_loss(logits, labels, gamma=0.0).item() == pytest.approx(cross_entropy(logits, labels).item(),
                                                                         abs=1e-12)
    rows = hand_ce_rows(LOGITS, LABELS)  # -log p_y
    expected = sum((1 - math.exp(-r)) ** 2 * r for r in rows) / 2
    assert focal_loss(logits, labels, gamma=2.0).item() == pytest.approx(expected, abs=1e-12)
    assert abs(expected - sum(rows) / 2) > 0.1


def test_factory_builds_every_loss_from_hparams():
    logits, labels = tensors()
    hp = {"la_tau": 1.5, "cb_beta": 0.9, "focal_gamma": 2.0}
    expected = {
        "ce": cross_entropy(logits, labels),
        "la": logit_adjusted_loss(logits, labels, COUNTS, 1.5),
        "bs": balanced_softmax_loss(logits, labels, COUNTS),
        "cb": class_balanced_loss(logits, labels, COUNTS, 0.9),
        "focal": focal_loss(logits, labels, 2.0),
        "cb_focal": focal_loss(logits, labels, 2.0, weight=class_balanced_weights(COUNTS, 0.9)),
    }
    assert set(expected) == set(LOSSES)
    for name, value in expected.items():
        loss = make_loss(name, torch.tensor(COUNTS), hp)
        assert loss(logits, labels).item() == pytest.approx(value.item(), abs=1e-12), name
        assert loss(logits.float(), labels).dtype == torch.float32  # follows the logits' dtype
    # cb_focal with gamma 0 is the class-balanced CE.
    assert make_loss("cb_focal", COUNTS, {"cb_beta": 0.9, "focal_gamma": 0.0})(logits, labels).item() == \
        pytest.approx(expected["cb"].item(), abs=1e-12)


def test_factory_defaults_gradients_and_errors():
    logits, labels = tensors()
    loss = make_loss("la", np.array(COUNTS), {})  # la_tau defaults to 1.0
    assert loss(logits, labels).item() == pytest.approx(hand_la(1.0), abs=1e-12)
    leaf = logits.clone().requires_grad_(True)
    make_loss("cb_focal", COUNTS, {})(leaf, labels).backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    with pytest.raises(BenchError, match="unknown loss"):
        make_loss("logit_adjust", COUNTS, {})
    with pytest.raises(BenchError, match="no training images"):
        make_loss("la", [5, 0, 3], {})
    with pytest.raises(BenchError, match="classes"):
        make_loss("la", [5, 3], {})(logits, labels)


def test_loss_hparams_declarations():
    assert LOSS_HPARAMS["loss"].default == "ce" and LOSS_HPARAMS["loss"].choices == LOSSES
    assert LOSS_HPARAMS["la_tau"].default == 1.0
    assert (LOSS_HPARAMS["la_tau"].space.low, LOSS_HPARAMS["la_tau"].space.high) == (0.5, 2.0)
    assert LOSS_HPARAMS["cb_beta"].space.values == (0.99, 0.999, 0.9999)
    assert LOSS_HPARAMS["focal_gamma"].space.values == (0.5, 1.0, 2.0)
    values = resolve(LOSS_HPARAMS, {"loss": "bs", "la_tau": "0.7"})
    assert values["loss"] == "bs" and values["la_tau"] == 0.7
    with pytest.raises(BenchError):
        resolve(LOSS_HPARAMS, {"loss": "nope"})

"""Hyperparameter declarations: typed --set parsing, and sampling that is stable per name."""

from __future__ import annotations

import pytest

from bench.errors import BenchError
from bench.hparams import Choice, HParam, LogUniform, parse_assignments, resolve, sample

DECLARED = {
    "lr": HParam(0.1, LogUniform(1e-3, 1.0)),
    "epochs": HParam(10),
    "use_ema": HParam(False),
    "optimizer": HParam("sgd", Choice(("sgd", "adamw")), choices=("sgd", "adamw")),
}


def test_overrides_are_parsed_to_the_declared_types():
    values = resolve(DECLARED, parse_assignments(["lr=0.5", "epochs=3", "use_ema=yes", "optimizer=adamw"]))
    assert values == {"lr": 0.5, "epochs": 3, "use_ema": True, "optimizer": "adamw"}


@pytest.mark.parametrize("assignment, message", [
    ("epochs=3.5", "expected int"), ("use_ema=maybe", "expected bool"), ("optimizer=adam", "must be one of"),
    ("epoch=3", "did you mean epochs"),
])
def test_bad_overrides_are_refused(assignment, message):
    with pytest.raises(BenchError, match=message):
        resolve(DECLARED, parse_assignments([assignment]))


def test_adding_a_hyperparameter_keeps_the_others_sampled_values():
    before = sample(DECLARED, trial_seed=7)
    after = sample({**DECLARED, "momentum": HParam(0.9, LogUniform(0.5, 0.99))}, trial_seed=7)
    assert {k: after[k] for k in before} == before
    assert 1e-3 <= before["lr"] <= 1.0 and before["epochs"] == 10
    assert sample(DECLARED, trial_seed=8)["lr"] != before["lr"]

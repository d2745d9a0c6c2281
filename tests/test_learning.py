"""Methods learn on the embedded default (digits_lt with the shipped pretrained tower vit_micro.fmnist), in
seconds: a long-tail loss beats cross-entropy on the few-shot classes, and LPT's group prompts (phase 2) do not
lose to its shared prompt (phase 1) on val.

The thresholds leave a margin under what `python scripts/embedded_learning.py --seeds 0 1 2 3 4` measured over
five seeds (README, "The embedded default"): la − CE on test few-shot accuracy was +16.5, +2.0, +4.5, +10.5,
+10.5 points (mean +8.8; bs is the same loss as la at its default tau 1 and scored the same); LPT's phase 2 −
phase 1 best val accuracy was +1, +4, +7, +5, +2 points (mean +3.8). One seed's LPT gain can be a single val
image, so the LPT test takes the mean over three seeds."""

from __future__ import annotations

import pytest
from rich.console import Console

from bench import runner

LA_OVER_CE_FEW = 0.5  # points of test few-shot accuracy (one image of 200); measured at seed 0: +16.5, worst seed +2
PHASE2_OVER_PHASE1 = 0.0  # "does not lose": mean over seeds 0-2, measured +4.0 (per seed +1 to +7)
LPT_SEEDS = (0, 1, 2)

pytestmark = pytest.mark.slow


def embedded_run(tmp_path, method: str, seed: int = 0) -> dict:
    spec = runner.RunSpec(method=method, dataset="digits_lt", seed=seed, out=str(tmp_path))
    record = runner.execute(spec, console=Console(quiet=True)).record
    assert record["pretrained"] and record["weights_source"] == "shipped"
    assert record["weights_provenance"]["data"]["name"] == "Fashion-MNIST"
    return record


def test_a_long_tail_loss_beats_cross_entropy_on_the_few_shot_classes(tmp_path):
    ce, la = (embedded_run(tmp_path, method) for method in ("finetune", "la"))
    assert la["hparams"]["loss"] == "la" and ce["hparams"]["loss"] == "ce"
    assert la["test"]["few"] >= ce["test"]["few"] + LA_OVER_CE_FEW, (la["test"], ce["test"])


def test_lpt_phase_two_does_not_lose_to_phase_one_on_val(tmp_path):
    gains = []
    for seed in LPT_SEEDS:
        record = embedded_run(tmp_path, "lpt", seed)
        best = {entry["phase"]: entry["val"] for entry in record["selected"]}
        gains.append(best["lpt_group"] - best["lpt_shared"])
        assert record["test"]["overall"] >= 60, record["test"]  # far above chance (10 %); measured 77–83 %
    assert sum(gains) / len(gains) >= PHASE2_OVER_PHASE1, gains

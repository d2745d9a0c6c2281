"""Methods learn on the embedded default (digits_lt with the shipped pretrained tower vit_micro.fmnist), in
seconds: a long-tail loss beats cross-entropy on the few-shot classes, and LPT's group prompts (phase 2) do not
lose to its shared prompt (phase 1) on val.

The thresholds leave a margin under what `python scripts/embedded_learning.py --seeds 0 1 2 3 4` measured over
five seeds (README, "The embedded default"): la − CE on test few-shot accuracy was +16.5, +2.0, +4.5, +10.5,
+10.5 points (mean +8.8; bs is the same loss as la at its default tau 1 and scored the same); LPT's phase 2 −
phase 1 best val accuracy was +1, +4, +7, +5, +2 points (mean +3.8). One seed's LPT gain can be a single val
image, so the LPT test takes the mean over three seeds."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import digits_image_folder
from rich.console import Console

from bench import runner
from bench.store import ResultsStore

LA_OVER_CE_FEW = 0.5  # points of test few-shot accuracy (one image of 200); measured at seed 0: +16.5, worst seed +2
PHASE2_OVER_PHASE1 = 0.0  # "does not lose": mean over seeds 0-2, measured +4.0 (per seed +1 to +7)
LPT_SEEDS = (0, 1, 2)
# LPT phase 1 alone, the shipped recipe, 6 epochs on the digits tree below: val mean per-class accuracy measured
# 66, 69, 64, 65, 68 over seeds 0-4 (warmup_per=iteration, the default; 62, 65, 63, 52, 66 per epoch); chance is 10
PHASE1_FLOOR = 35.0

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


@pytest.mark.parametrize("seed", [0, 1])
def test_lpt_phase_one_learns_on_a_small_image_folder_tree_at_the_shipped_recipe(tmp_path, seed):
    """LPT's shared-prompt phase at its shipped recipe (A-GCL with the cloud, dual sampling, lr 0.02 per 256 images,
    one warm-up epoch, per-epoch cosine) on a real-format tree: the digits as PNG folders, the shipped micro
    tower. Only what the tree forces changes: batches of 32 (it has 442 training images), 6 epochs, 16 px without
    crops (the tower's input; a crop of an 8×8 digit loses it). It must beat chance by far and call no class
    for half the val images, the collapse issue 26 measured on CIFAR-10-LT."""
    tree = digits_image_folder(tmp_path / "tree")
    spec = runner.RunSpec(method="lpt", dataset="folder", data_root=str(tree), backbone="vit_micro.fmnist", seed=seed,
                          out=str(tmp_path / "out"),
                          overrides={"batch_size": "32", "phase1_epochs": "6", "phase2_epochs": "0",
                                     "image_size": "16", "augment": "none"})
    record = runner.execute(spec, console=Console(quiet=True)).record
    assert record["hparams"]["lr"] == 0.02 and record["hparams"]["agcl_cloud"] == 0.5
    assert record["hparams"]["warmup_epochs"] == 1 and record["hparams"]["ib_weight"] == 0.5
    assert record["val"]["mean_per_class"] >= PHASE1_FLOOR, record["val"]
    assert record["health"]["ok"], record["health"]
    arrays = ResultsStore(tmp_path / "out").predictions(record)
    shares = np.bincount(arrays["val"], minlength=10) / len(arrays["val"])
    assert shares.max() <= 0.5, shares  # no class takes half the val predictions

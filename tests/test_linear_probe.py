"""The linear probe is the standard logistic-regression protocol: on the same features and the same weight-decay
grid (C = 1 / (N · wd)) it matches scikit-learn's LogisticRegression; its sampler weights the full-batch
objective; it refuses a weight-decay search without a val split."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from bench import runner
from bench.errors import BenchError
from bench.methods.linear_probe import stratified_folds, weight_decays
from bench.methods.samplers import sampling_weights

PROBE = {"image_size": "16"}


def probe_run(tmp_path, **overrides):
    return runner.execute(runner.RunSpec(method="linear_probe", dataset="digits_lt", backbone="vit_micro",
                                         allow_random_init=True, out=str(tmp_path),
                                         overrides={**PROBE, **overrides}))


def sklearn_choice(features: dict, labels: dict, decays: np.ndarray) -> tuple[float, float, float]:
    """(val accuracy, test accuracy, wd) of scikit-learn's probe with C chosen on val over the same grid."""
    scaler = StandardScaler().fit(features["train"])
    x = {split: scaler.transform(values) for split, values in features.items()}
    best = None
    for wd in decays:
        model = LogisticRegression(C=1.0 / (len(x["train"]) * wd), max_iter=5000, tol=1e-8)
        model.fit(x["train"], labels["train"])
        val = 100 * (model.predict(x["val"]) == labels["val"]).mean()
        if best is None or val > best[0]:
            best = (val, 100 * (model.predict(x["test"]) == labels["test"]).mean(), wd)
    return best


def test_probe_matches_scikit_learn_on_the_same_features(tmp_path):
    """Cached features of the embedded default's random micro ViT: hard enough that the weight decay matters."""
    record = probe_run(tmp_path).record
    features, labels = {}, {}
    for path in sorted((tmp_path / "cache" / "features").glob("*.pt")):
        values = torch.load(path, weights_only=True).double().numpy()
        split = {383: "train", 100: "val", 500: "test"}[len(values)]
        features[split] = values
    from bench.datasets.base import load_dataset

    dataset = load_dataset("digits_lt", None, {})
    labels = {split: getattr(dataset, split).labels for split in ("train", "val", "test")}
    decays = np.asarray(record["extras"]["weight_decays"])
    _, test, wd = sklearn_choice(features, labels, decays)
    chosen = decays[record["selected"][0]["epoch"]]
    assert abs(record["test"]["overall"] - test) <= 1.0, (record["test"]["overall"], test, chosen, wd)


def test_probe_objective_is_scikit_learns_at_a_fixed_weight_decay(tmp_path):
    """Same features, one weight decay: the two solutions agree (logits to 1e-3 relative)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 12)) * 2
    labels = rng.integers(0, 5, 400)
    x = centres[labels] + rng.normal(size=(400, 12)) * 3
    wd = 1e-3
    ours = fit_probe(tmp_path, x, labels, wd)
    theirs = LogisticRegression(C=1 / (len(x) * wd), max_iter=10000, tol=1e-10).fit(
        StandardScaler().fit_transform(x), labels)
    z = StandardScaler().fit_transform(x)
    reference = theirs.decision_function(z)
    mine = z @ ours[0].T + ours[1]
    # both are softmax logits up to a per-row constant; compare after centring each row
    centred = [a - a.mean(1, keepdims=True) for a in (reference, mine)]
    assert np.abs(centred[0] - centred[1]).max() <= 1e-3 * np.abs(centred[0]).max()


def fit_probe(tmp_path, x, labels, wd):
    """Our full-batch solver on given features: a probe phase over a stand-in method and run context."""
    import logging
    from types import SimpleNamespace

    from bench.methods.linear_probe import StandardizedLinear, probe_phase

    dataset = SimpleNamespace(num_classes=5, train_counts=np.bincount(labels, minlength=5), val=[0],
                              train=SimpleNamespace(labels=labels))
    ctx = SimpleNamespace(dataset=dataset, device=torch.device("cpu"), log=logging.getLogger("test"))
    hp = {"wd_max": wd, "wd_min": wd, "wd_steps": 1, "max_iter": 2000, "standardize": True, "loss": "ce",
          "sampler": "instance_balanced", "model_selection": "best_val", "wd_search": "cv"}
    head = StandardizedLinear(x.shape[1], 5)
    phase = probe_phase(SimpleNamespace(ctx=ctx, hp=hp, name="linear_probe"), "probe", head,
                        lambda: torch.as_tensor(x, dtype=torch.float32), lambda: None)
    phase.on_start()
    phase.fit_epoch(0)
    return head.linear.weight.detach().double().numpy(), head.linear.bias.detach().double().numpy()


def test_sampling_weights_are_each_samplers_distribution():
    labels = np.array([0] * 6 + [1] * 3 + [2])
    assert np.allclose(sampling_weights("instance_balanced", labels), 0.1)
    balanced = sampling_weights("class_balanced", labels)
    assert np.allclose([balanced[labels == c].sum() for c in range(3)], 1 / 3)
    root = sampling_weights("square_root", labels)
    shares = np.sqrt([6, 3, 1]) / np.sqrt([6, 3, 1]).sum()
    assert np.allclose([root[labels == c].sum() for c in range(3)], shares)


def test_weight_decay_grid_and_its_refusals(tmp_path):
    assert weight_decays({"wd_max": 0.1, "wd_min": 1e-7, "wd_steps": 13}) == pytest.approx(
        [10 ** (-1 - k / 2) for k in range(13)])
    assert weight_decays({"wd_max": 0.01, "wd_min": 1e-7, "wd_steps": 1}).tolist() == [0.01]
    with pytest.raises(BenchError, match="fix one weight decay with --set wd_steps=1"):
        probe_run(tmp_path, model_selection="last", wd_search="val")


def test_cross_validation_scores_every_train_and_val_image_and_keeps_the_best_decay(tmp_path):
    assert probe_run(tmp_path, wd_steps="1").record["extras"]["wd_search"] == "val"  # the digits' val is balanced
    record = probe_run(tmp_path, wd_search="cv", wd_steps="4", wd_min="1e-4").record
    table = record["extras"]["probe_cv"]
    assert record["extras"]["wd_search"] == "cv" and table["folds"] == 5 and table["images"] == 383 + 100
    assert table["metric"] == "cv_mean_per_class" and len(table["scores"]) == 4
    best = max(range(4), key=lambda i: (table["scores"][i], -table["nll_balanced"][i], -i))
    assert table["chosen"] == table["weight_decays"][best] and record["epochs_trained"] == 1
    folds = stratified_folds(np.repeat(np.arange(3), [11, 4, 2]), 5, seed=0)
    for label, size in enumerate((11, 4, 2)):  # each class dealt as evenly as its size allows
        counts = np.bincount(folds[np.repeat(np.arange(3), [11, 4, 2]) == label], minlength=5)
        assert counts.max() - counts.min() <= 1 and counts.sum() == size


def test_probe_without_a_val_split_fits_one_weight_decay(tmp_path):
    from conftest import write_image

    for cls in ("a", "b"):
        for i in range(6):
            write_image(tmp_path / f"data/train/{cls}/{i}.png", seed=i + (cls == "b") * 10)
        write_image(tmp_path / f"data/test/{cls}/0.png")
    spec = runner.RunSpec(method="linear_probe", dataset="folder", data_root=str(tmp_path / "data"),
                          backbone="vit_micro", allow_random_init=True, out=str(tmp_path / "out"),
                          overrides={**PROBE, "val_split": "none"})
    with pytest.raises(BenchError, match="no val split"):
        runner.execute(dataclasses.replace(spec, overrides={**spec.overrides, "wd_search": "val"}))
    assert runner.execute(spec).record["extras"]["probe_cv"]["images"] == 12  # cross-validated over train alone
    spec.overrides = {**spec.overrides, "wd_steps": "1", "wd_max": "0.001"}
    record = runner.execute(spec).record
    assert record["val_split"] == {"source": "none", "size": 0} and record["posthoc"] is None
    assert record["val"]["overall"] is None and record["test"]["overall"] is not None
    assert record["train_size"] == 12

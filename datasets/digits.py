"""The embedded default: scikit-learn's bundled 8×8 handwritten digits (real images, no download), long-tailed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from bench.datasets.base import ArrayImages, LongTailDataset, Split, register_dataset
from bench.datasets.longtail import carve_val, exponential_profile, select_long_tail

from bench.hparams import HParam


def balanced_holdout(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    held = []
    for cls in range(int(labels.max()) + 1):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        held.append(idx[:per_class])
    return np.concatenate(held)


@register_dataset(
    "digits_lt", aliases=("default", "digits"),
    description="embedded default: scikit-learn's 8×8 digits, long-tailed (IF 20), balanced test; no download",
    options={
        "imbalance_factor": HParam(20.0, help="largest / smallest training class"),
        "test_per_class": HParam(50, help="balanced held-out test images per class"),
        "val_per_class": HParam(10, help="val images per class, from training images the long tail leaves unused"),
    },
)
def build_digits(root: Path | None, options: Mapping) -> LongTailDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    test_idx = balanced_holdout(labels, int(options["test_per_class"]), seed=0)
    rest = np.setdiff1d(np.arange(len(labels)), test_idx)
    rest_labels = labels[rest]
    counts = exponential_profile(int(np.bincount(rest_labels).min()), 10, float(options["imbalance_factor"]))
    train_local = select_long_tail(rest_labels, counts, seed=0)
    train_local, val_local, how = carve_val(rest_labels, train_local, int(options["val_per_class"]), seed=0)
    images = ArrayImages(pixels, "sklearn-digits")
    split = Split("all", images, labels)
    return LongTailDataset(
        name="digits_lt", class_names=[str(d) for d in range(10)],
        train=split.subset(rest[train_local], "train"), val=split.subset(rest[val_local], "val"),
        test=split.subset(test_idx, "test"),
        notes=[(f"scikit-learn digits: {options['test_per_class']} test images per class held out first; "
                f"train long-tailed with imbalance factor {options['imbalance_factor']} (counts {counts}); {how}")],
        hflip_ok=False,
    )

"""The embedded default: scikit-learn's bundled 8×8 handwritten digits (real images, no download), long-tailed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bench.datasets.base import ArrayImages, LongTailDataset, Split, bundled_file, register_dataset
from bench.datasets.longtail import carve_val, exponential_profile, select_long_tail
from bench.errors import BenchError
from bench.hparams import AT_LEAST_ONE, HParam


def load_digits_table() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] with values 0..16, labels) exactly as `sklearn.datasets.load_digits()` gives them."""
    table = bundled_file("sklearn", "datasets/data/digits.csv.gz")
    if table is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target.astype(np.int64)
    # load_digits() reads this file; reading it directly skips `import sklearn` (seconds) and keeps the
    # default dataset's build well under a second.
    data = np.loadtxt(table, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


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
        "imbalance_factor": HParam(20.0, help="largest / smallest training class", bounds=AT_LEAST_ONE),
        "test_per_class": HParam(50, help="balanced held-out test images per class", bounds=AT_LEAST_ONE),
        "val_per_class": HParam(10, help="val images per class, from training images the long tail leaves unused",
                                bounds=AT_LEAST_ONE),
    },
)
def build_digits(root: Path | None, options: Mapping) -> LongTailDataset:
    images, labels = load_digits_table()
    pixels = np.round(images * (255 / 16)).astype(np.uint8)
    test_per_class, val_per_class = int(options["test_per_class"]), int(options["val_per_class"])
    test_idx = balanced_holdout(labels, test_per_class, seed=0)
    rest = np.setdiff1d(np.arange(len(labels)), test_idx)
    rest_labels = labels[rest]
    # The head class is sized so that every class still has val_per_class images left over for val.
    n_max = int(np.bincount(rest_labels).min()) - val_per_class
    if n_max < 1:
        raise BenchError(f"digits: test_per_class={test_per_class} and val_per_class={val_per_class} leave no "
                         "training images for the smallest class; lower them")
    factor = float(options["imbalance_factor"])
    counts = exponential_profile(n_max, 10, factor)
    train_local = select_long_tail(rest_labels, counts, seed=0)
    carve = carve_val(rest_labels, train_local, val_per_class, seed=0, borrow=False)
    split = Split("all", ArrayImages(pixels, "sklearn-digits"), labels)
    return LongTailDataset(
        name="digits_lt", class_names=[str(d) for d in range(10)],
        train=split.subset(rest[carve.train_idx], "train"), val=split.subset(rest[carve.val_idx], "val"),
        test=split.subset(test_idx, "test"),
        notes=[(f"scikit-learn's digits (1797 8×8 images): {test_per_class} per class held out first as a "
                "balanced test split (seed 0)"),
               f"train: imbalance factor {factor:g}, {counts[0]}…{counts[-1]} images per class, {sum(counts)} in all",
               carve.summary()],
        hflip_ok=False, val_source="carved", val_carve=carve,
    )

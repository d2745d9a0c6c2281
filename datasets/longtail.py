"""Long-tail subsampling (the exponential profile of Cao et al. 2019) and val splits carved from train."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.errors import BenchError
from bench.hparams import HParam


def exponential_profile(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """n_i = int(n_max · (1/IF)^(i/(C−1))), truncated, as in the LDAM-DRW code."""
    if imbalance_factor < 1:
        raise BenchError(f"imbalance_factor={imbalance_factor}: must be >= 1")
    if num_classes == 1:
        return [n_max]
    return [int(n_max * (1.0 / imbalance_factor) ** (i / (num_classes - 1))) for i in range(num_classes)]


def select_long_tail(labels: np.ndarray, counts: list[int], seed: int = 0) -> np.ndarray:
    """Standard selection: seed numpy's global-style RNG with `seed`, then for class 0..C−1 shuffle that
    class's indices and keep the first n_i. Returns the kept indices in class order."""
    rng = np.random.RandomState(seed)
    kept = []
    for cls, n_keep in enumerate(counts):
        idx = np.flatnonzero(labels == cls)
        if len(idx) < n_keep:
            raise BenchError(f"class {cls} has {len(idx)} images but the long-tail profile needs {n_keep}")
        rng.shuffle(idx)
        kept.append(idx[:n_keep])
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


VAL_SPLIT_OPTION = HParam("carved", help="carved: a val split carved from train for tuning and model selection | "
                          "none: train on the full train set, as the published protocol does; no val split, so "
                          "every phase keeps its last epoch and post-hoc adjustment is skipped",
                          choices=("carved", "none"))
NO_VAL_NOTE = ("val: none (val_split=none): the full train set is trained on, as published; every phase keeps its "
               "last epoch and nothing is tuned on val")
MAX_VAL_SHARE = 0.1  # at most this share of a class's long-tailed training images is taken for val
MIN_CLASS_FOR_VAL = 10  # a class with fewer long-tailed training images gives none of them to val


@dataclass(frozen=True)
class ValCarve:
    """A val split carved from a train set: the indices kept for training and taken for val, and per class
    how many val images came from images the long-tailed selection left unused and how many from its own
    training images."""

    train_idx: np.ndarray
    val_idx: np.ndarray
    from_unused: np.ndarray  # [C]
    from_train: np.ndarray  # [C]
    per_class: int

    def summary(self) -> str:
        classes = len(self.from_unused)
        got = self.from_unused + self.from_train
        short = int((got < self.per_class).sum())
        robbed = int((self.from_train > 0).sum())
        return (f"val: up to {self.per_class} images per class, first from training images the long-tailed "
                f"selection leaves unused ({int(self.from_unused.sum())} images)"
                + (f", then from the training images themselves ({int(self.from_train.sum())} images from "
                   f"{robbed} classes: at most {MAX_VAL_SHARE:.0%} of a class, none from a class under "
                   f"{MIN_CLASS_FOR_VAL} images)" if robbed else "")
                + (f"; {short} of {classes} classes have fewer than {self.per_class} val images" if short else "")
                + "; never from test")

    def as_record(self) -> dict:
        return {"per_class": self.per_class, "max_share": MAX_VAL_SHARE, "min_class": MIN_CLASS_FOR_VAL,
                "from_unused": self.from_unused.tolist(), "from_train": self.from_train.tolist()}


def carve_val(labels: np.ndarray, train_idx: np.ndarray, per_class: int, seed: int, min_train: int = 1,
              borrow: bool = True) -> ValCarve:
    """Pick up to `per_class` val images per class: first from images of the full train set that the
    long-tailed train subset does not use; then, where those run short and `borrow` allows, from the subset
    itself, but never more than MAX_VAL_SHARE of a class's images, none from a class with fewer than
    MIN_CLASS_FOR_VAL, and never below `min_train` images left to train on."""
    rng = np.random.RandomState(seed + 1)
    used = np.zeros(len(labels), dtype=bool)
    used[train_idx] = True
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    keep_train, val = [], []
    from_unused = np.zeros(num_classes, dtype=np.int64)
    from_train = np.zeros(num_classes, dtype=np.int64)
    for cls in range(num_classes):
        in_train = train_idx[labels[train_idx] == cls]
        unused = np.flatnonzero((labels == cls) & ~used)
        rng.shuffle(unused)
        take = list(unused[:per_class])
        from_unused[cls] = len(take)
        n_borrow = 0
        if borrow and len(in_train) >= MIN_CLASS_FOR_VAL:
            n_borrow = max(0, min(per_class - len(take), int(MAX_VAL_SHARE * len(in_train)),
                                  len(in_train) - min_train))
        if n_borrow:
            shuffled = in_train.copy()
            rng.shuffle(shuffled)
            take += list(shuffled[:n_borrow])
            in_train = np.setdiff1d(in_train, shuffled[:n_borrow])
            from_train[cls] = n_borrow
        keep_train.append(in_train)
        val.append(np.asarray(take, dtype=np.int64))
    return ValCarve(np.concatenate(keep_train), np.concatenate(val), from_unused, from_train, per_class)

"""Long-tail subsampling (the exponential profile of Cao et al. 2019) and val splits carved from train."""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError


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


def carve_val(
    labels: np.ndarray, train_idx: np.ndarray, per_class: int, seed: int, min_train: int = 1, borrow: bool = True
) -> tuple[np.ndarray, np.ndarray, str]:
    """Pick up to `per_class` val images per class, first from images of the full train set that the
    long-tailed train subset does not use, then (only where those run short, and if `borrow`) from the subset
    itself while it keeps at least `min_train` images. Returns (train_idx, val_idx, a sentence saying how)."""
    rng = np.random.RandomState(seed + 1)
    used = np.zeros(len(labels), dtype=bool)
    used[train_idx] = True
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    keep_train, val, borrowed, short = [], [], 0, 0
    for cls in range(num_classes):
        in_train = train_idx[labels[train_idx] == cls]
        unused = np.flatnonzero((labels == cls) & ~used)
        rng.shuffle(unused)
        take = list(unused[:per_class])
        n_borrow = min(per_class - len(take), max(0, len(in_train) - min_train)) if borrow else 0
        if n_borrow:
            shuffled = in_train.copy()
            rng.shuffle(shuffled)
            take += list(shuffled[:n_borrow])
            in_train = np.setdiff1d(in_train, shuffled[:n_borrow])
            borrowed += n_borrow
        short += len(take) < per_class
        keep_train.append(in_train)
        val.append(np.asarray(take, dtype=np.int64))
    how = (
        f"val: up to {per_class} images per class from training images the long-tailed subset leaves unused"
        + (f"; {borrowed} taken from the subset itself where none were left (those classes train on fewer)"
           if borrowed else "")
        + (f"; {short} of {num_classes} classes have fewer than {per_class} val images" if short else "")
        + "; never from test"
    )
    return np.concatenate(keep_train), np.concatenate(val), how

"""Epoch index lists over a labelled training split, for long-tailed training.

Every sampler takes the class label of each training image (`labels`, 1-D integer array) and a numpy
Generator, and returns an int64 array of indices into `labels`; the same seed gives the same list.

- `instance_balanced`: a permutation of all indices (each image once).
- `power_law(q)`: draw a class with probability ∝ n_c^q, then an image uniformly within it (with replacement).
  q = 1 is instance-balanced in distribution, q = 0.5 `square_root`, q = 0 `class_balanced`.
- `class_aware`: the LPT / Shen et al. (2016) class-aware sampler: a shuffled cycle over the classes; each
  class drawn contributes `per_class` consecutive images taken from that class's own shuffled cycle
  (reshuffled when exhausted, so tail images repeat only after every image of the class has appeared). A batch of 256 is thus
  64 blocks of 4 same-class images. As in LPT's RandomCycleIter, the class cycle is reshuffled when exhausted,
  so a batch that straddles two class cycles can hold one class in two blocks (fewer than 64 distinct
  classes); batches that lie inside one cycle hold 64 distinct classes when C >= 64.

Classes with no training image are never drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from bench.errors import BenchError, UsageError
from bench.registry import nearest


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _labels(labels) -> np.ndarray:
    values = np.asarray(labels).reshape(-1)
    if values.size == 0:
        raise BenchError("cannot sample from an empty training split")
    if not np.issubdtype(values.dtype, np.integer) or values.min() < 0:
        raise BenchError(f"labels must be non-negative integer class indices, got dtype {values.dtype}")
    return values.astype(np.int64)


def _grouped(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices sorted by class, count per class, start of each class in that order)."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return order, counts, starts


def _num_samples(labels: np.ndarray, num_samples: int | None) -> int:
    n = labels.size if num_samples is None else int(num_samples)
    if n < 0:
        raise BenchError(f"num_samples={num_samples}: must be ≥ 0")
    return n


def instance_balanced(labels, rng, num_samples: int | None = None) -> np.ndarray:
    """A permutation of all indices; for num_samples > len(labels), fresh permutations are concatenated."""
    labels = _labels(labels)
    rng = _rng(rng)
    n = _num_samples(labels, num_samples)
    rounds = max(1, math.ceil(n / labels.size))
    return np.concatenate([rng.permutation(labels.size) for _ in range(rounds)])[:n].astype(np.int64)


def power_law(labels, q: float, num_samples: int | None, rng) -> np.ndarray:
    """Class c with probability ∝ n_c^q (classes with n_c = 0 excluded), then an image uniformly within it."""
    labels = _labels(labels)
    rng = _rng(rng)
    n = _num_samples(labels, num_samples)
    order, counts, starts = _grouped(labels)
    weights = np.where(counts > 0, counts.astype(np.float64) ** q, 0.0)
    classes = rng.choice(counts.size, size=n, p=weights / weights.sum())
    within = np.floor(rng.random(n) * counts[classes]).astype(np.int64)
    return order[starts[classes] + within]


def class_balanced(labels, num_samples: int | None, rng) -> np.ndarray:
    return power_law(labels, 0.0, num_samples, rng)


def square_root(labels, num_samples: int | None, rng) -> np.ndarray:
    return power_law(labels, 0.5, num_samples, rng)


def class_aware(labels, num_samples: int | None, rng, per_class: int = 4) -> np.ndarray:
    """LPT's class-aware sampler (see the module docstring), vectorised: one sort builds every class's
    cycle."""
    labels = _labels(labels)
    rng = _rng(rng)
    n = _num_samples(labels, num_samples)
    if per_class < 1:
        raise BenchError(f"per_class={per_class}: must be ≥ 1")
    order, counts, starts = _grouped(labels)
    present = np.flatnonzero(counts > 0)
    draws = math.ceil(n / per_class)  # classes drawn this epoch
    if draws == 0:
        return np.zeros(0, dtype=np.int64)

    # The class sequence: shuffled cycles over the present classes, concatenated.
    cycles = math.ceil(draws / present.size)
    sequence = rng.permuted(np.tile(present, (cycles, 1)), axis=1).reshape(-1)[:draws]

    # Occurrence number of each draw within its class (0 for a class's first draw, 1 for its second, ...).
    by_class = np.argsort(sequence, kind="stable")
    drawn = np.bincount(sequence, minlength=counts.size)
    first = np.concatenate(([0], np.cumsum(drawn)[:-1]))
    occurrence = np.empty(draws, dtype=np.int64)
    occurrence[by_class] = np.arange(draws) - first[sequence[by_class]]

    # Each class's image stream: ceil(needed / n_c) independent shuffles of its images, laid end to end.
    needed = drawn * per_class
    rounds = np.where(counts > 0, -(-needed // np.maximum(counts, 1)), 0)
    length = rounds * counts
    stream_start = np.concatenate(([0], np.cumsum(length)[:-1]))
    total = int(length.sum())
    cls = np.repeat(np.arange(counts.size), length)
    position = np.arange(total) - stream_start[cls]
    size = counts[cls]
    block = stream_start[cls] + (position // size) * size  # first stream slot of this (class, round)
    shuffle = np.argsort(block + rng.random(total))  # a random order inside each block, blocks kept in place
    stream = order[starts[cls] + position % size][shuffle]

    take = stream_start[sequence] + occurrence * per_class
    return stream[(take[:, None] + np.arange(per_class)).reshape(-1)][:n]


SAMPLERS: dict[str, Callable[..., np.ndarray]] = {
    "instance_balanced": instance_balanced,
    "class_balanced": class_balanced,
    "square_root": square_root,
    "class_aware": class_aware,
}


def sampling_weights(name: str, labels) -> np.ndarray:
    """How often each training image is drawn under sampler `name`, in closed form (float64, sums to 1): what a
    full-batch solver weights each image's loss by. Instance-balanced: 1/N each; square-root: a class's share
    ∝ √n_c; class-balanced and class-aware: 1/C per class; within a class, images are equally likely."""
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; {nearest(name, list(SAMPLERS))}")
    labels = _labels(labels)
    counts = np.bincount(labels).astype(np.float64)
    present = counts > 0
    share = {"instance_balanced": counts, "square_root": np.sqrt(counts)}.get(name, present.astype(np.float64))
    share = share / share.sum()
    per_image = np.zeros_like(counts)
    per_image[present] = share[present] / counts[present]
    return per_image[labels]


def epoch_indices(name: str, labels, epoch_seed, num_samples: int | None = None,
                  per_class: int = 4) -> np.ndarray:
    """The index list of one epoch for sampler `name`, from `epoch_seed` (an int or a numpy Generator)."""
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; {nearest(name, list(SAMPLERS))}")
    rng = _rng(epoch_seed)
    if name == "instance_balanced":
        return instance_balanced(labels, rng, num_samples)
    if name == "class_aware":
        return class_aware(labels, num_samples, rng, per_class)
    return SAMPLERS[name](labels, num_samples, rng)

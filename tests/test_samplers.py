"""Epoch samplers: their class distributions, and the structure of LPT's class-aware batches."""

from __future__ import annotations

import numpy as np
import pytest

from bench.errors import BenchError
from bench.methods.samplers import (
    SAMPLERS,
    class_aware,
    class_balanced,
    epoch_indices,
    instance_balanced,
    power_law,
    square_root,
)

COUNTS = np.array([400, 100, 25, 4])
DRAWS = 200_000


def labels_for(counts, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))


def frequencies(labels, indices):
    return np.bincount(labels[indices], minlength=labels.max() + 1) / indices.size


def test_instance_balanced_is_a_permutation_and_proportional_to_counts():
    labels = labels_for(COUNTS)
    epoch = instance_balanced(labels, np.random.default_rng(1))
    assert sorted(epoch.tolist()) == list(range(labels.size))
    assert not np.array_equal(epoch, np.arange(labels.size))
    many = epoch_indices("instance_balanced", labels, 1, num_samples=DRAWS)
    assert many.size == DRAWS
    np.testing.assert_allclose(frequencies(labels, many), COUNTS / COUNTS.sum(), atol=0.005)


@pytest.mark.parametrize("sampler, expected", [
    (lambda labels, rng: class_balanced(labels, DRAWS, rng), np.full(4, 0.25)),
    (lambda labels, rng: square_root(labels, DRAWS, rng), np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()),
    (lambda labels, rng: power_law(labels, 1.0, DRAWS, rng), COUNTS / COUNTS.sum()),
])
def test_power_law_class_frequencies(sampler, expected):
    labels = labels_for(COUNTS)
    indices = sampler(labels, np.random.default_rng(2))
    assert indices.size == DRAWS
    np.testing.assert_allclose(frequencies(labels, indices), expected, atol=0.005)
    # Within a class, images are drawn uniformly: the 4-image class's images each get about a quarter.
    tail = indices[labels[indices] == 3]
    np.testing.assert_allclose(np.bincount(np.searchsorted(np.flatnonzero(labels == 3), tail)) / tail.size,
                               0.25, atol=0.03)


def test_square_root_is_distinct_from_its_neighbours():
    # sqrt frequencies (20, 10, 5, 2)/37 are far from both uniform and proportional: the test can tell.
    sqrt = np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()
    assert np.abs(sqrt - 0.25).max() > 0.2 and np.abs(sqrt - COUNTS / COUNTS.sum()).max() > 0.2


def test_samplers_are_deterministic_and_skip_empty_classes():
    labels = labels_for([50, 0, 7, 3])
    for name in SAMPLERS:
        first = epoch_indices(name, labels, 5, num_samples=400)
        assert np.array_equal(first, epoch_indices(name, labels, 5, num_samples=400)), name
        assert not np.array_equal(first, epoch_indices(name, labels, 6, num_samples=400)), name
        assert first.dtype == np.int64 and first.size == 400
        assert not np.any(labels[first] == 1), name  # class 1 has no images
    assert epoch_indices("class_aware", labels, 0).size == labels.size
    with pytest.raises(BenchError, match="unknown sampler"):
        epoch_indices("class_balance", labels, 0)


def tail_dataset():
    counts = np.round(np.linspace(500, 2, 100)).astype(int)  # 500 down to 2
    assert counts[0] == 500 and counts[-1] == 2
    return counts, labels_for(counts, seed=3)


def test_class_aware_batches_hold_64_classes_of_4():
    _, labels = tail_dataset()
    epoch = class_aware(labels, None, np.random.default_rng(4), per_class=4)
    assert epoch.size == labels.size
    batch_labels = labels[epoch[: labels.size // 256 * 256]].reshape(-1, 64, 4)
    assert (batch_labels == batch_labels[:, :, :1]).all()  # every block of 4 is one class
    blocks = batch_labels[:, :, 0].reshape(-1)  # the class sequence
    for batch in range(batch_labels.shape[0]):
        first, last = 64 * batch, 64 * batch + 63
        if first // 100 == last // 100:  # a batch inside one shuffled class cycle: 64 distinct classes
            assert len(set(batch_labels[batch, :, 0].tolist())) == 64
    # The class sequence is a run of shuffled cycles over all 100 classes.
    cycles = blocks[: blocks.size // 100 * 100].reshape(-1, 100)
    assert all(sorted(cycle.tolist()) == list(range(100)) for cycle in cycles)
    assert not all(np.array_equal(cycle, cycles[0]) for cycle in cycles)


def test_class_aware_is_uniform_over_classes_and_cycles_within_each_class():
    _, labels = tail_dataset()
    epoch = class_aware(labels, None, np.random.default_rng(5), per_class=4)
    per_class = np.bincount(labels[epoch], minlength=100)
    assert per_class.max() - per_class.min() <= 4  # each class drawn once per cycle, 4 images each time
    for c in range(100):
        images = np.flatnonzero(labels == c)
        seen = epoch[labels[epoch] == c]
        n = images.size
        for start in range(0, seen.size, n):  # every image before any repeats, then a fresh shuffle
            chunk = seen[start:start + n]
            assert len(set(chunk.tolist())) == chunk.size
            if chunk.size == n:
                assert sorted(chunk.tolist()) == images.tolist()
    tail = epoch[labels[epoch] == 99]  # 2 images, drawn ~250 times: repeats, and in more than one order
    assert tail.size > 100 and len({tuple(tail[i:i + 2]) for i in range(0, tail.size, 2)}) == 2


def test_class_aware_builds_a_large_epoch_quickly():
    import time

    rng = np.random.default_rng(6)
    counts = np.maximum(2, (1000 * np.exp(-np.linspace(0, 6, 8142))).astype(int))
    labels = np.resize(rng.permutation(np.repeat(np.arange(8142), counts)), 437_513)
    start = time.perf_counter()
    epoch = epoch_indices("class_aware", labels, 7)
    assert time.perf_counter() - start < 1.0
    assert epoch.size == labels.size

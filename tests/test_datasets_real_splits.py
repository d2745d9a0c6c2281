"""The real split files in ../shared/splits reproduce the published statistics (skipped when absent)."""

from __future__ import annotations

import numpy as np
from bench.datasets import imagenet_lt, inat, places_lt
from bench.datasets.base import read_two_column_split
from conftest import shared_path

from bench.metrics import shot_groups


def group_sizes(counts, convention):
    groups = shot_groups(counts, convention)
    return [int((groups == g).sum()) for g in ("many", "medium", "few")]


def test_places_lt_train_statistics():
    split_dir = shared_path("splits/Places_LT_train.txt").parent
    paths, labels = read_two_column_split(split_dir / "Places_LT_train.txt")
    counts = np.bincount(labels)
    assert len(paths) == 62_500 and len(counts) == 365
    assert counts.max() == 4980 and counts.min() == 5
    assert group_sizes(counts, "standard") == [131, 163, 71]
    assert group_sizes(counts, "lpt") == [131, 157, 77]


def test_places_lt_class_names_follow_split_folders_not_places365_order():
    split_dir = shared_path("splits/Places_LT_train.txt").parent
    paths, labels = read_two_column_split(split_dir / "Places_LT_train.txt")
    folders = places_lt.folder_names(paths, labels, split_dir / "Places_LT_train.txt")
    expected = {}
    for line in (split_dir / "Places_LT_label_to_folder.txt").read_text().split("\n"):
        if line.strip():
            label, folder, _ = line.split()
            expected[int(label)] = folder
    assert folders == [expected[i] for i in range(365)]
    assert folders[116:119] == ["desert_road", "desert-sand", "desert-vegetation"]
    for split, per_class in (("val", 20), ("test", 100)):
        _, split_labels = read_two_column_split(split_dir / f"Places_LT_{split}.txt")
        assert np.bincount(split_labels).tolist() == [per_class] * 365


def test_imagenet_lt_val_and_test_are_balanced():
    split_dir = shared_path("splits/ImageNet_LT_test.txt").parent
    for split, total, per_class in (("test", 50_000, 50), ("val", 20_000, 20)):
        paths, labels = imagenet_lt.parse_split(split_dir, split)
        assert len(paths) == total
        assert np.bincount(labels).tolist() == [per_class] * 1000
    assert len(imagenet_lt.class_names()) == 1000


def test_inat2018_val_has_three_per_class_and_real_names():
    split_dir = shared_path("splits/iNaturalist18_val.txt").parent
    paths, labels = read_two_column_split(split_dir / "iNaturalist18_val.txt")
    counts = np.bincount(labels)
    assert len(paths) == 24_426 and len(counts) == 8_142
    assert set(counts.tolist()) == {3}
    for path, label in zip(paths[:50], labels[:50]):
        assert int(path.split("/")[2]) == label  # label = category_id, the folder name
    names = inat.category_names(split_dir, "iNaturalist18_categories.json")
    assert len(names) == 8_142 and names[0] == "Hermodice carunculata"

"""The real split files in ../shared/splits reproduce the published statistics (skipped when absent).

Only split parsing runs here: the images are not in ../shared, and parsing never touches them.
"""

from __future__ import annotations

import numpy as np
from conftest import shared_path

from bench.datasets import imagenet_lt, inat, places_lt

# Shot groups by training images per class, computed here rather than through bench.metrics so that these
# statistics check the split files on their own.
MANY_ABOVE = 100  # many: more than 100
STANDARD_FEW_BELOW = 20  # standard: few < 20, medium 20–100 inclusive
LPT_FEW_UP_TO = 20  # LPT's evaluation script: few ≤ 20, medium 21–100


def group_sizes(counts: np.ndarray, few_up_to: int) -> list[int]:
    many = counts > MANY_ABOVE
    few = counts <= few_up_to
    return [int(many.sum()), int((~many & ~few).sum()), int(few.sum())]


def test_places_lt_train_statistics():
    split_dir = shared_path("splits/Places_LT_train.txt").parent
    parsed = places_lt.parse_splits(split_dir)
    paths, labels = parsed["train"]
    counts = np.bincount(labels)
    assert len(paths) == 62_500 and len(counts) == 365
    assert counts.max() == 4980 and counts.min() == 5
    assert group_sizes(counts, few_up_to=STANDARD_FEW_BELOW - 1) == [131, 163, 71]
    assert group_sizes(counts, few_up_to=LPT_FEW_UP_TO) == [131, 157, 77]
    for split, per_class in (("val", 20), ("test", 100)):
        assert np.bincount(parsed[split][1]).tolist() == [per_class] * 365


def test_places_lt_class_names_follow_split_folders_not_places365_order():
    split_dir = shared_path("splits/Places_LT_train.txt").parent
    paths, labels = places_lt.parse_splits(split_dir)["train"]
    folders = places_lt.folder_names(paths, labels, split_dir / "Places_LT_train.txt")
    expected = {}
    for line in (split_dir / "Places_LT_label_to_folder.txt").read_text().splitlines():
        if line.strip():
            label, folder, _ = line.split()
            expected[int(label)] = folder
    assert folders == [expected[i] for i in range(365)]
    assert folders[116:119] == ["desert_road", "desert-sand", "desert-vegetation"]
    assert folders[141:143] == ["field_road", "field-wild"]
    official = [line.split()[0] for line in (split_dir / "categories_places365.txt").read_text().splitlines()
                if line.strip()]
    differ = [i for i in range(365) if official[i] != "/" + "/".join([folders[i][0], *folders[i].split("-")])]
    assert differ == [116, 117, 118, 141, 142]


def test_places365_download_layout_maps_every_folder_to_a_category():
    split_dir = shared_path("splits/Places_LT_train.txt").parent
    parsed = places_lt.parse_splits(split_dir)
    official = {line.split()[0] for line in (split_dir / "categories_places365.txt").read_text().splitlines()
                if line.strip()}
    rule = places_lt.places365_download("data_256", "val_256")
    folders = places_lt.folder_names(*parsed["train"], split_dir / "Places_LT_train.txt")
    assert {"/" + "/".join(rule(f"train/{f}/x.jpg").split("/")[1:-1]) for f in folders} == official
    test_files = {rule(path) for path in parsed["test"][0]}
    assert len(test_files) == 36_500 and all(f.startswith("val_256/Places365_val_") for f in test_files)


def test_imagenet_lt_val_and_test_are_balanced():
    split_dir = shared_path("splits/ImageNet_LT_test.txt").parent
    for split, total, per_class in (("test", 50_000, 50), ("val", 20_000, 20)):
        paths, labels = imagenet_lt.parse_split(split_dir, split)
        assert len(paths) == total
        assert np.bincount(labels).tolist() == [per_class] * 1000
    test_paths, _ = imagenet_lt.parse_split(split_dir, "test")
    assert len({imagenet_lt.flat(p) for p in test_paths}) == 50_000  # nested → flat loses nothing
    assert len(imagenet_lt.class_names()) == 1000


def test_inat2018_val_has_three_per_class_and_real_names():
    split_dir = shared_path("splits/iNaturalist18_val.txt").parent
    _, paths, labels = inat.txt_split(split_dir, "val")
    counts = np.bincount(labels)
    assert len(paths) == 24_426 and len(counts) == 8_142
    assert set(counts.tolist()) == {3}
    assert all(int(path.split("/")[2]) == label for path, label in zip(paths, labels.tolist()))
    names = inat.category_names(split_dir / "iNaturalist18_categories.json")
    assert len(names) == 8_142 and names[0] == "Hermodice carunculata"

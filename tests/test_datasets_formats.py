"""Every loader on a tiny fabricated copy of its real on-disk format (written to tmp_path, real image files)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from conftest import assert_splits_disjoint, make_imagenet_lt, make_places_lt, write_image, write_lines

from bench.datasets import digits
from bench.datasets.base import load_dataset
from bench.datasets.longtail import exponential_profile
from bench.errors import BenchError

# ---------------------------------------------------------------- ImageNet-LT


@pytest.mark.parametrize(("flat_list", "flat_disk"), [(False, False), (False, True), (True, True)],
                         ids=["nested-list-nested-disk", "nested-list-flat-disk", "flat-list-flat-disk"])
def test_imagenet_lt_reads_both_test_path_variants(tmp_path, flat_list, flat_disk):
    make_imagenet_lt(tmp_path, flat_list, flat_disk)
    dataset = load_dataset("imagenet", tmp_path, {"split_dir": ""})
    assert dataset.num_classes == 1000 and dataset.class_names[:2] == ["tench", "goldfish"]
    assert dataset.train_counts[:2].tolist() == [3, 3] and (dataset.train_counts[2:] == 1).all()
    assert dataset.val.labels.tolist() == [0, 1] and dataset.test.labels.tolist() == [0, 1]
    expected = "val/ILSVRC2012_val_00000002.JPEG" if flat_disk else "val/n01443537/ILSVRC2012_val_00000002.JPEG"
    assert dataset.test.images.describe(1) == expected
    assert dataset.test.images.load(1).size == (8, 8)
    assert any("flat val/" in note for note in dataset.notes) == (flat_disk and not flat_list)
    assert [p.name for p in dataset.split_files] == [f"ImageNet_LT_{s}.txt" for s in ("train", "val", "test")]
    assert_splits_disjoint(dataset)


def test_imagenet_lt_flat_list_cannot_map_to_nested_images(tmp_path):
    make_imagenet_lt(tmp_path, flat_list=True, flat_disk=False)
    with pytest.raises(BenchError, match=r"val/ILSVRC2012_val_00000001\.JPEG.*without a file → wnid mapping"):
        load_dataset("imagenet_lt", tmp_path, {"split_dir": ""})


def test_imagenet_lt_split_dir_option(tmp_path):
    make_imagenet_lt(tmp_path / "images")
    for split in ("train", "val", "test"):
        (tmp_path / "images" / f"ImageNet_LT_{split}.txt").rename(tmp_path / f"ImageNet_LT_{split}.txt")
    dataset = load_dataset("imagenet_lt", tmp_path / "images", {"split_dir": str(tmp_path)})
    assert len(dataset.train) == 6 + 998 and dataset.split_files[0] == tmp_path / "ImageNet_LT_train.txt"


# ---------------------------------------------------------------- Places-LT

@pytest.mark.parametrize("download_layout", [False, True], ids=["as-listed", "places365-download"])
def test_places_lt_names_come_from_split_folders_not_category_order(tmp_path, download_layout):
    make_places_lt(tmp_path, download_layout)
    dataset = load_dataset("places", tmp_path, {"split_dir": ""})
    assert dataset.class_names == ["desert sand", "desert road", "apartment building outdoor"]
    assert dataset.train_counts.tolist() == [3, 2, 1]
    assert np.bincount(dataset.test.labels).tolist() == [2, 2, 2]
    if download_layout:
        assert dataset.train.images.describe(len(dataset.train) - 1) == \
            "data_256/a/apartment_building/outdoor/train0000000.jpg"
        assert dataset.test.images.describe(0) == "val_256/Places365_val_00000000.jpg"
        assert any("data_256" in note for note in dataset.notes)
    else:
        assert dataset.train.images.describe(0) == "train/desert-sand/train0000000.jpg"
    assert dataset.test.images.load(5).mode == "RGB"
    assert_splits_disjoint(dataset)


def test_places_lt_without_images_names_the_expected_file(tmp_path):
    make_places_lt(tmp_path, download_layout=False)
    for image in (tmp_path / "train").rglob("*.jpg"):
        image.unlink()
    with pytest.raises(BenchError, match=r"train images not found .*train/desert-sand/train0000000\.jpg.*"
                                         r"data_256/d/desert/sand/train0000000\.jpg"):
        load_dataset("places_lt", tmp_path, {"split_dir": ""})


# ---------------------------------------------------------------- iNaturalist 2018

INAT_COUNTS = {0: 12, 1: 3, 2: 2}  # category 2 has iNat's minimum of 2 training images
INAT_OPTIONS = {"format": "auto", "categories_file": "categories.json", "val_per_class": 1}


def make_inat(root, json_files: bool = True, txt_files: bool = True):
    categories = [{"id": i, "name": f"obfuscated {i}", "supercategory": "Plantae"} for i in INAT_COUNTS]
    images, annotations, lines = [], [], []
    for cat, n in INAT_COUNTS.items():
        for i in range(n):
            path = f"train_val2018/Plantae/{cat}/{cat}{i:031x}.jpg"
            write_image(root / path, seed=cat * 10 + i)
            image_id = 1000 - len(images)  # ids unrelated to positions
            images.append({"id": image_id, "file_name": path, "width": 8, "height": 8})
            annotations.append({"id": len(annotations), "image_id": image_id, "category_id": cat})
            lines.append(f"{path} {cat}")
    annotations = annotations[1::2] + annotations[::2]  # the join must not rely on order
    test = [(f"train_val2018/Plantae/{cat}/val{cat}.jpg", cat) for cat in INAT_COUNTS]
    for path, _ in test:
        write_image(root / path)
    if json_files:
        val_images = [{"id": 7 + i, "file_name": path} for i, (path, _) in enumerate(test)]
        val_annotations = [{"id": i, "image_id": 7 + i, "category_id": cat} for i, (_, cat) in enumerate(test)]
        (root / "train2018.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
        (root / "val2018.json").write_text(json.dumps(
            {"images": val_images[::-1], "annotations": val_annotations, "categories": categories}))
    if txt_files:
        write_lines(root / "iNaturalist18_train.txt", lines)
        write_lines(root / "iNaturalist18_val.txt", [f"{path} {cat}" for path, cat in test])


@pytest.mark.parametrize("fmt", ["json", "txt"])
def test_inat_json_join_and_txt_variant_agree(tmp_path, fmt):
    make_inat(tmp_path)
    (tmp_path / "categories.json").write_text(json.dumps([{"id": i, "name": f"Species {i}"} for i in INAT_COUNTS]))
    dataset = load_dataset("inat", tmp_path, {**INAT_OPTIONS, "format": fmt})
    assert dataset.class_names == ["Species 0", "Species 1", "Species 2"]
    for split in (dataset.train, dataset.val, dataset.test):
        for i in range(len(split)):  # label = category_id, the folder the image lies in
            assert int(split.images.describe(i).split("/")[2]) == split.labels[i]
    # val takes at most 10% of a class and nothing from a class under 10 images: one image, from class 0
    assert dataset.train_counts.tolist() == [11, 3, 2]
    assert dataset.val.labels.tolist() == [0]
    assert dataset.val_carve.from_train.tolist() == [1, 0, 0] and dataset.val_source == "carved"
    assert sorted(dataset.test.labels.tolist()) == [0, 1, 2]
    assert dataset.test.images.describe(0).endswith("/val0.jpg") and dataset.test.images.load(0).size == (8, 8)
    assert any("2 of 3 classes have fewer than 1 val images" in note for note in dataset.notes)
    assert dataset.split_files[-1] == tmp_path / "categories.json"
    assert_splits_disjoint(dataset)


@pytest.mark.parametrize("json_files", [True, False])
def test_inat_auto_format_prefers_json(tmp_path, json_files):
    make_inat(tmp_path, json_files=json_files, txt_files=not json_files)
    dataset = load_dataset("inat", tmp_path, INAT_OPTIONS)
    assert dataset.split_files[0].name == ("train2018.json" if json_files else "iNaturalist18_train.txt")
    assert len(dataset.train) + len(dataset.val) == sum(INAT_COUNTS.values())


def test_inat_names_from_the_shipped_categories_file_or_the_annotations(tmp_path):
    make_inat(tmp_path)
    dataset = load_dataset("inat", tmp_path, INAT_OPTIONS)
    assert dataset.class_names == ["obfuscated 0", "obfuscated 1", "obfuscated 2"]
    assert any("obfuscated" in note for note in dataset.notes)
    names = [{"id": i, "name": f"Genus species{i}"} for i in INAT_COUNTS]
    (tmp_path / "iNaturalist18_categories.json").write_text(json.dumps(names))
    assert load_dataset("inat", tmp_path, INAT_OPTIONS).class_names[2] == "Genus species2"
    with pytest.raises(BenchError, match="mine.json"):
        load_dataset("inat", tmp_path, {**INAT_OPTIONS, "categories_file": "mine.json"})


# ---------------------------------------------------------------- CIFAR-10-LT / CIFAR-100-LT

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar10_pickles(folder, per_class: int):
    """cifar-10-batches-py as Python 3 writes it (bytes keys), with the real keys; returns (train data, labels)."""
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    labels = np.repeat(np.arange(10), per_class)
    rng.shuffle(labels)
    data = rng.randint(0, 256, (len(labels), 3072), dtype=np.uint8)
    for i, chunk in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        batch = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": labels[chunk].tolist(),
                 b"data": data[chunk], b"filenames": [f"{j}.png".encode() for j in chunk]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": list(range(10)) * 2,
            b"data": rng.randint(0, 256, (20, 3072), dtype=np.uint8), b"filenames": [b"t.png"] * 20}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {b"num_cases_per_batch": len(labels) // 5, b"label_names": [n.encode() for n in CIFAR10_NAMES],
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return data, labels


def ldam_drw_selection(labels, counts):
    """IMBALANCECIFAR10.gen_imbalanced_data of the LDAM-DRW code, verbatim in substance."""
    np.random.seed(0)
    kept = []
    for the_class, the_img_num in zip(np.unique(labels), counts):
        idx = np.where(labels == the_class)[0]
        np.random.shuffle(idx)
        kept.extend(idx[:the_img_num])
    return np.asarray(kept)


CIFAR_OPTIONS = {"imbalance_factor": 100.0, "val_per_class": 5, "source": "auto"}


def test_cifar10_lt_if100_follows_the_profile_and_the_standard_selection(tmp_path):
    data, labels = make_cifar10_pickles(tmp_path / "cifar-10-batches-py", per_class=500)
    dataset = load_dataset("cifar10", tmp_path, CIFAR_OPTIONS)
    profile = [int(500 * 0.01 ** (i / 9)) for i in range(10)]
    assert profile == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    assert dataset.train_counts.tolist() == profile
    origin = dataset.train.images.origin
    assert origin.tolist() == ldam_drw_selection(labels, profile).tolist()
    # val only from unused images: the head class keeps all 500 for training and has none
    assert np.bincount(dataset.val.labels, minlength=10).tolist() == [0] + [5] * 9
    assert dataset.class_names == CIFAR10_NAMES and len(dataset.test) == 20
    image = np.asarray(dataset.train.images.load(0))
    assert image.shape == (32, 32, 3)
    assert (image.transpose(2, 0, 1).reshape(-1) == data[origin[0]]).all()  # CHW rows → HWC image
    assert dataset.train.fingerprint == load_dataset("cifar10_lt", tmp_path, CIFAR_OPTIONS).train.fingerprint
    assert any("imbalance factor 100, 500…5 images per class, 1236 in all" in note for note in dataset.notes)
    assert_splits_disjoint(dataset)


def test_cifar10_lt_head_images_scales_the_profile_down_and_leaves_the_head_class_val_images(tmp_path):
    make_cifar10_pickles(tmp_path / "cifar-10-batches-py", per_class=500)
    dataset = load_dataset("cifar10", tmp_path, {**CIFAR_OPTIONS, "head_images": 100})
    assert dataset.train_counts.tolist() == [100, 59, 35, 21, 12, 7, 4, 2, 1, 1]
    assert np.bincount(dataset.val.labels, minlength=10).tolist() == [5] * 10  # the head class now has unused images
    assert any("100…1 images per class, 242 in all" in note for note in dataset.notes)
    assert_splits_disjoint(dataset)
    with pytest.raises(BenchError, match="head_images=501: CIFAR has only 500 training images per class"):
        load_dataset("cifar10", tmp_path, {**CIFAR_OPTIONS, "head_images": 501})


def test_cifar100_lt_pickles_with_fine_labels_read_from_the_folder_itself(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.RandomState(1)
    labels = np.repeat(np.arange(100), 10)
    names = ["apple", "aquarium_fish"] + [f"class_{i}" for i in range(2, 100)]
    (folder / "train").write_bytes(pickle.dumps({
        "filenames": ["x.png"] * 1000, "batch_label": "training batch 1 of 1", "fine_labels": labels.tolist(),
        "coarse_labels": (labels // 5).tolist(), "data": rng.randint(0, 256, (1000, 3072), dtype=np.uint8)}))
    (folder / "test").write_bytes(pickle.dumps({
        "fine_labels": list(range(100)), "coarse_labels": [0] * 100,
        "data": rng.randint(0, 256, (100, 3072), dtype=np.uint8)}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names,
                                                "coarse_label_names": [f"super_{i}" for i in range(20)]}))
    dataset = load_dataset("cifar100", folder, {"imbalance_factor": 10.0, "val_per_class": 1, "source": "pickle"})
    assert dataset.num_classes == 100 and dataset.class_names[:2] == ["apple", "aquarium fish"]
    assert dataset.train_counts.tolist() == exponential_profile(10, 100, 10.0)
    assert dataset.train_counts[-1] == 1 and len(dataset.test) == 100
    assert_splits_disjoint(dataset)


def test_cifar10_lt_from_an_image_folder_tree(tmp_path):
    for label, name in enumerate(CIFAR10_NAMES[::-1]):  # written in reverse: labels follow sorted folder order
        for i in range(10):
            write_image(tmp_path / f"train/{name}/{i:04d}.png", seed=label * 10 + i, size=32)
        write_image(tmp_path / f"test/{name}/0000.png", size=32)
    dataset = load_dataset("cifar10_lt", tmp_path, {"imbalance_factor": 10.0, "val_per_class": 2, "source": "auto"})
    assert dataset.class_names == CIFAR10_NAMES
    assert dataset.train_counts.tolist() == [10, 7, 5, 4, 3, 2, 2, 1, 1, 1]
    assert np.bincount(dataset.val.labels, minlength=10).tolist() == [0, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    assert dataset.train.images.describe(0).startswith("train/airplane/")
    assert dataset.test.labels.tolist() == list(range(10)) and dataset.test.images.load(0).size == (32, 32)
    again = load_dataset("cifar10_lt", tmp_path, {"imbalance_factor": 10.0, "val_per_class": 2, "source": "folder"})
    assert again.train.fingerprint == dataset.train.fingerprint
    assert_splits_disjoint(dataset)


# ---------------------------------------------------------------- folder


def make_tree(root, train: dict[str, int], val: int = 0, test: int = 2):
    for label, (name, count) in enumerate(train.items()):
        for i in range(count):
            write_image(root / f"train/{name}/{i:04d}.jpg", seed=label * 100 + i)
        for i in range(val):
            write_image(root / f"val/{name}/{i:04d}.jpg", seed=label * 100 + 50 + i)
        for i in range(test):
            write_image(root / f"test/{name}/{i:04d}.png", seed=label * 100 + 70 + i)


def test_folder_long_tails_and_carves_val_from_train(tmp_path):
    make_tree(tmp_path, {"cat": 12, "dog": 12, "emu": 12})
    dataset = load_dataset("folder", tmp_path, {"imbalance_factor": 4.0, "val_per_class": 2})
    assert dataset.class_names == ["cat", "dog", "emu"]
    # 12, 6, 3 selected; cat has no unused image left and gives 10% of its 12 (one) to val
    assert dataset.train_counts.tolist() == [11, 6, 3]
    assert np.bincount(dataset.val.labels).tolist() == [1, 2, 2] and len(dataset.test) == 6
    assert dataset.val_carve.from_unused.tolist() == [0, 2, 2] and dataset.val_carve.from_train.tolist() == [1, 0, 0]
    assert_splits_disjoint(dataset)


def test_a_carved_val_never_robs_the_tail(tmp_path):
    """The issue's long-tailed tree (no val/ folder, val_per_class 20): a class keeps at least 90 % of its
    images, and a class under 10 images keeps them all."""
    counts = {"a": 500, "b": 100, "c": 23, "d": 15, "e": 10, "f": 9, "g": 1}
    make_tree(tmp_path, counts, test=1)
    dataset = load_dataset("folder", tmp_path, {"imbalance_factor": 1.0, "val_per_class": 20})
    assert dataset.train_counts.tolist() == [480, 90, 21, 14, 9, 9, 1]
    assert dataset.val_carve.from_train.tolist() == [20, 10, 2, 1, 1, 0, 0]
    assert dataset.val_carve.from_unused.tolist() == [0] * 7
    assert any("at most 10% of a class, none from a class under 10 images" in note for note in dataset.notes)
    assert_splits_disjoint(dataset)


def test_folder_without_val_can_train_on_the_full_train_set(tmp_path):
    make_tree(tmp_path, {"a": 12, "b": 4}, test=1)
    dataset = load_dataset("folder", tmp_path, {"val_split": "none"})
    assert dataset.train_counts.tolist() == [12, 4] and len(dataset.val) == 0 and dataset.val_source == "none"
    assert any("val_split=none" in note for note in dataset.notes)
    assert not dataset.warnings


def test_folder_keeps_the_tree_and_its_val_folder(tmp_path):
    make_tree(tmp_path, {"a": 5, "b": 3}, val=1)
    dataset = load_dataset("folder", tmp_path, {"imbalance_factor": 1.0, "val_per_class": 20})
    assert dataset.train_counts.tolist() == [5, 3] and dataset.val.labels.tolist() == [0, 1]
    assert dataset.val.images.describe(1) == "val/b/0000.jpg"
    assert any("val/ folder" in note for note in dataset.notes)
    assert_splits_disjoint(dataset)


# ---------------------------------------------------------------- digits (the embedded default)

DIGITS_OPTIONS = {"imbalance_factor": 20.0, "test_per_class": 50, "val_per_class": 10}


def test_digits_default_is_offline_long_tailed_and_balanced_in_test():
    dataset = load_dataset("default", None, DIGITS_OPTIONS)
    counts = dataset.train_counts
    assert counts.tolist() == sorted(counts.tolist(), reverse=True)
    assert 18 <= counts[0] / counts[-1] <= 25  # IF 20 up to the truncation of the smallest class
    assert np.bincount(dataset.test.labels).tolist() == [50] * 10
    assert np.bincount(dataset.val.labels).tolist() == [10] * 10
    assert dataset.class_names == [str(d) for d in range(10)] and dataset.hflip_ok is False
    image = dataset.train.images.load(0)
    assert image.size == (8, 8) and image.mode == "RGB"
    assert dataset.train.images.describe(0).startswith("sklearn-digits[")
    assert load_dataset("digits", None, DIGITS_OPTIONS).train.fingerprint == dataset.train.fingerprint
    assert_splits_disjoint(dataset)


def test_digits_table_is_what_sklearn_load_digits_gives():
    from sklearn.datasets import load_digits

    images, labels = digits.load_digits_table()
    reference = load_digits()
    assert (images == reference.images).all() and (labels == reference.target).all()

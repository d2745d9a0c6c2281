"""Every loader on a tiny fabricated copy of its real on-disk format."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from bench.datasets.base import load_dataset
from conftest import write_image, write_lines

from bench.errors import BenchError


def no_overlap(dataset):
    seen = {split.name: {split.images.describe(i) for i in range(len(split))}
            for split in (dataset.train, dataset.val, dataset.test)}
    assert not seen["train"] & seen["val"]
    assert not seen["val"] & seen["test"]
    assert not seen["train"] & seen["test"]


def imagenet_tree(root, flat_test: bool):
    lines = {"train": [], "val": [], "test": []}
    for label, wnid in enumerate(["n01440764", "n01443537"]):
        for i in range(3):
            write_image(root / f"train/{wnid}/{wnid}_{i}.JPEG", seed=i)
            lines["train"].append(f"train/{wnid}/{wnid}_{i}.JPEG {label}")
        write_image(root / f"train/{wnid}/{wnid}_v.JPEG")
        lines["val"].append(f"train/{wnid}/{wnid}_v.JPEG {label}")
        name = f"ILSVRC2012_val_0000000{label}.JPEG"
        write_image(root / (f"val/{name}" if flat_test else f"val/{wnid}/{name}"))
        lines["test"].append(f"val/{wnid}/{name} {label}")  # the split file always lists nested paths
    for split, content in lines.items():
        write_lines(root / f"ImageNet_LT_{split}.txt", content)


@pytest.mark.parametrize("flat_test", [False, True])
def test_imagenet_lt_accepts_both_test_layouts(tmp_path, flat_test):
    imagenet_tree(tmp_path, flat_test)
    dataset = load_dataset("imagenet", tmp_path, {"split_dir": ""})
    assert dataset.class_names[:2] == ["tench", "goldfish"]
    assert dataset.train_counts[:2].tolist() == [3, 3]
    expected = "val/ILSVRC2012_val_00000001.JPEG" if flat_test else "val/n01443537/ILSVRC2012_val_00000001.JPEG"
    assert dataset.test.images.describe(1) == expected
    assert dataset.test.images.load(1).size == (8, 8)
    no_overlap(dataset)


def test_places_lt_names_come_from_split_folders_not_category_order(tmp_path):
    # label 0 is desert-sand although categories_places365.txt would list desert_road first
    entries = [("desert-sand", 0), ("desert_road", 1)]
    lines = {"train": [], "val": [], "test": []}
    for folder, label in entries:
        nested = f"{folder[0]}/{'/'.join(folder.split('-'))}"  # Places365 layout: d/desert/sand
        for split, count in (("train", 2), ("val", 1), ("test", 1)):
            top = "val" if split == "test" else "train"
            for i in range(count):
                name = f"{split}{i}.jpg"
                write_image(tmp_path / top / nested / name)
                lines[split].append(f"{top}/{folder}/{name} {label}")
    for split, content in lines.items():
        write_lines(tmp_path / f"Places_LT_{split}.txt", content)
    dataset = load_dataset("places", tmp_path, {"split_dir": ""})
    assert dataset.class_names == ["desert sand", "desert road"]
    assert dataset.train.images.describe(0) == "train/d/desert/sand/train0.jpg"
    assert dataset.test.images.load(0).mode == "RGB"
    no_overlap(dataset)


def inat_tree(root):
    categories = [{"id": i, "name": f"obfuscated {i}"} for i in range(3)]
    counts = {0: 5, 1: 3, 2: 2}
    images, annotations, lines = [], [], []
    next_id = 100
    for cat, n in counts.items():
        for i in range(n):
            path = f"train_val2018/Plantae/{cat}/{cat}_{i}.jpg"
            write_image(root / path, seed=cat * 10 + i)
            images.append({"id": next_id, "file_name": path, "width": 8, "height": 8})
            annotations.append({"id": 1000 + next_id, "image_id": next_id, "category_id": cat})
            lines.append(f"{path} {cat}")
            next_id += 1
    annotations.reverse()  # the join must not rely on order
    val_images = [{"id": 1, "file_name": "train_val2018/Plantae/0/v.jpg"},
                  {"id": 2, "file_name": "train_val2018/Plantae/2/v.jpg"}]
    val_annotations = [{"id": 1, "image_id": 2, "category_id": 2}, {"id": 2, "image_id": 1, "category_id": 0}]
    for image in val_images:
        write_image(root / image["file_name"])
    (root / "train2018.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    (root / "val2018.json").write_text(json.dumps(
        {"images": val_images, "annotations": val_annotations, "categories": categories}))
    write_lines(root / "iNaturalist18_train.txt", lines)
    write_lines(root / "iNaturalist18_val.txt", ["train_val2018/Plantae/0/v.jpg 0", "train_val2018/Plantae/2/v.jpg 2"])


@pytest.mark.parametrize("fmt", ["json", "txt"])
def test_inat_json_join_and_txt_variant_agree(tmp_path, fmt):
    inat_tree(tmp_path)
    (tmp_path / "categories.json").write_text(json.dumps([{"id": i, "name": f"Species {i}"} for i in range(3)]))
    options = {"format": fmt, "categories_file": "categories.json", "val_per_class": 1}
    dataset = load_dataset("inat", tmp_path, options)
    assert dataset.class_names == ["Species 0", "Species 1", "Species 2"]
    # one val image per class, except the class with only 2 images
    assert dataset.train_counts.tolist() == [4, 2, 2]
    assert sorted(dataset.val.labels.tolist()) == [0, 1]
    pairs = {dataset.test.images.describe(i): int(dataset.test.labels[i]) for i in range(len(dataset.test))}
    assert pairs == {"train_val2018/Plantae/0/v.jpg": 0, "train_val2018/Plantae/2/v.jpg": 2}
    for i in range(len(dataset.train)):
        category = int(dataset.train.images.describe(i).split("/")[2])
        assert category == dataset.train.labels[i]
    no_overlap(dataset)


def test_inat_without_categories_file_says_names_are_obfuscated(tmp_path):
    inat_tree(tmp_path)
    dataset = load_dataset("inat", tmp_path, {"format": "json", "categories_file": "categories.json",
                                              "val_per_class": 1})
    assert dataset.class_names[0] == "obfuscated 0"
    assert any("obfuscated" in note for note in dataset.notes)


def write_cifar10_pickles(root, per_class: int):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    labels = np.repeat(np.arange(10), per_class)
    rng.shuffle(labels)
    chunks = np.array_split(np.arange(len(labels)), 5)
    for i, chunk in enumerate(chunks, start=1):
        batch = {b"data": rng.randint(0, 256, (len(chunk), 3072), dtype=np.uint8), b"labels": labels[chunk].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {b"data": rng.randint(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return labels


CIFAR_OPTIONS = {"imbalance_factor": 100.0, "val_per_class": 5, "source": "auto"}


def test_cifar10_lt_from_pickles_follows_the_profile(tmp_path):
    write_cifar10_pickles(tmp_path, per_class=500)
    dataset = load_dataset("cifar10_lt", tmp_path, CIFAR_OPTIONS)
    profile = [int(500 * 0.01 ** (i / 9)) for i in range(10)]
    counts = dataset.train_counts.tolist()
    assert counts[1:] == profile[1:]
    assert counts[0] == profile[0] - 5  # class 0 keeps every image, so its val images come from the subset
    assert np.bincount(dataset.val.labels).tolist() == [5] * 10
    assert len(dataset.test) == 20 and dataset.test.images.load(0).size == (32, 32)
    again = load_dataset("cifar10_lt", tmp_path, CIFAR_OPTIONS)
    assert dataset.train.fingerprint == again.train.fingerprint
    no_overlap(dataset)


def test_cifar100_pickles_with_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.RandomState(1)
    labels = np.repeat(np.arange(100), 10)
    (folder / "train").write_bytes(pickle.dumps({"data": rng.randint(0, 256, (1000, 3072), dtype=np.uint8),
                                                 "fine_labels": labels.tolist(), "coarse_labels": [0] * 1000}))
    (folder / "test").write_bytes(pickle.dumps({"data": rng.randint(0, 256, (100, 3072), dtype=np.uint8),
                                                "fine_labels": list(range(100))}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class_{i}" for i in range(100)]}))
    dataset = load_dataset("cifar100", folder, {"imbalance_factor": 10.0, "val_per_class": 1, "source": "pickle"})
    assert dataset.num_classes == 100 and dataset.class_names[0] == "class 0"
    assert dataset.train_counts[-1] == int(10 * 0.1)


def test_cifar_and_folder_read_image_folder_trees(tmp_path):
    for cls, n in (("cat", 12), ("dog", 12), ("emu", 12)):
        for i in range(n):
            write_image(tmp_path / f"train/{cls}/{i:04d}.jpg", seed=i)
        for i in range(2):
            write_image(tmp_path / f"test/{cls}/{i:04d}.png", seed=i)
    cifar_like = load_dataset("folder", tmp_path, {"imbalance_factor": 4.0, "val_per_class": 2})
    assert cifar_like.class_names == ["cat", "dog", "emu"]
    assert cifar_like.train_counts.tolist() == [10, 6, 3]  # 12, 6, 3 selected; cat gives 2 to val
    assert len(cifar_like.test) == 6
    no_overlap(cifar_like)
    with pytest.raises(BenchError, match="needs --data-root"):
        load_dataset("folder", None, {"imbalance_factor": 1.0, "val_per_class": 2})


def test_digits_default_is_offline_long_tailed_and_balanced_in_test():
    dataset = load_dataset("digits_lt", None, {"imbalance_factor": 20.0, "test_per_class": 50, "val_per_class": 10})
    counts = dataset.train_counts
    assert 15 <= counts.max() / counts.min() <= 25
    assert np.bincount(dataset.test.labels).tolist() == [50] * 10
    assert np.bincount(dataset.val.labels).tolist() == [10] * 10
    assert dataset.hflip_ok is False
    no_overlap(dataset)


def test_missing_split_file_names_it(tmp_path):
    with pytest.raises(BenchError, match="Places_LT_train.txt"):
        load_dataset("places_lt", tmp_path, {"split_dir": ""})


def test_malformed_split_line_names_file_and_line(tmp_path):
    imagenet_tree(tmp_path, flat_test=False)
    path = tmp_path / "ImageNet_LT_val.txt"
    path.write_text(path.read_text() + "train/n01440764/broken.JPEG zero\n")
    with pytest.raises(BenchError, match=r"ImageNet_LT_val.txt:3: malformed"):
        load_dataset("imagenet_lt", tmp_path, {"split_dir": ""})


def test_label_out_of_range_is_refused(tmp_path):
    imagenet_tree(tmp_path, flat_test=False)
    path = tmp_path / "ImageNet_LT_test.txt"
    path.write_text(path.read_text().replace(" 1\n", " 1000\n"))
    with pytest.raises(BenchError, match="label 1000 .* outside 0..999"):
        load_dataset("imagenet_lt", tmp_path, {"split_dir": ""})


def test_corrupt_image_names_the_file(tmp_path):
    imagenet_tree(tmp_path, flat_test=False)
    broken = tmp_path / "train/n01440764/n01440764_1.JPEG"
    broken.write_bytes(b"not a jpeg")
    dataset = load_dataset("imagenet_lt", tmp_path, {"split_dir": ""})
    with pytest.raises(BenchError, match="n01440764_1.JPEG"):
        dataset.train.images.load(1)


def test_missing_images_say_which_layouts_were_tried(tmp_path):
    imagenet_tree(tmp_path, flat_test=False)
    for image in (tmp_path / "val").rglob("*.JPEG"):
        image.unlink()
    with pytest.raises(BenchError, match="test images not found"):
        load_dataset("imagenet_lt", tmp_path, {"split_dir": ""})


def test_unknown_dataset_suggests_the_nearest():
    with pytest.raises(BenchError, match="did you mean imagenet_lt"):
        load_dataset("imagenet_tl", None, {})

"""What a user sees when data is missing or broken: one BenchError naming the file (and line) to fix."""

from __future__ import annotations

import os
import pickle
import re

import pytest
from bench.datasets.base import load_dataset, read_two_column_split
from conftest import make_imagenet_lt, write_image, write_lines

from bench.errors import BenchError

IMAGENET = {"split_dir": ""}


@pytest.mark.parametrize(("name", "options", "expected"), [
    ("places_lt", {"split_dir": ""}, "Places_LT_train.txt"),
    ("imagenet_lt", IMAGENET, "ImageNet_LT_train.txt"),
    ("inat2018", {"format": "txt", "categories_file": "categories.json", "val_per_class": 1},
     "iNaturalist18_train.txt"),
    ("inat2018", {"format": "json", "categories_file": "categories.json", "val_per_class": 1}, "train2018.json"),
])
def test_missing_split_file_names_the_expected_path(tmp_path, name, options, expected):
    with pytest.raises(BenchError, match=f"missing .*: expected {re.escape(str(tmp_path / expected))}$"):
        load_dataset(name, tmp_path, options)


def test_missing_split_file_in_split_dir(tmp_path):
    make_imagenet_lt(tmp_path)
    with pytest.raises(BenchError, match=re.escape(str(tmp_path / "elsewhere" / "ImageNet_LT_train.txt"))):
        load_dataset("imagenet_lt", tmp_path, {"split_dir": str(tmp_path / "elsewhere")})


def test_malformed_split_line_names_file_and_line(tmp_path):
    make_imagenet_lt(tmp_path)
    path = tmp_path / "ImageNet_LT_val.txt"
    path.write_text(path.read_text() + "train/n01440764/broken.JPEG zero\n")
    with pytest.raises(BenchError, match=r"ImageNet_LT_val.txt:3: malformed split line"):
        load_dataset("imagenet_lt", tmp_path, IMAGENET)


@pytest.mark.parametrize("line", ["a.jpg", "a.jpg 1 2", "a b.jpg 3", "a.jpg 1.5"])
def test_read_two_column_split_refuses_malformed_lines(tmp_path, line):
    path = write_lines(tmp_path / "split.txt", ["ok.jpg 0", "", line])
    with pytest.raises(BenchError, match=f"{re.escape(str(path))}:3: malformed"):
        read_two_column_split(path)


def test_places_lt_path_without_a_class_folder_is_refused(tmp_path):
    for split in ("train", "val", "test"):
        write_lines(tmp_path / f"Places_LT_{split}.txt", ["train/airfield/1.jpg 0", "train/2.jpg 1"])
    with pytest.raises(BenchError, match=r"Places_LT_train.txt: 'train/2.jpg' is not <split>/<folder>/<file>"):
        load_dataset("places_lt", tmp_path, {"split_dir": ""})


def test_label_out_of_range_is_refused(tmp_path):
    make_imagenet_lt(tmp_path)
    path = tmp_path / "ImageNet_LT_test.txt"
    path.write_text(path.read_text().replace(" 1\n", " 1000\n"))
    with pytest.raises(BenchError, match=r"imagenet_lt test: label 1000 of val/n01443537/\S+ is outside 0..999"):
        load_dataset("imagenet_lt", tmp_path, IMAGENET)


def test_corrupt_image_names_the_file(tmp_path):
    make_imagenet_lt(tmp_path)
    (tmp_path / "train/n01440764/n01440764_1.JPEG").write_bytes(b"not a jpeg")
    dataset = load_dataset("imagenet_lt", tmp_path, IMAGENET)
    dataset.train.images.load(0)
    with pytest.raises(BenchError, match=r"corrupt or unreadable image .*n01440764_1\.JPEG"):
        dataset.train.images.load(1)


def test_image_deleted_after_loading_names_the_file(tmp_path):
    make_imagenet_lt(tmp_path)
    dataset = load_dataset("imagenet_lt", tmp_path, IMAGENET)
    (tmp_path / "train/n01443537/n01443537_2.JPEG").unlink()
    with pytest.raises(BenchError, match=r"image not found: .*n01443537_2\.JPEG"):
        dataset.train.images.load(5)


def test_missing_images_say_which_layouts_were_tried(tmp_path):
    make_imagenet_lt(tmp_path)
    for image in (tmp_path / "val").rglob("*.JPEG"):
        image.unlink()
    with pytest.raises(BenchError, match=r"test images not found .*as listed: .*flat val/: "):
        load_dataset("imagenet_lt", tmp_path, IMAGENET)


def test_unknown_dataset_suggests_the_nearest():
    with pytest.raises(BenchError, match="unknown dataset 'imagenet_tl': did you mean imagenet_lt"):
        load_dataset("imagenet_tl", None, {})


def test_dataset_with_a_dirname_needs_a_data_root(monkeypatch):
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    with pytest.raises(BenchError, match="BENCH_DATA_ROOT/Places_LT"):
        load_dataset("places", None, {"split_dir": ""})


def test_folder_needs_a_root_and_a_test_folder(tmp_path):
    options = {"imbalance_factor": 1.0, "val_per_class": 1}
    with pytest.raises(BenchError, match="needs --data-root"):
        load_dataset("folder", None, options)
    write_image(tmp_path / "train/a/0.png")
    write_image(tmp_path / "train/a/1.png")
    with pytest.raises(BenchError, match=f"missing test folder: expected {re.escape(str(tmp_path / 'test'))}"):
        load_dataset("folder", tmp_path, options)
    write_image(tmp_path / "test/b/0.png")
    with pytest.raises(BenchError, match="class folder 'b' is not among the training classes"):
        load_dataset("folder", tmp_path, options)


def test_cifar_without_data_says_what_it_expected(tmp_path):
    options = {"imbalance_factor": 100.0, "val_per_class": 1, "source": "auto"}
    with pytest.raises(BenchError, match="cifar-100-python/ .*or train/<class>/"):
        load_dataset("cifar100_lt", tmp_path, options)
    with pytest.raises(BenchError, match=re.escape(str(tmp_path / "cifar-10-batches-py" / "test_batch"))):
        load_dataset("cifar10_lt", tmp_path, {**options, "source": "pickle"})


class Exploit:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def test_cifar_pickles_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(pickle.dumps({"fine_labels": Exploit()}))
    with pytest.raises(BenchError, match="cannot read CIFAR pickle .*refusing to load"):
        load_dataset("cifar100", tmp_path, {"imbalance_factor": 10.0, "val_per_class": 1, "source": "auto"})


def test_cifar10_file_in_a_cifar100_folder_names_the_missing_key(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        (folder / name).write_bytes(pickle.dumps({"data": [[0] * 3072], "labels": [0]}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": ["a"]}))
    with pytest.raises(BenchError, match=r"train has no 'fine_labels' \(keys: data, labels\)"):
        load_dataset("cifar100", tmp_path, {"imbalance_factor": 10.0, "val_per_class": 1, "source": "auto"})

"""What a user sees when data is missing or broken: one BenchError naming the file (and line) to fix."""

from __future__ import annotations

import os
import pickle
import re

import pytest
from conftest import make_imagenet_lt, write_image, write_lines

from bench.datasets.base import load_dataset, read_two_column_split
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


# ---------------------------------------------------------------- split files cannot leave the data root

def train_split_file(root, dataset: str):
    """A fabricated ImageNet-LT or Places-LT copy under `root`; returns its train split file."""
    from conftest import make_places_lt

    if dataset == "imagenet_lt":
        make_imagenet_lt(root)
        return root / "ImageNet_LT_train.txt"
    make_places_lt(root, download_layout=False)
    return root / "Places_LT_train.txt"


@pytest.mark.parametrize("listed", ["../../etc/passwd", "/etc/passwd", "../outside/img.jpg",
                                    "train/../../outside/img.jpg"])
@pytest.mark.parametrize("dataset", ["imagenet_lt", "places_lt"])
def test_split_paths_that_escape_the_data_root_are_refused_before_any_image_is_opened(tmp_path, monkeypatch,
                                                                                      dataset, listed):
    from PIL import Image

    root = tmp_path / "data"
    write_image(tmp_path / "outside" / "img.jpg")  # what the escaping path names exists
    split = train_split_file(root, dataset)
    lines = split.read_text().splitlines()
    split.write_text("\n".join([*lines[:2], f"{listed} 0", *lines[2:]]) + "\n")

    def no_image_may_be_opened(*args, **kwargs):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(Image, "open", no_image_may_be_opened)
    with pytest.raises(BenchError, match=f"^{re.escape(str(split))}:3: path escapes the data root"):
        load_dataset(dataset, root, {"split_dir": ""})


def test_a_symlink_out_of_the_data_root_is_refused(tmp_path):
    root = make_imagenet_lt(tmp_path / "data")
    outside = write_image(tmp_path / "outside" / "secret.JPEG")
    link = root / "train/n01440764/n01440764_9.JPEG"
    link.symlink_to(outside)
    split = root / "ImageNet_LT_train.txt"
    split.write_text(split.read_text() + "train/n01440764/n01440764_9.JPEG 0\n")
    with pytest.raises(BenchError, match=rf"ImageNet_LT_train.txt:1005: path escapes the data root: .*resolves to "
                                         rf"{re.escape(str(outside))}"):
        load_dataset("imagenet_lt", root, IMAGENET)
    link.unlink()  # a symlinked folder out of the root too
    (root / "train/linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    split.write_text(split.read_text().replace("n01440764/n01440764_9.JPEG", "linked/secret.JPEG"))
    with pytest.raises(BenchError, match="ImageNet_LT_train.txt:1005: path escapes the data root"):
        load_dataset("imagenet_lt", root, IMAGENET)


def test_inat_json_file_names_that_escape_are_refused(tmp_path):
    import json

    data = {"images": [{"id": 1, "file_name": "../secret.jpg"}], "annotations": [{"image_id": 1, "category_id": 0}],
            "categories": [{"id": 0, "name": "a"}]}
    for name in ("train2018.json", "val2018.json"):
        (tmp_path / name).write_text(json.dumps(data))
    with pytest.raises(BenchError, match=r"train2018.json: path escapes the data root: '../secret.jpg'"):
        load_dataset("inat2018", tmp_path, {"format": "auto", "categories_file": "categories.json",
                                            "val_per_class": 1})


# ---------------------------------------------------------------- labels and classes checked at load

@pytest.mark.parametrize("dataset", ["imagenet_lt", "places_lt"])
def test_a_negative_train_label_is_one_error_with_file_and_line(tmp_path, dataset):
    split = train_split_file(tmp_path, dataset)
    lines = split.read_text().splitlines()
    path = lines[1].split()[0]
    lines[1] = f"{path} -1"
    split.write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchError, match=f"{re.escape(str(split))}:2: negative label -1"):
        load_dataset(dataset, tmp_path, {"split_dir": ""})


def test_a_class_without_training_images_is_named_at_load(tmp_path):
    make_imagenet_lt(tmp_path)
    split = tmp_path / "ImageNet_LT_train.txt"
    split.write_text("".join(line + "\n" for line in split.read_text().splitlines()
                             if not line.endswith((" 7", " 8"))))
    with pytest.raises(BenchError, match=r"imagenet_lt: classes 7 \('.+'\), 8 \('.+'\) have no training image"):
        load_dataset("imagenet_lt", tmp_path, IMAGENET)


def test_a_class_without_test_images_is_a_warning_the_record_keeps(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.store import ResultsStore
    for cls in ("a", "b", "c"):
        for i in range(6):
            write_image(tmp_path / f"data/train/{cls}/{i}.png", seed=i)
        if cls != "c":
            write_image(tmp_path / f"data/test/{cls}/0.png")
    result = CliRunner().invoke(app, ["run", "--method", "linear_probe", "--dataset", "folder", "--data-root",
                                      str(tmp_path / "data"), "--backbone", "vit_micro", "--random-init",
                                      "--set", "val_per_class=1", "--set", "image_size=16", "--set", "wd_steps=1",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "warning: folder test: class 2 ('c') has no test image" in " ".join(result.output.split())
    record = ResultsStore(tmp_path / "out").records()[0]
    assert any("class 2 ('c') has no test image" in note for note in record["notes"])

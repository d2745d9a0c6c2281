"""CIFAR-10-LT and CIFAR-100-LT: the exponential long-tail profile over CIFAR's train set, balanced test set.

Reads the CIFAR python pickles (without torchvision's md5 checks) or an ImageFolder tree train/ and test/.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench.datasets.base import ArrayImages, FileImages, LongTailDataset, Split, register_dataset
from bench.datasets.files import read_image_folder
from bench.datasets.longtail import carve_val, exponential_profile, select_long_tail

from bench.errors import BenchError
from bench.hparams import Choice, HParam


@dataclass(frozen=True)
class CifarLayout:
    folder: str  # folder inside the root that holds the pickles
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str


CIFAR10 = CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                      "batches.meta", "labels", "label_names")
CIFAR100 = CifarLayout("cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError) as error:
        raise BenchError(f"cannot read CIFAR pickle {path}: {error}") from None
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in data.items()}


def pickle_dir(root: Path, layout: CifarLayout) -> Path | None:
    for candidate in (root / layout.folder, root):
        if (candidate / layout.test_file).is_file():
            return candidate
    return None


def read_pickles(folder: Path, layout: CifarLayout):
    def load(names):
        batches = [_unpickle(folder / name) for name in names]
        pixels = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[layout.label_key], dtype=np.int64) for b in batches])
        return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels

    missing = [n for n in (*layout.train_files, layout.test_file, layout.meta_file) if not (folder / n).is_file()]
    if missing:
        raise BenchError(f"missing CIFAR file: expected {folder / missing[0]}")
    names = [n.decode() if isinstance(n, bytes) else n for n in _unpickle(folder / layout.meta_file)[layout.names_key]]
    (train_px, train_y), (test_px, test_y) = load(layout.train_files), load((layout.test_file,))
    tag = folder.name
    return (Split("train", ArrayImages(train_px, f"{tag}/train"), train_y),
            Split("test", ArrayImages(test_px, f"{tag}/test"), test_y), names, [folder / n for n in (
                *layout.train_files, layout.test_file)])


def read_folders(root: Path):
    train_paths, train_y, names = read_image_folder(root / "train")
    test_paths, test_y, _ = read_image_folder(root / "test", names)
    return (Split("train", FileImages(root, tuple(train_paths)), train_y),
            Split("test", FileImages(root, tuple(test_paths)), test_y), names, [])


def long_tail(name: str, train: Split, test: Split, class_names: list[str], imbalance_factor: float,
              val_per_class: int, split_files: list[Path], source: str) -> LongTailDataset:
    """Standard LDAM-DRW selection of the long-tailed train subset; val from the images it leaves unused."""
    counts = exponential_profile(int(np.bincount(train.labels).max()), len(class_names), imbalance_factor)
    chosen = select_long_tail(train.labels, counts, seed=0)
    chosen, val_idx, how = carve_val(train.labels, chosen, val_per_class, seed=0)
    return LongTailDataset(
        name=name, class_names=[c.replace("_", " ") for c in class_names],
        train=train.subset(chosen, "train"), val=train.subset(val_idx, "val"), test=test,
        split_files=split_files,
        notes=[(f"{source}; imbalance factor {imbalance_factor:g}: {counts[0]}…{counts[-1]} images per class "
                f"(standard seed-0 selection); {how}")],
    )


def cifar_builder(name: str, layout: CifarLayout):
    def build(root: Path, options: Mapping) -> LongTailDataset:
        source = options["source"]
        folder = pickle_dir(root, layout) if source in ("auto", "pickle") else None
        if folder is not None:
            train, test, names, files = read_pickles(folder, layout)
            origin = f"CIFAR pickles in {folder}"
        elif source == "pickle":
            raise BenchError(f"no CIFAR pickles under {root}: expected {root / layout.folder / layout.test_file}")
        elif (root / "train").is_dir():
            train, test, names, files = read_folders(root)
            origin = f"ImageFolder tree {root}/train, {root}/test"
        else:
            raise BenchError(f"no CIFAR data under {root}: expected {root / layout.folder}/ (python pickles) "
                             "or train/<class>/ and test/<class>/ image folders")
        return long_tail(name, train, test, names, float(options["imbalance_factor"]),
                         int(options["val_per_class"]), files, origin)

    return build


CIFAR_OPTIONS = {
    "imbalance_factor": HParam(100.0, Choice((10.0, 50.0, 100.0)), "largest / smallest training class"),
    "val_per_class": HParam(20, help="val images per class, from train images the long tail leaves unused"),
    "source": HParam("auto", help="pickle | folder | auto", choices=("auto", "pickle", "folder")),
}

register_dataset("cifar10_lt", aliases=("cifar10",), dirname="cifar-10", options=CIFAR_OPTIONS,
                 description="CIFAR-10-LT: exponential profile (IF 10/50/100) over CIFAR-10, balanced test")(
    cifar_builder("cifar10_lt", CIFAR10))
register_dataset("cifar100_lt", aliases=("cifar100",), dirname="cifar-100", options=CIFAR_OPTIONS,
                 description="CIFAR-100-LT: exponential profile (IF 10/50/100) over CIFAR-100, balanced test")(
    cifar_builder("cifar100_lt", CIFAR100))

"""CIFAR-10-LT and CIFAR-100-LT: the exponential long-tail profile over CIFAR's train set, balanced test set.

Reads the CIFAR python pickles (without torchvision's md5 checks) or an ImageFolder tree train/ and test/.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.datasets.base import (
    ArrayImages,
    FileImages,
    LongTailDataset,
    Split,
    register_dataset,
    require_file,
)
from bench.datasets.files import read_image_folder
from bench.datasets.longtail import carve_val, exponential_profile, select_long_tail
from bench.errors import BenchError
from bench.hparams import AT_LEAST_ONE, NON_NEGATIVE, Choice, HParam


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


# What CIFAR's pickles need to rebuild numpy arrays; any other global is refused, so a tampered file cannot
# run code.
PICKLE_GLOBALS = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})


class CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def unpickle(path: Path) -> dict[str, object]:
    """A CIFAR pickle as a dict with str keys. The originals come from Python 2's cPickle: latin1 turns their
    str keys into str (and keeps numpy's buffers intact); files written from Python 3 may have bytes keys."""
    try:
        with open(path, "rb") as handle:
            data = CifarUnpickler(handle, encoding="latin1").load()
        return {key.decode() if isinstance(key, bytes) else key: value for key, value in data.items()}
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as error:
        raise BenchError(f"cannot read CIFAR pickle {path}: {error}") from None


def entry(batch: dict[str, object], key: str, path: Path) -> object:
    if key not in batch:
        raise BenchError(f"CIFAR pickle {path} has no {key!r} (keys: {', '.join(map(str, batch))}); "
                         "is this the other CIFAR's file?")
    return batch[key]


def pickle_dir(root: Path, layout: CifarLayout) -> Path | None:
    """The root itself or its `cifar-10-batches-py` / `cifar-100-python` folder, whichever holds the pickles."""
    for candidate in (root / layout.folder, root):
        if (candidate / layout.test_file).is_file():
            return candidate
    return None


def read_pickles(folder: Path, layout: CifarLayout) -> tuple[Split, Split, list[str], list[Path]]:
    """(train, test, class names, files read) from the python pickles, as in-memory HWC uint8 images."""

    def read(split: str, names: tuple[str, ...]) -> Split:
        pixels, labels = [], []
        for path in (folder / name for name in names):
            batch = unpickle(path)
            data = np.asarray(entry(batch, "data", path), dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise BenchError(f"CIFAR pickle {path}: 'data' has shape {data.shape}; expected N×3072 (32×32 RGB)")
            pixels.append(data)
            labels.append(np.asarray(entry(batch, layout.label_key, path), dtype=np.int64))
        images = np.concatenate(pixels).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return Split(split, ArrayImages(images, f"{folder.name}/{split}"), np.concatenate(labels))

    files = [folder / name for name in (*layout.train_files, layout.test_file)]
    for path in (*files, folder / layout.meta_file):
        require_file(path, "CIFAR pickle")
    meta = folder / layout.meta_file
    names = [n.decode() if isinstance(n, bytes) else n for n in entry(unpickle(meta), layout.names_key, meta)]
    return read("train", layout.train_files), read("test", (layout.test_file,)), names, files


def read_folders(root: Path) -> tuple[Split, Split, list[str], list[Path]]:
    train_paths, train_y, names = read_image_folder(root / "train")
    test_paths, test_y, _ = read_image_folder(root / "test", names)
    return (Split("train", FileImages(root, tuple(train_paths)), train_y),
            Split("test", FileImages(root, tuple(test_paths)), test_y), names, [])


def long_tail(name: str, train: Split, test: Split, class_names: list[str], imbalance_factor: float,
              val_per_class: int, split_files: list[Path], source: str, head_images: int = 0) -> LongTailDataset:
    """Standard LDAM-DRW selection of the long-tailed train subset; val only from the images it leaves unused,
    so train stays the published one (the head class, which keeps every image, gets no val images). A
    `head_images` below CIFAR's per-class count scales the whole profile down (the same imbalance factor over
    fewer images), which also leaves the head class images for val."""
    available = int(np.bincount(train.labels).max())
    if head_images > available:
        raise BenchError(f"head_images={head_images}: CIFAR has only {available} training images per class; "
                         f"use at most {available}, or 0 for all of them")
    counts = exponential_profile(head_images or available, len(class_names), imbalance_factor)
    chosen = select_long_tail(train.labels, counts, seed=0)
    carve = carve_val(train.labels, chosen, val_per_class, seed=0, borrow=False)
    return LongTailDataset(
        name=name, class_names=[c.replace("_", " ") for c in class_names],
        train=train.subset(carve.train_idx, "train"), val=train.subset(carve.val_idx, "val"), test=test,
        split_files=split_files,
        notes=[source,
               (f"train: imbalance factor {imbalance_factor:g}, {counts[0]}…{counts[-1]} images per class, "
                f"{sum(counts)} in all (standard LDAM-DRW selection, numpy seed 0)"),
               carve.summary(), f"test: the balanced CIFAR test split ({len(test)} images)"],
        val_source="carved", val_carve=carve,
    )


def cifar_builder(name: str, layout: CifarLayout):
    def build(root: Path, options: Mapping) -> LongTailDataset:
        source = options["source"]
        folder = pickle_dir(root, layout) if source != "folder" else None
        if folder is not None:
            train, test, names, files = read_pickles(folder, layout)
            origin = f"CIFAR python pickles in {folder}"
        elif source == "pickle":
            raise BenchError(f"no CIFAR pickles under {root}: expected {root / layout.folder / layout.test_file}")
        elif source == "folder" or (root / "train").is_dir():
            train, test, names, files = read_folders(root)
            origin = f"ImageFolder tree {root}/train, {root}/test (classes in sorted folder order)"
        else:
            raise BenchError(f"no CIFAR data under {root}: expected {root / layout.folder}/ (python pickles) "
                             "or train/<class>/ and test/<class>/ image folders")
        return long_tail(name, train, test, names, float(options["imbalance_factor"]),
                         int(options["val_per_class"]), files, origin, int(options["head_images"]))

    return build


CIFAR_OPTIONS = {
    "imbalance_factor": HParam(100.0, Choice((10.0, 50.0, 100.0)), "largest / smallest training class",
                               bounds=AT_LEAST_ONE),
    "val_per_class": HParam(20, help="val images per class, from train images the long tail leaves unused",
                            bounds=AT_LEAST_ONE),
    "source": HParam("auto", help="pickle | folder | auto", choices=("auto", "pickle", "folder")),
    "head_images": HParam(0, help="training images of the largest class (n_max of the profile); 0 = all of "
                          "CIFAR's (the published CIFAR-LT); fewer scale the profile down for small budgets",
                          bounds=NON_NEGATIVE),
}

register_dataset("cifar10_lt", aliases=("cifar10",), dirname="cifar-10", options=CIFAR_OPTIONS,
                 description="CIFAR-10-LT: exponential profile (IF 10/50/100) over CIFAR-10, balanced test")(
    cifar_builder("cifar10_lt", CIFAR10))
register_dataset("cifar100_lt", aliases=("cifar100",), dirname="cifar-100", options=CIFAR_OPTIONS,
                 description="CIFAR-100-LT: exponential profile (IF 10/50/100) over CIFAR-100, balanced test")(
    cifar_builder("cifar100_lt", CIFAR100))

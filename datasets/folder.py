"""Any ImageFolder tree (train/, optional val/, test/), optionally made long-tailed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bench.datasets.base import FileImages, LongTailDataset, Split, register_dataset
from bench.datasets.files import read_image_folder
from bench.datasets.longtail import (
    NO_VAL_NOTE,
    VAL_SPLIT_OPTION,
    carve_val,
    exponential_profile,
    select_long_tail,
)
from bench.errors import BenchError
from bench.hparams import AT_LEAST_ONE, HParam


@register_dataset(
    "folder",
    description="any ImageFolder tree: train/<class>/, optional val/<class>/, test/<class>/ (needs --data-root)",
    options={
        "imbalance_factor": HParam(1.0, help="1 keeps the tree as it is; > 1 applies the exponential profile",
                                   bounds=AT_LEAST_ONE),
        "val_per_class": HParam(20, help="val images per class carved from train when there is no val/ folder: "
                                "first from images the long tail leaves unused, then at most 10% of a class's "
                                "training images and none from a class under 10", bounds=AT_LEAST_ONE),
        "val_split": VAL_SPLIT_OPTION,
    },
)
def build_folder(root: Path | None, options: Mapping) -> LongTailDataset:
    if root is None:
        raise BenchError("dataset folder needs --data-root DIR (a folder with train/<class>/ and test/<class>/)")
    train_paths, train_y, names = read_image_folder(root / "train")
    if not (root / "test").is_dir():
        raise BenchError(f"missing test folder: expected {root / 'test'}/<class>/<image>")
    test_paths, test_y, _ = read_image_folder(root / "test", names)
    train = Split("train", FileImages(root, tuple(train_paths)), train_y)
    factor = float(options["imbalance_factor"])
    chosen = np.arange(len(train))
    notes = [f"ImageFolder tree {root} (classes in sorted folder order)"]
    if factor > 1:
        counts = exponential_profile(int(np.bincount(train_y).max()), len(names), factor)
        chosen = select_long_tail(train_y, counts, seed=0)
        notes.append(f"train long-tailed with imbalance factor {factor:g}: {counts[0]}…{counts[-1]} images per "
                     f"class, {sum(counts)} in all (LDAM-DRW selection, numpy seed 0)")
    carve = None
    if (root / "val").is_dir():
        val_paths, val_y, _ = read_image_folder(root / "val", names)
        val = Split("val", FileImages(root, tuple(val_paths)), val_y)
        source = "folder"
        notes.append("val: the val/ folder; never from test")
    elif options["val_split"] == "none":
        val, source = train.subset([], "val"), "none"
        notes.append(NO_VAL_NOTE)
    else:
        carve = carve_val(train_y, chosen, int(options["val_per_class"]), seed=0)
        chosen, val, source = carve.train_idx, train.subset(carve.val_idx, "val"), "carved"
        notes.append(carve.summary())
    notes.append("test: the test/ folder")
    return LongTailDataset(name="folder", class_names=names, train=train.subset(chosen, "train"), val=val,
                           test=Split("test", FileImages(root, tuple(test_paths)), test_y), notes=notes,
                           val_source=source, val_carve=carve)

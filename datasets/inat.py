"""iNaturalist 2018: COCO-like train2018.json / val2018.json, or the flattened iNaturalist18_*.txt lists.

Label = category_id. The official val set (3 per class) is the benchmark's test split, so val is carved
from train.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from bench.datasets.base import (
    FileImages,
    LongTailDataset,
    Split,
    read_two_column_split,
    register_dataset,
    require_file,
)
from bench.datasets.longtail import carve_val

from bench.errors import BenchError
from bench.hparams import HParam

CATEGORY_FILES = ("categories.json", "iNaturalist18_categories.json")


def read_coco_split(path: Path) -> tuple[list[str], np.ndarray, dict[int, str]]:
    """(file names, category ids, id → name) joined on image_id."""
    try:
        data = json.loads(require_file(path, "iNaturalist 2018 annotation file").read_text())
        files = {image["id"]: image["file_name"] for image in data["images"]}
        pairs = [(files[a["image_id"]], int(a["category_id"])) for a in data["annotations"]]
        names = {int(c["id"]): c["name"] for c in data.get("categories", [])}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise BenchError(f"{path}: not a COCO-style iNaturalist file ({type(error).__name__}: {error})") from None
    pairs.sort()
    return [p for p, _ in pairs], np.asarray([c for _, c in pairs], dtype=np.int64), names


def category_names(root: Path, file_name: str) -> list[str] | None:
    for candidate in (file_name, *CATEGORY_FILES):
        path = root / candidate
        if path.is_file():
            categories = json.loads(path.read_text())
            return [entry["name"] for entry in sorted(categories, key=lambda entry: entry["id"])]
    return None


def parse(root: Path, fmt: str) -> tuple[dict, list[Path], dict[int, str]]:
    """{'train': (paths, labels), 'val': ...}, the files read, and names found inside JSON annotations."""
    if fmt == "auto":
        fmt = "json" if (root / "train2018.json").is_file() else "txt"
    if fmt == "json":
        files = [root / "train2018.json", root / "val2018.json"]
        (tp, tl, names), (vp, vl, _) = (read_coco_split(f) for f in files)
        return {"train": (tp, tl), "val": (vp, vl)}, files, names
    files = [require_file(root / f"iNaturalist18_{s}.txt", f"iNaturalist 2018 {s} list (or train2018.json)")
             for s in ("train", "val")]
    return {"train": read_two_column_split(files[0]), "val": read_two_column_split(files[1])}, files, {}


@register_dataset(
    "inat2018", aliases=("inat",), dirname="iNat2018",
    description="iNaturalist 2018: 8142 classes, 437.5k train (1000–2 per class); official val (3/class) as test",
    options={
        "format": HParam("auto", help="json (train2018.json) | txt (iNaturalist18_*.txt) | auto",
                         choices=("auto", "json", "txt")),
        "categories_file": HParam("categories.json", help="list of categories with real names, position = id"),
        "val_per_class": HParam(1, help="val images per class held out from train (classes keep ≥ 2 to train on)"),
    },
)
def build_inat(root: Path, options: Mapping) -> LongTailDataset:
    parsed, files, json_names = parse(root, options["format"])
    train_paths, train_labels = parsed["train"]
    names = category_names(root, options["categories_file"])
    notes = []
    if names is None:
        num_classes = int(max(train_labels.max(), parsed["val"][1].max())) + 1
        names = [json_names.get(i, str(i)) for i in range(num_classes)]
        notes.append("class names from the annotation file (obfuscated in the 2018 release); put categories.json "
                     "in the data root for real names")
    keep, val_idx, _ = carve_val(train_labels, np.arange(len(train_labels)), int(options["val_per_class"]),
                                 seed=0, min_train=2)
    notes.append(f"val: {options['val_per_class']} image(s) per class held out from train at random (seed 0), "
                 "none from classes with 2 or fewer; the official val set is the test split")
    images = FileImages(root, tuple(train_paths))
    full = Split("train", images, train_labels)
    test_paths, test_labels = parsed["val"]
    return LongTailDataset(
        name="inat2018", class_names=names, train=full.subset(np.sort(keep), "train"),
        val=full.subset(np.sort(val_idx), "val"), test=Split("test", FileImages(root, tuple(test_paths)), test_labels),
        split_files=files, notes=notes,
    )

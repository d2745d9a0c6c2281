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
    LongTailDataset,
    escapes_root,
    read_two_column_split,
    register_dataset,
    require_file,
)
from bench.datasets.files import as_listed, probed_split
from bench.datasets.longtail import NO_VAL_NOTE, VAL_SPLIT_OPTION, carve_val
from bench.errors import BenchError
from bench.hparams import AT_LEAST_ONE, HParam

CATEGORY_FILES = ("categories.json", "iNaturalist18_categories.json")
MIN_TRAIN = 2  # a class never drops below 2 training images for val's sake (iNat's rarest classes have 2)


def read_coco_split(path: Path) -> tuple[list[str], np.ndarray, dict[int, str]]:
    """(file names, category ids, id → name) with annotations joined to images on image_id."""
    try:
        data = json.loads(require_file(path, "iNaturalist 2018 annotation file").read_text())
        files = {image["id"]: image["file_name"] for image in data["images"]}
        pairs = [(files[a["image_id"]], int(a["category_id"])) for a in data["annotations"]]
        names = {int(c["id"]): c["name"] for c in data.get("categories", [])}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise BenchError(f"{path}: not a COCO-style iNaturalist file ({type(error).__name__}: {error})") from None
    escaping = next((name for name in files.values() if escapes_root(name)), None)
    if escaping is not None:
        raise BenchError(f"{path}: path escapes the data root: {escaping!r} (file names are relative to the data "
                         "root)")
    if any(category < 0 for _, category in pairs):
        raise BenchError(f"{path}: negative category_id {min(c for _, c in pairs)}; ids are class indices 0, 1, …")
    pairs.sort()  # file order, whatever order the annotations come in
    return [p for p, _ in pairs], np.asarray([c for _, c in pairs], dtype=np.int64), names


def txt_split(root: Path, split: str) -> tuple[Path, list[str], np.ndarray]:
    path = require_file(root / f"iNaturalist18_{split}.txt", f"iNaturalist 2018 {split} list (or train2018.json)")
    return (path, *read_two_column_split(path))


def parse(root: Path, fmt: str) -> tuple[dict[str, tuple[list[str], np.ndarray]], list[Path], dict[int, str]]:
    """({'train': (paths, labels), 'val': ...} with iNat's own split names, the files read, and the names found
    inside JSON annotations); touches no image."""
    if fmt == "auto":
        fmt = "json" if (root / "train2018.json").is_file() else "txt"
    if fmt == "json":
        files = [root / "train2018.json", root / "val2018.json"]
        (train_paths, train_labels, names), (val_paths, val_labels, _) = (read_coco_split(f) for f in files)
        return {"train": (train_paths, train_labels), "val": (val_paths, val_labels)}, files, names
    (train_file, *train), (val_file, *val) = txt_split(root, "train"), txt_split(root, "val")
    return {"train": tuple(train), "val": tuple(val)}, [train_file, val_file], {}


def category_file(root: Path, file_name: str) -> Path | None:
    """The categories list to read: `file_name` if present, else either usual name; a name the user chose
    that does not exist is an error rather than a silent fallback."""
    if file_name not in CATEGORY_FILES:
        return require_file(root / file_name, "iNaturalist categories file (categories_file)")
    return next((root / name for name in (file_name, *CATEGORY_FILES) if (root / name).is_file()), None)


def category_names(path: Path) -> list[str]:
    """Real scientific names from a categories list (position = id)."""
    try:
        categories = json.loads(path.read_text())
        names = [entry["name"] for entry in categories]
        misplaced = [i for i, entry in enumerate(categories) if entry.get("id", i) != i]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise BenchError(f"{path}: expected a JSON list of categories with a 'name' each ({error})") from None
    if misplaced:
        raise BenchError(f"{path}: entry {misplaced[0]} has id {categories[misplaced[0]]['id']}; "
                         "the list must be in id order (position = id)")
    return names


@register_dataset(
    "inat2018", aliases=("inat",), dirname="iNat2018",
    description="iNaturalist 2018: 8142 classes, 437.5k train (1000–2 per class); official val (3/class) as test",
    options={
        "format": HParam("auto", help="json (train2018.json) | txt (iNaturalist18_*.txt) | auto: json if present",
                         choices=("auto", "json", "txt")),
        "categories_file": HParam("categories.json", help="list of categories with real names, position = id "
                                  "(iNaturalist18_categories.json is also looked for)"),
        "val_per_class": HParam(1, help="val images per class carved from train (val_split=carved): at most 10% of "
                                "a class's images, none from a class under 10", bounds=AT_LEAST_ONE),
        "val_split": VAL_SPLIT_OPTION,
    },
)
def build_inat(root: Path, options: Mapping) -> LongTailDataset:
    parsed, files, json_names = parse(root, options["format"])
    (train_paths, train_labels), (test_paths, test_labels) = parsed["train"], parsed["val"]
    notes = ["test: the official iNaturalist 2018 val set (3 per class), as in every iNat-LT paper"]
    names_file = category_file(root, options["categories_file"])
    if names_file is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
        names = [json_names.get(i, str(i)) for i in range(num_classes)]
        notes.append("class names from the annotation file, which may be obfuscated (they are in the 2018 "
                     f"release); put {CATEGORY_FILES[0]} in the data root for real names")
    else:
        names = category_names(names_file)
        files.append(names_file)
    layout = [("as listed", as_listed)]
    train, _ = probed_split("train", root, train_paths, train_labels, layout, source=files[0])
    test, _ = probed_split("test", root, test_paths, test_labels, layout, source=files[1])
    if options["val_split"] == "none":
        notes.append(NO_VAL_NOTE)
        return LongTailDataset(name="inat2018", class_names=names, train=train, val=train.subset([], "val"),
                               test=test, split_files=files, notes=notes, val_source="none")
    carve = carve_val(train_labels, np.arange(len(train_labels)), int(options["val_per_class"]), seed=0,
                      min_train=MIN_TRAIN)
    notes.append(carve.summary() + f"; train is {len(carve.val_idx)} images smaller than the official one (the "
                 "published protocol trains on all of it: val_split=none)")
    return LongTailDataset(
        name="inat2018", class_names=names, train=train.subset(np.sort(carve.train_idx), "train"),
        val=train.subset(np.sort(carve.val_idx), "val"), test=test, split_files=files, notes=notes,
        val_source="carved", val_carve=carve,
    )

"""Places-LT: Places_LT_{train,val,test}.txt over Places365 images; class names from the split's folders."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from bench.datasets.base import LongTailDataset, read_two_column_split, register_dataset, require_file
from bench.datasets.files import as_listed, probed_split

from bench.errors import BenchError
from bench.hparams import HParam

SPLITS = ("train", "val", "test")


def split_file(split_dir: Path, split: str) -> Path:
    return require_file(split_dir / f"Places_LT_{split}.txt", f"Places-LT {split} split file")


def folder_names(paths: list[str], labels: np.ndarray, source: Path) -> list[str]:
    """Label → folder as the split file writes it. Not categories_places365.txt order: five labels differ."""
    folders: dict[int, str] = {}
    for path, label in zip(paths, labels.tolist()):
        folder = path.split("/")[1]
        if folders.setdefault(label, folder) != folder:
            raise BenchError(f"{source}: label {label} names both {folders[label]!r} and {folder!r}")
    missing = sorted(set(range(max(folders) + 1)) - set(folders))
    if missing:
        raise BenchError(f"{source}: no training image for label {missing[0]}")
    return [folders[label] for label in range(len(folders))]


def readable(folder: str) -> str:
    return folder.replace("_", " ").replace("-", " ")


def places365_nested(path: str) -> str:
    """train/apartment_building-outdoor/x.jpg → train/a/apartment_building/outdoor/x.jpg (Places365 layout)."""
    top, folder, *rest = path.split("/")
    return "/".join([top, folder[0], *folder.split("-"), *rest])


@register_dataset(
    "places_lt", aliases=("places",), dirname="Places_LT",
    description="Places-LT: 365 classes, 62.5k train (4980–5 per class), val 20/class, test 100/class",
    options={"split_dir": HParam("", help="folder of Places_LT_*.txt (default: the data root)")},
)
def build_places_lt(root: Path, options: Mapping) -> LongTailDataset:
    split_dir = Path(options["split_dir"]).expanduser() if options["split_dir"] else root
    parsed = {split: read_two_column_split(split_file(split_dir, split)) for split in SPLITS}
    folders = folder_names(*parsed["train"], split_file(split_dir, "train"))
    rules = [("as listed", as_listed), ("Places365 nested folders", places365_nested)]
    splits = {split: probed_split(split, root, *parsed[split], rules) for split in SPLITS}
    return LongTailDataset(
        name="places_lt", class_names=[readable(f) for f in folders], **splits,
        split_files=[split_file(split_dir, s) for s in SPLITS],
        notes=["Places-LT official val split (20 per class) used for validation; class names from split folders"],
    )

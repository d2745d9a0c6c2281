"""Places-LT: Places_LT_{train,val,test}.txt over Places365 images; class names from the split's folders.

Images are found in either of two layouts, probed on each split's first line:
- as listed: `train/<folder>/<file>`, `val/<folder>/<file>` (Places365-Standard's "easy format" tarball, and
  what the long-tail repositories use);
- Places365's own tarballs: `data_256/<letter>/<category path>/<file>` with a dashed folder split into
  nested ones (`apartment_building-outdoor` → `a/apartment_building/outdoor`), and a flat `val_256/<file>`
  (or `data_large/`, `val_large/` for the high-resolution release).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bench.datasets.base import LongTailDataset, read_two_column_split, register_dataset, require_file
from bench.datasets.files import PathRule, as_listed, probed_split
from bench.errors import BenchError
from bench.hparams import HParam

SPLITS = ("train", "val", "test")


def split_file(split_dir: Path, split: str) -> Path:
    return require_file(split_dir / f"Places_LT_{split}.txt", f"Places-LT {split} split file")


def parse_splits(split_dir: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """{split: (relative paths, labels)} as the split files list them; touches no image."""
    return {split: read_two_column_split(split_file(split_dir, split)) for split in SPLITS}


def folder_names(paths: list[str], labels: np.ndarray, source: Path) -> list[str]:
    """Label → folder as the split file writes it. Not categories_places365.txt order: five labels differ."""
    folders: dict[int, str] = {}
    for path, label in zip(paths, labels.tolist()):
        parts = path.split("/")
        if len(parts) != 3:
            raise BenchError(f"{source}: {path!r} is not <split>/<folder>/<file>, and class names come from "
                             "that folder")
        folder = parts[1]
        if folders.setdefault(label, folder) != folder:
            raise BenchError(f"{source}: label {label} names both {folders[label]!r} and {folder!r}")
    missing = sorted(set(range(max(folders) + 1)) - set(folders))
    if missing:
        raise BenchError(f"{source}: no training image for label {missing[0]}")
    return [folders[label] for label in range(len(folders))]


def readable(folder: str) -> str:
    return folder.replace("_", " ").replace("-", " ")


def places365_download(train_dir: str, val_dir: str) -> PathRule:
    """train/apartment_building-outdoor/x.jpg → <train_dir>/a/apartment_building/outdoor/x.jpg and
    val/airfield/Places365_val_00000001.jpg → <val_dir>/Places365_val_00000001.jpg."""

    def rule(path: str) -> str:
        parts = path.split("/")
        if len(parts) != 3:
            return path
        top, folder, name = parts
        if top == "val":  # Places365 val file names are unique, so its own val folder is flat
            return f"{val_dir}/{name}"
        return "/".join([train_dir, folder[0], *folder.split("-"), name])

    return rule


LAYOUTS = [
    ("as listed", as_listed),
    ("Places365 256-px download (data_256/, val_256/)", places365_download("data_256", "val_256")),
    ("Places365 high-resolution download (data_large/, val_large/)", places365_download("data_large", "val_large")),
]


@register_dataset(
    "places_lt", aliases=("places",), dirname="Places_LT",
    description="Places-LT: 365 classes, 62.5k train (4980–5 per class), val 20/class, test 100/class",
    options={"split_dir": HParam("", help="folder of Places_LT_*.txt (default: the data root)")},
)
def build_places_lt(root: Path, options: Mapping) -> LongTailDataset:
    split_dir = Path(options["split_dir"]).expanduser() if options["split_dir"] else root
    parsed = parse_splits(split_dir)
    folders = folder_names(*parsed["train"], split_file(split_dir, "train"))
    splits, notes = {}, []
    for split in SPLITS:
        splits[split], layout = probed_split(split, root, *parsed[split], LAYOUTS, source=split_file(split_dir, split))
        if layout != "as listed":
            notes.append(f"{split} images read from the {layout} layout")
    return LongTailDataset(
        name="places_lt", class_names=[readable(f) for f in folders], **splits,
        split_files=[split_file(split_dir, s) for s in SPLITS],
        notes=["val: Places-LT's official val split (20 per class, from Places365 train images); never from test",
               ("class names: the folder each label has in Places_LT_train.txt ('_' and '-' → spaces), not "
                "categories_places365.txt order (labels 116–118 and 141–142 differ)"), *notes],
    )

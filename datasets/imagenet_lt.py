"""ImageNet-LT (Liu et al. 2019): ImageNet_LT_{train,val,test}.txt over the ImageNet-2012 images."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from bench.datasets.base import LongTailDataset, read_two_column_split, register_dataset, require_file
from bench.datasets.files import as_listed, probed_split

from bench.hparams import HParam

SPLITS = ("train", "val", "test")


def split_file(split_dir: Path, split: str) -> Path:
    return require_file(split_dir / f"ImageNet_LT_{split}.txt", f"ImageNet-LT {split} split file")


def parse_split(split_dir: Path, split: str) -> tuple[list[str], np.ndarray]:
    return read_two_column_split(split_file(split_dir, split))


def flat(path: str) -> str:
    """val/n01440764/ILSVRC2012_val_00029930.JPEG → val/ILSVRC2012_val_00029930.JPEG (flat val folder)."""
    parts = path.split("/")
    return "/".join(parts[:-2] + parts[-1:]) if len(parts) >= 3 else path


def class_names() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES  # sorted-wnid order, as the labels

    return list(IMAGENET_CLASSNAMES)


@register_dataset(
    "imagenet_lt", aliases=("imagenet",), dirname="ImageNet_LT",
    description="ImageNet-LT: 1000 classes, 115.8k train (1280–5 per class), val 20/class, test 50/class",
    options={"split_dir": HParam("", help="folder of ImageNet_LT_*.txt (default: the data root)")},
)
def build_imagenet_lt(root: Path, options: Mapping) -> LongTailDataset:
    split_dir = Path(options["split_dir"]).expanduser() if options["split_dir"] else root
    splits = {}
    for split in SPLITS:
        paths, labels = parse_split(split_dir, split)
        # Split files list test images as val/<wnid>/<file>; many copies of ImageNet keep val/ flat.
        splits[split] = probed_split(split, root, paths, labels, [("as listed", as_listed), ("flat val/", flat)])
    return LongTailDataset(
        name="imagenet_lt", class_names=class_names(), **splits,
        split_files=[split_file(split_dir, s) for s in SPLITS],
        notes=["ImageNet-LT official val split (20 per class) used for validation"],
    )

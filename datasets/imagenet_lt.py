"""ImageNet-LT (Liu et al. 2019): ImageNet_LT_{train,val,test}.txt over the ImageNet-2012 images."""

from __future__ import annotations

import runpy
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bench.datasets.base import (
    LongTailDataset,
    bundled_file,
    read_two_column_split,
    register_dataset,
    require_file,
)
from bench.datasets.files import PathRule, as_listed, probed_split
from bench.hparams import HParam

SPLITS = ("train", "val", "test")


def split_file(split_dir: Path, split: str) -> Path:
    return require_file(split_dir / f"ImageNet_LT_{split}.txt", f"ImageNet-LT {split} split file")


def parse_split(split_dir: Path, split: str) -> tuple[list[str], np.ndarray]:
    """(relative paths, labels) as the split file lists them; touches no image."""
    return read_two_column_split(split_file(split_dir, split))


def flat(path: str) -> str:
    """val/n01440764/ILSVRC2012_val_00029930.JPEG → val/ILSVRC2012_val_00029930.JPEG (flat val folder)."""
    parts = path.split("/")
    return f"{parts[0]}/{parts[2]}" if len(parts) == 3 else path


def layouts(first: str) -> tuple[list[tuple[str, PathRule]], str]:
    """Layouts to probe for a split whose first line is `first`, and what to say when none fits. ILSVRC-2012
    val file names are unique, so nested → flat is safe; flat → nested would need a file → wnid mapping."""
    parts = first.split("/")
    if parts[0] == "val" and len(parts) == 3:
        return [("as listed", as_listed), ("flat val/", flat)], ""
    if parts[0] == "val" and len(parts) == 2:
        return [("as listed", as_listed)], (
            "; the split file lists a flat val/ folder, which cannot be matched to a nested val/<wnid>/ tree "
            "without a file → wnid mapping: flatten val/ or use a split file with val/<wnid>/ paths")
    return [("as listed", as_listed)], ""


def class_names() -> list[str]:
    """open_clip's ImageNet class names: they follow sorted-wnid order, as the labels do."""
    metadata = bundled_file("open_clip", "zero_shot_metadata.py")
    if metadata is None:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES as names
    else:  # the module is plain data: running it alone skips `import open_clip` (torch and timm: seconds)
        names = runpy.run_path(str(metadata))["IMAGENET_CLASSNAMES"]
    return list(names)


@register_dataset(
    "imagenet_lt", aliases=("imagenet",), dirname="ImageNet_LT",
    description="ImageNet-LT: 1000 classes, 115.8k train (1280–5 per class), val 20/class, test 50/class",
    options={"split_dir": HParam("", help="folder of ImageNet_LT_*.txt (default: the data root)")},
)
def build_imagenet_lt(root: Path, options: Mapping) -> LongTailDataset:
    split_dir = Path(options["split_dir"]).expanduser() if options["split_dir"] else root
    splits, notes = {}, []
    for split in SPLITS:
        paths, labels = parse_split(split_dir, split)
        candidates, hint = layouts(paths[0])
        splits[split], layout = probed_split(split, root, paths, labels, candidates, hint,
                                             split_file(split_dir, split))
        if layout != "as listed":
            notes.append(f"{split} images read from a {layout} folder (the split file lists val/<wnid>/ paths)")
    return LongTailDataset(
        name="imagenet_lt", class_names=class_names(), **splits,
        split_files=[split_file(split_dir, s) for s in SPLITS],
        notes=["val: ImageNet-LT's official val split (20 per class, from ImageNet train images); never from test",
               "class names: open_clip's ImageNet names (sorted wnid order)", *notes],
    )

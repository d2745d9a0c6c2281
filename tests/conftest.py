"""Shared test helpers: a callback from a function, tiny real image files, and the ../shared assets (skipped cleanly when absent)."""

from __future__ import annotations

import os
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.callbacks import Callback

SHARED = Path(__file__).resolve().parents[2] / "shared"


class CheckpointSnapshots(Callback):
    """After every epoch, the trainable state the engine checkpointed (checkpoints/last.pt), as (phase, state)."""

    def __init__(self):
        self.snapshots: list[tuple[str, dict]] = []

    def on_epoch_end(self, entry: dict, run_dir: Path) -> None:
        import torch

        state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
        self.snapshots.append((entry["phase"], {k: v.clone() for k, v in state.items()}))

    def assert_each_phase_changes_only(self, keys: dict[str, tuple[str, ...]], epochs: int) -> None:
        """Each phase ran `epochs` epochs, in `keys`' order, and each epoch changed some tensors, all named by
        one of its phase's key parts."""
        import torch

        assert [phase for phase, _ in self.snapshots] == [phase for phase in keys for _ in range(epochs)]
        for (_, before), (phase, after) in pairwise(self.snapshots):
            changed = {k for k in after if not torch.equal(before[k], after[k])}
            allowed = {k for k in after if any(part in k for part in keys[phase])}
            assert changed, f"{phase} changed nothing"
            assert changed <= allowed, f"{phase} changed {sorted(changed - allowed)[:3]}"


class OnEpoch(Callback):
    """A training callback from a function of the epoch's history entry (fault injection, snapshots)."""

    def __init__(self, function):
        self.function = function

    def on_epoch_end(self, entry: dict, run_dir: Path) -> None:
        self.function(entry)


def shared_path(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (the real split files and assets live in ../shared beside the repo)")
    return path


def write_image(path: Path, seed: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def digits_image_folder(root: Path) -> Path:
    """The embedded default's splits (scikit-learn's real 8×8 digits, long-tailed) written as an ImageFolder tree
    of PNGs, train/ val/ test/<digitN>/, the on-disk format of the `folder` dataset."""
    from bench.datasets.base import load_dataset

    dataset = load_dataset("digits_lt", None, {})
    for split in ("train", "val", "test"):
        images = getattr(dataset, split)
        for index, label in enumerate(images.labels):
            folder = root / split / f"digit{int(label)}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(images.images.load(index))).save(folder / f"{index:04d}.png")
    return root


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_splits_disjoint(dataset) -> None:
    """No image is in two of train / val / test."""
    seen = {split.name: {split.images.describe(i) for i in range(len(split))}
            for split in (dataset.train, dataset.val, dataset.test)}
    assert not seen["train"] & seen["val"]
    assert not seen["val"] & seen["test"]
    assert not seen["train"] & seen["test"]


# a protocol file of one fast run: the probe at 8 px, one seed, no search
PROBE_ONLY = """name = "mine"
description = "the probe at 8 px, one seed, no search"
dataset = "digits_lt"
backbone = "vit_micro"
random_init = true
seeds = [0]
methods = ["linear_probe"]
[settings]
image_size = 8
wd_steps = 2
"""


IMAGENET_WNIDS = ("n01440764", "n01443537")  # tench, goldfish: labels 0 and 1 in sorted-wnid order
IMAGENET_CLASSES = 1000


def make_imagenet_lt(root: Path, flat_list: bool = False, flat_disk: bool = False) -> Path:
    """A small ImageNet-LT copy: classes 0 and 1 (tench, goldfish) with 3 train and 1 val image each (val drawn
    from ImageNet train, as in the real split) and 1 test image each from ILSVRC-2012 val; every other class
    has one training image (hard links to one file, listed after the first six lines: every class needs a
    training image) and no val or test image. `flat_list`: the test split file lists val/<file>; `flat_disk`:
    the images lie in a flat val/ folder rather than val/<wnid>/."""
    lines = {"train": [], "val": [], "test": []}
    for label, wnid in enumerate(IMAGENET_WNIDS):
        for i in range(3):
            write_image(root / f"train/{wnid}/{wnid}_{i}.JPEG", seed=i)
            lines["train"].append(f"train/{wnid}/{wnid}_{i}.JPEG {label}")
        write_image(root / f"train/{wnid}/{wnid}_v.JPEG")
        lines["val"].append(f"train/{wnid}/{wnid}_v.JPEG {label}")
        name = f"ILSVRC2012_val_0000000{label + 1}.JPEG"
        write_image(root / (f"val/{name}" if flat_disk else f"val/{wnid}/{name}"))
        lines["test"].append(f"{f'val/{name}' if flat_list else f'val/{wnid}/{name}'} {label}")
    filler = write_image(root / "train/filler.JPEG", seed=9)
    for label in range(len(IMAGENET_WNIDS), IMAGENET_CLASSES):
        relative = f"train/n{label:08d}/n{label:08d}_0.JPEG"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        os.link(filler, root / relative)
        lines["train"].append(f"{relative} {label}")
    for split, content in lines.items():
        write_lines(root / f"ImageNet_LT_{split}.txt", content)
    return root


# Label order of this fabricated Places-LT differs from categories_places365.txt order, like the real
# split's labels 116–118: the folder in the split file decides the name.
PLACES = [("desert-sand", "/d/desert/sand"), ("desert_road", "/d/desert_road"), ("apartment_building-outdoor",
                                                                                 "/a/apartment_building/outdoor")]


def make_places_lt(root, download_layout: bool, train_scale: int = 1):
    """A small Places-LT copy: 3 classes with (3, 2, 1) × `train_scale` training images, 1 val and 2 test images
    each."""
    official = sorted(category for _, category in PLACES)
    write_lines(root / "categories_places365.txt", [f"{c} {i}" for i, c in enumerate(official)])
    lines = {"train": [], "val": [], "test": []}
    for label, (folder, category) in enumerate(PLACES):
        for split, count in (("train", (3 - label) * train_scale), ("val", 1), ("test", 2)):
            for i in range(count):
                if split == "test":
                    name = f"Places365_val_{label}{i:07d}.jpg"
                    listed, on_disk = f"val/{folder}/{name}", f"val_256/{name}"
                else:
                    name = f"{split}{i:07d}.jpg"
                    listed, on_disk = f"train/{folder}/{name}", f"data_256{category}/{name}"
                write_image(root / (on_disk if download_layout else listed), seed=label)
                lines[split].append(f"{listed} {label}")
    for split, content in lines.items():
        write_lines(root / f"Places_LT_{split}.txt", content)

"""Image files on disk: ImageFolder trees and split lists whose layout is probed once per split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from bench.datasets.base import FileImages, Split

from bench.errors import BenchError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}

PathRule = Callable[[str], str]


def read_image_folder(folder: Path, classes: Sequence[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """(paths relative to folder.parent, labels, class names) of `folder/<class>/<image>`, in sorted order."""
    if not folder.is_dir():
        raise BenchError(f"missing image folder: expected {folder}/<class>/<image>")
    found = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    classes = list(classes) if classes is not None else found
    extra = sorted(set(found) - set(classes))
    if extra:
        raise BenchError(f"{folder}: class folder {extra[0]!r} is not among the training classes")
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(f"{folder.name}/{name}/{file.name}")
                labels.append(label)
    if not paths:
        raise BenchError(f"no images under {folder}/<class>/")
    return paths, np.asarray(labels, dtype=np.int64), classes


def probed_split(name: str, root: Path, paths: list[str], labels: np.ndarray,
                 rules: Sequence[tuple[str, PathRule]]) -> Split:
    """Map every listed path with the first rule under which the split's first image exists on disk."""
    for _, rule in rules:
        if (root / rule(paths[0])).is_file():
            return Split(name, FileImages(root, tuple(rule(p) for p in paths)), labels)
    tried = "; ".join(f"{label}: {root / rule(paths[0])}" for label, rule in rules)
    raise BenchError(f"{name} images not found under {root} (tried {tried}); check --data-root")


def as_listed(path: str) -> str:
    return path

"""Image files on disk: ImageFolder trees, and split lists whose on-disk layout is probed once per split."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.datasets.base import FileImages, Split
from bench.errors import BenchError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}

PathRule = Callable[[str], str]  # a path as the split file lists it → where that image lies under the root


def read_image_folder(folder: Path, classes: Sequence[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """(paths relative to folder.parent, labels, class names) of `folder/<class>/<image>`, in sorted order.
    With `classes`, labels follow that list (a val/ or test/ tree labelled like train/)."""
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
                 layouts: Sequence[tuple[str, PathRule]], hint: str = "", source: Path | None = None
                 ) -> tuple[Split, str]:
    """Map every listed path with the first layout under which the split's first image exists on disk.
    Returns the split and the name of that layout; `hint` ends the error when no layout fits. Every mapped
    path must stay inside `root` once symlinks are resolved (`source`, the split file, is named if not)."""
    for layout, rule in layouts:
        if (root / rule(paths[0])).is_file():
            mapped = [rule(p) for p in paths]
            outside = first_outside(root, mapped)
            if outside is not None:
                line = line_of(source, paths[outside]) if source else None
                where = f"{source}:{line}" if line else str(source or name)
                raise BenchError(f"{where}: path escapes the data root: {paths[outside]!r} resolves to "
                                 f"{os.path.realpath(root / mapped[outside])}, outside {root}; point --data-root "
                                 "at the folder that really holds the images")
            return Split(name, FileImages(root, tuple(mapped)), labels), layout
    tried = "; ".join(f"{layout}: {root / rule(paths[0])}" for layout, rule in layouts)
    raise BenchError(f"{name} images not found under {root} (tried {tried}){hint}; check --data-root")


def first_outside(root: Path, relpaths: Sequence[str]) -> int | None:
    """Index of the first path that resolves (through symlinked folders or files) outside `root`, else None.
    Each folder is resolved once; a file costs one lstat unless it is a link."""
    real_root = os.path.realpath(root)
    inside = real_root.rstrip(os.sep) + os.sep
    folders: dict[str, str] = {}
    for index, relative in enumerate(relpaths):
        folder, _, file_name = relative.rpartition("/")
        if folder not in folders:
            folders[folder] = os.path.realpath(os.path.join(real_root, folder)) + os.sep
        resolved = folders[folder] + file_name
        if os.path.islink(resolved):
            resolved = os.path.realpath(resolved)
        if not resolved.startswith(inside):
            return index
    return None


def line_of(source: Path, listed: str) -> int | None:
    """The line of `source` that lists `listed` (read again only to word an error)."""
    try:
        with open(source, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.split()[:1] == [listed]:
                    return number
    except OSError:
        pass
    return None


def as_listed(path: str) -> str:
    return path

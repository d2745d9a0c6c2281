"""What every long-tailed dataset provides: train/val/test splits of (image, label), class names, counts."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from bench.datasets.longtail import ValCarve
from bench.errors import BenchError
from bench.hparams import HParam
from bench.registry import Registry

DATA_ROOT_ENV = "BENCH_DATA_ROOT"


class ImageSource(Protocol):
    """Indexable images; `describe(i)` names image i for error messages and for the split hash."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> Image.Image: ...

    def describe(self, index: int) -> str: ...

    def take(self, indices: Sequence[int]) -> ImageSource: ...


@dataclass(frozen=True)
class FileImages:
    root: Path
    relpaths: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.relpaths)

    def describe(self, index: int) -> str:
        return self.relpaths[index]

    def load(self, index: int) -> Image.Image:
        path = self.root / self.relpaths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise BenchError(f"image not found: {path} (check --data-root and the split file)") from None
        except OSError as error:
            raise BenchError(f"corrupt or unreadable image {path}: {error}; replace or remove it") from None

    def take(self, indices: Sequence[int]) -> FileImages:
        return FileImages(self.root, tuple(self.relpaths[i] for i in indices))


@dataclass(frozen=True)
class ArrayImages:
    """Images held in memory as uint8 [N, H, W] or [N, H, W, 3]; `tag` names their origin."""

    pixels: np.ndarray
    tag: str
    origin: np.ndarray = field(default=None)  # index of each image in the original array

    def __post_init__(self):
        if self.origin is None:
            object.__setattr__(self, "origin", np.arange(len(self.pixels)))

    def __len__(self) -> int:
        return len(self.pixels)

    def describe(self, index: int) -> str:
        return f"{self.tag}[{int(self.origin[index])}]"

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index]).convert("RGB")

    def take(self, indices: Sequence[int]) -> ArrayImages:
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayImages(self.pixels[idx], self.tag, self.origin[idx])


@dataclass
class Split:
    name: str
    images: ImageSource
    labels: np.ndarray

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.images):
            raise ValueError(f"split {self.name}: {len(self.images)} images but {len(self.labels)} labels")
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int], name: str | None = None) -> Split:
        idx = np.asarray(indices, dtype=np.int64)
        return Split(name or self.name, self.images.take(idx), self.labels[idx])

    @property
    def fingerprint(self) -> str:
        """sha256 over (image identity, label) pairs: the split's identity for caches and manifests."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for i in range(len(self)):
                digest.update(f"{self.images.describe(i)}\t{self.labels[i]}\n".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


@dataclass
class LongTailDataset:
    name: str
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    split_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how val was formed, anything assumed
    warnings: list[str] = field(default_factory=list)  # what a user should know before trusting the numbers
    val_source: str = "official"  # official | folder (a val/ tree) | carved (from train) | none (full train set)
    val_carve: ValCarve | None = None  # per class, what a carved val took and from where
    hflip_ok: bool = True  # False where a horizontal flip changes the class (digits)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(self.train.labels, minlength=self.num_classes)

    def check_labels(self) -> None:
        """Labels in range in every split; every class has a training image (an error naming the classes);
        a class without val or test images is a warning kept in `warnings` (and so in the run's record)."""
        for split in (self.train, self.val, self.test):
            bad = np.flatnonzero((split.labels < 0) | (split.labels >= self.num_classes))
            if len(bad):
                i = int(bad[0])
                raise BenchError(
                    f"{self.name} {split.name}: label {split.labels[i]} of {split.images.describe(i)} is "
                    f"outside 0..{self.num_classes - 1}; fix the split file or the class list"
                )
        untrained = np.flatnonzero(self.train_counts == 0)
        if len(untrained):
            raise BenchError(f"{self.name}: {self._classes(untrained)} {'has' if len(untrained) == 1 else 'have'} "
                             "no training image; every class needs one (check the train split or the class list)")
        for split in (self.test,) if self.val_source == "none" else (self.val, self.test):
            absent = np.flatnonzero(np.bincount(split.labels, minlength=self.num_classes) == 0)
            if len(absent):
                self.warnings.append(f"{self.name} {split.name}: {self._classes(absent)} "
                                     f"{'has' if len(absent) == 1 else 'have'} no {split.name} image; "
                                     f"{'its' if len(absent) == 1 else 'their'} {split.name} accuracy is undefined "
                                     "and left out of the averages")

    def _classes(self, indices: np.ndarray, shown: int = 5) -> str:
        named = ", ".join(f"{int(c)} ({self.class_names[c]!r})" for c in indices[:shown])
        more = f" and {len(indices) - shown} more" if len(indices) > shown else ""
        return f"class{'es' if len(indices) > 1 else ''} {named}{more}"


Builder = Callable[[Path | None, Mapping[str, object]], LongTailDataset]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    build: Builder
    description: str
    options: Mapping[str, HParam]
    dirname: str | None  # folder under $BENCH_DATA_ROOT; None: the dataset needs no data root


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(
    name: str,
    *,
    description: str,
    options: Mapping[str, HParam] | None = None,
    dirname: str | None = None,
    aliases: tuple[str, ...] = (),
) -> Callable[[Builder], Builder]:
    def decorate(build: Builder) -> Builder:
        DATASETS.add(name, DatasetSpec(name, build, description, dict(options or {}), dirname), aliases)
        return build

    return decorate


def resolve_data_root(spec: DatasetSpec, data_root: str | Path | None) -> Path | None:
    if spec.dirname is None:
        return Path(data_root) if data_root else None
    if data_root:
        root = Path(data_root).expanduser()
    elif os.environ.get(DATA_ROOT_ENV):
        root = Path(os.environ[DATA_ROOT_ENV]).expanduser() / spec.dirname
    else:
        raise BenchError(
            f"dataset {spec.name} needs its data: pass --data-root DIR or set {DATA_ROOT_ENV} "
            f"(expected {DATA_ROOT_ENV}/{spec.dirname})"
        )
    if not root.is_dir():
        raise BenchError(f"data root {root} for {spec.name} does not exist; pass --data-root DIR")
    return root.resolve()


def data_folders() -> dict[str, Path | None]:
    """Every registered dataset that lives in a data folder (not the embedded digits, nor a user's own tree) →
    its folder under $BENCH_DATA_ROOT where that folder exists, else None. Empty when the variable is unset."""
    base = os.environ.get(DATA_ROOT_ENV)
    if not base:
        return {}
    folders = {}
    for name in DATASETS.names():
        spec = DATASETS.get(name)
        if spec.dirname is not None:
            folder = Path(base).expanduser() / spec.dirname
            folders[name] = folder.resolve() if folder.is_dir() else None
    return folders


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise BenchError(f"missing {what}: expected {path}")
    return path


def bundled_file(package: str, relative: str) -> Path | None:
    """A data file shipped inside an installed package, found without importing the package (importing
    open_clip or scikit-learn takes seconds; their bundled class names and digits are plain files)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / relative
    return path if path.is_file() else None


def read_two_column_split(path: Path) -> tuple[list[str], np.ndarray]:
    """`<relative path> <int label>` per line, as ImageNet-LT, Places-LT and iNat txt splits use. A path that
    is absolute or climbs out of the data root, and a negative label, are refused with the file and line."""
    paths, labels = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise BenchError(f"{path}:{number}: malformed split line {line.strip()!r}; expected '<path> <label>'")
            if escapes_root(parts[0]):
                raise BenchError(f"{path}:{number}: path escapes the data root: {parts[0]!r} (split files list "
                                 "paths relative to the data root)")
            if int(parts[1]) < 0:
                raise BenchError(f"{path}:{number}: negative label {parts[1]} for {parts[0]!r}; labels are class "
                                 "indices 0, 1, …")
            paths.append(parts[0])
            labels.append(int(parts[1]))
    if not paths:
        raise BenchError(f"{path}: split file is empty")
    return paths, np.asarray(labels, dtype=np.int64)


def escapes_root(relative: str) -> bool:
    """True for an absolute path, or one whose `..` parts climb above the folder it is relative to."""
    if relative.startswith(("/", "\\")) or "\0" in relative:
        return True
    return posixpath.normpath(relative.replace("\\", "/")).split("/")[0] == ".."


def load_dataset(name: str, data_root: str | Path | None, options: Mapping[str, object]) -> LongTailDataset:
    spec = DATASETS.get(name)
    options = {**{key: declared.default for key, declared in spec.options.items()}, **options}
    dataset = spec.build(resolve_data_root(spec, data_root), options)
    dataset.check_labels()
    return dataset

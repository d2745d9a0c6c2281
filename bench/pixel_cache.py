"""Small-image splits as uint8 pixels [N, H, W, 3], decoded once: in-memory arrays (CIFAR pickles, digits) as
they are, image files (a CIFAR JPEG tree, a small ImageFolder) decoded and cached on disk by their folder and the
split's hash.
Training then augments tensors a batch at a time (`bench.data.ImageFeed`) instead of decoding every image
every epoch."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from bench.datasets.base import ArrayImages, FileImages, Split
from bench.progress_bars import progress_bars
from bench.tensor_cache import load_cached, save_cached

SMALL_IMAGE_SIDE = 64  # the largest image side decoded into the cache: CIFAR is 32, the digits 8
PROBED = 16  # images whose size is read (headers only) before a split is decoded


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """[N, H, W] grey or [N, H, W, 3] uint8 → [N, H, W, 3], as PIL's convert("RGB") would give."""
    return np.repeat(pixels[..., None], 3, axis=-1) if pixels.ndim == 3 else pixels


def split_pixels(split: Split, cache_dir: Path, console: Console, warn: Callable[[str], None]
                 ) -> tuple[torch.Tensor | None, str]:
    """(uint8 [N, H, W, 3] pixels, how they were obtained) or (None, why the split is fed image by image)."""
    images = split.images
    if isinstance(images, ArrayImages):
        pixels = as_rgb(np.ascontiguousarray(images.pixels, dtype=np.uint8))
        return torch.from_numpy(pixels), f"uint8 pixels in memory {pixels.shape[1]}×{pixels.shape[2]}"
    if not isinstance(images, FileImages) or len(images) == 0:
        return None, "image by image (no pixel cache for this image source)"
    sizes = {_header_size(images.root / images.relpaths[i]) for i in range(min(PROBED, len(images)))}
    if None in sizes or len(sizes) != 1 or max(next(iter(sizes))) > SMALL_IMAGE_SIDE:
        return None, (f"image by image (the pixel cache takes images of one size with sides ≤ {SMALL_IMAGE_SIDE}; "
                      f"first images: {', '.join(_size_text(s) for s in sorted(sizes, key=str))})")
    width, height = next(iter(sizes))
    key = hashlib.sha256(f"{images.root.resolve()}\n{split.fingerprint}".encode()).hexdigest()[:32]
    path = cache_dir / "pixels" / f"{key}.pt"  # by folder and split: another copy of the tree is decoded anew
    cached = load_cached(path, (len(split), height, width, 3), warn, dtype=torch.uint8)
    if cached is not None:
        return cached, f"uint8 pixel cache {height}×{width} ({path.name})"
    pixels, odd = _decode(split, (width, height), console)
    if pixels is None:
        warn(f"{split.name}: {odd}; its images are decoded one by one every epoch")
        return None, f"image by image ({odd})"
    save_cached(path, pixels)
    return pixels, f"uint8 pixel cache {height}×{width} (decoded now, {path.name})"


def _size_text(size: tuple[int, int] | None) -> str:
    return "?" if size is None else f"{size[0]}×{size[1]}"


def _header_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.size
    except OSError:
        return None  # reported by the image-by-image path when the image is read


def _decode(split: Split, size: tuple[int, int], console: Console) -> tuple[torch.Tensor | None, str]:
    """All images of `split` as one uint8 tensor, or (None, the first image of another size)."""
    width, height = size
    out = np.empty((len(split), height, width, 3), dtype=np.uint8)
    with progress_bars(console) as progress:
        bar = progress.bar(f"decoding {split.name} images", len(split))
        for i in range(len(split)):
            image = split.images.load(i)
            if image.size != size:
                bar.close()
                return None, (f"image {split.images.describe(i)} is {_size_text(image.size)}, not "
                              f"{_size_text(size)}")
            out[i] = np.asarray(image)
            bar.advance()
        bar.close()
    return torch.from_numpy(out), ""

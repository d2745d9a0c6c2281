"""Images → normalised batches on the device: the train/eval transforms and the two ways a split is fed.

A split whose images are small and all one size is fed from its uint8 pixels (decoded once, `pixel_cache`),
transformed a batch at a time with tensor operations: no per-image decoding, no PIL, no loader workers, and on
a GPU the augmentation runs there. Any other split goes image by image through PIL and a DataLoader. Both
paths apply the same transform (bicubic, antialiased, rounded to uint8 as PIL does); their outputs differ only
by interpolation round-off, and caches keyed by the transform tell them apart.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from bench.datasets.base import Split

AUGMENTATIONS = ("rrc_flip", "crop_flip", "none")
RRC_SCALE, RRC_RATIO, RRC_ATTEMPTS = (0.08, 1.0), (3 / 4, 4 / 3), 10  # torchvision RandomResizedCrop's defaults


@dataclass(frozen=True)
class Transform:
    """LPT's transforms. eval (`augment="none"`): square resize to size·256/224, then centre crop. rrc_flip:
    random resized crop. crop_flip: square resize to size, then a random crop with size/8 reflect padding.
    Random horizontal flip after either where `hflip`. Then [0, 1] scaling and normalisation."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"
    hflip: bool = False

    @property
    def resize_to(self) -> int:
        return round(self.size * 256 / 224)

    def pil(self) -> T.Compose:
        bicubic = T.InterpolationMode.BICUBIC
        if self.augment == "rrc_flip":
            steps = [T.RandomResizedCrop(self.size, interpolation=bicubic)]
        elif self.augment == "crop_flip":
            steps = [T.Resize((self.size, self.size), interpolation=bicubic),
                     T.RandomCrop(self.size, padding=self.size // 8, padding_mode="reflect")]
        else:
            steps = [T.Resize((self.resize_to,) * 2, interpolation=bicubic), T.CenterCrop(self.size)]
        if self.hflip and self.augment != "none":
            steps.append(T.RandomHorizontalFlip())
        return T.Compose(steps + [T.ToTensor(), T.Normalize(self.mean, self.std)])

    def describe(self, from_pixels: bool) -> str:
        """What the transform does, including which path applies it (the paths round differently)."""
        text = " | ".join(repr(step).replace("\n", "") for step in self.pil().transforms)
        return f"uint8 tensors: {text}" if from_pixels else text

    def batch(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """[B, H, W, 3] uint8 → [B, 3, size, size] normalised float; random choices drawn from `generator`
        (on the CPU), the pixels transformed on their own device."""
        x = pixels.permute(0, 3, 1, 2)
        if self.augment == "rrc_flip":
            x = torch.cat([_resize(x[i:i + 1, :, t:t + h, l:l + w], (self.size, self.size))
                           for i, (t, l, h, w) in enumerate(rrc_boxes(x.shape[2], x.shape[3], len(x), generator))])
        elif self.augment == "crop_flip":
            pad = self.size // 8
            x = F.pad(_resize(x, (self.size, self.size)), (pad,) * 4, mode="reflect")
            offsets = torch.randint(0, 2 * pad + 1, (len(x), 2), generator=generator).tolist()
            x = torch.stack([x[i, :, t:t + self.size, l:l + self.size] for i, (t, l) in enumerate(offsets)])
        else:
            x = _resize(x, (self.resize_to,) * 2)
            top = round((self.resize_to - self.size) / 2.0)  # torchvision CenterCrop's offset
            x = x[:, :, top:top + self.size, top:top + self.size]
        if self.hflip and self.augment != "none":
            flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1) * 255
        return ((x - mean) / std).contiguous()


def _resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [B, 3, H, W] → float [B, 3, *size] holding whole numbers 0..255: PIL's antialiased bicubic. On the
    CPU torch resizes uint8 as PIL does (both passes rounded to uint8: equal to within 1); elsewhere it resizes
    floats and rounds once."""
    if pixels.device.type == "cpu":
        return F.interpolate(pixels, size=size, mode="bicubic", antialias=True).float()
    resized = F.interpolate(pixels.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return resized.clamp_(0, 255).round_()


def rrc_boxes(height: int, width: int, count: int, generator: torch.Generator | None) -> list[tuple[int, ...]]:
    """`count` (top, left, h, w) crops drawn as torchvision's RandomResizedCrop draws them: up to 10 tries of
    a random area and log-uniform aspect ratio, else the whole image clipped to the ratio range."""
    area = height * width
    fraction = torch.rand(count, RRC_ATTEMPTS, generator=generator)
    target = area * (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * fraction)
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(count, RRC_ATTEMPTS, generator=generator))
    w = torch.sqrt(target * ratio).round().long()
    h = torch.sqrt(target / ratio).round().long()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = fits.long().argmax(dim=1)
    picks = torch.rand(count, 2, generator=generator)
    boxes = []
    for i in range(count):
        if fits[i].any():
            bh, bw = int(h[i, first[i]]), int(w[i, first[i]])
            top = int(picks[i, 0] * (height - bh + 1))
            left = int(picks[i, 1] * (width - bw + 1))
        else:
            bh, bw = _central_box(height, width)
            top, left = (height - bh) // 2, (width - bw) // 2
        boxes.append((top, left, bh, bw))
    return boxes


def _central_box(height: int, width: int) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < RRC_RATIO[0]:
        return round(width / RRC_RATIO[0]), width
    if in_ratio > RRC_RATIO[1]:
        return height, round(height * RRC_RATIO[1])
    return height, width


def eval_transform(size: int, mean, std) -> Transform:
    return Transform(size, tuple(mean), tuple(std))


def train_transform(size: int, mean, std, augment: str, hflip: bool) -> Transform:
    return Transform(size, tuple(mean), tuple(std), augment, hflip)


class ImageDataset(Dataset):
    def __init__(self, split: Split, transform: T.Compose):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return self.transform(self.split.images.load(index)), int(self.split.labels[index])


@dataclass
class ImageFeed:
    """One split's batches on the device: from `pixels` (uint8 [N, H, W, 3], when the split has them) with
    tensor transforms, else image by image through a DataLoader with `num_workers` workers."""

    split: Split
    pixels: torch.Tensor | None
    device: torch.device
    num_workers: int

    def describe(self, transform: Transform) -> str:
        return transform.describe(self.pixels is not None)

    def batches(self, transform: Transform, index_batches: Sequence[Sequence[int]], seed: int) -> Iterator:
        """(images, labels) per entry of `index_batches`, in that order; augmentation fixed by `seed`."""
        if self.pixels is None:
            yield from self._loader_batches(transform, index_batches)
            return
        generator = torch.Generator().manual_seed(seed)
        labels = torch.as_tensor(self.split.labels)
        for indices in index_batches:
            idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
            pixels = self.pixels[idx]
            if self.device.type == "cuda":
                pixels = pixels.pin_memory().to(self.device, non_blocking=True)
            yield transform.batch(pixels, generator), labels[idx].to(self.device, non_blocking=True)

    def _loader_batches(self, transform: Transform, index_batches: Sequence[Sequence[int]]) -> Iterator:
        cuda = self.device.type == "cuda"
        loader = DataLoader(ImageDataset(self.split, transform.pil()), batch_sampler=index_batches,
                            num_workers=self.num_workers, worker_init_fn=_seed_worker, pin_memory=cuda)
        for images, labels in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def chunks(indices: Sequence[int], batch_size: int) -> list[list[int]]:
    indices = list(map(int, indices))
    return [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)

"""Images → tensors: the train/eval transforms and the loaders every image-based method uses."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from bench.datasets.base import Split

AUGMENTATIONS = ("rrc_flip", "crop_flip", "none")


def eval_transform(size: int, mean, std) -> T.Compose:
    """LPT's evaluation transform: square resize to size·256/224, then centre crop."""
    return T.Compose([
        T.Resize((round(size * 256 / 224),) * 2, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def train_transform(size: int, mean, std, augment: str, hflip: bool) -> T.Compose:
    if augment == "rrc_flip":
        steps = [T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC)]
    elif augment == "crop_flip":
        steps = [T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
                 T.RandomCrop(size, padding=size // 8, padding_mode="reflect")]
    else:
        return eval_transform(size, mean, std)
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])


def describe_transform(transform: T.Compose) -> str:
    return " | ".join(repr(step).replace("\n", "") for step in transform.transforms)


class ImageDataset(Dataset):
    def __init__(self, split: Split, transform):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return self.transform(self.split.images.load(index)), int(self.split.labels[index])


def eval_loader(split: Split, transform, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(ImageDataset(split, transform), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, persistent_workers=False)


def train_loader(split: Split, transform, batch_size: int, num_workers: int, indices: np.ndarray,
                 drop_last: bool = False) -> DataLoader:
    """Batches of `split` in the order of `indices` (one epoch of a sampler, fixed by the epoch's seed)."""
    return DataLoader(ImageDataset(split, transform), batch_size=batch_size, sampler=indices.tolist(),
                      num_workers=num_workers, drop_last=drop_last, worker_init_fn=_seed_worker)


def batch_loader(split: Split, transform, batches: list[list[int]], num_workers: int) -> DataLoader:
    """One loader batch per entry of `batches` (index lists, possibly of different sizes), in that order."""
    return DataLoader(ImageDataset(split, transform), batch_sampler=batches, num_workers=num_workers,
                      worker_init_fn=_seed_worker)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)

"""Images → normalised batches on the device: the train/eval transforms and the two ways a split is fed.

A split whose images are small and all one size is fed from its uint8 pixels (decoded once, `pixel_cache`),
transformed a batch at a time with tensor operations: no per-image decoding, no PIL, no loader workers, and on
a GPU the augmentation runs there. Any other split goes image by image through PIL and a DataLoader. Both
paths apply the same transform (the tower's filter, antialiased, rounded to uint8 as PIL does); their outputs
differ only by interpolation round-off, and caches keyed by the transform tell them apart.

Each tower states its own `Preprocessing` (normalisation, filter, eval geometry:
`TokenBackbone.preprocessing`, read from timm or open_clip) and a method's recipe may fix some of it
(`Method.preprocessing`); the run context resolves the two, and the run records the result per tower.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from bench import randaugment
from bench.datasets.base import Split

INTERPOLATIONS = ("bicubic", "bilinear")
RESIZE_MODES = ("squash", "shortest")
RRC_SCALE, RRC_RATIO, RRC_ATTEMPTS = (0.08, 1.0), (3 / 4, 4 / 3), 10  # torchvision RandomResizedCrop's defaults


@dataclass(frozen=True)
class Preprocessing:
    """What a tower expects of its images: normalisation (`mean`, `std` of [0, 1] pixels), the resampling
    filter (antialiased) of every resize, and the eval geometry: `resize_mode` squash (both sides resized to
    size / crop_fraction) or shortest (the shorter side resized to it, aspect kept), then a centre crop of
    size. The defaults are the harness's (and timm's usual 224/256 crop)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "squash"
    crop_fraction: float = 224 / 256

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.interpolation not in INTERPOLATIONS or self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"unsupported preprocessing: interpolation {self.interpolation!r} (one of "
                             f"{INTERPOLATIONS}), resize_mode {self.resize_mode!r} (one of {RESIZE_MODES})")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], not {self.crop_fraction}")


@dataclass(frozen=True)
class Transform:
    """A tower's transforms at `size`. eval (`augment="none"`): resize as `preprocessing.resize_mode` says,
    then centre crop. rrc_flip: random resized crop. crop_flip: square resize to size, then a random crop with
    size/8 reflect padding. Random horizontal flip after either where `hflip`. With `strong` (the strong view of
    FixMatch-style methods), FixMatch's RandAugment and Cutout next (`bench.randaugment`). Every resize with
    the preprocessing's filter; then [0, 1] scaling and its normalisation."""

    size: int
    preprocessing: Preprocessing
    augment: str = "none"
    hflip: bool = False
    strong: bool = False

    @property
    def resize_to(self) -> int:
        """The eval resize's target: the side (squash) or the shorter side (shortest)."""
        return round(self.size / self.preprocessing.crop_fraction)

    def eval_resized(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image has after the eval resize, as torchvision's Resize computes it."""
        side = self.resize_to
        if self.preprocessing.resize_mode == "squash":
            return side, side
        if width <= height:
            return int(side * height / width), side
        return side, int(side * width / height)

    def pil(self) -> T.Compose:
        interpolation = T.InterpolationMode(self.preprocessing.interpolation)
        if self.augment == "rrc_flip":
            steps = [T.RandomResizedCrop(self.size, interpolation=interpolation)]
        elif self.augment == "crop_flip":
            steps = [T.Resize((self.size, self.size), interpolation=interpolation),
                     T.RandomCrop(self.size, padding=self.size // 8, padding_mode="reflect")]
        else:
            side = self.resize_to if self.preprocessing.resize_mode == "shortest" else (self.resize_to,) * 2
            steps = [T.Resize(side, interpolation=interpolation), T.CenterCrop(self.size)]
        if self.hflip and self.augment != "none":
            steps.append(T.RandomHorizontalFlip())
        if self.strong:
            steps.append(randaugment.RandAugment())
        return T.Compose(steps + [T.ToTensor(), T.Normalize(self.preprocessing.mean, self.preprocessing.std)])

    def describe(self, from_pixels: bool) -> str:
        """What the transform does, including which path applies it (the paths round differently)."""
        text = " | ".join(repr(step).replace("\n", "") for step in self.pil().transforms)
        return f"uint8 tensors: {text}" if from_pixels else text

    def batch(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """[B, H, W, 3] uint8 → [B, 3, size, size] normalised float; random choices drawn from `generator`
        (on the CPU), the pixels transformed on their own device."""
        x, mode, size = pixels.permute(0, 3, 1, 2), self.preprocessing.interpolation, self.size
        if self.augment == "rrc_flip":
            x = torch.cat([_resize(x[i:i + 1, :, t:t + h, l:l + w], (size, size), mode)
                           for i, (t, l, h, w) in enumerate(rrc_boxes(x.shape[2], x.shape[3], len(x), generator))])
        elif self.augment == "crop_flip":
            pad = size // 8
            x = F.pad(_resize(x, (size, size), mode), (pad,) * 4, mode="reflect")
            offsets = torch.randint(0, 2 * pad + 1, (len(x), 2), generator=generator).tolist()
            x = torch.stack([x[i, :, t:t + size, l:l + size] for i, (t, l) in enumerate(offsets)])
        else:
            x = _resize(x, self.eval_resized(x.shape[2], x.shape[3]), mode)
            top, left = (round((side - size) / 2.0) for side in x.shape[2:])  # as torchvision's CenterCrop
            x = x[:, :, top:top + size, left:left + size]
        if self.hflip and self.augment != "none":
            flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.strong:  # whole numbers 0..255 (`_resize`): exact as uint8
            chosen = randaugment.draws(len(x), generator)
            x = torch.stack([randaugment.rand_augment(image, draw) for image, draw in
                             zip(x.clamp(0, 255).to(torch.uint8), chosen, strict=True)]).float()
        mean = torch.tensor(self.preprocessing.mean, device=x.device).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.preprocessing.std, device=x.device).view(1, -1, 1, 1) * 255
        return ((x - mean) / std).contiguous()


def _resize(pixels: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """uint8 [B, 3, H, W] → float [B, 3, *size] holding whole numbers 0..255: PIL's antialiased `mode`
    (bicubic or bilinear). On the CPU torch resizes uint8 as PIL does (both passes rounded to uint8: equal to
    within 1); elsewhere it resizes floats and rounds once."""
    if pixels.device.type == "cpu":
        return F.interpolate(pixels, size=size, mode=mode, antialias=True).float()
    resized = F.interpolate(pixels.float(), size=size, mode=mode, antialias=True, align_corners=False)
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


def views(transform: Transform | tuple[Transform, ...], apply, get_state, set_state):
    """`apply(transform)`; for a tuple of transforms (one per tower) a tuple of `apply(view)`, each from the
    same random state (`get_state` / `set_state` of the generator `apply` draws from): the same crops and
    flips in every view. Equal views are computed once."""
    if isinstance(transform, Transform):
        return apply(transform)
    state, done = get_state(), {}
    for view in dict.fromkeys(transform):
        set_state(state)
        done[view] = apply(view)
    return tuple(done[view] for view in transform)


@dataclass
class PilViews:
    """The PIL path of a transform or of a tuple of them (torchvision draws from torch's global generator)."""

    transform: Transform | tuple[Transform, ...]
    pipelines: dict = field(init=False)

    def __post_init__(self):
        every = (self.transform,) if isinstance(self.transform, Transform) else self.transform
        self.pipelines = {view: view.pil() for view in every}

    def __call__(self, image):
        return views(self.transform, lambda view: self.pipelines[view](image), torch.get_rng_state,
                     torch.set_rng_state)


class ImageDataset(Dataset):
    def __init__(self, split: Split, transform: PilViews):
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

    def batches(self, transform: Transform | tuple[Transform, ...], index_batches: Sequence[Sequence[int]],
                seed: int) -> Iterator:
        """(images, labels) per entry of `index_batches`, in that order; augmentation fixed by `seed`. A tuple
        of transforms (one per tower) gives a tuple of images per batch: views with the same crops and
        flips."""
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
            images = views(transform, lambda view, x=pixels: view.batch(x, generator), generator.get_state,
                           generator.set_state)
            yield images, labels[idx].to(self.device, non_blocking=True)

    def _loader_batches(self, transform: Transform | tuple[Transform, ...],
                        index_batches: Sequence[Sequence[int]]) -> Iterator:
        cuda = self.device.type == "cuda"
        loader = DataLoader(ImageDataset(self.split, PilViews(transform)), batch_sampler=index_batches,
                            num_workers=self.num_workers, worker_init_fn=_seed_worker, pin_memory=cuda)
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True) if isinstance(images, torch.Tensor) else \
                tuple(view.to(self.device, non_blocking=True) for view in images)
            yield images, labels.to(self.device, non_blocking=True)


def chunks(indices: Sequence[int], batch_size: int) -> list[list[int]]:
    indices = list(map(int, indices))
    return [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)

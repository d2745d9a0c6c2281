"""Everything one run needs, resolved before it starts (`bench.prepare.prepare_run`) and read by its method, the
engine and the record: spec, dataset, options, device, world, backbone, precision, paths, console; and the
services over them (transforms, image feeds, autocast, warnings)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from bench.backbones import BackboneRequest, TokenBackbone
from bench.data import ImageFeed, Preprocessing, Transform
from bench.datasets.base import LongTailDataset
from bench.distributed import World
from bench.hardware import precision_name, usable_cpus
from bench.options import CommonOptions
from bench.pixel_cache import split_pixels
from bench.run_spec import RunSpec


def warn(console: Console, log: logging.Logger, notes: list[str], message: str) -> None:
    """A warning: into the run's notes (and record), its log, and on the console."""
    notes.append(message)
    log.warning(message)
    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class RunContext:
    spec: RunSpec  # as it runs: the embedded preset applied, the backbone named, a checkpoint's path absolute
    method_cls: type
    dataset_name: str  # as registered (`spec.dataset` may be an alias)
    dataset: LongTailDataset
    hparams: Mapping[str, Any]  # the resolved common and method options by name
    dataset_options: Mapping[str, Any]
    options: CommonOptions  # the common ones, typed
    backbone_request: BackboneRequest
    backbone: TokenBackbone
    device: torch.device
    amp_dtype: torch.dtype | None  # the autocast dtype (None: fp32)
    world: World  # the ranks of a data-parallel run (one process otherwise)
    run_dir: Path
    cache_dir: Path
    console: Console
    log: logging.Logger
    notes: list[str] = field(default_factory=list)
    data_paths: dict[str, str] = field(default_factory=dict)  # per split fed so far: how its images were read
    # rank 0's run folder, where every rank of a data-parallel run resumes from (None: run_dir)
    primary_run_dir: Path | None = None
    method_preprocessing: Mapping[str, Any] = field(default_factory=dict)  # the method's `preprocessing`
    _feeds: dict[str, ImageFeed] = field(default_factory=dict, repr=False)

    @property
    def seed(self) -> int:
        return self.spec.seed

    def preprocessing(self, backbone=None) -> Preprocessing:
        """How images are prepared for `backbone` (default: the run's): the tower's own preprocessing, with
        the fields the method's recipe fixes over it."""
        backbone = self.backbone if backbone is None else backbone
        return dataclasses.replace(backbone.preprocessing, **self.method_preprocessing)

    def transform(self, train: bool = False, backbone=None, strong: bool = False,
                  dataset: LongTailDataset | None = None) -> Transform:
        """`backbone`'s (default: the run's) eval transform, or with `train` its augmented one (flipped where
        `dataset`, default the run's, allows it); `strong` adds FixMatch's RandAugment and Cutout to the
        augmented one (the strong view of FixMatch-style methods)."""
        backbone = self.backbone if backbone is None else backbone
        preprocessing = self.preprocessing(backbone)
        if not train:
            return Transform(backbone.image_size, preprocessing)
        hflip_ok = (dataset or self.dataset).hflip_ok
        return Transform(backbone.image_size, preprocessing, self.options.augment, hflip_ok, strong)

    @property
    def num_workers(self) -> int:
        requested = self.options.num_workers
        if requested >= 0:
            return requested
        return min(8, max(0, usable_cpus() - 1)) if self.device.type == "cuda" else 0

    def compile_backbone(self) -> None:
        """torch.compile every block of the backbone in place (parameters and state-dict keys unchanged)."""
        for block in self.backbone.blocks:
            block.compile()
        self.log.info(f"compiled the {len(self.backbone.blocks)} blocks of {self.backbone_request.name}")

    def feed(self, split_name: str, dataset: LongTailDataset | None = None) -> ImageFeed:
        """How `split_name`'s images reach the model (decided once per split, logged, and recorded); of the
        run's dataset, or of `dataset` (another one a method trains on too: PEMT's source datasets), recorded
        as "<its name>:<split>"."""
        own = dataset is None or dataset is self.dataset
        key = split_name if own else f"{dataset.name}:{split_name}"
        if key not in self._feeds:
            split = getattr(self.dataset if own else dataset, split_name)
            pixels, how = None, "image by image (data_cache=off)"
            if self.options.data_cache == "auto":
                pixels, how = split_pixels(split, self.cache_dir, self.console, self.warn)
            self.data_paths[key] = how
            self.log.info(f"{key} images: {how}")
            self._feeds[key] = ImageFeed(split, pixels, self.device, self.num_workers)
        return self._feeds[key]

    @property
    def eval_batch_size(self) -> int:
        requested = self.options.eval_batch_size
        if requested > 0:
            return requested
        return 256 if self.device.type == "cuda" else 32

    @property
    def precision(self) -> str:
        """What the run computes in: bf16 | fp16 (autocast) or fp32."""
        return precision_name(self.amp_dtype)

    def autocast(self):
        dtype = self.amp_dtype
        return torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext()

    def warn(self, message: str) -> None:
        warn(self.console, self.log, self.notes, message)

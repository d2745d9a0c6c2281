"""Everything one run needs, resolved once: dataset, hyperparameters, device, backbone, paths, console."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from bench import selection
from bench.data import AUGMENTATIONS, ImageFeed, Preprocessing, Transform
from bench.datasets.base import LongTailDataset
from bench.distributed import cpu_share, world
from bench.errors import UsageError
from bench.hparams import AUTO_OR_NON_NEGATIVE, NON_NEGATIVE, Choice, HParam
from bench.metrics import SHOT_CONVENTIONS
from bench.pixel_cache import split_pixels

COMMON_OPTIONS: dict[str, HParam] = {
    "image_size": HParam(0, help="input resolution; 0 = the backbone's native size", bounds=NON_NEGATIVE),
    "augment": HParam("rrc_flip", Choice(AUGMENTATIONS), "train augmentation (flips are dropped where "
                      "the dataset forbids them)", choices=AUGMENTATIONS),
    "eval_batch_size": HParam(-1, help="batch size for evaluation and feature extraction; -1 = 32 on CPU "
                              "(measured fastest for ViT-Tiny on 2 cores), 256 on GPU"),
    "num_workers": HParam(-1, help="DataLoader workers for splits fed image by image; -1 = 0 on CPU (workers would "
                          "take the cores the model computes on), on GPU one per CPU this run may use (its Ray "
                          "trial's share, else the process's CPU affinity shared among this node's ranks) less one, "
                          "at most 8",
                          bounds=AUTO_OR_NON_NEGATIVE),
    "data_cache": HParam("auto", help="auto: splits of small images (one size, sides ≤ 64 px: CIFAR, digits) are "
                         "decoded once into uint8 pixels and augmented a batch at a time as tensors | off: every "
                         "split decoded image by image through PIL each epoch", choices=("auto", "off")),
    "amp": HParam("auto", help="mixed precision: auto (bf16 autocast on GPUs, fp16 on GPUs without bf16; fp32 on "
                  "CPUs) | bf16 (opt-in on a CPU: faster than fp32 on larger towers where the CPU has bf16 "
                  "instructions, emulated and slow where it has not, which the run's notes say) | fp16 (GPU only) "
                  "| off (fp32)",
                  choices=("auto", "bf16", "fp16", "off")),
    "compile": HParam(False, help="torch.compile (inductor) each backbone block before training: a one-off "
                      "compile of tens of seconds, then faster steps where the compiler wins (measured by "
                      "scripts/lpt_speed.py --compile; off by default)"),
    "val_every": HParam(1, help="validate every N epochs (0: only after each phase's last epoch)",
                        bounds=NON_NEGATIVE),
    "model_selection": HParam("best_val", help="which epoch's weights each phase keeps: best_val (the best "
                              "selection_metric on val among validated epochs) | last", choices=("best_val", "last")),
    "selection_metric": HParam(selection.DEFAULT_METRIC, help="the val metric every choice in the run maximises "
                               "(a phase's best epoch, a probe's weight decay, post-hoc tau): mean_per_class "
                               "matches a balanced test set's overall accuracy; ties go to the lower class-balanced "
                               "val NLL, then the earlier candidate", choices=selection.METRIC_CHOICES),
    "shot_convention": HParam("standard", help="many/medium/few thresholds: " + " | ".join(
        f"{name} ({convention.description})" for name, convention in SHOT_CONVENTIONS.items()),
        choices=tuple(SHOT_CONVENTIONS)),
}


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that make bf16 matmuls faster than fp32


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matmul instructions, read from /proc/cpuinfo (Linux); False where that
    cannot be read: bf16 autocast on a CPU without them is slower than fp32."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def usable_cpus() -> int:
    """CPUs this process may use: its Ray task's CPU share inside a Ray worker (a Ray Train worker's is its
    own), else its share of its CPU affinity among the ranks of a data-parallel run on this node."""
    ray = sys.modules.get("ray")  # a Ray worker has imported it; importing it here would cost seconds
    if ray is not None and ray.is_initialized():
        share = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if share:
            return max(1, int(share))
    return cpu_share(world().local_size)


@dataclass
class BackboneRequest:
    name: str
    weights: str | None
    allow_download: bool
    allow_random_init: bool
    ignore_prefixes: tuple[str, ...] = ()  # weights-file keys that belong to a method checkpoint, not the backbone


@dataclass
class RunContext:
    dataset: LongTailDataset
    hparams: dict[str, Any]
    backbone_request: BackboneRequest
    device: torch.device
    seed: int
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

    @cached_property
    def backbone(self):
        from bench.backbones import create_backbone

        request = self.backbone_request
        image_size = self.hparams["image_size"] or None
        backbone = create_backbone(request.name, weights=request.weights, allow_download=request.allow_download,
                                   allow_random_init=request.allow_random_init, image_size=image_size,
                                   ignore_prefixes=request.ignore_prefixes)
        info = backbone.weights_info
        if not info.pretrained:
            self.warn(f"backbone {request.name} is randomly initialised (pretrained: false)")
        elif info.provenance:
            made = info.provenance
            self.log.info(f"backbone {request.name}: weights shipped with lt-bench, pretrained on "
                          f"{made['data']['name']} ({made['recipe']['epochs']} epochs, seed {made['recipe']['seed']}, "
                          f"{made['test_accuracy']} % on its test set); provenance in "
                          f"{Path(info.location).with_suffix('.json')}")
        return backbone.to(self.device)

    def preprocessing(self, backbone=None) -> Preprocessing:
        """How images are prepared for `backbone` (default: the run's): the tower's own preprocessing, with
        the fields the method's recipe fixes over it."""
        backbone = self.backbone if backbone is None else backbone
        return dataclasses.replace(backbone.preprocessing, **self.method_preprocessing)

    def transform(self, train: bool = False, backbone=None, strong: bool = False) -> Transform:
        """`backbone`'s (default: the run's) eval transform, or with `train` its augmented one; `strong` adds
        FixMatch's RandAugment and Cutout to the augmented one (the strong view of FixMatch-style methods)."""
        backbone = self.backbone if backbone is None else backbone
        preprocessing = self.preprocessing(backbone)
        if not train:
            return Transform(backbone.image_size, preprocessing)
        return Transform(backbone.image_size, preprocessing, self.hparams["augment"], self.dataset.hflip_ok, strong)

    @property
    def num_workers(self) -> int:
        requested = self.hparams["num_workers"]
        if requested >= 0:
            return requested
        return min(8, max(0, usable_cpus() - 1)) if self.device.type == "cuda" else 0

    def compile_backbone(self) -> None:
        """torch.compile every block of the backbone in place (parameters and state-dict keys unchanged)."""
        for block in self.backbone.blocks:
            block.compile()
        self.log.info(f"compiled the {len(self.backbone.blocks)} blocks of {self.backbone_request.name}")

    def feed(self, split_name: str) -> ImageFeed:
        """How `split_name`'s images reach the model (decided once per split, logged, and recorded)."""
        if split_name not in self._feeds:
            split = getattr(self.dataset, split_name)
            pixels, how = None, "image by image (data_cache=off)"
            if self.hparams["data_cache"] == "auto":
                pixels, how = split_pixels(split, self.cache_dir, self.console, self.warn)
            self.data_paths[split_name] = how
            self.log.info(f"{split_name} images: {how}")
            self._feeds[split_name] = ImageFeed(split, pixels, self.device, self.num_workers)
        return self._feeds[split_name]

    @property
    def eval_batch_size(self) -> int:
        requested = self.hparams["eval_batch_size"]
        if requested > 0:
            return requested
        return 256 if self.device.type == "cuda" else 32

    @cached_property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype `amp` resolves to on this device (None: fp32); an impossible request is an error."""
        choice = self.hparams["amp"]
        if choice == "off":
            return None
        if self.device.type == "cuda":
            if choice == "fp16":
                return torch.float16
            return torch.bfloat16 if choice == "bf16" or torch.cuda.is_bf16_supported() else torch.float16
        if choice == "fp16":
            raise UsageError("amp=fp16 needs a GPU; on a CPU use amp=bf16 (where the CPU has bf16 instructions) or "
                             "amp=off")
        if choice == "auto":  # on a CPU, mixed precision is opt-in (as in timm, Lightning and accelerate)
            return None
        if not cpu_has_bf16():  # asked for explicitly: honoured, and said to be slow
            self.warn(f"amp=bf16 on a CPU without bf16 instructions ({' or '.join(CPU_BF16_FLAGS)}): bf16 is "
                      "emulated, several times slower than fp32 (7.5× for a ViT-Tiny forward on a 2-core AVX2 "
                      "EPYC); useful to check bf16 numerics, not for speed")
        return torch.bfloat16

    @property
    def precision(self) -> str:
        """What the run computes in: bf16 | fp16 (autocast) or fp32."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32")

    def autocast(self):
        dtype = self.amp_dtype
        return torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext()

    def warn(self, message: str) -> None:
        self.notes.append(message)
        self.log.warning(message)
        self.console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

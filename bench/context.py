"""Everything one run needs, resolved once: dataset, hyperparameters, device, backbone, paths, console."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from bench.data import AUGMENTATIONS
from bench.datasets.base import LongTailDataset
from bench.errors import BenchError
from bench.hparams import AUTO_OR_NON_NEGATIVE, NON_NEGATIVE, Choice, HParam
from bench.metrics import SHOT_CONVENTIONS

COMMON_OPTIONS: dict[str, HParam] = {
    "image_size": HParam(0, help="input resolution; 0 = the backbone's native size", bounds=NON_NEGATIVE),
    "augment": HParam("rrc_flip", Choice(AUGMENTATIONS), "train augmentation (flips are dropped where "
                      "the dataset forbids them)", choices=AUGMENTATIONS),
    "eval_batch_size": HParam(-1, help="batch size for evaluation and feature extraction; -1 = 32 on CPU "
                              "(measured fastest for ViT-Tiny on 2 cores), 256 on GPU"),
    "num_workers": HParam(-1, help="data-loading workers; -1 = 0 on CPU, 8 on GPU", bounds=AUTO_OR_NON_NEGATIVE),
    "amp": HParam("auto", help="mixed precision: auto (bf16 on GPUs and on CPUs with bf16 instructions, which "
                  "are detected; fp16 on older GPUs; fp32 otherwise) | bf16 | fp16 (GPU only) | off (fp32)",
                  choices=("auto", "bf16", "fp16", "off")),
    "val_every": HParam(1, help="validate every N epochs (0: only after each phase's last epoch)",
                        bounds=NON_NEGATIVE),
    "model_selection": HParam("best_val", help="which epoch's weights each phase keeps: best_val (best overall "
                              "top-1 on val among validated epochs) | last", choices=("best_val", "last")),
    "shot_convention": HParam("standard", help="many/medium/few thresholds",
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

    @cached_property
    def backbone(self):
        from bench.backbones import create_backbone

        request = self.backbone_request
        image_size = self.hparams["image_size"] or None
        backbone = create_backbone(request.name, weights=request.weights, allow_download=request.allow_download,
                                   allow_random_init=request.allow_random_init, image_size=image_size,
                                   ignore_prefixes=request.ignore_prefixes)
        if not backbone.weights_info.pretrained:
            self.warn(f"backbone {request.name} is randomly initialised (pretrained: false)")
        return backbone.to(self.device)

    @property
    def num_workers(self) -> int:
        requested = self.hparams["num_workers"]
        if requested >= 0:
            return requested
        return 8 if self.device.type == "cuda" else 0

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
            raise BenchError("amp=fp16 needs a GPU; on a CPU use amp=bf16 (where the CPU has bf16 instructions) or "
                             "amp=off")
        if cpu_has_bf16():
            return torch.bfloat16
        if choice == "bf16":
            raise BenchError(f"amp=bf16: this CPU has no bf16 instructions ({' or '.join(CPU_BF16_FLAGS)}); "
                             "use amp=off")
        return None

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

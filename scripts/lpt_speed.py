"""LPT phase-2 speed and its roofline, measured side by side in one run.

    python scripts/lpt_speed.py                                   # ViT-Tiny, 112 px, CPU, fp32 (as amp=auto)
    python scripts/lpt_speed.py --data-root ../shared/... --dataset cifar10_lt      # + real data loading
    python scripts/lpt_speed.py --compile                         # + torch.compile'd blocks vs eager
    python scripts/lpt_speed.py --backbone vit_base_patch16_224.augreg_in21k --device cuda --amp bf16 \\
        --image-size 224 --batch-size 128 --forward-batch 256 --steps 20 --data-root DIR --dataset folder

Prints:
1. the dense-matmul peak of this device in fp32 and in the run's precision (GFLOP/s, measured now);
2. a backbone forward pass (no grad) at --image-size: images/s, GFLOP/s, share of the matmul peak;
3. the LPT phase-2 training step (class-aware + uniform batch, each a query pass + a main pass, A-GCL +
   matching loss, backward, SGD step) with the shared prefix and with the plain two-pass path, alternating:
   s/step, images/s, GFLOP/s and share of the peak (FLOPs counted by torch's FlopCounterMode);
4. with --compile, the shared-prefix step with every block torch.compile'd, alternating with eager;
5. with --data-root, the same step fed by the harness's real data path (the dataset's pixel cache or PIL
   decoding, tensor augmentation, LPT's dual sampler): images/s and the share of time waiting for data.

Random tensors stand in for images in 2-4 (weights do not change the timing, so the backbone is randomly
initialised unless --weights is given).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from collections.abc import Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from bench.backbones import create_backbone
from bench.data import ImageFeed, Transform
from bench.datasets.base import load_dataset
from bench.hardware import cpu_has_bf16
from bench.methods.agcl import GAMMAS, AGCLoss
from bench.methods.common import dual_index_batches
from bench.methods.lpt import LPT
from bench.methods.lpt_model import LPTModel
from bench.pixel_cache import split_pixels
from bench.run_folder import default_results_root

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_of(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """GFLOP/s of an n×n by n×n matmul in `dtype` (best of `repeats`)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up
    best = min(seconds_of(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def flops_of(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class Phase2Step:
    """One LPT phase-2 training step on a model; `batch()` gives (class-aware, uniform) image/label pairs."""

    def __init__(self, model: LPTModel, classes: int, dtype, device: torch.device):
        self.model, self.dtype, self.device = model, dtype, device
        model.stage = "group"
        model.requires_grad_(False)
        trainable = model.stage_parameters("group")
        for p in trainable:
            p.requires_grad_(True)
        self.optimizer = torch.optim.SGD(trainable, lr=0.02, momentum=0.9, weight_decay=0.01)
        counts = torch.logspace(3, 1, classes).round()
        self.losses = {kind: AGCLoss(counts, *gammas) for kind, gammas in GAMMAS.items()}
        model.train()

    def __call__(self, xb, yb, xi, yi, shared_prefix: bool = True) -> None:
        model = self.model
        model.shared_prefix = shared_prefix
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            cosine, match = model.forward_with_matching(xb)
            loss = self.losses["class_balanced"](cosine, yb) - 0.5 * match
            cosine, match = model.forward_with_matching(xi)
            loss = loss + 0.25 * (self.losses["instance_balanced"](cosine, yi) - 0.5 * match)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_tiny_patch16_224")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32, help="images per sampled batch (two per step)")
    parser.add_argument("--forward-batch", type=int, default=32, help="images per forward-pass batch")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per path first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                        help="auto: bf16 on GPUs, fp32 on CPUs (as the harness)")
    parser.add_argument("--matmul-size", type=int, default=0, help="matmul side for the peak; 0: 2048 CPU, 8192 GPU")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd blocks against eager")
    parser.add_argument("--data-root", default=None, help="a dataset root: also time the step on real data")
    parser.add_argument("--dataset", default="folder", help="its registered name (folder, cifar10_lt, ...)")
    parser.add_argument("--data-cache", choices=("auto", "off"), default="auto",
                        help="auto: the harness's uint8 pixel cache where the images are small; off: PIL")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for PIL-decoded data")
    args = parser.parse_args()

    console = Console(width=150)
    device = torch.device(args.device)
    amp = args.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    dtype = DTYPES[amp]
    precision = amp if dtype is not None else "fp32"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    console.print(f"[bold]{args.backbone}[/] at {args.image_size} px on {device} ({name}), precision {precision}"
                  + (" (this CPU has no bf16 instructions)"
                     if dtype is not None and device.type == "cpu" and not cpu_has_bf16() else ""))

    n = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    peaks = {"fp32": matmul_peak(device, torch.float32, n, 5)}
    if dtype is not None:
        peaks[precision] = matmul_peak(device, dtype, n, 5)
    peak = peaks[precision]
    console.print("matmul peak " + ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in peaks.items()) + f" ({n}²)")

    backbone = create_backbone(args.backbone, weights=args.weights, allow_random_init=args.weights is None,
                               image_size=args.image_size).to(device)
    table = Table(title="roofline (achieved / matmul peak in the same precision, measured above)")
    for column in ("what", "block evals / image", "s / call", "images / s", "GFLOP / call", "GFLOP/s", "of peak"):
        table.add_column(column, justify="left" if column == "what" else "right")

    def add_row(what: str, blocks: str, seconds: float, images: int, flops: int) -> None:
        table.add_row(what, blocks, f"{seconds:.3f}", f"{images / seconds:,.1f}", f"{flops / 1e9:,.1f}",
                      f"{flops / seconds / 1e9:,.0f}", f"{flops / seconds / 1e9 / peak:.0%}")

    # 2. forward pass
    images = torch.randn(args.forward_batch, 3, args.image_size, args.image_size, device=device)
    backbone.eval()

    @torch.no_grad()
    def forward():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return backbone(images)

    for _ in range(args.warmup):
        forward()
    forward_s = min(seconds_of(forward, device) for _ in range(args.steps))
    add_row(f"backbone forward, batch {args.forward_batch}", str(backbone.num_blocks), forward_s,
            args.forward_batch, flops_of(forward))

    # 3. phase-2 step, shared prefix vs plain, alternating
    model = LPTModel(backbone, args.classes, shared_layers=backbone.num_blocks // 2).to(device)
    step = Phase2Step(model, args.classes, dtype, device)
    generator = torch.Generator().manual_seed(0)

    def random_batch():
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
        y = torch.randint(0, args.classes, (args.batch_size,), generator=generator)
        return x.to(device), y.to(device)

    batch = (*random_batch(), *random_batch())
    for _ in range(args.warmup):
        step(*batch, shared_prefix=True)
        step(*batch, shared_prefix=False)
    seconds = {True: 0.0, False: 0.0}
    for _ in range(args.steps):  # alternate so drift in clocks or load hits both paths alike
        for shared in (True, False):
            seconds[shared] += seconds_of(lambda shared=shared: step(*batch, shared_prefix=shared), device)
    depth, s = backbone.num_blocks, model.shared_layers
    per_step = 2 * args.batch_size
    for shared, what, blocks in ((True, "phase-2 step, shared prefix", 2 * depth - s),
                                 (False, "phase-2 step, plain two-pass", 2 * depth)):
        add_row(what, str(blocks), seconds[shared] / args.steps, per_step,
                flops_of(lambda shared=shared: step(*batch, shared_prefix=shared)))
    console.print(table)
    console.print(f"shared prefix vs plain: {seconds[False] / seconds[True]:.2f}× faster (block-count bound "
                  f"{2 * depth / (2 * depth - s):.2f}×); step images = 2 × {args.batch_size}")

    if args.compile:
        compare_compiled(args, model, batch, dtype, device, console)
    if args.data_root:
        real_data(args, step, backbone, device, console)


def compare_compiled(args, model: LPTModel, batch, dtype, device: torch.device, console: Console) -> None:
    compiled_model = copy.deepcopy(model)
    started = time.perf_counter()
    for block in compiled_model.prompted.backbone.blocks:
        block.compile()
    compiled = Phase2Step(compiled_model, args.classes, dtype, device)
    eager = Phase2Step(model, args.classes, dtype, device)
    compiled(*batch)
    compile_s = time.perf_counter() - started
    for _ in range(args.warmup):
        compiled(*batch)
        eager(*batch)
    seconds = {"eager": 0.0, "compiled": 0.0}
    for _ in range(args.steps):
        seconds["eager"] += seconds_of(lambda: eager(*batch), device)
        seconds["compiled"] += seconds_of(lambda: compiled(*batch), device)
    eager_s, compiled_s = seconds["eager"] / args.steps, seconds["compiled"] / args.steps
    console.print(f"torch.compile (blocks, inductor): first step incl. compiling {compile_s:.1f} s; then "
                  f"{compiled_s:.3f} s/step vs eager {eager_s:.3f} s/step ({eager_s / compiled_s:.2f}× faster); "
                  f"break-even after ~{compile_s / max(1e-9, eager_s - compiled_s):.0f} steps"
                  if compiled_s < eager_s else
                  f"torch.compile (blocks, inductor): first step incl. compiling {compile_s:.1f} s; then "
                  f"{compiled_s:.3f} s/step vs eager {eager_s:.3f} s/step (slower: {compiled_s / eager_s:.2f}×)")


def real_data(args, step: Phase2Step, backbone, device: torch.device, console: Console) -> None:
    dataset = load_dataset(args.dataset, args.data_root, {})
    split = dataset.train
    pixels, how = None, "image by image (--data-cache off)"
    if args.data_cache == "auto":
        pixels, how = split_pixels(split, default_results_root() / "cache", console, console.print)
    feed = ImageFeed(split, pixels, device, args.workers)
    preprocessing = dataclasses.replace(backbone.preprocessing, **LPT.preprocessing)  # as an LPT run's
    transform = Transform(args.image_size, preprocessing, "rrc_flip", dataset.hflip_ok)
    pairs = dual_index_batches(split.labels, args.batch_size, max(1, args.batch_size // 8), np.random.default_rng(0))
    pairs = pairs[:args.warmup + args.steps]
    batches = iter(feed.batches(transform, [indices for pair in pairs for indices in pair], seed=0))
    waited = computed = 0.0
    for index in range(len(pairs)):
        started = time.perf_counter()
        balanced, uniform = next(batches), next(batches)
        sync(device)
        wait = time.perf_counter() - started
        compute = seconds_of(lambda: step(*balanced, *uniform), device)  # noqa: B023 (called at once)
        if index >= args.warmup:
            waited, computed = waited + wait, computed + compute
    steps = len(pairs) - args.warmup
    total = waited + computed
    console.print(f"real data ({args.dataset} train, {len(split)} images; {how}; {args.workers} loader workers): "
                  f"{2 * args.batch_size * steps / total:,.1f} images/s over {steps} steps, "
                  f"{waited / total:.0%} of the time waiting for data")


if __name__ == "__main__":
    main()

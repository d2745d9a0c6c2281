"""LPT phase-2 training step time: the shared-prefix path vs the plain two-pass path, measured side by side in
one run (same model, same batches, alternating), plus training throughput in images/s.

    python scripts/lpt_speed.py                                   # ViT-Tiny, 112 px, CPU: a quick ratio
    python scripts/lpt_speed.py --backbone vit_base_patch16_224.augreg_in21k --device cuda --amp bf16 \\
                                --image-size 224 --batch-size 256 --steps 20

A training step is what the engine does in phase 2: forward of a class-aware batch and a uniform batch (each
a query pass + a main pass), A-GCL + matching loss, backward, SGD step. Backbone weights do not change the
timing, so the backbone is randomly initialised unless --weights is given. Prints one table.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench.methods.agcl import GAMMAS, AGCLoss
from bench.methods.lpt_model import LPTModel
from rich.console import Console
from rich.table import Table

from bench.backbones import create_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_tiny_patch16_224")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32, help="images per sampled batch (two per step)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per path first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    args = parser.parse_args()

    device = torch.device(args.device)
    backbone = create_backbone(args.backbone, weights=args.weights, allow_random_init=args.weights is None,
                               image_size=args.image_size).to(device)
    model = LPTModel(backbone, args.classes, shared_layers=backbone.num_blocks // 2).to(device)
    model.stage = "group"
    model.requires_grad_(False)
    trainable = model.stage_parameters("group")
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(trainable, lr=0.02, momentum=0.9, weight_decay=0.01)
    counts = torch.logspace(3, 1, args.classes).round()
    losses = {kind: AGCLoss(counts, *gammas) for kind, gammas in GAMMAS.items()}
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    generator = torch.Generator().manual_seed(0)

    def batch():
        images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
        labels = torch.randint(0, args.classes, (args.batch_size,), generator=generator)
        return images.to(device), labels.to(device)

    def step(shared_prefix: bool) -> None:
        model.shared_prefix = shared_prefix
        (xb, yb), (xi, yi) = batch(), batch()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            cosine, match = model.forward_with_matching(xb)
            loss = losses["class_balanced"](cosine, yb) - 0.5 * match
            cosine, match = model.forward_with_matching(xi)
            loss = loss + 0.25 * (losses["instance_balanced"](cosine, yi) - 0.5 * match)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    for _ in range(args.warmup):
        step(True)
        step(False)
    seconds = {True: 0.0, False: 0.0}
    for _ in range(args.steps):  # alternate so drift in clocks or load hits both paths alike
        for shared in (True, False):
            sync()
            started = time.perf_counter()
            step(shared)
            sync()
            seconds[shared] += time.perf_counter() - started

    depth, s = backbone.num_blocks, model.shared_layers
    table = Table(title=f"LPT phase-2 training step: {args.backbone} at {args.image_size} px, 2×{args.batch_size} "
                        f"images/step, {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
                        f"), amp {args.amp}, {args.steps} steps each")
    for column in ("path", "block evaluations / image", "s / step", "images / s"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for shared, name, blocks in ((False, "plain two-pass", 2 * depth), (True, "shared prefix", 2 * depth - s)):
        per_step = seconds[shared] / args.steps
        table.add_row(name, str(blocks), f"{per_step:.3f}", f"{2 * args.batch_size / per_step:.1f}")
    console = Console()
    console.print(table)
    console.print(f"speed-up (plain / shared-prefix step time): {seconds[False] / seconds[True]:.3f}× "
                  f"(block-count bound {2 * depth / (2 * depth - s):.3f}×; backward runs only through the "
                  "main pass's group blocks, so it is the same in both paths)")


if __name__ == "__main__":
    main()

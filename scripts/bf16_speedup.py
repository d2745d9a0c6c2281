"""What `--set amp=bf16` buys on this CPU: bf16 autocast against fp32, per tower size, side by side in one run.

    python scripts/bf16_speedup.py                          # micro tower 16 px, ViT-Tiny 112 and 224 px
    python scripts/bf16_speedup.py --threads 1 --steps 20   # one torch thread, more timed steps

For each tower and resolution it times, alternating fp32 and bf16 on the same inputs and weights:
- a forward pass without gradients (--batch-size images: evaluation, feature extraction);
- one LPT phase-2 training step (2 × --batch-size images, each a query pass and a main pass, A-GCL and matching
  loss, backward, SGD step: `lpt_speed.Phase2Step`).
It prints the CPU's model and its vector and matrix flags (a CPU without avx512_bf16 or amx_bf16 emulates bf16,
so there the figures show the emulation's cost), torch's version, threads and CPU capability, then the median
seconds per call in each precision and the speed-up (fp32 time / bf16 time; above 1: bf16 is faster).

The micro tower is the shipped vit_micro.fmnist (the embedded default's). ViT-Tiny reads --tiny-weights
(default: ../shared/assets/vit_tiny_patch16_224.safetensors beside the repository); without that file its rows
are skipped with a line saying so. Run it on an otherwise idle machine: the two precisions alternate, so slow
drift hits both alike, but other processes on the cores make every figure noisy.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from lpt_speed import Phase2Step, seconds_of
from rich.console import Console
from rich.table import Table

from bench.backbones import create_backbone
from bench.methods.lpt_model import LPTModel

REPO = Path(__file__).resolve().parents[1]
TINY_WEIGHTS = REPO.parent / "shared" / "assets" / "vit_tiny_patch16_224.safetensors"
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")  # what bf16 matmuls run on
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def cpu_description() -> str:
    """'Intel(R) Xeon(R) ...; flags avx2 avx512f avx512_bf16 (absent: amx_tile amx_bf16)' from /proc/cpuinfo."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.processor() or platform.machine()} (no /proc/cpuinfo: flags unknown)"
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    flags = {flag for line in lines if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    present, absent = [f for f in FLAGS if f in flags], [f for f in FLAGS if f not in flags]
    return f"{model}; flags {' '.join(present) or 'none'}" + (f" (absent: {' '.join(absent)})" if absent else "")


def median_seconds(calls: dict[str, Callable[[], object]], warmup: int, steps: int) -> dict[str, float]:
    """Median seconds per call of each precision's call, alternating precisions (warm-up calls untimed)."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(steps):
        for name, call in calls.items():
            times[name].append(seconds_of(call, torch.device("cpu")))
    return {name: statistics.median(values) for name, values in times.items()}


def measure(name: str, weights: str | None, image_size: int, args) -> list[tuple[str, dict[str, float]]]:
    """(what, {precision: median s}) of the forward pass and the phase-2 step of one tower at one size."""
    backbone = create_backbone(name, weights=weights, image_size=image_size)
    backbone.eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, args.classes, (args.batch_size,), generator=generator)
    uniform = torch.randn(args.batch_size, 3, image_size, image_size, generator=generator)

    def forward(dtype):
        @torch.no_grad()
        def call():
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                return backbone(images)
        return call

    model = LPTModel(backbone, args.classes, shared_layers=backbone.num_blocks // 2)
    steps = {precision: Phase2Step(copy.deepcopy(model), args.classes, dtype, torch.device("cpu"))
             for precision, dtype in PRECISIONS.items()}
    return [
        (f"forward, batch {args.batch_size}",
         median_seconds({p: forward(dtype) for p, dtype in PRECISIONS.items()}, args.warmup, args.steps)),
        (f"LPT phase-2 step, 2 × {args.batch_size} images",
         median_seconds({p: (lambda step=step: step(images, labels, uniform, labels)) for p, step in steps.items()},
                        args.warmup, args.steps)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-weights", default=str(TINY_WEIGHTS), help="ViT-Tiny weights (safetensors)")
    parser.add_argument("--tiny-sizes", type=int, nargs="*", default=[112, 224], help="ViT-Tiny resolutions")
    parser.add_argument("--micro-size", type=int, default=16, help="the micro tower's resolution")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward and per sampled batch")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10, help="timed calls per precision")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per precision first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    console = Console(width=150)
    console.print(f"cpu: {cpu_description()}")
    onednn = next((line.strip(" -").split(" (")[0] for line in torch.__config__.show().splitlines()
                   if "MKL-DNN" in line or "oneDNN" in line), "no oneDNN")
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
                  f"{torch.backends.cpu.get_cpu_capability()}, {onednn}")
    towers = [("vit_micro.fmnist", None, args.micro_size)]
    if Path(args.tiny_weights).is_file():
        towers += [("vit_tiny_patch16_224", args.tiny_weights, size) for size in args.tiny_sizes]
    else:
        console.print(f"skipped ViT-Tiny: {args.tiny_weights} is absent (pass --tiny-weights FILE)")
    table = Table(title=f"bf16 autocast vs fp32 on this CPU (median s per call of {args.steps}, alternating)")
    for column in ("tower", "px", "what", "fp32 s", "bf16 s", "bf16 speed-up"):
        table.add_column(column, justify="left" if column in ("tower", "what") else "right")
    for name, weights, size in towers:
        for what, seconds in measure(name, weights, size, args):
            table.add_row(name, str(size), what, f"{seconds['fp32']:.4f}", f"{seconds['bf16']:.4f}",
                          f"{seconds['fp32'] / seconds['bf16']:.2f}×")
    console.print(table)


if __name__ == "__main__":
    main()

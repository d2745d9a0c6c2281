"""What a run computes on and in: its device, the CPUs it may use, and its precision (the `amp` option resolved
on the device, with the CPU's bf16 instructions read from /proc/cpuinfo, and the name recorded of it)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch

from bench.distributed import cpu_share, world
from bench.errors import UsageError

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that make bf16 matmuls faster than fp32


def pick_device(name: str) -> torch.device:
    """`--device`: auto (a GPU where one is visible, else the CPU), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is visible; use --device cpu")
    return torch.device(name)


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


def amp_dtype(choice: str, device: torch.device, warn: Callable[[str], None]) -> torch.dtype | None:
    """The autocast dtype the `amp` option resolves to on `device` (None: fp32); an impossible request is an
    error, and bf16 asked for on a CPU without bf16 instructions is honoured with a warning that it is slow."""
    if choice == "off":
        return None
    if device.type == "cuda":
        if choice == "fp16":
            return torch.float16
        return torch.bfloat16 if choice == "bf16" or torch.cuda.is_bf16_supported() else torch.float16
    if choice == "fp16":
        raise UsageError("amp=fp16 needs a GPU; on a CPU use amp=bf16 (where the CPU has bf16 instructions) or "
                         "amp=off")
    if choice == "auto":  # on a CPU, mixed precision is opt-in (as in timm, Lightning and accelerate)
        return None
    if not cpu_has_bf16():  # asked for explicitly: honoured, and said to be slow
        warn(f"amp=bf16 on a CPU without bf16 instructions ({' or '.join(CPU_BF16_FLAGS)}): bf16 is "
             "emulated, several times slower than fp32 (7.5× for a ViT-Tiny forward on a 2-core AVX2 "
             "EPYC); useful to check bf16 numerics, not for speed")
    return torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    """What a run computes in, as recorded: bf16 | fp16 (autocast) or fp32."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")

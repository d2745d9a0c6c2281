"""One run over several processes (data-parallel): torch's own launcher (torchrun, `torch.distributed.run`)
starts the processes (Ray Train does, for a sweep's data-parallel trials: bench/sweeps/ray_train.py), and each
runs the ordinary run with its `World`.

Every rank builds the same model from the same seed and draws the same global batches; each takes its
contiguous share of every batch (`World.shard`), and DistributedDataParallel averages the gradients of the
trainable parameters (frozen towers are not wrapped). Evaluation and feature extraction are sharded the same way
and gathered, so every rank holds the same logits and metrics and takes the same decisions (best epoch on val,
selection). Rank 0 writes the run folder: checkpoints, log, metrics and the record. The other ranks keep a
scratch folder inside it (`<run>/ranks/<k>/`: their log, the best epoch's weights, caches), and every rank
resumes from rank 0's checkpoint, so `--resume` needs the results folder on a file system every node sees.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from bench.errors import UsageError
from bench.seeding import derived_seed

LAUNCH_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, indices: Sequence[int]) -> list[int]:
        """This rank's contiguous share of one global batch: sizes differ by at most one image."""
        indices = list(indices)
        if not self.distributed:
            return indices
        base, extra = divmod(len(indices), self.size)
        start = self.rank * base + min(self.rank, extra)
        return indices[start:start + base + (self.rank < extra)]

    def shard_batches(self, batches: Sequence[Sequence[int]]) -> list[list[int]]:
        """Each global batch's share; a batch with fewer images than ranks (an epoch's last, partial one) is
        skipped by every rank, since some rank would have nothing to learn from."""
        if not self.distributed:
            return [list(b) for b in batches]
        return [self.shard(b) for b in batches if len(b) >= self.size]

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's rows (dim 0) concatenated in rank order: the inverse of `shard` over a split."""
        if not self.distributed:
            return tensor
        device = tensor.device if dist.get_backend() != "gloo" else torch.device("cpu")
        local = tensor.to(device).contiguous()
        sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor([local.shape[0]], device=device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
        padded[:local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:int(size.item())] for part, size in zip(parts, sizes, strict=True)]).to(tensor.device)

    def broadcast(self, value):
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value) -> list:
        """Every rank's `value` (any picklable object), in rank order."""
        if not self.distributed:
            return [value]
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def noise_seed(self, *parts: object) -> int:
        """The seed of noise each rank draws for its own share of a batch (dropout, augmentation, A-GCL's
        cloud): `derived_seed(*parts)` in one process, a different one per rank in several."""
        return derived_seed(*parts, "rank", self.rank) if self.distributed else derived_seed(*parts)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over the ranks (itself in one process)."""
        if not self.distributed:
            return value
        total = value.clone()
        dist.all_reduce(total)
        return total / self.size


SINGLE = World()
_world = SINGLE
_assigned_device: torch.device | None = None


def world() -> World:
    return _world


def launched() -> bool:
    """True in a process torchrun (or Ray Train) started: they set these for every rank."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ and "LOCAL_RANK" in os.environ


def allowed_cpus() -> int:
    """CPUs this process may use on this machine: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's `--cpus`), which the affinity does not show."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cpus


def cpu_share(processes: int) -> int:
    """Threads for each of `processes` processes sharing this machine's CPUs (`allowed_cpus`)."""
    return max(1, allowed_cpus() // processes)


def assign_device(device: torch.device) -> None:
    """This process's CUDA device, when its launcher chose it: Ray Train gives each worker a GPU whose position
    among the visible ones need not be its local rank (torchrun's ranks use cuda:LOCAL_RANK)."""
    global _assigned_device
    _assigned_device = device


def join(device: torch.device) -> tuple[World, torch.device]:
    """In a launched process (torchrun, or a Ray Train worker, which sets the same variables and has joined
    its group already): join the process group (NCCL on CUDA, gloo on CPU) and return this rank's device
    (cuda:LOCAL_RANK for a CUDA `device`, or the one `assign_device` named) and CPU threads (this node's cores
    shared among its ranks, unless OMP_NUM_THREADS says). Else the single world and `device`."""
    global _world
    if not launched():
        return SINGLE, device
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    cuda = device.type == "cuda"
    if cuda:
        device = _assigned_device or torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:  # `launch` sets it
        torch.set_num_threads(cpu_share(local_size))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    _world = World(rank, size, local_rank, local_size)
    return _world, device


def leave() -> None:
    global _world
    if dist.is_initialized():
        dist.destroy_process_group()
    _world = SINGLE


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_launch(nproc: int, nnodes: int, node_rank: int, master_port: int | None, device: str) -> None:
    """Refuse a launch that cannot work, in one line, before any process starts."""
    if nproc < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise UsageError(f"--nproc {nproc} --nnodes {nnodes} --node-rank {node_rank}: need nproc ≥ 1, nnodes ≥ 1 "
                         "and 0 ≤ node-rank < nnodes")
    gpus = torch.cuda.device_count() if device != "cpu" else 0
    if gpus and nproc > gpus:
        raise UsageError(f"--nproc {nproc}: this node has {gpus} visible GPU(s), one per process; start at most "
                         f"{gpus}, or pass --device cpu for CPU processes")
    if nnodes > 1 and master_port is None:
        raise UsageError("--nnodes > 1 needs --master-addr HOST and --master-port PORT (the same on every node)")


def launch(argv: list[str], nproc: int, nnodes: int, node_rank: int, master_addr: str, master_port: int | None
           ) -> int:
    """Run `bench <argv>` (without the launch flags) in nproc processes on this node through torchrun; the
    exit status of the job (each rank says how it ended, and an interrupted one how to resume)."""
    port = master_port or free_port()
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--nnodes={nnodes}",
               f"--node-rank={node_rank}", f"--master-addr={master_addr}", f"--master-port={port}",
               "-m", "bench", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(cpu_share(nproc)))
    process = subprocess.Popen(command, env=env)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:  # the ranks got the same Ctrl-C: each saves its state and says how to resume
            continue


def strip_launch_flags(argv: list[str]) -> list[str]:
    """argv without --nproc/--nnodes/... (each with its value, as `--flag v` or `--flag=v`)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in LAUNCH_FLAGS:
            skip = "=" not in item
            continue
        kept.append(item)
    return kept

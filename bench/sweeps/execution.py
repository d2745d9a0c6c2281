"""How the trials of a sweep, an ablation or a benchmark run: the executor (Ray Tune or in-process), the Ray
cluster to join, the retries of a crashing trial, and each trial's CPUs, GPUs and processes. Declared here once;
`bench sweep`, `bench ablate` and `bench benchmark` fill it from one group of options."""

from __future__ import annotations

from dataclasses import dataclass

from bench.flags import OptionError

EXECUTORS = ("ray", "local")


@dataclass(frozen=True)
class Execution:
    executor: str = "ray"
    address: str | None = None  # a Ray cluster to join (auto | HOST:PORT); None: this machine's Ray
    max_failures: int = 2  # retries of a crashing trial
    cpus_per_trial: int | None = None  # CPUs of a trial, shared by its processes; None: Ray's 1 per process
    gpus_per_trial: float = 0.0  # a fraction shares a card
    nproc_per_trial: int = 1  # processes of a trial: above 1 it trains data-parallel (bench/sweeps/ray_train.py)

    @property
    def threads(self) -> int | None:
        """Torch threads of each of a trial's processes (None: the CPUs the process may use, `usable_cpus`)."""
        return max(1, self.cpus_per_trial // self.nproc_per_trial) if self.cpus_per_trial else None

    def checked(self) -> Execution:
        """This execution, refused when it cannot run. A trial is one process on one device (a fraction of a GPU
        shares a card), or `nproc_per_trial` data-parallel processes with one GPU each (or none: CPU processes),
        which Ray Train starts. The local executor runs one trial at a time, with at most the CPUs this process
        may use."""
        if self.executor not in EXECUTORS:
            raise OptionError(f"{{executor}} {self.executor}: choose one of {', '.join(EXECUTORS)}")
        self._check_cpus()
        nproc, gpus = self.nproc_per_trial, self.gpus_per_trial
        if nproc < 1:
            raise OptionError(f"{{nproc_per_trial}} {nproc}: need at least 1")
        if nproc > 1 and gpus not in (0, nproc):
            raise OptionError(f"{{gpus_per_trial}} {gpus:g} with {{nproc_per_trial}} {nproc}: each process "
                              f"trains on one GPU, so pass {{gpus_per_trial}} {nproc} (or 0 for CPU processes)")
        if nproc == 1 and gpus > 1:
            raise OptionError(f"{{gpus_per_trial}} {gpus:g}: a trial process trains on one GPU; to train each "
                              f"trial data-parallel on {gpus:g} GPUs add {{nproc_per_trial}} {gpus:g}")
        if nproc > 1 and self.executor != "ray":
            raise OptionError(f"{{nproc_per_trial}} {nproc}: Ray Train starts a trial's processes, so it needs "
                              "{executor} ray; the local executor runs one process per trial")
        return self

    def _check_cpus(self) -> None:
        cpus = self.cpus_per_trial
        if cpus is not None and cpus < 1:
            raise OptionError(f"{{cpus_per_trial}} {cpus}: need at least 1")
        if self.executor == "local" and cpus is not None:
            from bench.distributed import allowed_cpus

            if cpus > allowed_cpus():
                raise OptionError(f"{{cpus_per_trial}} {cpus}: the local executor runs one trial at a time on "
                                  f"the {allowed_cpus()} CPUs this process may use; give at most {allowed_cpus()}")

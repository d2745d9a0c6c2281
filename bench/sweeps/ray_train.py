"""Data-parallel trials (`--nproc-per-trial N`): each runs as one Ray Train job (`TorchTrainer`).

Ray Train places the trial's N workers (one GPU each, or CPU processes), starts their process group (NCCL on
GPUs, gloo on CPUs) and sets the variables torchrun would, so every worker runs the trial's ordinary run as
one rank of it, exactly as `bench run --nproc N` does (bench/distributed.py). The Tune trial only drives the
job, holding DRIVER_CPUS of a CPU: rank 0's validated epochs reach Tune's scheduler (ASHA) through Ray Train's
`TuneReportCallback`, and the trial's record is read back from the results store when the job ends.

A job that fails (a worker or its node lost) fails its Tune trial, which Tune retries: the retry's run resumes
from the checkpoint rank 0 wrote, with the same world size. A trial ASHA stops is ended by Tune, which ends its
job; it is then evaluated where its last checkpoint left it, by a job of the same size. The workers do not wait
for the scheduler's answer to a report, so a stopped trial may have trained an epoch past its rung: its record
says how many it trained. Ray Train's own state goes
to `<sweep>/train/`, which, like the sweep folder, must be on storage every node sees.
"""

from __future__ import annotations

from bench.sweeps.sweep import Sweep
from bench.sweeps.trial import Trial, final_metrics, run_trial, stop_trial

DRIVER_CPUS = 0.1  # what a data-parallel trial's Tune actor (or completion task) holds: it only waits on its job
TRAIN_FOLDER = "train"


def worker_resources(sweep: Sweep) -> dict[str, float]:
    """Ray resources of each of a trial's processes: an equal share of --cpus-per-trial (1 each by default) and
    one GPU each when the trial has GPUs."""
    execution = sweep.execution
    nproc = execution.nproc_per_trial
    resources = {"CPU": (execution.cpus_per_trial or nproc) / nproc}
    if execution.gpus_per_trial:
        resources["GPU"] = 1.0
    return resources


def trial_needs(sweep: Sweep) -> dict[str, float]:
    """What one trial holds at once on the cluster: its driver and its workers (one process: itself)."""
    execution = sweep.execution
    nproc = execution.nproc_per_trial
    if nproc == 1:
        return {"CPU": float(execution.cpus_per_trial or 1), "GPU": float(execution.gpus_per_trial)}
    workers = worker_resources(sweep)
    return {"CPU": DRIVER_CPUS + nproc * workers["CPU"], "GPU": nproc * workers.get("GPU", 0.0)}


def train_trial(sweep: Sweep, trial: Trial, decision: dict | None = None, in_tune: bool = False) -> dict:
    """Train (or resume, or with a scheduler's `decision` evaluate where it stopped) the trial's run as a Ray
    Train job of `sweep.execution.nproc_per_trial` workers; its final validation metrics, as `run_trial`
    returns them. `in_tune`: inside a Tune trial, whose scheduler then sees every validated epoch."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from bench.errors import BenchError
    from bench.store import ResultsStore
    plan = sweep.plan
    callbacks = []
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    trainer = TorchTrainer(
        _worker, train_loop_config={"plan": plan, "trial": trial, "decision": decision, "report": in_tune,
                                   "threads": sweep.execution.threads},
        scaling_config=ScalingConfig(num_workers=sweep.execution.nproc_per_trial,
                                     use_gpu=bool(sweep.execution.gpus_per_trial),
                                     resources_per_worker=worker_resources(sweep)),
        # a failed job fails the Tune trial, whose retries (--max-failures) resume the run
        run_config=RunConfig(name=plan.run_id(trial), storage_path=str(sweep.folder / TRAIN_FOLDER),
                             callbacks=callbacks, failure_config=FailureConfig(max_failures=0)))
    trainer.fit()
    record = ResultsStore(plan.run.out).get(plan.run_id(trial))
    if record is None:
        raise BenchError(f"trial {trial.key}: its Ray Train job ended without a record; see the run log in "
                         f"{plan.run.out}/runs/{plan.run_id(trial)}")
    return final_metrics(record)


def _worker(config: dict) -> None:
    """One rank of a data-parallel trial (in a Ray Train worker)."""
    import ray
    import ray.train
    import torch

    from bench.distributed import assign_device
    from bench.sweeps.ray_cluster import ray_node

    plan, trial = config["plan"], config["trial"]
    if torch.cuda.is_available() and ray.get_gpu_ids():
        import ray.train.torch

        assign_device(ray.train.torch.get_device())
    if config["decision"]:
        stop_trial(plan, trial, config["decision"], ray_node(), config["threads"])
    else:
        run_trial(plan, trial, ray.train.report if config["report"] else None, node=ray_node(),
                  threads=config["threads"])

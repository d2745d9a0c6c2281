"""Ray itself: started with small-machine settings or joined at an address, and the node a process runs on.
Both `ray_tune` (the driver) and `ray_train` (a data-parallel trial's workers) need these, so they live below
both."""

from __future__ import annotations

import os

OBJECT_STORE_CAP = 512 * 1024**2  # trials pass small configs only; Ray's default (30 % of RAM) wastes memory


def init_ray(address: str | None) -> bool:
    """Start (or join, with `address`) Ray with small-machine settings; True if this call started it."""
    import ray

    from bench.distributed import allowed_cpus

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # data-parallel trials use Ray Train V2 (its Tune integration), the default only from later Ray versions;
    # every worker of this job gets the setting, on this machine or a cluster's nodes
    settings = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR",
                "runtime_env": {"env_vars": {"RAY_TRAIN_V2_ENABLED": "1"}}}
    if address:
        ray.init(address=address, **settings)
    else:  # as many CPUs as this process may use (a container's quota included), not the host's count
        ray.init(object_store_memory=OBJECT_STORE_CAP, num_cpus=allowed_cpus(), **settings)
    return True


def ray_node() -> str:
    """The Ray node this process runs on: records name it (tags.node), where a trial finished."""
    import ray

    return ray.get_runtime_context().get_node_id()

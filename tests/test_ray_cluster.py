"""Sweeps on a multi-node Ray cluster: a head and worker raylets on this machine (`ray.cluster_utils.Cluster`),
so that trials (and the ranks of a data-parallel trial) land on different Ray nodes. Each test starts its own
cluster and shuts it down; Ray must not already be running in this process (tests/test_sweep.py shuts its
session down at the end of its module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from bench.callbacks import Callback
from bench.hparams import parse_assignments
from bench.run_spec import RunSpec
from bench.store import ResultsStore
from bench.sweeps.define import Request, define_sweep, execute_sweep
from bench.sweeps.execution import Execution


@pytest.mark.slow
def test_a_sweep_on_a_two_node_ray_cluster_survives_losing_a_node(tmp_path):
    """A head and a worker node (separate raylets on this machine, one CPU each): trials land on both; the worker
    node is killed once it has finished a trial; the sweep still records every trial exactly once (the trial the
    node was running is retried on the head, resuming its run folder)."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    EPOCHS = 60  # long enough that the trial found running on the worker is still running when the node dies
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 128 * 1024**2})
    try:
        worker = cluster.add_node(num_cpus=1, object_store_memory=128 * 1024**2)
        worker_id = worker.node_id
        command = [sys.executable, "-m", "bench", "sweep", "--method", "clip_probe", "--trials", "6", "--search",
                   "random", "--scheduler", "none", "--cpus-per-trial", "1", "--set", f"epochs={EPOCHS}",
                   "--set", "loss=ce",
                   "--address", cluster.address, "--out", str(tmp_path), "--name", "two-nodes"]
        process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        store = ResultsStore(tmp_path)

        def running_on_worker() -> list[Path]:  # run folders of trials the worker node is training now
            # a run writes config.json before status.json: a folder between the two is not running yet
            return [config.parent for config in (tmp_path / "runs").glob("two-nodes-*/config.json")
                    if json.loads(config.read_text())["spec"]["tags"].get("node") == worker_id
                    and (config.parent / "status.json").exists()
                    and json.loads((config.parent / "status.json").read_text())["state"] == "running"]

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            finished = any(r["tags"].get("node") == worker_id for r in store.records(sweep="two-nodes"))
            if finished and running_on_worker():
                break
            time.sleep(0.2)
        cut = running_on_worker()
        done_before = len(store.records(sweep="two-nodes"))
        cluster.remove_node(worker)  # the worker node dies with the trial it is running
        output, _ = process.communicate(timeout=400)
        assert process.returncode == 0, output
        records = store.records(sweep="two-nodes")
        assert sorted(r["tags"]["trial"] for r in records) == [f"t{i:03d}" for i in range(6)], output
        assert len(list((tmp_path / "records").glob("two-nodes-*.json"))) == 6  # no duplicates
        nodes = [r["tags"]["node"] for r in records]
        assert worker_id in nodes and set(nodes) - {worker_id}, nodes  # trials ran on both nodes
        assert 1 <= done_before < 6 and len(cut) == 1, (done_before, cut)  # the kill came mid-sweep, mid-trial
        retried = json.loads((cut[0] / "metrics.json").read_text())
        manifest = json.loads((cut[0] / "manifest.json").read_text())
        record = store.get(cut[0].name)
        assert record["tags"]["node"] != worker_id  # the cut trial finished on the head node
        assert record["epochs_trained"] == len(retried["history"]) == EPOCHS
        print(f"trials per node: head {len([n for n in nodes if n != worker_id])}, worker {nodes.count(worker_id)}; "
              f"{done_before} recorded when the worker node was removed, cutting {cut[0].name}, which finished "
              f"on the head ({len(manifest.get('resumes', []))} resume(s) from its checkpoint)")
    finally:
        cluster.shutdown()


class WhereRanksRun(Callback):
    """Notes, after every epoch, the Ray node each rank of the trial runs on."""

    def on_epoch_end(self, entry: dict, run_dir: Path) -> None:
        import ray

        from bench.distributed import world

        # rank 0's run folder is <out>/runs/<run>; rank k's is <out>/runs/<run>/ranks/k/runs/<run>
        out = run_dir.parents[1] if world().is_main else run_dir.parents[5]
        with open(out / "where-ranks.jsonl", "a") as file:
            file.write(json.dumps({"rank": world().rank, "node": ray.get_runtime_context().get_node_id()}) + "\n")


@pytest.mark.slow
def test_a_data_parallel_trial_spans_two_ray_nodes(tmp_path):
    """A head with 2 CPUs and a worker node with 1: a 2-process trial with 1 CPU per process (plus its driver's
    0.1) cannot fit on either node alone, so Ray Train places its ranks on both, and they train over gloo."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from bench.sweeps.ray_cluster import init_ray

    assert not ray.is_initialized()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 128 * 1024**2})
    try:
        worker = cluster.add_node(num_cpus=1, object_store_memory=128 * 1024**2)
        init_ray(cluster.address)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
        run = RunSpec(method="lpt", dataset="digits_lt", out=str(tmp_path), device="cpu",
                      overrides=parse_assignments(["phase1_epochs=1", "phase2_epochs=1"]))
        execution = Execution(executor="ray", cpus_per_trial=2, nproc_per_trial=2, address=cluster.address)
        sweep = define_sweep(Request(run, execution, name="span"), 1, "random", "none", None, search_seed=0,
                             grace_period=1, reduction_factor=3)
        sweep.plan.callbacks.append(WhereRanksRun())
        execute_sweep(sweep, Console(quiet=True))
        (record,) = ResultsStore(tmp_path).records(sweep="span")
        seen = [json.loads(line) for line in (tmp_path / "where-ranks.jsonl").read_text().splitlines()]
        nodes = {entry["rank"]: entry["node"] for entry in seen}
        assert sorted(nodes) == [0, 1] and len(seen) == 4  # both ranks, after each of the 2 epochs
        assert set(nodes.values()) == {cluster.head_node.node_id, worker.node_id}, nodes
        assert record["world"]["size"] == 2 and record["tags"]["node"] == nodes[0] and record["epochs_trained"] == 2
        print(f"rank 0 on the head node ({nodes[0][:8]}), rank 1 on the worker node ({nodes[1][:8]}); "
              f"val overall {record['val']['overall']:.2f}")
    finally:
        ray.shutdown()
        cluster.shutdown()

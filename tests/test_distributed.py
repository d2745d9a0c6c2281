"""One run over two processes (torchrun, gloo on CPU) trains exactly as one process with the same global batch and
seed: trainable parameters after each phase agree to 1e-5 (fp32), and so do the metrics.

Exactly means: the same arithmetic, so every process runs one thread (thread counts change the order of float
sums, which L-BFGS amplifies), and LPT's random regularisers are off (head dropout, A-GCL's Gaussian cloud: each
rank draws its own noise for its share of the batch, as data-parallel training does, so with them on the runs
differ by those draws)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.distributed import World, strip_launch_flags

pytestmark = pytest.mark.slow
FP32 = ["--device", "cpu", "--set", "amp=off"]


def bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bench", *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env=env)


def only_run(out: Path) -> Path:
    (run,) = [p for p in (out / "runs").iterdir() if p.is_dir()]
    return run


def record_of(out: Path) -> dict:
    (path,) = (out / "records").glob("*.json")
    return json.loads(path.read_text())


def max_difference(one: Path, two: Path) -> float:
    a, b = (torch.load(p, weights_only=True) for p in (one, two))
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize(("method", "phases", "settings"), [
    ("lpt", ("lpt_shared", "lpt_group"), ["--set", "phase1_epochs=1", "--set", "phase2_epochs=1",
                                          "--set", "head_dropout=0", "--set", "agcl_cloud=0"]),
    ("linear_probe", ("probe",), []),
], ids=["lpt", "linear_probe"])
def test_two_gloo_processes_train_exactly_as_one(tmp_path, method, phases, settings):
    args = ["run", "--method", method, *FP32, *settings]
    single = bench(*args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-2000:]
    double = bench(*args, "--nproc", "2", "--out", str(tmp_path / "two"))
    assert double.returncode == 0, double.stderr[-2000:]
    one, two = only_run(tmp_path / "one"), only_run(tmp_path / "two")
    for phase in phases:
        difference = max_difference(one / "checkpoints" / f"phase-{phase}.pt", two / "checkpoints" / f"phase-{phase}.pt")
        print(f"{method} {phase}: largest difference of a trainable parameter {difference:.2e}")
        assert difference < 1e-5, (phase, difference)
    first, second = record_of(tmp_path / "one"), record_of(tmp_path / "two")
    assert first["world"] == {"size": 1, "devices": [first["device"]]}
    assert second["world"]["size"] == 2 and len(second["world"]["devices"]) == 2
    for split in ("val", "test"):
        for key in ("overall", "many", "medium", "few"):
            assert second[split][key] == pytest.approx(first[split][key], abs=1e-9), (split, key)
    assert (two / "ranks" / "1").is_dir() and not (tmp_path / "two" / "runs" / "ranks").exists()
    assert list((tmp_path / "two" / "records").glob("*.json")) == [tmp_path / "two" / "records" /
                                                                  f"{two.name}.json"]  # rank 0's record only
    assert double.stdout.count("run folder:") == 1


def test_resume_needs_the_world_size_the_run_started_with(tmp_path):
    args = ["run", "--method", "linear_probe", *FP32, "--out", str(tmp_path)]
    assert bench(*args).returncode == 0
    run = only_run(tmp_path)
    (run / "status.json").write_text(json.dumps({"state": "interrupted"}))
    resumed = bench("run", "--resume", run.name, "--out", str(tmp_path), "--nproc", "2")
    assert resumed.returncode == 2
    assert "was trained by 1 process(es)" in resumed.stderr and "Traceback" not in resumed.stderr


def test_shards_cover_each_batch_once_in_order():
    batch = list(range(11))
    shares = [World(rank, 3).shard(batch) for rank in range(3)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert World(0, 4).shard_batches([[1, 2, 3, 4, 5], [6, 7]]) == [[1, 2]]  # the 2-image tail is skipped
    assert World().shard_batches([[1, 2]]) == [[1, 2]]


def test_launch_flags_are_stripped_for_the_ranks():
    argv = ["run", "--nproc", "2", "--method", "lpt", "--nnodes=1", "--master-port", "29500", "--seed", "1"]
    assert strip_launch_flags(argv) == ["run", "--method", "lpt", "--seed", "1"]


def test_a_two_process_run_interrupted_mid_phase_resumes_to_the_same_weights(tmp_path):
    args = ["run", "--method", "lpt", *FP32, "--set", "phase1_epochs=4", "--set", "phase2_epochs=1",
            "--set", "head_dropout=0", "--set", "agcl_cloud=0", "--nproc", "2"]
    straight = bench(*args, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    out = tmp_path / "stopped"
    started = subprocess.Popen([sys.executable, "-m", "bench", *args, "--out", str(out)], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # stop it once its first epoch is checkpointed
        logs = list(out.glob("runs/*/log.txt"))
        if logs and "lpt_shared epoch 1:" in logs[0].read_text():
            break
        time.sleep(0.2)
    os.killpg(started.pid, signal.SIGINT)
    started.wait(timeout=120)
    run = only_run(out)
    assert json.loads((run / "status.json").read_text())["state"] != "complete"
    resumed = bench("run", "--resume", run.name, "--out", str(out), "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at phase 0 (lpt_shared), epoch" in (run / "log.txt").read_text()
    for phase in ("lpt_shared", "lpt_group"):
        difference = max_difference(only_run(tmp_path / "straight") / "checkpoints" / f"phase-{phase}.pt",
                                    run / "checkpoints" / f"phase-{phase}.pt")
        assert difference < 1e-5, (phase, difference)
    assert record_of(out)["test"] == record_of(tmp_path / "straight")["test"]


def test_a_data_parallel_trial_larger_than_this_machines_ray_is_refused_before_anything_is_written(tmp_path):
    pytest.importorskip("ray")
    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, ["sweep", "--nproc-per-trial", "2", "--cpus-per-trial", "64", "--out",
                                      str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "a trial needs 64.1 CPU, 0 GPU at once" in result.output and "ask for less per trial" in result.output
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--gpus-per-trial", "2"], "add --nproc-per-trial 2"),
    (["--nproc-per-trial", "2", "--gpus-per-trial", "1"], "pass --gpus-per-trial 2 (or 0 for CPU processes)"),
    (["--nproc-per-trial", "2", "--executor", "local"], "needs --executor ray"),
    (["--nproc-per-trial", "0"], "need at least 1"),
])
def test_a_sweep_trial_is_not_given_gpus_it_cannot_use(tmp_path, flags, message):
    from typer.testing import CliRunner

    from bench.cli import app

    for command in (["sweep"], ["ablate"], ["benchmark", "embedded"]):
        result = CliRunner().invoke(app, [*command, *flags, "--out", str(tmp_path)])
        assert result.exit_code == 2 and message in result.output, (command, result.output)
        assert not (tmp_path / "sweeps").exists() and not (tmp_path / "benchmarks").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--nproc", "2", "--nnodes", "2"], "--nnodes > 1 needs --master-addr HOST and --master-port PORT"),
    (["--nproc", "2", "--nnodes", "2", "--node-rank", "2", "--master-port", "29500"], "0 ≤ node-rank < nnodes"),
])
def test_a_launch_that_cannot_work_is_one_line_before_any_process_starts(tmp_path, flags, message):
    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, ["run", "--method", "linear_probe", "--out", str(tmp_path), *flags])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "runs").exists()

"""Sweeps and ablations: search spaces, both executors (in-process and a real local Ray), ASHA, retries and
resume. Trials are linear probes over the tiny random ViT on the embedded digits (about a second each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from bench.callbacks import Callback
from bench.errors import BenchError
from bench.hparams import Choice, HParam, IntRange, LogUniform, Uniform, parse_assignments
from bench.run_spec import RunSpec
from bench.store import ResultsStore
from bench.sweeps.define import Request, define_ablation, define_sweep, execute_sweep, load_for_resume
from bench.sweeps.execution import Execution
from bench.sweeps.space import apply_space_file, grid, random_configs, read_space_file

PINS = ["epochs=3", "loss=ce"]  # a short probe


def request(tmp_path, executor="local", method="clip_probe", assignments=PINS, nproc_per_trial=1,
            **changes) -> Request:
    run = RunSpec(method=method, dataset="digits_lt", overrides=parse_assignments(assignments), out=str(tmp_path))
    return Request(run, Execution(executor=executor, cpus_per_trial=1, nproc_per_trial=nproc_per_trial), **changes)


def sweep_of(tmp_path, trials=4, search="random", scheduler="none", **changes):
    return define_sweep(request(tmp_path, **changes), trials, search, scheduler, None, search_seed=0,
                        grace_period=1, reduction_factor=3)


def quiet() -> Console:
    return Console(quiet=True)


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    from bench.sweeps.ray_cluster import init_ray

    init_ray(None)
    yield ray
    ray.shutdown()


class FailFirstAttempt(Callback):
    """Fault injection: the first attempt of trial t001 crashes after its first epoch."""

    def on_epoch_end(self, entry: dict, run_dir: Path) -> None:
        marker = run_dir.parent.parent / "crashed-t001"
        if run_dir.name.endswith("-t001") and not marker.exists():
            marker.touch()
            raise RuntimeError("injected crash")


# -- search spaces ---------------------------------------------------------------------------------------------

DECLARED = {"lr": HParam(0.1, LogUniform(0.01, 1.0)), "depth": HParam(2, IntRange(1, 3)),
            "act": HParam("relu", Choice(("relu", "gelu"))), "drop": HParam(0.0, Uniform(0.0, 0.5)),
            "flag": HParam(False)}


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "lr: {log_uniform: [0.001, 0.1]}\ndepth: {choice: [1, 2]}\nact: default\nflag: true\n"),
    (".toml", 'lr = {log_uniform = [0.001, 0.1]}\ndepth = {choice = [1, 2]}\nact = "default"\nflag = true\n'),
])
def test_space_file_changes_searches_and_pins(tmp_path, suffix, text):
    path = tmp_path / f"space{suffix}"
    path.write_text(text)
    space = {name: hp.space for name, hp in DECLARED.items() if hp.space}
    changed, pins = apply_space_file(space, read_space_file(path), DECLARED, "test")
    assert changed["lr"] == LogUniform(0.001, 0.1)
    assert changed["depth"] == Choice((1, 2))
    assert "act" not in changed and changed["drop"] == Uniform(0.0, 0.5)
    assert pins == {"flag": "true"}


@pytest.mark.parametrize("content, message", [
    ({"lrr": {"uniform": [0, 1]}}, "unknown hyperparameter 'lrr'"),
    ({"lr": {"normal": [0, 1]}}, "expected one of"),
    ({"lr": {"log_uniform": [0, 1]}}, "log_uniform needs low > 0"),
    ({"depth": "three"}, "expected int"),
])
def test_bad_space_file_entries_are_refused(content, message):
    with pytest.raises(BenchError, match=message):
        apply_space_file({}, content, DECLARED, "test")


def test_grid_covers_discrete_spaces_and_refuses_continuous_ones():
    assert grid({"depth": IntRange(1, 2), "act": Choice(("relu", "gelu"))}) == [
        {"act": "relu", "depth": 1}, {"act": "relu", "depth": 2}, {"act": "gelu", "depth": 1},
        {"act": "gelu", "depth": 2}]
    with pytest.raises(BenchError, match="lr is continuous"):
        grid({"lr": LogUniform(0.01, 1.0)})


def test_random_draws_of_a_name_do_not_depend_on_the_others():
    before = random_configs({"lr": LogUniform(0.01, 1.0)}, 3, seed=5)
    after = random_configs({"lr": LogUniform(0.01, 1.0), "depth": IntRange(1, 3)}, 3, seed=5)
    assert [c["lr"] for c in before] == [c["lr"] for c in after]
    assert len({c["lr"] for c in before}) == 3


def test_sweeps_refuse_test_metrics_and_unknown_keys(tmp_path):
    with pytest.raises(BenchError, match="validation metrics only; use val_few"):
        sweep_of(tmp_path, metric="test_few")
    with pytest.raises(BenchError, match="--set lrate: unknown key"):
        sweep_of(tmp_path, assignments=["lrate=0.1"])
    with pytest.raises(BenchError, match="--set lrate: unknown key"):
        define_ablation(request(tmp_path, method="lptpp", assignments=["lrate=0.1"]), None, 1)
    assert not (tmp_path / "sweeps").exists()


def test_embedded_sweep_keeps_the_presets_but_searches_its_names(tmp_path):
    from bench.prepare import with_embedded_preset
    from bench.sweeps.trial import trial_spec

    sweep = define_sweep(request(tmp_path, method="lpt", assignments=[]), 2, "random", "none", None, 0, 1, 3)
    assert sweep.space["shared_layers"] == IntRange(1, 3)  # the 4-block micro ViT cannot take 3..9
    trial = sweep.trials[0]
    spec, note = with_embedded_preset(trial_spec(sweep.plan, trial))  # what the runner will run
    assert spec.overrides["lr"] == trial.overrides["lr"] != "0.1"  # searched, not pinned by the preset
    assert spec.overrides["phase1_epochs"] == "6" and spec.backbone == "vit_micro.fmnist"
    assert not spec.allow_random_init  # the shipped pretrained tower
    assert "embedded default: vit_micro.fmnist (pretrained weights shipped with lt-bench)" in note


def test_presets_are_the_runners_so_python_callers_get_what_bench_run_gets(tmp_path):
    from bench.prepare import with_embedded_preset

    spec, _ = with_embedded_preset(RunSpec(method="lptpp_vl", dataset="digits", overrides={"phase1_epochs": "1"}))
    assert spec.backbone == "clip_micro" and spec.overrides["phase1_epochs"] == "1"  # --set wins over the preset
    assert spec.overrides["scorer_epochs"] == "2" and spec.overrides["image_size"] == "16"
    chosen = RunSpec(method="lpt", dataset="digits", backbone="vit_tiny_patch16_224")
    assert with_embedded_preset(chosen) == (chosen, None)  # a chosen backbone is not the embedded default


# -- the in-process executor ------------------------------------------------------------------------------------

def test_local_sweep_with_asha_records_every_trial_once(tmp_path):
    sweep = sweep_of(tmp_path, trials=4, scheduler="asha", assignments=["epochs=5", "loss=ce"])
    execute_sweep(sweep, quiet())
    records = ResultsStore(tmp_path).records(sweep=sweep.name)
    assert sorted(r["tags"]["trial"] for r in records) == ["t000", "t001", "t002", "t003"]
    assert "lr" in sweep.space and "epochs" not in sweep.space  # declared spaces, minus the pins
    assert all(r["tags"]["kind"] == "sweep" and r["tags"]["searched"] == ",".join(sorted(sweep.space))
               for r in records)
    for record in records:  # the trial's sampled values are what the run used
        trial = next(t for t in sweep.trials if t.key == record["tags"]["trial"])
        assert record["hparams"]["lr"] == float(trial.overrides["lr"])
    stopped = [r for r in records if r["stopped_early"]]
    assert stopped, "ASHA stopped no trial: the stopped path went untested"
    assert all(r["epochs_trained"] < 5 for r in stopped)
    assert all(r["epochs_trained"] == 5 for r in records if not r["stopped_early"])


def test_local_optuna_sweep_resumes_after_an_interrupt(tmp_path):
    class InterruptThirdTrial(Callback):
        def on_epoch_end(self, entry: dict, run_dir: Path) -> None:
            if run_dir.name.endswith("-t002") and entry["step"] == 2 and not (tmp_path / "interrupted").exists():
                (tmp_path / "interrupted").touch()
                raise KeyboardInterrupt

    sweep = sweep_of(tmp_path, trials=4, search="optuna")
    sweep.plan.callbacks.append(InterruptThirdTrial())
    with pytest.raises(KeyboardInterrupt):
        execute_sweep(sweep, quiet())
    assert len(ResultsStore(tmp_path).records(sweep=sweep.name)) == 2
    resumed = load_for_resume(sweep.name, None, str(tmp_path))
    execute_sweep(resumed, quiet(), resume=True)
    records = ResultsStore(tmp_path).records(sweep=sweep.name)
    assert sorted(r["tags"]["trial"] for r in records) == ["t000", "t001", "t002", "t003"]
    interrupted = next(r for r in records if r["tags"]["trial"] == "t002")
    manifest = json.loads((Path(interrupted["run_dir"]) / "manifest.json").read_text())
    assert len(manifest["resumes"]) == 1  # continued from its checkpoint, not restarted


def test_local_trial_crashing_once_is_retried(tmp_path):
    sweep = sweep_of(tmp_path, trials=2)
    sweep.plan.callbacks.append(FailFirstAttempt())
    execute_sweep(sweep, quiet())
    assert (tmp_path / "crashed-t001").exists()
    assert len(ResultsStore(tmp_path).records(sweep=sweep.name)) == 2


def test_ablation_runs_registered_variants_times_seeds(tmp_path):
    from bench.sweeps.summary import ablation_summary

    with pytest.raises(BenchError, match="not a variant of lptpp"):
        define_ablation(request(tmp_path, method="lptpp", assignments=[]), ["lpt"], 1)
    one_epoch = [f"{phase}_epochs=1" for phase in ("phase1", "phase2", "adapter", "scorer")]
    ablation = define_ablation(request(tmp_path, method="lptpp", assignments=["adapter_bottleneck=8", *one_epoch]),
                               ["lptpp", "lptpp_mean"], seeds=2)
    assert [t.key for t in ablation.trials] == ["lptpp-s0", "lptpp-s1", "lptpp_mean-s0", "lptpp_mean-s1"]
    execute_sweep(ablation, quiet())
    records = ResultsStore(tmp_path).records(sweep=ablation.name)
    assert sorted((r["method"], r["seed"]) for r in records) == [
        ("lptpp", 0), ("lptpp", 1), ("lptpp_mean", 0), ("lptpp_mean", 1)]
    assert all(r["tags"]["kind"] == "ablation" and r["tags"]["base_method"] == "lptpp" for r in records)
    console = Console(record=True, width=150)
    ablation_summary(ablation, console)
    assert "lptpp_mean" in console.export_text()


# -- Ray ---------------------------------------------------------------------------------------------------------

class FakeTuner:
    """What `run_ray` touches of a Tuner: fit, and (optionally) the private run config of a restored one. `ends`:
    'normally' leaves Ray Tune's own SIGINT handler installed, as Ray does; 'by Ctrl-C' puts the previous back."""

    def __init__(self, ends: str = "normally", internals: bool = True):
        from types import SimpleNamespace

        self.ends = ends
        if internals:
            self._local_tuner = SimpleNamespace(_run_config=SimpleNamespace(callbacks=None))

    def fit(self) -> str:
        if self.ends == "normally":
            signal.signal(signal.SIGINT, lambda *args: None)
        return "results"


def ray_versions_around_the_floor() -> tuple[list[str], list[str]]:
    """(versions the Ray internals may be used on, versions they may not), from the declared floor."""
    from packaging.version import Version

    from bench.sweeps.ray_tune import ray_floor

    floor = Version(next(iter(ray_floor())).version)
    below = f"{floor.major}.{floor.minor - 1}.0" if floor.minor else f"{floor.major - 1}.99.0"
    return [str(floor), f"2.{max(floor.minor, 60)}.1"], [below, "3.0.0", "3.0.0.dev0"]


def test_ray_internals_are_used_only_on_checked_ray_versions(monkeypatch):
    ray = pytest.importorskip("ray")
    from bench.sweeps.ray_tune import _attach_callbacks, _fit_noting_interrupt

    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    checked, unchecked = ray_versions_around_the_floor()
    before = signal.getsignal(signal.SIGINT)
    try:
        for version in checked + unchecked:
            monkeypatch.setattr(ray, "__version__", version)
            ok, warnings = version in checked, []
            tuner = FakeTuner()
            assert _attach_callbacks(tuner, ["live"]) is ok, version
            assert tuner._local_tuner._run_config.callbacks == (["live"] if ok else None), version
            assert not _attach_callbacks(FakeTuner(internals=False), ["live"])  # no private attribute: no crash
            assert _fit_noting_interrupt(tuner, warnings.append) == ("results", not ok), version
            signal.signal(signal.SIGINT, before)
            assert _fit_noting_interrupt(FakeTuner(ends="by Ctrl-C"), warnings.append) == ("results", True)
            assert len(warnings) == (0 if ok else 2) and all("--resume" in w for w in warnings), version
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.slow
def test_ray_sweep_with_optuna_and_asha_records_four_trials(tmp_path, ray_session):
    sweep = sweep_of(tmp_path, executor="ray", trials=4, search="optuna", scheduler="asha")
    execute_sweep(sweep, quiet())
    records = ResultsStore(tmp_path).records(sweep=sweep.name)
    assert len(records) == 4
    assert all(r["sweep"] == sweep.name and r["tags"]["sweep"] == sweep.name for r in records)
    assert len({r["tags"]["trial"] for r in records}) == 4


@pytest.mark.slow
def test_ray_retries_a_trial_that_crashes_once(tmp_path, ray_session):
    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    sweep = sweep_of(tmp_path, executor="ray", trials=2)
    sweep.plan.callbacks.append(FailFirstAttempt())
    execute_sweep(sweep, quiet())
    assert (tmp_path / "crashed-t001").exists()
    assert sorted(r["tags"]["trial"] for r in ResultsStore(tmp_path).records(sweep=sweep.name)) == ["t000", "t001"]


@pytest.mark.slow
def test_local_and_ray_executors_give_the_same_metrics(tmp_path, ray_session):
    results = {}
    for executor in ("local", "ray"):
        sweep = sweep_of(tmp_path / executor, executor=executor, trials=1)
        execute_sweep(sweep, quiet())
        (record,) = ResultsStore(tmp_path / executor).records(sweep=sweep.name)
        results[executor] = record
    assert results["local"]["hparams"] == results["ray"]["hparams"]
    assert results["local"]["val"] == results["ray"]["val"]
    assert results["local"]["test"] == results["ray"]["test"]


@pytest.mark.slow
def test_interrupted_ray_sweep_resumes_without_duplicates(tmp_path):
    pytest.importorskip("ray")
    foreground = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "  # not an inherited ignore
    command = [sys.executable, "-c", foreground + "from bench.cli import app; app()", "sweep", "--method", "clip_probe",
               "--trials", "4", "--cpus-per-trial", "1",  # the defaults: Optuna + ASHA on Ray
               "--set", "epochs=20", "--set", "loss=ce", "--out", str(tmp_path), "--name", "cut"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    records = tmp_path / "records"
    deadline = time.monotonic() + 240
    while not (records.is_dir() and any(records.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # Ctrl-C part-way: at least one trial recorded, not all
    output, _ = process.communicate(timeout=120)
    first = len(ResultsStore(tmp_path).records(sweep="cut"))
    assert 1 <= first < 4, output
    resumed = subprocess.run([*command[:3], "sweep", "--resume", "--name", "cut", "--out", str(tmp_path)],
                             env=env, capture_output=True, text=True, timeout=400, check=False)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    records_after = ResultsStore(tmp_path).records(sweep="cut")
    assert len({r["tags"]["trial"] for r in records_after}) == 4, output + resumed.stdout
    assert len(list((tmp_path / "records").glob("cut-*.json"))) == 4
    for record in records_after:  # ASHA's stops are evaluated; a trial the interrupt cut short ran to the end
        assert record["epochs_trained"] == 20 or record["stopped_early"]["reason"] == "asha"
    assert "re-run it: bench run --method clip_probe" in resumed.stdout


def test_a_ray_sweep_started_before_the_move_into_bench_sweeps_still_restores():
    pytest.importorskip("ray")
    import pickle
    import sys

    from bench.sweeps.ray_hooks import RecordingASHA
    from bench.sweeps.ray_tune import alias_moved_modules

    old_pickle = b"cbench.ray_hooks\nRecordingASHA\n."  # how a Tuner saved before the move names its scheduler
    sys.modules.pop("bench.ray_hooks", None)
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(old_pickle)
    alias_moved_modules()
    try:
        assert pickle.loads(old_pickle) is RecordingASHA
    finally:
        sys.modules.pop("bench.ray_hooks", None)


def test_a_sweep_json_in_the_flat_layout_loads_with_its_execution(tmp_path):
    """sweep.json as written before Execution (2026-12-06): executor, max_failures, gpus_per_trial and address
    were keys of the sweep, cpus_per_trial and nproc keys of its plan. It loads, resumes as it was started, and
    is saved again in the new layout."""
    from bench.sweeps.sweep import Sweep

    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({
        "name": "old", "storage": str(tmp_path),
        "plan": {"kind": "benchmark", "run": {
            "method": "linear_probe", "dataset": "digits_lt", "backbone": None, "weights": None, "data_root": None,
            "overrides": {}, "seed": 0, "out": str(tmp_path), "device": "auto", "allow_download": False,
            "allow_random_init": False, "sweep": "old", "tags": {"protocol": "embedded", "stage": "seeds"},
            "checkpoint": None, "trackers": []}, "cpus_per_trial": 2, "nproc": 1},
        "base": {"key": "", "method": "linear_probe", "seed": 0, "overrides": {}, "searched": [], "backbone": None},
        "search": "fixed", "space": {},
        "trials": [{"key": "linear_probe-s0", "method": "linear_probe", "seed": 0, "overrides": {"epochs": "1"},
                    "searched": [], "backbone": None}],
        "num_trials": 1, "metric": "val_mean_per_class", "scheduler": "none", "grace_period": 1,
        "reduction_factor": 3, "seed": 0, "executor": "local", "max_failures": 3, "gpus_per_trial": 0.5,
        "address": "auto", "embedded": False, "created_at": "2026-12-06T06:13:10+00:00"}))
    sweep = Sweep.load(folder)
    assert sweep.execution == Execution(executor="local", address="auto", max_failures=3, cpus_per_trial=2,
                                        gpus_per_trial=0.5, nproc_per_trial=1)
    assert sweep.plan.run.tags["stage"] == "seeds" and [t.key for t in sweep.trials] == ["linear_probe-s0"]
    sweep.save()
    saved = json.loads((folder / "sweep.json").read_text())
    assert saved["execution"]["cpus_per_trial"] == 2 and "executor" not in saved and "nproc" not in saved["plan"]
    assert Sweep.load(folder) == sweep


def test_rerun_command_quotes_paths_with_spaces(tmp_path):
    import shlex

    from bench.sweeps.sweep import Sweep, rerun_command
    from bench.sweeps.trial import Trial, TrialPlan

    plan = TrialPlan("sweep", RunSpec(method="linear_probe", dataset="folder", out=str(tmp_path),
                                      data_root="/data/my images", sweep="s"))
    sweep = Sweep(name="s", storage=str(tmp_path), plan=plan, base=Trial(key="", method="linear_probe", seed=0,
                                                                          overrides={"wd_steps": "2"}))
    record = {"method": "linear_probe", "hparams": {}, "backbone": "vit_tiny_patch16_224", "seed": 3}
    words = shlex.split(rerun_command(record, sweep))
    assert words[words.index("--data-root") + 1] == "/data/my images"
    assert words[:2] == ["bench", "run"] and words[words.index("--seed") + 1] == "3"
    assert "--nproc" not in words
    sweep.execution = Execution(nproc_per_trial=4)  # a data-parallel trial is repeated with its world size
    words = shlex.split(rerun_command(record, sweep))
    assert words[words.index("--nproc") + 1] == "4"


class LoseRankOneOnce(Callback):
    """Fault injection: rank 1 of trial t000's job dies (its process exits) after the first epoch, once."""

    def on_epoch_end(self, entry: dict, run_dir: Path) -> None:
        from bench.distributed import world

        marker = run_dir.parents[5] / "lost-rank-1"  # run_dir: <out>/runs/<run>/ranks/1/runs/<run>
        if world().rank == 1 and run_dir.name.endswith("-t000") and not marker.exists():
            marker.touch()
            os._exit(1)


@pytest.mark.slow
def test_a_sweep_of_data_parallel_trials_runs_each_as_a_two_process_job_under_asha(tmp_path, ray_session):
    """--nproc-per-trial 2 on CPUs (gloo): each trial is a Ray Train job of two ranks. Rank 1 of the first trial
    dies after an epoch: the job fails, Tune retries the trial and its run resumes from rank 0's checkpoint.
    Rank 0's validated epochs reach ASHA, which stops the hopeless trial (lr 1e-7) at its first rung; the sweep
    then evaluates it where its last checkpoint left it, with a job of the same size. Both records say world
    size 2."""
    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    sweep = define_sweep(request(tmp_path, executor="ray", method="lpt", nproc_per_trial=2,
                                 assignments=["phase1_epochs=2", "phase2_epochs=1"]),
                         2, "random", "asha", None, search_seed=0, grace_period=1, reduction_factor=2)
    sweep.trials = [sweep.make_trial("t000", {"lr": 0.1}), sweep.make_trial("t001", {"lr": 1e-7})]
    sweep.plan.callbacks.append(LoseRankOneOnce())
    execute_sweep(sweep, quiet())
    assert (tmp_path / "lost-rank-1").exists()
    records = {r["tags"]["trial"]: r for r in ResultsStore(tmp_path).records(sweep=sweep.name)}
    assert sorted(records) == ["t000", "t001"]
    assert len(list((tmp_path / "records").glob(f"{sweep.name}-*.json"))) == 2  # no duplicates
    for record in records.values():
        assert record["world"]["size"] == 2 and len(record["world"]["devices"]) == 2
        assert record["tags"]["node"]
        assert (tmp_path / "runs" / record["run_id"] / "ranks" / "1").is_dir()  # rank 1's scratch folder
    assert not records["t000"]["stopped_early"] and records["t000"]["epochs_trained"] == 3
    manifest = json.loads((tmp_path / "runs" / records["t000"]["run_id"] / "manifest.json").read_text())
    assert len(manifest["resumes"]) == 1  # the retry went on from the epoch rank 0 had saved
    # the workers do not wait for ASHA's answer, so the job may train on a little before Tune ends it
    assert records["t001"]["stopped_early"] == {"reason": "asha", "epoch": 1}
    assert 1 <= records["t001"]["epochs_trained"] < 3
    print(f"t000: rank 1 lost after epoch 1, the trial retried and resumed from rank 0's checkpoint, "
          f"{records['t000']['epochs_trained']} epochs, val overall {records['t000']['val']['overall']:.2f}; "
          f"t001: ASHA stopped it at the epoch-1 rung, evaluated by a 2-process job after "
          f"{records['t001']['epochs_trained']} epoch(s), val overall {records['t001']['val']['overall']:.2f}")
    assert records["t001"]["val"]["overall"] < records["t000"]["val"]["overall"]

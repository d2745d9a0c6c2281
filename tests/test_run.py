"""End to end: `bench run` on the embedded dataset, resume, feature cache, and bad input."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import OnEpoch
from typer.testing import CliRunner

from bench import runner
from bench.callbacks import Callback
from bench.cli import app
from bench.store import ResultsStore

FAST = {"epochs": "2", "image_size": "16", "batch_size": "64", "val_every": "1"}


def fast_spec(tmp_path, method="finetune", **overrides):
    return runner.RunSpec(method=method, dataset="digits_lt", backbone="vit_micro", allow_random_init=True,
                          out=str(tmp_path), overrides={**FAST, **overrides})


class Recorder(Callback):
    def __init__(self):
        self.seen = []

    def on_epoch_end(self, entry: dict, run_dir) -> None:
        self.seen.append(("epoch", entry["phase"], entry["epoch"], run_dir.name))

    def on_phase_end(self, phase: str, selected: dict, run_dir) -> None:
        self.seen.append(("phase", phase, selected["epoch"], run_dir.name))


def test_finetune_run_writes_folder_and_record(tmp_path):
    recorder = Recorder()
    result = runner.execute(fast_spec(tmp_path), callbacks=[recorder])
    selected = result.record["selected"][0]
    # hooks number epochs from 1, as the log does (the record's `selected` counts from 0)
    assert recorder.seen == [("epoch", "full", 1, result.run_id), ("epoch", "full", 2, result.run_id),
                             ("phase", "full", selected["epoch"] + 1, result.run_id)]
    log = (result.run_dir / "log.txt").read_text()
    assert "full epoch 1:" in log and "full epoch 2:" in log
    assert re.search(r"full epoch 1: .*; run: \d+:\d\d:\d\d left\)", log)  # the whole run's time left
    assert not re.search(r"full epoch 2: .*; run:", log)  # after the last epoch: nothing
    assert 0.0 <= result.record["data_wait_share"] < 1.0  # the share of training time spent waiting for batches
    history = json.loads((result.run_dir / "metrics.json").read_text())["history"]
    assert all(entry["seconds"] > 0 and 0.0 <= entry["data_wait_share"] < 1.0 for entry in history)
    assert result.record["data_paths"] == {s: "uint8 pixels in memory 8×8" for s in ("train", "val", "test")}
    for name in ("config.json", "metrics.json", "per_class.csv", "manifest.json", "log.txt", "status.json",
                 "checkpoints/last.pt"):
        assert (result.run_dir / name).exists(), name
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["pretrained"] is False
    assert manifest["weights"]["source"] == "random"
    assert manifest["packages"]["torch"]
    frame = ResultsStore(tmp_path).frame()
    assert frame.height == 1
    record = result.record
    assert record["pretrained"] is False
    assert any("random" in note for note in record["notes"])
    assert 0 <= record["test"]["overall"] <= 100
    assert record["trainable_params"] == record["total_params"]
    lines = (result.run_dir / "per_class.csv").read_text().splitlines()
    assert len(lines) == 1 + 10


def test_resume_after_interrupt_matches_uninterrupted(tmp_path):
    full = runner.execute(fast_spec(tmp_path / "a", epochs="3"))

    def interrupt_after_first_epoch(entry):
        if entry["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.execute(fast_spec(tmp_path / "b", epochs="3"), callbacks=[OnEpoch(interrupt_after_first_epoch)])
    run_dir = next((tmp_path / "b" / "runs").iterdir())
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
    assert not (run_dir / "metrics.json").exists()
    resumed = runner.resume(run_dir)
    assert resumed.run_dir == run_dir
    assert len(json.loads((run_dir / "manifest.json").read_text())["resumes"]) == 1
    assert resumed.record["test"] == full.record["test"]
    assert resumed.record["val"] == full.record["val"]
    assert len(ResultsStore(tmp_path / "b")) == 1


def test_linear_probe_caches_features(tmp_path):
    probe = {"image_size": "16", "wd_steps": "3"}
    first = runner.execute(runner.RunSpec(method="linear_probe", dataset="digits_lt", backbone="vit_micro",
                                          allow_random_init=True, out=str(tmp_path), overrides=probe))
    cached = list((tmp_path / "cache" / "features").glob("*.pt"))
    assert len(cached) == 3  # train, val, test
    second = runner.execute(runner.RunSpec(method="linear_probe", dataset="digits_lt", backbone="vit_micro",
                                           allow_random_init=True, out=str(tmp_path), overrides=probe))
    assert "from cache" in (second.run_dir / "log.txt").read_text()
    assert second.record["test"] == first.record["test"]
    assert first.record["trainable_params"] == 64 * 10 + 10


@pytest.mark.parametrize("args, message, code", [  # 2: the command is wrong; 1: what it names is missing
    (["--method", "finetun"], "did you mean finetune", 2),
    (["--dataset", "imagenet_tl"], "did you mean imagenet_lt", 2),
    (["--set", "lr=fast"], "expected float", 2),
    (["--set", "learning_rate=0.1"], "unknown key", 2),
    (["--set", "epochs"], "expected key=value", 2),
    (["--dataset", "places_lt", "--data-root", "/nonexistent/places"], "does not exist", 1),
    (["--backbone", "vit_tiny_patch16_224", "--weights", "/nonexistent/w.safetensors"], "w.safetensors", 1),
])
def test_bad_input_is_one_line_and_leaves_no_run(tmp_path, args, message, code):
    result = CliRunner().invoke(app, ["run", "--out", str(tmp_path), *args])
    assert result.exit_code == code
    output = result.output.strip()
    assert message in output
    assert "Traceback" not in output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_split_file_names_the_file(tmp_path):
    root = tmp_path / "ImageNet_LT"
    root.mkdir()
    result = CliRunner().invoke(app, ["run", "--dataset", "imagenet_lt", "--data-root", str(root),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "ImageNet_LT_train.txt" in result.output


def test_show_prints_metrics_and_show_report_and_runs_never_import_torch(tmp_path):
    import subprocess
    import sys

    from bench.record import RECORD_VERSION

    result = runner.execute(fast_spec(tmp_path, epochs="1", warmup_epochs="0"))
    assert result.record["record_version"] == RECORD_VERSION
    shown = CliRunner().invoke(app, ["show", result.run_id, "--out", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "overall" in shown.output and "few" in shown.output
    light = ("import sys; from typer.testing import CliRunner; from bench.cli import app; "
             f"shown = CliRunner().invoke(app, ['show', {result.run_id!r}, '--out', {str(tmp_path)!r}]); "
             f"made = CliRunner().invoke(app, ['report', '--out', {str(tmp_path)!r}, '-f', 'md']); "
             f"listed = CliRunner().invoke(app, ['runs', '--out', {str(tmp_path)!r}]); "
             "print(shown.exit_code, made.exit_code, listed.exit_code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "0", "0", "False"], done.stdout + done.stderr


def test_a_record_from_a_newer_harness_is_refused_by_the_report(tmp_path):
    from bench.record import RECORD_VERSION
    from bench.store import ResultsStore
    result = runner.execute(fast_spec(tmp_path, epochs="1", warmup_epochs="0"))
    ResultsStore(tmp_path).add({**result.record, "record_version": RECORD_VERSION + 1}, overwrite=True)
    made = CliRunner().invoke(app, ["report", "--out", str(tmp_path), "-f", "md"])
    assert made.exit_code != 0 and "written by a newer harness" in made.output


def test_list_shows_every_registry():
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ("linear_probe", "finetune", "imagenet_lt", "places_lt", "inat2018", "cifar10_lt", "digits_lt",
                 "vit_micro"):
        assert name in result.output


def test_corrupt_image_mid_run_fails_cleanly(tmp_path):
    from conftest import write_image

    data = tmp_path / "data"
    for cls in ("a", "b"):
        for i in range(4):
            write_image(data / f"train/{cls}/{i}.png", seed=i)
        write_image(data / f"test/{cls}/0.png")
    (data / "test/b/0.png").write_bytes(b"\x89PNG broken")
    result = CliRunner().invoke(app, ["run", "--method", "linear_probe", "--dataset", "folder", "--data-root",
                                      str(data), "--backbone", "vit_micro", "--random-init", "--set", "val_per_class=1",
                                      "--set", "image_size=16", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "corrupt or unreadable image" in result.output and "test/b/0.png" in result.output
    run_dir = next((tmp_path / "out" / "runs").iterdir())
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    assert not (run_dir / "metrics.json").exists()
    assert len(ResultsStore(tmp_path / "out")) == 0


def test_a_run_whose_setup_fails_is_listed_and_shown_with_its_error(tmp_path, monkeypatch):
    """A method's own check of its options fails in its setup (PEMT's source datasets, absent here): one error
    line, exit 1, and the run is in `bench runs` and `bench show` as failed, with that error."""
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    cli, out = CliRunner(), str(tmp_path)
    result = cli.invoke(app, ["run", "--method", "pemt", "--set", "sources=datasets", "--out", out])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith(
        "error: pemt: sources=datasets reads the other registered datasets from $BENCH_DATA_ROOT, which is not set")
    listed = cli.invoke(app, ["runs", "--out", out])
    assert listed.exit_code == 0 and "failed" in listed.output and "pemt" in listed.output, listed.output
    shown = cli.invoke(app, ["show", "latest", "--out", out])
    assert shown.exit_code == 0 and "failed: BenchError: pemt: sources=datasets" in " ".join(shown.output.split())
    assert "sources" in shown.output and "no record in the store yet" in shown.output


def test_sigkilled_run_resumes_to_the_same_metrics(tmp_path):
    """A real kill (SIGKILL, no clean-up) mid-training; `bench run --resume` finishes it identically."""
    import os
    import signal
    import subprocess
    import sys
    import time

    settings = {**FAST, "epochs": "12"}
    args = ["--method", "finetune", "--dataset", "digits_lt", "--backbone", "vit_micro", "--random-init",
            *[f"--set={k}={v}" for k, v in settings.items()]]
    command = [sys.executable, "-c", "from bench.cli import app; app()", "run", *args]
    process = subprocess.Popen([*command, "--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    checkpoint = None
    while time.time() < deadline and process.poll() is None:
        found = list((tmp_path / "killed").glob("runs/*/checkpoints/last.pt"))
        if found:
            checkpoint = found[0]
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoint is not None, "the run never wrote a checkpoint"
    run_dir = checkpoint.parents[1]
    assert not (run_dir / "metrics.json").exists()
    resumed = CliRunner().invoke(app, ["run", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    full = runner.execute(runner.RunSpec(method="finetune", dataset="digits_lt", backbone="vit_micro",
                                         allow_random_init=True, out=str(tmp_path / "full"), overrides=settings))
    record = ResultsStore(tmp_path / "killed").get(run_dir.name)
    assert record["test"] == full.record["test"]
    assert "resuming at phase" in (run_dir / "log.txt").read_text()


def test_a_diverging_run_is_recorded_with_a_health_flag(tmp_path):
    """A huge learning rate makes the loss non-finite: training stops, the run is evaluated with its last
    finished epoch and recorded with the flag (and its val predictions collapse onto one class)."""
    result = runner.execute(fast_spec(tmp_path, epochs="4", lr="1e12", optimizer="sgd", warmup_epochs="0"))
    health = result.record["health"]
    assert health["ok"] is False
    assert any(flag.startswith("diverged: loss became") for flag in health["flags"]), health
    assert any("training health" in note for note in result.record["notes"])
    assert "training health" in (result.run_dir / "log.txt").read_text()


def test_a_warm_up_as_long_as_the_phase_is_refused(tmp_path):
    from bench.errors import BenchError

    with pytest.raises(BenchError, match=r"full: warmup_epochs=1 covers all of its 1 epoch\(s\)"):
        runner.execute(fast_spec(tmp_path, epochs="1", warmup_epochs="1"))


def test_collapsed_val_predictions_are_flagged():
    from types import SimpleNamespace

    import numpy as np

    dataset = SimpleNamespace(num_classes=4, class_names=["a", "b", "c", "d"])
    collapsed = np.zeros((40, 4))
    collapsed[:, 2] = 1.0
    collapsed[0] = [1, 0, 0, 0]
    assert runner.collapse_flags(collapsed, dataset) == ["collapsed: 98% of val predictions are class 2 ('c')"]
    assert runner.collapse_flags(np.eye(4)[np.arange(40) % 4], dataset) == []
    assert runner.collapse_flags(np.zeros((0, 4)), dataset) == []


def test_a_scheduler_stop_after_the_last_epoch_is_no_early_stop(tmp_path):
    """ASHA does not know a trial's length: its stop can come with the last epoch's report. Nothing was cut
    short, so the record says the run finished (and a sweep may choose it)."""
    def stop_at_the_end(entry):
        if entry["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.execute(fast_spec(tmp_path, epochs="2"), callbacks=[OnEpoch(stop_at_the_end)])
    run_dir = next((tmp_path / "runs").iterdir())
    record = runner.execute(fast_spec(tmp_path, epochs="2"), run_dir=run_dir,
                            stopped_early={"reason": "asha", "epoch": 2}).record
    assert record["stopped_early"] is None and record["epochs_trained"] == 2


def test_precision_is_fp32_on_a_cpu_unless_bf16_is_asked_for_and_is_recorded(tmp_path, monkeypatch):
    """amp=auto is fp32 on every CPU, bf16 instructions or not; amp=bf16 is honoured, and on a CPU without those
    instructions runs emulated and says so (never silently in fp32). The record, the manifest and the summary
    line `bench run` prints all state the precision; cached features are keyed by it."""
    import bench.hardware
    from bench.cli import metrics_table
    from bench.errors import BenchError

    probe = {"image_size": "16", "wd_steps": "2"}
    spec = runner.RunSpec(method="linear_probe", dataset="digits_lt", backbone="vit_micro", allow_random_init=True,
                          out=str(tmp_path), overrides=probe)

    def with_amp(amp: str) -> runner.RunSpec:
        return runner.RunSpec(**{**spec.__dict__, "overrides": {**probe, "amp": amp}})

    monkeypatch.setattr(bench.hardware, "cpu_has_bf16", lambda: True)
    fp32 = runner.execute(spec)
    assert fp32.record["precision"] == "fp32"
    assert json.loads((fp32.run_dir / "manifest.json").read_text())["amp"] == "fp32"
    assert " in fp32; " in metrics_table(fp32.record).caption.plain
    bf16 = runner.execute(with_amp("bf16"))
    assert bf16.record["precision"] == "bf16" and " in bf16; " in metrics_table(bf16.record).caption.plain
    assert not any("emulated" in note for note in bf16.record["notes"])
    monkeypatch.setattr(bench.hardware, "cpu_has_bf16", lambda: False)
    assert runner.execute(spec).record["precision"] == "fp32"
    emulated = runner.execute(with_amp("bf16"))
    assert emulated.record["precision"] == "bf16"
    assert any("bf16 is emulated" in note for note in emulated.record["notes"])
    with pytest.raises(BenchError, match="amp=fp16 needs a GPU"):
        runner.execute(with_amp("fp16"))
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 6  # 3 splits × 2 precisions


@pytest.mark.parametrize(("amp", "bf16_supported", "expected"), [
    ("auto", True, "bf16"), ("auto", False, "fp16"), ("bf16", True, "bf16"), ("fp16", True, "fp16"),
    ("off", True, "fp32")])
def test_gpus_keep_bf16_autocast_as_the_default(monkeypatch, amp, bf16_supported, expected):
    """On a GPU amp=auto is bf16 autocast, fp16 where the GPU has no bf16 (the rule, without a GPU)."""
    from bench.hardware import amp_dtype, precision_name

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16_supported)
    assert precision_name(amp_dtype(amp, torch.device("cuda"), warn=None)) == expected


def test_data_cache_off_feeds_images_one_by_one(tmp_path):
    """The same run through PIL image by image: recorded as such, and close to the tensor path (the paths
    differ only by interpolation round-off)."""
    cached = runner.execute(fast_spec(tmp_path, epochs="0"))
    per_image = runner.execute(fast_spec(tmp_path, epochs="0", data_cache="off"))
    assert set(per_image.record["data_paths"].values()) == {"image by image (data_cache=off)"}
    assert abs(per_image.record["test"]["overall"] - cached.record["test"]["overall"]) <= 2.0


def test_config_file_reruns_a_run_exactly_and_reads_toml(tmp_path):
    first = runner.execute(fast_spec(tmp_path / "a", epochs="1"))
    result = CliRunner().invoke(app, ["run", "--config", str(first.run_dir / "config.json"),
                                      "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    (again,) = ResultsStore(tmp_path / "b").records()
    assert again["hparams"] == first.record["hparams"] and again["test"] == first.record["test"]
    assert again["backbone"] == "vit_micro" and again["method"] == "finetune"

    toml = tmp_path / "run.toml"
    toml.write_text('method = "linear_probe"\ndataset = "digits_lt"\nbackbone = "vit_micro"\nrandom_init = true\n'
                    "[set]\nimage_size = 8\nwd_steps = 2\n")
    result = CliRunner().invoke(app, ["run", "--config", str(toml), "--out", str(tmp_path / "c"),
                                      "--set", "wd_steps=3"])  # the command line overrides the file
    assert result.exit_code == 0, result.output
    (record,) = ResultsStore(tmp_path / "c").records()
    assert record["method"] == "linear_probe" and record["hparams"]["image_size"] == 8
    assert record["hparams"]["wd_steps"] == 3

    bad = tmp_path / "bad.toml"
    bad.write_text('methd = "lpt"\n')
    result = CliRunner().invoke(app, ["run", "--config", str(bad), "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "unknown key(s) methd" in result.output

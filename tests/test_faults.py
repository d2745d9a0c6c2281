"""Faults a user meets, each one line with a non-zero exit and nothing lost: a full or read-only results root,
corrupt caches and checkpoints, two processes on one run, interrupted writes, Ctrl-C, damaged records."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import OnEpoch
from typer.testing import CliRunner

from bench import runner
from bench.cli import app
from bench.errors import BenchError, shorten
from bench.run_folder import RunLock
from bench.store import ResultsStore

FAST = {"epochs": "2", "image_size": "16", "batch_size": "64"}
CLI_FAST = [f"--set={key}={value}" for key, value in FAST.items()]
# `bench` as a terminal's foreground job runs it: Ctrl-C raises KeyboardInterrupt even when this test process
# was started with SIGINT ignored (CI in the background).
FOREGROUND_CLI = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                  "from bench.cli import app; app()")


PROBE = {"image_size": "16", "wd_steps": "3"}


def fast_spec(out, method="finetune", **overrides):
    settings = PROBE if method == "linear_probe" else FAST
    return runner.RunSpec(method=method, dataset="digits_lt", backbone="vit_micro", allow_random_init=True,
                          out=str(out), overrides={**settings, **overrides})


def interrupted_run(out, method="finetune"):
    """A run Ctrl-C'd after its first epoch (checkpointed, status interrupted); returns its folder."""
    def stop(entry):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.execute(fast_spec(out, method=method), callbacks=[OnEpoch(stop)])
    return next((out / "runs").iterdir())


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def one_line(output: str) -> str:
    """The one error line, which ends the output (the run's own log may come before it)."""
    lines = output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], output
    return errors[0]


# ------------------------------------------------------------------ results roots that cannot be written

@contextmanager
def mounted_tmpfs(folder: Path, size: str, read_only: bool = False):
    """A small tmpfs at `folder` (root only: skips elsewhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_read_only_results_root_is_one_line_before_anything_runs(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "1m", read_only=True) as out:
        result = invoke("run", "--method", "finetune", "--out", str(out), *CLI_FAST)
    assert result.exit_code == 1
    line = one_line(result.output)
    assert f"cannot write to the results root {out}" in line and "Read-only file system" in line
    assert "--out DIR" in line


def test_results_root_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    result = invoke("run", "--method", "finetune", "--out", str(tmp_path / "file" / "results"), *CLI_FAST)
    assert result.exit_code == 1
    assert "cannot write to the results root" in one_line(result.output)


def checkpoint_bytes(tmp_path) -> int:
    probe = runner.execute(fast_spec(tmp_path / "probe", epochs="1", warmup_epochs="0"))
    return (probe.run_dir / "checkpoints" / "last.pt").stat().st_size


def test_full_disk_during_a_checkpoint_fails_in_one_line_and_resumes_once_space_is_back(tmp_path):
    """On a tmpfs with room for one checkpoint but not a second beside it (atomic writes need both), the
    second epoch's checkpoint write fails: one line naming the cause and the resume command; once the disk
    is larger, `--resume` finishes the run with the uninterrupted run's numbers."""
    size = checkpoint_bytes(tmp_path)
    full = runner.execute(fast_spec(tmp_path / "full", epochs="3"))
    with mounted_tmpfs(tmp_path / "small", f"{int(size * 1.6) // 4096 * 4096}") as out:
        result = invoke("run", "--method", "finetune", "--backbone", "vit_micro", "--random-init",
                        "--out", str(out), *CLI_FAST, "--set=epochs=3")
        assert result.exit_code == 1, result.output
        line = one_line(result.output)
        assert "No space left on device" in line and "bench run --resume" in line, line
        run_dir = next((out / "runs").iterdir())
        assert not list(run_dir.glob("checkpoints/.*.tmp")), "a failed write left its temp file"
        assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
        subprocess.run(["mount", "-o", "remount,size=64m", str(out)], check=True)
        resumed = invoke("run", "--resume", run_dir.name, "--out", str(out))
        assert resumed.exit_code == 0, resumed.output
        record = ResultsStore(out).get(run_dir.name)
    assert record["test"] == full.record["test"] and record["val"] == full.record["val"]


class FullAfter:
    """A file on a disk with `room` bytes left: a write that does not fit fails with ENOSPC."""

    def __init__(self, handle, room: int):
        self.handle, self.room, self.written = handle, room, 0

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if self.written + size > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += size
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def disk_full_after(monkeypatch, room: int, when=lambda path: True) -> None:
    """Every atomic write whose target `when` accepts gets a disk with `room` bytes left; torch's zip writer
    (checkpoints) writes into it as it would into the real temp file."""
    from bench import atomic_io

    original = atomic_io.write_temp
    monkeypatch.setattr(atomic_io, "write_temp", lambda path, write: original(
        path, (lambda handle: write(FullAfter(handle, room))) if when(path) else write))


@pytest.mark.parametrize("room", [0, 64, 5000, 60000, -1])
def test_a_full_disk_inside_torchs_zip_writer_is_the_oserror(tmp_path, monkeypatch, room):
    """torch's writer, hit by ENOSPC inside a record, still closes the archive, and that raises "[enforce fail
    at inline_container.cc] unexpected pos …": what comes out is the ENOSPC naming the file, and nothing of
    the write is left (room -1: the disk fills on the archive's last byte)."""
    from bench.atomic_io import atomic_torch_save
    payload = {"weights": torch.randn(30000), "epoch": 3}
    atomic_torch_save(tmp_path / "size.pt", payload)
    size = (tmp_path / "size.pt").stat().st_size
    disk_full_after(monkeypatch, size - 1 if room < 0 else room)
    target = tmp_path / "last.pt"
    target.write_bytes(b"the previous checkpoint")
    with pytest.raises(OSError) as raised:
        atomic_torch_save(target, payload)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "size.pt"]
    assert target.read_bytes() == b"the previous checkpoint"


def test_a_full_disk_in_a_checkpoint_write_is_one_line_and_the_run_resumes(tmp_path, monkeypatch):
    """The reported case without a tmpfs: the disk fills inside torch's writer while it writes the first
    epoch's checkpoint. One line naming the file, its file system and the fix; exit 1; no temp file; the run is
    marked failed, and `--resume` finishes it once there is room."""
    disk_full_after(monkeypatch, 5000, when=lambda path: path.name == "last.pt")
    result = invoke("run", "--method", "finetune", "--backbone", "vit_micro", "--random-init",
                    "--out", str(tmp_path), *CLI_FAST)
    assert result.exit_code == 1
    line = one_line(result.output)
    run_dir = next((tmp_path / "runs").iterdir())
    assert f"No space left on device: {run_dir / 'checkpoints' / 'last.pt'} (the file system at " in line, line
    assert f"free space there, then continue it with: bench run --resume {run_dir.name}" in line
    assert not list(run_dir.glob("checkpoints/.*.tmp")) and not (run_dir / "checkpoints" / "last.pt").exists()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    monkeypatch.undo()
    resumed = invoke("run", "--resume", run_dir.name, "--out", str(tmp_path))
    assert resumed.exit_code == 0, resumed.output
    assert ResultsStore(tmp_path).get(run_dir.name)["epochs_trained"] == 2


# ------------------------------------------------------------------ corrupt caches and checkpoints

def feature_files(root: Path) -> list[Path]:
    return sorted((root / "cache" / "features").glob("*.pt"))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong shape", "same-shape garbage", "no checksum"])
def test_a_bad_cached_feature_file_is_recomputed_with_a_warning(tmp_path, damage):
    first = runner.execute(fast_spec(tmp_path, method="linear_probe"))
    victim = feature_files(tmp_path)[0]
    if damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:100])
    elif damage == "garbage":
        victim.write_bytes(os.urandom(4096))
    elif damage == "wrong shape":
        torch.save(torch.zeros(3, 5), victim)
    elif damage == "same-shape garbage":
        torch.save(torch.randn_like(torch.load(victim, weights_only=True)), victim)
    else:
        victim.with_name(victim.name + ".json").unlink()
    second = runner.execute(fast_spec(tmp_path, method="linear_probe"))
    assert second.record["test"] == first.record["test"]
    warned = [note for note in second.record["notes"] if victim.name in note]
    assert warned and "recomputing" in warned[0]
    third = runner.execute(fast_spec(tmp_path, method="linear_probe"))  # repaired: no warning now
    assert not [note for note in third.record["notes"] if "cache entry" in note]


def test_unreadable_checkpoint_on_resume_says_how_to_restart(tmp_path):
    run_dir = interrupted_run(tmp_path)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    result = invoke("run", "--resume", run_dir.name, "--out", str(tmp_path))
    assert result.exit_code == 1
    line = one_line(result.output)
    assert f"checkpoint {checkpoint} is unreadable" in line and "delete it and run" in line
    checkpoint.unlink()
    assert invoke("run", "--resume", run_dir.name, "--out", str(tmp_path)).exit_code == 0


# ------------------------------------------------------------------ one run, one writer

def test_a_run_held_by_another_process_is_refused(tmp_path):
    run_dir = interrupted_run(tmp_path)
    log_before = (run_dir / "log.txt").read_text()
    with RunLock(run_dir):  # as another `bench run --resume` of the same run would hold it
        result = invoke("run", "--resume", run_dir.name, "--out", str(tmp_path))
    assert result.exit_code == 1
    assert f"run {run_dir.name} is already being run by pid {os.getpid()}" in one_line(result.output)
    assert (run_dir / "log.txt").read_text() == log_before
    assert invoke("run", "--resume", run_dir.name, "--out", str(tmp_path)).exit_code == 0


def test_show_tells_a_dead_run_from_a_running_one(tmp_path):
    result = runner.execute(fast_spec(tmp_path, epochs="1", warmup_epochs="0"))
    status = result.run_dir / "status.json"
    gone = subprocess.Popen(["true"])
    gone.wait()
    status.write_text(json.dumps({"state": "running", "pid": gone.pid, "host": os.uname().nodename}))
    shown = invoke("show", str(result.run_dir))
    assert shown.exit_code == 0
    assert "interrupted (process gone); continue it with: bench run --resume" in shown.output
    status.write_text(json.dumps({"state": "running", "pid": os.getpid(), "host": os.uname().nodename}))
    assert f"running (pid {os.getpid()})" in invoke("show", str(result.run_dir)).output


# ------------------------------------------------------------------ interrupted writes leave no temp files

def test_temp_files_of_interrupted_writes_are_removed_on_resume(tmp_path):
    run_dir = interrupted_run(tmp_path, method="linear_probe")
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = os.uname().nodename.replace(".", "_")
    leftovers = [run_dir / "checkpoints" / f".last.pt.{host}@{dead.pid}.abcd1234.tmp",
                 run_dir / f".config.json.{host}@{dead.pid}.abcd1234.tmp",
                 tmp_path / "records" / f".other.json.{host}@{dead.pid}.abcd1234.tmp",
                 tmp_path / "cache" / "features" / f".x.pt.{host}@{dead.pid}.abcd1234.tmp"]
    live = tmp_path / "records" / f".busy.json.{host}@{os.getpid()}.abcd1234.tmp"  # a live writer's
    for path in [*leftovers, live]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 1024)
    runner.resume(run_dir)
    assert not any(path.exists() for path in leftovers)
    assert live.exists()
    assert "removed 4 temp file(s)" in (run_dir / "log.txt").read_text()


# ------------------------------------------------------------------ Ctrl-C and SIGTERM

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupting_bench_run_exits_130_with_the_resume_command(tmp_path, signum):
    args = ["run", "--method", "finetune", "--backbone", "vit_micro", "--random-init", "--out", str(tmp_path),
            *CLI_FAST, "--set=epochs=200"]
    # A shell starts background jobs with SIGINT ignored, and Python keeps an inherited "ignore" (as a user's
    # `bench run &` should): the child takes Ctrl-C as a terminal's foreground job does.
    process = subprocess.Popen([sys.executable, "-c", FOREGROUND_CLI, *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("runs/*/checkpoints/last.pt")):
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    run_dir = next((tmp_path / "runs").iterdir())
    assert f"bench run --resume {run_dir.name} --out {tmp_path}" in stderr
    assert "Traceback" not in stderr
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"


# ------------------------------------------------------------------ damaged records and run folders

@pytest.mark.parametrize("content", ['{"run_id": "x", "method": "finetune", "val": {"ov', "{}", "[1, 2]"],
                         ids=["truncated", "field-less", "not an object"])
def test_show_of_a_damaged_record_is_one_line_and_fails(tmp_path, content):
    result = runner.execute(fast_spec(tmp_path, epochs="1", warmup_epochs="0"))
    (tmp_path / "records" / f"{result.run_id}.json").write_text(content)
    shown = invoke("show", result.run_id, "--out", str(tmp_path))
    assert shown.exit_code != 0
    line = one_line(shown.output)
    assert f"record {tmp_path / 'records' / result.run_id}.json is unreadable or incomplete" in line
    assert "(complete)" not in shown.output


def test_show_of_a_damaged_config_is_one_line_and_fails(tmp_path):
    result = runner.execute(fast_spec(tmp_path, epochs="1", warmup_epochs="0"))
    (result.run_dir / "config.json").write_text('{"hparams": ')
    shown = invoke("show", str(result.run_dir))
    assert shown.exit_code != 0 and "config.json is unreadable or incomplete" in one_line(shown.output)


# ------------------------------------------------------------------ messages keep their text

def test_bracketed_text_in_an_error_is_printed_as_it_is(tmp_path):
    """rich markup must not swallow '[depth, L, D]' from the official-checkpoint error."""
    from bench.backbones import create_backbone

    weights = tmp_path / "not_lpt.pth"
    torch.save(create_backbone("vit_micro", allow_random_init=True).model.state_dict(), weights)
    result = invoke("eval", "--method", "lpt", "--dataset", "digits_lt", "--backbone", "vit_micro",
                    "--checkpoint", str(weights), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "no prompt_learner.Prompt_Tokens (shared prompts [depth, L, D])" in one_line(result.output)


def test_eval_of_a_run_checkpoint_points_to_resume(tmp_path):
    result = runner.execute(runner.RunSpec(
        method="lpt", dataset="digits_lt", backbone="vit_micro", allow_random_init=True, out=str(tmp_path / "a"),
        overrides={"image_size": "16", "batch_size": "64", "phase1_epochs": "1", "phase2_epochs": "1",
                   "warmup_epochs": "0"}))
    checkpoint = result.run_dir / "checkpoints" / "last.pt"
    evaluated = invoke("eval", "--method", "lpt", "--dataset", "digits_lt", "--backbone", "vit_micro",
                       "--checkpoint", str(checkpoint), "--out", str(tmp_path / "b"))
    assert evaluated.exit_code == 1
    line = one_line(evaluated.output)
    assert "is a checkpoint of a run of this harness" in line and f"bench run --resume {result.run_dir}" in line
    assert "pick the matching --backbone" not in line


def test_misspelt_backbone_suggests_each_name_once():
    from bench.backbones import parse_backbone

    with pytest.raises(BenchError, match="did you mean") as raised:
        parse_backbone("vit_tiny_patch16_22")
    suggested = str(raised.value).split("did you mean ")[1].rstrip("?").split(", ")
    assert len(suggested) == len(set(suggested)) and "vit_tiny_patch16_224" in suggested


def test_long_messages_are_cut_at_a_word_boundary():
    text = "weights file does not fit because " + "parameter_name_with_a_long_path " * 20
    cut = shorten(text, 80)
    assert len(cut) <= 80 and cut.endswith("…")
    assert cut[:-1] == text[:len(cut) - 1] and text[len(cut) - 1] == " "
    assert shorten("short message") == "short message"


def test_resume_keeps_the_values_the_run_started_with(tmp_path, monkeypatch):
    """A default that changes between the start and the resume (a newer version) does not change the run: it
    resumes with the hyperparameters recorded in its config.json."""
    from bench.hparams import HParam
    from bench.methods.base import METHODS

    run_dir = interrupted_run(tmp_path)
    started = json.loads((run_dir / "config.json").read_text())["hparams"]
    declared = METHODS.get("finetune").hparams
    monkeypatch.setitem(declared, "optimizer", HParam("adamw" if started["optimizer"] == "sgd" else "sgd",
                                                      choices=("sgd", "adamw")))
    monkeypatch.setitem(declared, "weight_decay", HParam(0.123))
    record = runner.resume(run_dir).record
    assert record["hparams"]["optimizer"] == started["optimizer"]
    assert record["hparams"]["weight_decay"] == started["weight_decay"]

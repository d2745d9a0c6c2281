"""A run folder's life outside training: the results root, the one process allowed to write a run (a lock),
its status (`status.json`: running with pid and host, complete, failed, interrupted, stopped), and the exact
command that continues it; run ids, and finding a run by folder, id or prefix. Light on purpose: `bench show`
and `bench report` read it without importing torch."""

from __future__ import annotations

import fcntl
import os
import secrets
import shlex
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from bench.atomic_io import atomic_write_json, pid_alive, read_json
from bench.errors import BenchError

RESULTS_ENV = "BENCH_RESULTS"
STATUS_FILE = "status.json"
LOCK_FILE = ".lock"
LATEST = "latest"  # `bench show latest`: the run started or resumed last


def default_results_root() -> Path:
    return Path(os.environ.get(RESULTS_ENV, "results")).expanduser().resolve()


def resume_command(run_dir: Path) -> str:
    """`bench run --resume <id>`, with `--out` when the run is not under the default results root."""
    root = run_dir.parents[1]
    command = f"bench run --resume {shlex.quote(run_dir.name)}"
    return command if root == default_results_root() else f"{command} --out {shlex.quote(str(root))}"


def write_status(run_dir: Path, state: str, **details) -> None:
    """Record the run's state; a running one also says which process runs it."""
    if state == "running":
        details = {"pid": os.getpid(), "host": socket.gethostname(), **details}
    atomic_write_json(run_dir / STATUS_FILE, {"state": state, **details})


def read_status(run_dir: Path) -> dict:
    """The run's status; {"state": "unknown", ...} when the file is missing or unreadable."""
    path = run_dir / STATUS_FILE
    try:
        status = read_json(path)
    except FileNotFoundError:
        return {"state": "unknown", "error": f"{path} is missing"}
    except (OSError, ValueError) as error:
        return {"state": "unknown", "error": f"{path} is unreadable: {error}"}
    return status if isinstance(status, dict) and "state" in status else {
        "state": "unknown", "error": f"{path} has no 'state'"}


def run_state(run_dir: Path, status: dict | None = None) -> str:
    """complete, running, interrupted, failed, stopped or unknown; a run whose status says running but whose
    process (on this host) is gone is interrupted."""
    status = status if status is not None else read_status(run_dir)
    state = status["state"]
    if state == "running" and status.get("host") in (None, socket.gethostname()):
        pid = status.get("pid")
        return state if isinstance(pid, int) and pid_alive(pid) else "interrupted"
    return state


def describe_status(run_dir: Path) -> str:
    """One line for `bench show`: the state, and for a run that is not going on, how to continue it."""
    status = read_status(run_dir)
    state = run_state(run_dir, status)
    if state == "complete":
        return "complete"
    if state == "running":
        host = status.get("host")
        return f"running (pid {status.get('pid')}{f' on {host}' if host not in (None, socket.gethostname()) else ''})"
    if status["state"] == "running":
        state = "interrupted (process gone)"
    elif status.get("error"):
        state = f"{state}: {status['error']}"
    return f"{state}; continue it with: {resume_command(run_dir)}"


class RunLock:
    """An exclusive lock on a run folder for as long as one process trains or evaluates it. flock is released
    by the kernel when the process dies, however it dies, so a SIGKILLed run never stays locked."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self.handle = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise BenchError(f"run {self.path.parent.name} is already being run by {owner}; wait for it to end "
                             "(or stop it) before resuming it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def new_run_id(method: str, dataset: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{dataset}-{method}-{stamp}-{secrets.token_hex(3)}"


def results_root(out: str | None) -> Path:
    return Path(out).expanduser().resolve() if out else default_results_root()


def run_folders(root: Path) -> list[Path]:
    """The run folders under <root>/runs, the one started or resumed last first (by when its config.json was
    written: at every start and resume)."""
    runs = root / "runs"
    folders = [folder for folder in runs.iterdir() if (folder / "config.json").exists()] if runs.is_dir() else []
    return sorted(folders, key=lambda folder: ((folder / "config.json").stat().st_mtime_ns, folder.name),
                  reverse=True)


def find_run(run: str | Path, out: str | None = None) -> Path:
    """A run by its folder, its id, a unique prefix of its id, or `latest` (the run started or resumed last)."""
    candidate = Path(run).expanduser()
    if (candidate / "config.json").exists():
        return candidate.resolve()
    root = results_root(out)
    if str(run) == LATEST:
        folders = run_folders(root)
        if not folders:
            raise BenchError(f"no runs under {root / 'runs'}, so no latest one; start one with `bench run` (or give "
                             "the results root with --out)")
        return folders[0]
    by_id = root / "runs" / str(run)
    if (by_id / "config.json").exists():
        return by_id
    matches = sorted((root / "runs").glob(f"{run}*")) if (root / "runs").is_dir() else []
    if len(matches) == 1 and (matches[0] / "config.json").exists():
        return matches[0]
    raise BenchError(f"no run {run!r} under {root / 'runs'}; pass a run folder, an id from `bench runs`, or latest")

"""A run folder's life outside training: the results root, the one process allowed to write a run (a lock),
its status (`status.json`: running with pid and host, complete, failed, interrupted, stopped), and the exact
command that continues it; run ids, and finding a run by folder, id or prefix; and `RunFolder`, which writes a
run's files other than its results (config, manifest, status, log), clears its leftovers, and marks how a run
that did not complete ended (a full disk said as such). Light on purpose:
`bench show` and `bench report` read it without importing torch."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import secrets
import shlex
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from bench.atomic_io import atomic_write_json, pid_alive, read_json, remove_temp_files
from bench.errors import BenchError, RunInterrupted, UsageError, first_line
from bench.hparams import as_override
from bench.run_spec import RunSpec
from bench.selection import LEGACY_METRIC

RESULTS_ENV = "BENCH_RESULTS"
STATUS_FILE = "status.json"
LOCK_FILE = ".lock"
LATEST = "latest"  # `bench show latest`: the run started or resumed last
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
LEFTOVERS_NAMED = 5  # temp files named in the line saying they were removed


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


@dataclass(frozen=True)
class RunFolder:
    """One run's folder (a rank's own, in a data-parallel run), under <results root>/runs/<run id>: its
    config.json and manifest.json, written once per start or resume, its status, its log.txt, and the temp files
    interrupted writes left."""

    path: Path

    @property
    def out_root(self) -> Path:
        return self.path.parents[1]

    def check_resumable_by(self, world_size: int) -> None:
        """A run resumes only with the world size it started with: its batches were sharded over that many
        ranks."""
        config = self.path / CONFIG_FILE
        if not config.exists():
            return
        try:
            started = int(read_json(config).get("world_size", 1))
        except (OSError, ValueError, TypeError):
            return  # an unreadable config is reported where it is read
        if started != world_size:
            raise UsageError(f"run {self.path.name} was trained by {started} process(es) and this is {world_size}; "
                             f"resume it with the same total (--nproc × --nnodes = {started})")

    def lock(self) -> RunLock:
        return RunLock(self.path)

    def state(self) -> str:
        return read_status(self.path)["state"]

    def mark(self, state: str, **details) -> None:
        write_status(self.path, state, **details)

    def mark_if_writable(self, state: str, **details) -> None:
        """Status after a failure; on a full or read-only disk it may not be writable, and the error says why."""
        try:
            self.mark(state, **details)
        except OSError:
            pass

    def resume_command(self) -> str:
        return resume_command(self.path)

    def resume_spec(self) -> RunSpec:
        """The spec the run started with, every hyperparameter and dataset option pinned to the value it
        resolved to then, not today's default: a default changed since then must not change it."""
        try:
            config = read_json(self.path / CONFIG_FILE)
            spec = RunSpec(**config["spec"])
            resolved = {**config["hparams"], **config["dataset_options"]}
            # a run started before `selection_metric` existed chose its epochs on val overall: it goes on doing so
            resolved.setdefault("selection_metric", LEGACY_METRIC)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BenchError(f"{self.path / CONFIG_FILE} is unreadable ({first_line(error)}); the run cannot be "
                             "resumed: start it again with `bench run`") from None
        return dataclasses.replace(spec, overrides={key: as_override(value) for key, value in resolved.items()})

    def write_config(self, config: dict) -> None:
        atomic_write_json(self.path / CONFIG_FILE, config)

    def write_manifest(self, manifest: dict) -> None:
        """The manifest of this start; a resumed run keeps what it started on and adds what resumed it."""
        path = self.path / MANIFEST_FILE
        if path.exists():
            started = read_json(path)
            resumes = started.get("resumes", []) + [{k: manifest[k] for k in ("git", "device", "packages", "argv")}]
            manifest = {**started, "resumes": resumes}
        atomic_write_json(path, manifest)

    def remove_leftovers(self) -> str | None:
        """Removes the temp files of interrupted atomic writes: all of this run's (its lock is held), and those
        of dead writers in the shared records/ and cache/ folders; a line saying which, if any."""
        root = self.out_root
        removed = [*remove_temp_files(self.path, only_dead_writers=False),
                   *remove_temp_files(self.path / "checkpoints", only_dead_writers=False),
                   *remove_temp_files(root / "records")]
        cache = root / "cache"
        for folder in [cache, *(cache.iterdir() if cache.is_dir() else [])]:
            if folder.is_dir():
                removed += remove_temp_files(folder)
        if not removed:
            return None
        return (f"removed {len(removed)} temp file(s) left by interrupted writes: "
                + ", ".join(str(p.relative_to(root)) for p in removed[:LEFTOVERS_NAMED])
                + (" …" if len(removed) > LEFTOVERS_NAMED else ""))

    @contextmanager
    def running(self, log: logging.Logger) -> Iterator[None]:
        """The block that runs the run, logged into its log.txt too; a run that ends otherwise than complete
        gets its status (stopped, interrupted or failed) and a line saying how to continue it."""
        detach = None
        try:
            detach = self.log_to_file(log)
            yield
        except SystemExit:  # how Ray Tune ends a trial its scheduler stopped
            self.mark_if_writable("stopped")
            log.info("run stopped by its process (a sweep scheduler's decision or an exit); resumable")
            raise
        except KeyboardInterrupt:
            self.mark_if_writable("interrupted")
            hint = f"run {self.path.name} interrupted; continue it with: {self.resume_command()}"
            log.info(hint)
            raise RunInterrupted(hint) from None
        except BaseException as error:
            self.mark_if_writable("failed", error=f"{type(error).__name__}: {first_line(error, 400)}")
            log.error(f"run failed: {type(error).__name__}: {first_line(error, 400)}")
            if isinstance(error, OSError):
                fix = "free space there, then" if error.errno in DISK_FULL else "once that is fixed,"
                raise BenchError(f"{describe_os_error(error)}; run {self.path.name} is marked failed; {fix} "
                                 f"continue it with: {self.resume_command()}") from None
            raise
        finally:
            if detach is not None:
                detach()

    def log_to_file(self, log: logging.Logger) -> Callable[[], None]:
        """`log` also into the run's log.txt, until the function this returns is called."""
        handler = _QuietFileHandler(self.path / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)

        def detach() -> None:
            log.removeHandler(handler)
            handler.close()

        return detach


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def describe_os_error(error: OSError) -> str:
    """'No space left on device: /path' from an OSError, whatever raised it; on a full disk, also the file
    system the path is on and its free space."""
    where = f": {error.filename}" if error.filename else ""
    text = f"{error.strerror or first_line(error)}{where}"
    if error.errno in DISK_FULL and error.filename:
        text += f" ({file_system_space(Path(error.filename))})"
    return text


def file_system_space(path: Path) -> str:
    """'the file system at /mnt has 12.0 KiB free of 2.0 MiB' for the file system holding `path`."""
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    mount = folder.resolve()
    while not os.path.ismount(mount):
        mount = mount.parent
    usage = shutil.disk_usage(mount)
    return f"the file system at {mount} has {_bytes_text(usage.free)} free of {_bytes_text(usage.total)}"


def _bytes_text(count: int) -> str:
    size, unit = float(count), "bytes"
    for larger in ("KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, larger
    return f"{count} bytes" if unit == "bytes" else f"{size:.1f} {unit}"


class _QuietFileHandler(logging.FileHandler):
    """The run's log.txt. A failed write (a full disk) must not print a logging traceback: the run's own error
    says what happened."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass

"""Atomic file I/O: each file appears whole or not at all, because it is written to a temporary file in the same
folder, fsynced, then renamed (or hard-linked, when it must not replace an existing file); the temporary files a
dead writer left behind; JSON that reads back exactly; a file's sha256."""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # mkstemp makes 0600 files; results are meant to be read by others


TEMP_SUFFIX = ".tmp"


def _temp_owner() -> str:
    """Who writes a temp file: host and pid, so that a later process can tell a dead writer's leftovers from
    another live writer's file in a shared folder."""
    return f"{socket.gethostname().replace('.', '_')}@{os.getpid()}"


def write_temp(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """A temp file beside `path` that `write` fills (streamed: a checkpoint is never held twice in memory),
    flushed and fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_temp_owner()}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fchmod(handle.fileno(), _FILE_MODE)
            os.fsync(handle.fileno())
    except OSError as error:  # a full disk, a quota: name the file being written
        Path(temp_name).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return Path(temp_name)


def remove_temp_files(folder: Path, only_dead_writers: bool = True) -> list[Path]:
    """Delete the `.<name>.<host>@<pid>.*.tmp` files an interrupted atomic write left in `folder`. With
    `only_dead_writers`, a file is deleted only when its writer ran on this host and is gone, or when it is a
    day old (a writer on another host), so live writers in a shared folder keep theirs. Returns what went."""
    if not folder.is_dir():
        return []
    host, removed = socket.gethostname().replace(".", "_"), []
    for temp in folder.glob(f".*{TEMP_SUFFIX}"):
        owner = temp.name.rsplit(".", 3)[-3] if temp.name.count(".") >= 4 else ""
        owner_host, _, pid = owner.rpartition("@")
        if only_dead_writers:
            if owner_host == host and pid.isdigit():
                if pid_alive(int(pid)):
                    continue
            else:
                try:
                    if time.time() - temp.stat().st_mtime < 86400:
                        continue
                except FileNotFoundError:
                    continue
        temp.unlink(missing_ok=True)
        removed.append(temp)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_torch_save(path: Path | str, payload: Any) -> None:
    """torch.save `payload` to `path` atomically (checkpoints, cached features and text embeddings), streamed
    into the temp file."""
    _replace_with(Path(path), lambda handle: _torch_save(payload, handle))


def _torch_save(payload: Any, handle: BinaryIO) -> None:
    """torch.save into `handle`. When a write fails inside torch's zip writer (a full disk), the writer still
    closes the archive on the way out, and that raises a RuntimeError ("[enforce fail at inline_container.cc]
    unexpected pos …") which hides the write's OSError: the OSError is raised instead."""
    import torch

    try:
        torch.save(payload, handle)
    except RuntimeError as error:
        cause = error.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        raise cause from None


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    _replace_with(Path(path), lambda handle: handle.write(data))


def _replace_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    temp = write_temp(path, write)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_json_value(obj: Any) -> Any:
    """A strict-JSON-ready copy: NaN and ±inf become None, numpy scalars and arrays become Python ones,
    tuples become lists, paths become strings."""
    if isinstance(obj, dict):
        return {str(key): to_json_value(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_value(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return to_json_value(obj.tolist())
    if isinstance(obj, np.generic):
        return to_json_value(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps_json(obj: Any) -> str:
    return json.dumps(to_json_value(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj))


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))

"""Atomic file writes and the results store: one JSON record per run under `<root>/records/<run_id>.json`.

One file per run (as DomainBed and CLIP_benchmark do) means concurrent writers, on one machine or over NFS,
never touch the same file; each file appears whole or not at all, because it is written to a temporary file
in the same folder, fsynced, then renamed (or hard-linked, when it must not replace an existing record).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from bench.errors import BenchError

if TYPE_CHECKING:
    import polars as pl


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
PREDICTIONS_SUFFIX = ".predictions.npz"  # beside a record: its run's per-image predictions


def _temp_owner() -> str:
    """Who writes a temp file: host and pid, so that a later process can tell a dead writer's leftovers from
    another live writer's file in a shared folder."""
    return f"{socket.gethostname().replace('.', '_')}@{os.getpid()}"


def _write_temp(path: Path, write: Callable[[BinaryIO], object]) -> Path:
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


def _fsync_dir(folder: Path) -> None:
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
    temp = _write_temp(path, write)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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


class ResultsStore:
    """The records every report reads. `root` is a results root; records live in `root/records/`."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.folder = self.root / "records"

    def path_for(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not run_id or run_id.startswith(".") or any(
                bad in run_id for bad in ("/", "\\", "\0")):
            raise BenchError(f"invalid run_id {run_id!r}: use a non-empty name without slashes or a leading "
                             "dot")
        return self.folder / f"{run_id}.json"

    def add(self, record: dict, overwrite: bool = False) -> Path:
        """Write one record; refuses to replace an existing one unless `overwrite`. Returns its path."""
        if "run_id" not in record:
            raise BenchError("a record needs a 'run_id' (its file name in the store)")
        path = self.path_for(record["run_id"])
        data = dumps_json(record).encode("utf-8")
        temp = _write_temp(path, lambda handle: handle.write(data))
        try:
            if overwrite:
                os.replace(temp, path)
            else:
                self._link_new(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(self.folder)
        return path

    @staticmethod
    def _link_new(temp: Path, path: Path) -> None:
        # link() fails if the target exists, atomically, so two writers of one run_id cannot both succeed.
        try:
            os.link(temp, path)
        except FileExistsError:
            raise BenchError(f"record {path.stem!r} already exists at {path}; "
                             "pass overwrite=True to replace it") from None
        except OSError:  # a filesystem without hard links: check, then rename (a small race remains)
            if path.exists():
                raise BenchError(f"record {path.stem!r} already exists at {path}; "
                                 "pass overwrite=True to replace it") from None
            os.replace(temp, path)

    def predictions_path(self, run_id: str) -> Path:
        return self.path_for(run_id).with_suffix(PREDICTIONS_SUFFIX)

    def add_predictions(self, run_id: str, arrays: dict[str, np.ndarray]) -> dict:
        """Write a run's per-image arrays (predicted and true class per split, the training counts) beside its
        record, compactly (int16 where the classes fit), and return what the record keeps of them: the file,
        its sha256 and the images per array."""
        path = self.predictions_path(run_id)
        largest = max((int(array.max()) for array in arrays.values() if array.size), default=0)
        dtype = np.int16 if largest <= np.iinfo(np.int16).max else np.int32
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{name: np.asarray(array).astype(dtype) for name, array in arrays.items()})
        data = buffer.getvalue()
        atomic_write_bytes(path, data)
        return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "dtype": np.dtype(dtype).name,
                "sizes": {name: int(np.asarray(array).size) for name, array in arrays.items()}}

    def predictions(self, record: dict) -> dict[str, np.ndarray] | None:
        """The per-image arrays kept beside `record`, checked against its sha256; None (with a warning when
        they should be there) where they are missing or do not match."""
        entry = record.get("predictions")
        if not entry:
            return None
        path = self.folder / entry["file"]
        try:
            data = path.read_bytes()
        except OSError as error:
            warnings.warn(f"{record['run_id']}: its predictions {path} cannot be read ({error.strerror})",
                          stacklevel=2)
            return None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            warnings.warn(f"{record['run_id']}: {path} does not match its record's sha256; left out", stacklevel=2)
            return None
        with np.load(io.BytesIO(data)) as arrays:
            return {name: arrays[name].astype(np.int64) for name in arrays.files}

    def _paths(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("*.json"))

    def _load(self, path: Path) -> dict | None:
        try:
            record = read_json(path)
        except FileNotFoundError:  # removed between listing and reading
            return None
        except (OSError, ValueError) as error:
            warnings.warn(f"skipping unreadable record {path}: {error}", stacklevel=3)
            return None
        if not isinstance(record, dict):
            warnings.warn(f"skipping record {path}: expected a JSON object, got {type(record).__name__}",
                          stacklevel=3)
            return None
        return record

    def get(self, run_id: str) -> dict | None:
        """The record of `run_id`, or None if there is none (or it cannot be read, with a warning)."""
        path = self.path_for(run_id)
        return self._load(path) if path.exists() else None

    def __contains__(self, run_id: str) -> bool:
        return self.path_for(run_id).exists()

    def __len__(self) -> int:
        """The number of record files (unreadable ones included)."""
        return len(self._paths())

    def records(self, **filters: Any) -> list[dict]:
        """Readable records, ordered by run_id, that match every filter.

        A filter name may be dotted to reach into nested dicts (`**{"hparams.lr": 0.1}`); its value matches
        by equality, by membership when it is a list, tuple or set, or by calling it when it is callable.
        """
        selected = []
        for path in self._paths():
            record = self._load(path)
            if record is None:
                continue
            if all(_matches(_lookup(record, key), want) for key, want in filters.items()):
                selected.append(record)
        return selected

    def frame(self, **filters: Any) -> pl.DataFrame:
        """One row per record; nested dicts flattened to dotted columns ('test.overall', 'hparams.lr'),
        keys missing from a record are null, lists are JSON strings. No records: an empty frame."""
        return records_frame([flatten(record) for record in self.records(**filters)])


_MISSING = object()


def _lookup(record: dict, dotted: str) -> Any:
    if dotted in record:
        return record[dotted]
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _matches(value: Any, want: Any) -> bool:
    if value is _MISSING:
        return False
    if callable(want):
        return bool(want(value))
    if isinstance(want, (list, tuple, set, frozenset)):
        return value in want
    return value == want


def flatten(record: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → dotted keys; lists → JSON strings; scalars as they are."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(to_json_value(value), ensure_ascii=False)
        else:
            flat[name] = value
    return flat


def records_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """A frame from flat rows whose keys and value types may differ: columns in first-seen order,
    absent → null. A column mixing ints and floats is Float64; one mixing other types is String
    (non-strings as JSON)."""
    import polars as pl  # here, not at the top: writers (training runs, sweep workers) never need it

    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return pl.DataFrame([_column(name, [row.get(name) for row in rows]) for name in columns])


def _column(name: str, values: list[Any]) -> pl.Series:
    import polars as pl

    kinds = {type(value) for value in values if value is not None}
    if kinds == {bool}:
        return pl.Series(name, values, dtype=pl.Boolean)
    if kinds == {int}:
        try:
            return pl.Series(name, values, dtype=pl.Int64)
        except (OverflowError, TypeError, ValueError, pl.exceptions.PolarsError):
            pass
    elif kinds and kinds <= {int, float}:
        floats = [None if value is None else float(value) for value in values]
        return pl.Series(name, floats, dtype=pl.Float64)
    elif kinds == {str}:
        return pl.Series(name, values, dtype=pl.String)
    elif not kinds:
        return pl.Series(name, values, dtype=pl.Null)
    texts = [value if value is None or isinstance(value, str) else json.dumps(to_json_value(value))
             for value in values]
    return pl.Series(name, texts, dtype=pl.String)

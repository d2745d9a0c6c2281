"""The results store: one JSON record per run under `<root>/records/<run_id>.json`, and the per-image predictions
beside it; the flat table reports read.

Records are read in two forms: typed and upgraded to the current layout (`run_records`, through
`RunRecord.from_json`), or in their JSON form as written, of whatever version (`records`, `get`, `frame`), which
readers filter and look up by dotted name (`hparams.lr`, `tags.sweep`).

One file per run (as DomainBed and CLIP_benchmark do) means concurrent writers, on one machine or over NFS,
never touch the same file; each file appears whole or not at all (`bench.atomic_io`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.atomic_io import atomic_write_bytes, dumps_json, fsync_dir, read_json, to_json_value, write_temp
from bench.errors import BenchError
from bench.record import RunRecord

PREDICTIONS_SUFFIX = ".predictions.npz"  # beside a record: its run's per-image predictions

if TYPE_CHECKING:
    import polars as pl


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

    def add(self, record: RunRecord | dict, overwrite: bool = False) -> Path:
        """Write one record (a RunRecord as `to_json` lays it out, a dict as it is); refuses to replace an existing
        one unless `overwrite`. Returns its path."""
        if isinstance(record, RunRecord):
            record = record.to_json()
        if "run_id" not in record:
            raise BenchError("a record needs a 'run_id' (its file name in the store)")
        path = self.path_for(record["run_id"])
        data = dumps_json(record).encode("utf-8")
        temp = write_temp(path, lambda handle: handle.write(data))
        try:
            if overwrite:
                os.replace(temp, path)
            else:
                self._link_new(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(self.folder)
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
        """Readable records in their JSON form, ordered by run_id, that match every filter.

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

    def run_records(self, **filters: Any) -> list[RunRecord]:
        """`records(**filters)` typed, each upgraded to the current layout (`RunRecord.from_json`); a record
        written by a newer harness is refused."""
        return [RunRecord.from_json(record) for record in self.records(**filters)]

    def frame(self, **filters: Any) -> pl.DataFrame:
        """One row per record; nested dicts flattened to dotted columns ('test.overall', 'hparams.lr'),
        keys missing from a record are null, lists are JSON strings (a method's own fields are `extras.*`
        columns from record version 5, top-level ones before). No records: an empty frame."""
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

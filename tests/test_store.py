"""The results store: round trips, strict JSON, atomic writes, concurrent writer processes, bad files."""

from __future__ import annotations

import json
import math
import multiprocessing
import os

import numpy as np
import pytest

from bench.atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from bench.errors import BenchError
from bench.store import ResultsStore


def make_record(run_id: str, **extra) -> dict:
    return {"run_id": run_id, "method": "lpt", "dataset": "places_lt", "seed": 0,
            "hparams": {"lr": 0.01, "epochs": 10}, "test": {"overall": 50.0, "many": 49.0, "few": math.nan},
            "tags": ["a", "b"], **extra}


def test_round_trip(tmp_path):
    store = ResultsStore(tmp_path)
    record = make_record("r1")
    path = store.add(record)
    assert path == tmp_path / "records" / "r1.json"
    assert len(store) == 1 and "r1" in store and "r2" not in store
    back = store.get("r1")
    assert back == {**record, "test": {"overall": 50.0, "many": 49.0, "few": None}}
    assert store.get("r2") is None


def test_nan_becomes_null_and_files_are_strict_json(tmp_path):
    path = tmp_path / "sub" / "m.json"
    atomic_write_json(path, {"a": math.nan, "b": [1.0, float("inf"), np.float32("nan")], "c": np.int64(3),
                             "d": np.array([0.5, np.nan]), "e": (1, 2)})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    assert strict == {"a": None, "b": [1.0, None, None], "c": 3, "d": [0.5, None], "e": [1, 2]}
    assert read_json(path) == strict
    assert text.startswith('{\n  "a": null')  # indent=2


def test_atomic_writes_leave_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "c.json", {"x": 1})
    store = ResultsStore(tmp_path / "store")
    store.add(make_record("r1"))
    with pytest.raises(BenchError):
        store.add(make_record("r1"))
    store.add(make_record("r1"), overwrite=True)
    with pytest.raises(TypeError):  # not JSON-serialisable: fails before anything is written
        atomic_write_json(tmp_path / "d.json", {"x": object()})
    assert (tmp_path / "a.txt").read_text() == "two"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    left = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["a.txt", "b.bin", "c.json", "r1.json"]


def test_written_files_are_readable_by_others(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_overwrite_is_refused_unless_asked(tmp_path):
    store = ResultsStore(tmp_path)
    store.add(make_record("r1", seed=1))
    with pytest.raises(BenchError, match="already exists.*overwrite=True"):
        store.add(make_record("r1", seed=2))
    assert store.get("r1")["seed"] == 1
    store.add(make_record("r1", seed=3), overwrite=True)
    assert store.get("r1")["seed"] == 3
    assert len(store) == 1


@pytest.mark.parametrize("record, message", [
    ({"method": "lpt"}, "needs a 'run_id'"),
    ({"run_id": "../escape"}, "invalid run_id"),
    ({"run_id": ""}, "invalid run_id"),
    ({"run_id": ".hidden"}, "invalid run_id"),
])
def test_bad_run_ids_are_refused(tmp_path, record, message):
    with pytest.raises(BenchError, match=message):
        ResultsStore(tmp_path).add(record)


def test_empty_or_missing_store(tmp_path):
    store = ResultsStore(tmp_path / "nowhere")
    assert len(store) == 0
    assert store.records() == []
    import polars as pl

    frame = store.frame()
    assert isinstance(frame, pl.DataFrame) and frame.height == 0
    (tmp_path / "nowhere" / "records").mkdir(parents=True)
    assert store.frame().height == 0


def test_frame_flattens_and_tolerates_heterogeneous_records(tmp_path):
    store = ResultsStore(tmp_path)
    store.add(make_record("r1"))
    store.add({"run_id": "r2", "method": "cRT", "hparams": {"lr": 1, "momentum": 0.9},
               "test": {"overall": 41.5}, "seed": "auto", "pretrained": True})
    import polars as pl  # not at the top: the writer processes of the concurrency test import this module

    frame = store.frame()
    assert frame.height == 2
    assert frame.columns[:3] == ["run_id", "method", "dataset"]
    rows = {row["run_id"]: row for row in frame.iter_rows(named=True)}
    assert rows["r1"]["test.overall"] == 50.0 and rows["r2"]["test.overall"] == 41.5
    assert rows["r1"]["test.few"] is None and rows["r2"]["test.few"] is None
    assert frame.schema["hparams.lr"] == pl.Float64  # 0.01 and 1 → float
    assert rows["r2"]["hparams.lr"] == 1.0
    assert rows["r1"]["hparams.momentum"] is None and rows["r2"]["hparams.momentum"] == 0.9
    assert rows["r2"]["dataset"] is None
    assert json.loads(rows["r1"]["tags"]) == ["a", "b"] and rows["r2"]["tags"] is None
    assert frame.schema["seed"] == pl.String  # 0 and "auto": kept as text rather than failing
    assert rows["r1"]["seed"] == "0" and rows["r2"]["seed"] == "auto"
    assert frame.schema["pretrained"] == pl.Boolean


def test_records_filters(tmp_path):
    store = ResultsStore(tmp_path)
    store.add(make_record("r1", seed=0))
    store.add(make_record("r2", seed=1, method="cRT"))
    store.add(make_record("r3", seed=2, hparams={"lr": 0.1}))
    assert [r["run_id"] for r in store.records()] == ["r1", "r2", "r3"]
    assert [r["run_id"] for r in store.records(method="lpt")] == ["r1", "r3"]
    assert [r["run_id"] for r in store.records(seed=[1, 2])] == ["r2", "r3"]
    assert [r["run_id"] for r in store.records(**{"hparams.lr": 0.1})] == ["r3"]
    assert [r["run_id"] for r in store.records(seed=lambda s: s >= 1, method="lpt")] == ["r3"]
    assert store.records(missing_key=1) == []
    assert store.frame(method="cRT")["run_id"].to_list() == ["r2"]


def test_corrupt_record_is_skipped_with_a_warning_naming_it(tmp_path):
    store = ResultsStore(tmp_path)
    store.add(make_record("good"))
    (tmp_path / "records" / "broken.json").write_text('{"run_id": "broken", "test": {')
    (tmp_path / "records" / "list.json").write_text("[1, 2]")
    with pytest.warns(UserWarning) as caught:
        frame = store.frame()
    assert frame["run_id"].to_list() == ["good"]
    messages = " ".join(str(w.message) for w in caught)
    assert "broken.json" in messages and "list.json" in messages
    with pytest.warns(UserWarning, match="broken.json"):
        assert store.get("broken") is None


def _write_records(root: str, worker: int, count: int, barrier, contested_wins) -> None:
    store = ResultsStore(root)
    barrier.wait()
    for index in range(count):
        store.add(make_record(f"w{worker}-{index:03d}", worker=worker, index=index,
                              payload=list(range(200))))  # big enough that a torn write would show
        try:
            store.add(make_record("contested", worker=worker))
        except BenchError:
            continue
        with contested_wins.get_lock():
            contested_wins.value += 1


def test_concurrent_writer_processes(tmp_path):
    workers, per_worker = 4, 25
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold polars' threads
    barrier, contested_wins = context.Barrier(workers), context.Value("i", 0)
    processes = [context.Process(target=_write_records,
                                 args=(str(tmp_path), w, per_worker, barrier, contested_wins))
                 for w in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0] * workers

    store = ResultsStore(tmp_path)
    files = sorted((tmp_path / "records").iterdir())
    assert len(files) == workers * per_worker + 1  # and no temp files left behind
    for path in files:
        assert read_json(path)["run_id"] == path.stem
    frame = store.frame(run_id=lambda run_id: run_id != "contested")
    assert frame.height == workers * per_worker
    written = sorted(zip(frame["worker"], frame["index"]))
    assert written == [(w, i) for w in range(workers) for i in range(per_worker)]
    assert contested_wins.value == 1  # 100 tries to create one run_id without overwrite: exactly one wins
    assert store.get("contested")["worker"] in range(workers)

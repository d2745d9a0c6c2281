"""The typed, versioned record: records written by earlier harnesses (a real version 4 one of the embedded default,
from `bench run` and `bench run --method linear_probe` before version 5, and the older versions derived from it)
load, keep every value and report as before; a newer version is refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.record import EXTRAS, RECORD_VERSION, Health, RunRecord, ValSplit, World, method_extras
from bench.report import build_report, load_records, render_report
from bench.report.aggregate import Configuration
from bench.store import ResultsStore

GOLDEN = Path(__file__).parent / "golden"
# what each version added (bench/record.py): a version-N record lacks the fields of the versions after N
ADDED = {2: ("record_version", "preprocessing"), 3: ("weights_provenance", "world"),
         4: ("selection", "convergence", "predictions")}


def golden(method: str) -> dict:
    return json.loads((GOLDEN / f"record_v4_{method}.json").read_text())


def older(record: dict, version: int) -> dict:
    """`record` as a version-`version` harness wrote it: without the fields later versions added."""
    dropped = {name for added, names in ADDED.items() if added > version for name in names}
    return {**{key: value for key, value in record.items() if key not in dropped},
            **({"record_version": version} if version >= 2 else {})}


@pytest.mark.parametrize("method, extras", [("lpt", set()), ("linear_probe", {"weight_decays", "wd_search"})])
def test_a_version_4_record_keeps_every_value_and_its_method_fields_move_under_extras(method, extras):
    old = golden(method)
    assert old["record_version"] == 4
    upgraded = RunRecord.from_json(copy.deepcopy(old)).to_json()
    assert upgraded["record_version"] == RECORD_VERSION == 5
    assert set(upgraded[EXTRAS]) == extras
    assert upgraded[EXTRAS] == {name: old[name] for name in extras} == method_extras(old)
    kept = {key: value for key, value in old.items() if key not in extras and key != "record_version"}
    assert {key: upgraded[key] for key in kept} == kept
    assert set(upgraded) == {*kept, EXTRAS, "record_version", "report_order"}
    assert upgraded["report_order"] is None  # new in version 5: reports place such a record by the registry
    assert RunRecord.from_json(upgraded).to_json() == upgraded  # the current layout reads back unchanged
    assert method_extras(upgraded) == upgraded[EXTRAS]


def test_typed_fields_of_a_real_record():
    record = RunRecord.from_json(golden("lpt"))
    assert record.method == "lpt" and record.dataset == "digits_lt" and record.seed == 0
    assert record.health == Health(ok=True, flags=[])
    assert isinstance(record.world, World) and record.world.size == 1
    assert isinstance(record.val_split, ValSplit) and record.val_split.source == "carved"
    assert record.val_split.carve is not None and record.checkpoint is None
    assert record.test["overall"] == golden("lpt")["test"]["overall"]
    assert record.selection == {"metric": "val_mean_per_class",
                                "tie_break": "lower val_nll_balanced, then the earlier candidate"}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_older_versions_load_with_what_they_lack_as_none(version):
    old = older(golden("linear_probe"), version)
    assert ("record_version" in old) == (version >= 2)
    record = RunRecord.from_json(old)
    assert record.record_version == RECORD_VERSION
    lacking = [name for added, names in ADDED.items() if added > version for name in names if name != "record_version"]
    assert lacking and all(getattr(record, name) is None for name in lacking)
    assert record.extras == {"weight_decays": old["weight_decays"], "wd_search": old["wd_search"]}
    upgraded = record.to_json()
    assert all(upgraded[key] == value for key, value in old.items()
               if key not in ("record_version", *record.extras))


def test_a_record_from_a_newer_harness_is_refused():
    with pytest.raises(BenchError, match="written by a newer harness"):
        RunRecord.from_json({**golden("lpt"), "record_version": RECORD_VERSION + 1})


def test_a_nested_field_of_another_shape_is_named():
    with pytest.raises(BenchError, match="its world .* a World"):
        RunRecord.from_json({**golden("lpt"), "world": {"ranks": 2}})


def test_a_val_split_without_a_carve_is_written_without_one():
    assert ValSplit("official", 20).to_json() == {"source": "official", "size": 20}


def test_the_store_writes_a_run_record_as_json_and_reads_old_and_new_typed(tmp_path):
    store = ResultsStore(tmp_path)
    old = golden("linear_probe")
    store.add(old)  # a version-4 record, as the current main wrote it
    new = RunRecord.from_json({**golden("lpt"), "run_id": "new"})
    store.add(new)
    assert store.get("new") == new.to_json()
    assert store.get(old["run_id"]) == old  # the JSON form is read as written
    typed = {record.run_id: record for record in store.run_records()}
    assert typed["new"] == new
    assert typed[old["run_id"]].extras["wd_search"] == old["wd_search"]
    assert [record.run_id for record in store.run_records(method="lpt")] == ["new"]
    frame = store.frame()
    assert "extras.wd_search" not in frame.columns and "wd_search" in frame.columns  # the old one's, as written
    assert frame.height == 2 and frame["test.overall"].to_list() == [old["test"]["overall"], new.test["overall"]]


def report_files(root: Path, records: list[dict]) -> dict[str, bytes]:
    store = ResultsStore(root)
    for record in records:
        store.add(record)
    report = build_report(load_records(store), ["linear_probe", "lpt"], "results")
    files, _ = render_report(report, ["md", "csv"], None)
    assert "leaderboard.md" in files
    return files


def test_reports_over_old_and_upgraded_records_agree(tmp_path):
    old = [golden("lpt"), golden("linear_probe")]
    upgraded = [RunRecord.from_json(record).to_json() for record in old]
    assert report_files(tmp_path / "old", old) == report_files(tmp_path / "new", upgraded)
    mixed = [old[0], upgraded[1]]
    assert report_files(tmp_path / "mixed", mixed) == report_files(tmp_path / "old-again", old)


def test_an_experts_tower_is_read_from_either_layout():
    expert = {"name": "vl", "pretrained": False}
    old = {**golden("lpt"), "method": "lptpp", "experts": [expert]}
    new = RunRecord.from_json(old).to_json()
    assert "experts" not in new and new[EXTRAS]["experts"] == [expert]
    assert Configuration([old]).pretrained is False and Configuration([new]).pretrained is False

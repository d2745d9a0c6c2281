"""What a leaderboard says about its own numbers, on records built for each case: bootstrap intervals and whether a
row is significantly below the best (md, HTML, LaTeX, CSV), n counting distinct seeds, rows never mixing
precisions, and rows whose val curve was still rising marked."""

from __future__ import annotations

import csv
import io
import zlib

import numpy as np
import pytest

from bench.report import build_report, load_records, render_report
from bench.report.significance import leaderboard_evidence
from bench.store import ResultsStore

CLASSES = 10
TRAIN_COUNTS = np.array([500, 300, 180, 110, 65, 40, 24, 15, 12, 10])  # few: the last three (< 20)
TEST_LABELS = np.repeat(np.arange(CLASSES), 100)  # balanced, as the test sets are
ORDER = ["linear_probe", "finetune", "lpt"]


def predictions(accuracy: float, seed: int) -> np.ndarray:
    """Each test image right with probability `accuracy`, else called the next class."""
    rng = np.random.default_rng(seed)
    right = rng.random(TEST_LABELS.size) < accuracy
    return np.where(right, TEST_LABELS, (TEST_LABELS + 1) % CLASSES)


def add_run(store: ResultsStore, run_id: str, method: str, seed: int, accuracy: float, **fields) -> dict:
    predicted = predictions(accuracy, zlib.crc32(run_id.encode()))
    overall = 100.0 * float((predicted == TEST_LABELS).mean())
    few = 100.0 * float((predicted == TEST_LABELS)[TEST_LABELS >= 7].mean())
    summary = {"overall": overall, "mean_per_class": overall, "many": overall, "medium": overall, "few": few,
               "nll_balanced": 1.0}
    record = {"run_id": run_id, "method": method, "dataset": "cifar10_lt", "backbone": "vit_tiny", "seed": seed,
              "tags": {}, "hparams": {"selection_metric": "mean_per_class"}, "dataset_options": {},
              "val": dict(summary), "test": summary, "pretrained": True, "shot_convention": "standard",
              "device": "cpu (x86_64, 2 threads)", "precision": "fp32", "world": {"size": 1, "devices": ["cpu"]},
              "finished_at": f"2026-12-01T00:00:{len(store):02d}", "record_version": 4, **fields}
    record["predictions"] = store.add_predictions(run_id, {
        "val": predicted[:10], "val_labels": TEST_LABELS[:10], "test": predicted, "test_labels": TEST_LABELS,
        "train_counts": TRAIN_COUNTS})
    store.add(record)
    return record


def report_files(store: ResultsStore, formats=("md", "html", "tex", "csv")):
    report = build_report(load_records(store), ORDER, "results", published="none", predictions=store.predictions)
    files, _ = render_report(report, list(formats), None)
    return report, {name: content.decode() for name, content in files.items() if not name.endswith(".png")}


@pytest.fixture
def store(tmp_path) -> ResultsStore:
    store = ResultsStore(tmp_path)
    for seed in range(3):
        add_run(store, f"lp-s{seed}", "linear_probe", seed, 0.80)
        add_run(store, f"ft-s{seed}", "finetune", seed, 0.79)  # within noise of the best
        add_run(store, f"lpt-s{seed}", "lpt", seed, 0.65)  # far below
    return store


def test_rows_show_intervals_and_whether_they_are_significantly_below_the_best(store):
    report, files = report_files(store)
    rows = {row.configuration.method: row for row in report.datasets[0].leaderboard}
    best, close, far = rows["linear_probe"], rows["finetune"], rows["lpt"]
    assert best.evidence.is_best and not close.evidence.below_best and far.evidence.below_best
    assert far.evidence.p_value == 0.0 and close.evidence.p_value > 0.05
    for row in rows.values():  # the interval holds the row's mean, and is a few points wide (300 images a class)
        mean = row.configuration.metric("test", "overall").mean
        assert row.evidence.overall.low < mean < row.evidence.overall.high
        assert 1.0 < row.evidence.overall.high - row.evidence.overall.low < 8.0
        assert row.evidence.few.high - row.evidence.few.low > row.evidence.overall.high - row.evidence.overall.low
    markdown, html, tex = files["leaderboard.md"], files["report.html"], files["leaderboard.tex"]
    for text, below in ((markdown, "▼ p<5e-04"), (html, "▼ p&lt;5e-04"), (tex, r"$\blacktriangledown$ p$<$5e-04")):
        assert ("95 \\% CI" if text is tex else "95 % CI") in text
        assert below in text and "n.s. p=" in text and "best" in text
    interval = f"[{far.evidence.overall.low:.2f}, {far.evidence.overall.high:.2f}]"
    assert interval in markdown and interval in html
    table = list(csv.DictReader(io.StringIO(files["leaderboard.csv"])))
    assert {row["method"]: row["below_best"] for row in table} == {"linear_probe": "false", "finetune": "false",
                                                                    "lpt": "true"}


def test_the_bootstrap_is_paired_over_the_same_test_images():
    """Two rows that differ on 15 of 1000 images, always in the second's disfavour, are significantly apart
    though their intervals overlap almost wholly: the comparison is paired."""
    base = np.where(np.random.default_rng(0).random(TEST_LABELS.size) < 0.7, TEST_LABELS, (TEST_LABELS + 1) % 10)
    worse = base.copy()
    flipped = np.flatnonzero(base == TEST_LABELS)[::40][:15]
    worse[flipped] = (TEST_LABELS[flipped] + 1) % 10
    arrays = {"a": base, "b": worse}
    evidence = leaderboard_evidence(
        [[{"id": "a"}], [{"id": "b"}]],
        lambda record: {"test": arrays[record["id"]], "test_labels": TEST_LABELS, "train_counts": TRAIN_COUNTS},
        lambda records: "standard")
    first, second = evidence
    assert first.overall.low < second.overall.high  # overlapping intervals...
    assert second.below_best and second.difference.low > 0  # ...and still a real difference


def test_rows_without_predictions_or_on_other_test_images_show_no_interval(store, tmp_path):
    add_run(store, "old-s0", "lpt", 5, 0.7)
    old = store.get("old-s0")
    del old["predictions"]
    store.add(old, overwrite=True)
    report, files = report_files(store, ["md"])
    lpt = next(row for row in report.datasets[0].leaderboard if row.configuration.method == "lpt")
    assert lpt.evidence is None  # one of its seeds has no predictions: the row is left out, whole
    assert "| – | " in files["leaderboard.md"]


def test_n_counts_distinct_seeds_and_the_newest_run_of_a_seed_counts(tmp_path):
    store = ResultsStore(tmp_path)
    for again in range(4):
        add_run(store, f"lpt-again{again}", "lpt", 0, 0.6 + 0.05 * again)
    report, files = report_files(store, ["md"])
    row = report.datasets[0].leaderboard[0]
    assert row.configuration.seeds == 1 and row.configuration.superseded == 3
    assert row.configuration.records[0]["run_id"] == "lpt-again3"
    assert "lpt: 3 earlier run(s) of a seed already shown (same configuration) are superseded" in \
        files["leaderboard.md"]


def test_a_row_never_mixes_precisions_device_kinds_or_world_sizes(tmp_path):
    store = ResultsStore(tmp_path)
    add_run(store, "fp32-s0", "lpt", 0, 0.7)
    add_run(store, "bf16-s1", "lpt", 1, 0.7, precision="bf16")
    add_run(store, "gpu-s2", "lpt", 2, 0.7, device="NVIDIA H100 80GB HBM3")
    add_run(store, "ddp-s3", "lpt", 3, 0.7, world={"size": 2, "devices": ["cpu", "cpu"]})
    report, files = report_files(store, ["md"])
    row = report.datasets[0].leaderboard[0]
    assert row.candidates == 4 and row.configuration.seeds == 1
    assert "· fp32 |" in files["leaderboard.md"] or "· bf16 |" in files["leaderboard.md"]


def test_a_row_whose_val_curve_was_still_rising_is_marked(store):
    rising = {"metric": "val_mean_per_class", "still_rising": ["lpt_shared"], "converged": False,
              "phases": {"lpt_shared": {"assessed": True, "from_epoch": 3, "to_epoch": 4, "rise": 12.5,
                                        "noise": 6.1, "still_rising": True}}}
    record = store.get("lpt-s1")
    record["convergence"] = rising
    store.add(record, overwrite=True)
    _, files = report_files(store, ["md", "html"])
    for text in files.values():
        assert "lpt↗" in text
        assert ("↗ lpt: val mean_per_class was still rising over the last quarter of lpt_shared in 1 of 3 "
                "seed(s) (up to +12.50 from epoch 3 to 4, noise ±6.10): this budget does not let lpt converge") in text

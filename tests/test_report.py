"""`bench report`: a golden markdown report of a fixed store; mean ± std, best-on-val choices and ablation
deltas against hand-computed values; sweeps; the other formats; the CLI's edge cases; the HTML in Chromium."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from bench.cli import app
from bench.report import (
    FILES,
    NothingToReport,
    build_report,
    load_records,
    parse_formats,
    render_report,
    write_files,
)
from bench.report.aggregate import Configuration, best_on_val, group_configurations, mean_std
from bench.report.formatting import device, duration, parameters, signed, stat
from bench.report.importance import distribution, param_importances
from bench.report.render_tex import escape
from bench.store import ResultsStore

GOLDEN = Path(__file__).parent / "golden" / "report.md"
UPDATE_GOLDEN = os.environ.get("BENCH_UPDATE_GOLDEN") == "1"  # BENCH_UPDATE_GOLDEN=1 pytest ... rewrites it
METHOD_ORDER = ["linear_probe", "finetune", "lpt", "lptpp", "lptpp_visual", "lptpp_no_adapter"]
CPU = "cpu (x86_64, 2 threads)"


def metrics(overall, many=None, medium=None, few=None) -> dict:
    return {"overall": overall, "mean_per_class": overall, "many": many, "medium": medium, "few": few,
            "worst_class": None, "harmonic_mean": None, "macro_f1": None}


def record(run_id: str, method: str, dataset: str, seed: int = 0, val: float = 50.0, test: tuple = (50.0,),
           hparams: dict | None = None, **fields) -> dict:
    """A record as `bench run` writes it, with the fields reports read."""
    return {"run_id": run_id, "method": method, "dataset": dataset, "backbone": "vit_tiny", "seed": seed,
            "sweep": None, "tags": {}, "hparams": {"lr": 0.1, **(hparams or {})},
            "dataset_options": {"imbalance_factor": 100.0}, "val": metrics(val), "test": metrics(*test),
            "posthoc": None, "trainable_params": 1930, "total_params": 5_500_000, "train_time_s": 60.0,
            "wall_time_s": 70.0, "test_ms_per_image": 1.5, "device": CPU, "pretrained": True,
            "weights_source": "file", "shot_convention": "standard", "num_classes": 3, "train_size": 130,
            "notes": [], "run_dir": f"/nonexistent/moved/runs/{run_id}",
            "finished_at": f"2026-01-01T00:00:{seed:02d}", **fields}


def sweep_trial(key: str, lr: float, prompt_length: int, val: float, test: float,
                stopped: bool = False) -> dict:
    tags = {"kind": "sweep", "sweep": "lpt_search", "trial": key, "searched": "lr,prompt_length"}
    stopped_early = {"phase": "phase1", "epoch": 1, "reason": "asha"} if stopped else None
    groups = (test, test + 5, test - 5, test - 10)
    return record(f"lpt_search-{key}", "lpt", "places_lt", val=val, test=groups,
                  hparams={"lr": lr, "prompt_length": prompt_length}, sweep="lpt_search", tags=tags,
                  stopped_early=stopped_early)


def ablation_run(variant: str, seed: int, val: float, test: float) -> dict:
    tags = {"kind": "ablation", "ablation": "lptpp_parts", "base_method": "lptpp", "variant": variant}
    return record(f"lptpp_parts-{variant}-s{seed}", variant, "places_lt", seed, val, (test, test, test, test),
                  sweep="lptpp_parts", tags=tags, trainable_params=648_016, train_time_s=1200.0)


def fixed_records() -> list[dict]:
    """2 datasets; linear_probe with 3 seeds (one few undefined); lpt with 2 configurations where the better
    val has the worse test; a 3-variant ablation × 2 seeds; a 4-trial sweep with one trial stopped early; a
    random-init run of an unregistered method on a GPU; a run with the official LPT shot groups."""
    records = [
        record("lp-s0", "linear_probe", "places_lt", 0, 40.0, (70.0, 80.0, 60.0, 30.0)),
        record("lp-s1", "linear_probe", "places_lt", 1, 41.0, (72.0, 82.0, 61.0, 35.0)),
        record("lp-s2", "linear_probe", "places_lt", 2, 42.0, (77.0, 84.0, 62.0, None)),
        record("lpt-a-s0", "lpt", "places_lt", 0, 50.0, (60.0, 70.0, 50.0, 40.0), {"prompt_length": 10},
               trainable_params=259_200, train_time_s=420.0),
        record("lpt-a-s1", "lpt", "places_lt", 1, 52.0, (62.0, 72.0, 52.0, 42.0), {"prompt_length": 10},
               trainable_params=259_200, train_time_s=420.0),
        record("lpt-b-s0", "lpt", "places_lt", 0, 55.0, (58.0, 68.0, 48.0, 38.0), {"prompt_length": 5},
               trainable_params=259_200, train_time_s=400.0),
        record("lpt-b-s1", "lpt", "places_lt", 1, 57.0, (59.0, 69.0, 49.0, 39.0), {"prompt_length": 5},
               trainable_params=259_200, train_time_s=440.0),
        ablation_run("lptpp", 0, 58.0, 64.0), ablation_run("lptpp", 1, 60.0, 66.0),
        ablation_run("lptpp_visual", 0, 57.0, 62.0), ablation_run("lptpp_visual", 1, 58.0, 63.0),
        ablation_run("lptpp_no_adapter", 0, 59.0, 66.5), ablation_run("lptpp_no_adapter", 1, 61.0, 67.5),
        sweep_trial("t0", 0.01, 10, 45.0, 50.0), sweep_trial("t1", 0.05, 5, 48.0, 53.0),
        sweep_trial("t2", 0.1, 20, 30.0, 33.0, stopped=True), sweep_trial("t3", 0.2, 10, 47.0, 52.0),
        record("mystery-s0", "mystery_method", "places_lt", 0, 20.0, (25.0, 30.0, 20.0, 10.0),
               pretrained=False, device="NVIDIA H100 80GB HBM3", train_time_s=7200.0,
               trainable_params=6_040_000, test_ms_per_image=0.25),
        record("c100-lp-s0", "linear_probe", "cifar100_lt", 0, 61.0, (63.0, 70.0, 55.0, None)),
        record("c100-lpt-s0", "lpt", "cifar100_lt", 0, 64.0, (66.0, 72.0, 60.0, 51.0), shot_convention="lpt"),
    ]
    return records


def write_store(root: Path, records: list[dict]) -> ResultsStore:
    store = ResultsStore(root)
    for entry in records:
        store.add(entry)
    return store


def write_per_class(root: Path, run_id: str, accuracies: list[float]) -> None:
    """A per_class.csv in <results>/runs/<run_id>/, as in a moved store (the record's run_dir is gone)."""
    lines = ["class,name,train_count,group,val_acc,test_acc"]
    for label, (count, accuracy) in enumerate(zip((120, 40, 8), accuracies, strict=True)):
        lines.append(f'{label},"class {label}",{count},many,,{accuracy:.4f}')
    folder = root / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "per_class.csv").write_text("\n".join(lines) + "\n")


def write_history(root: Path, run_id: str, curve: list[tuple[str, float | None]]) -> None:
    """A metrics.json beside the per_class.csv whose history has (phase, val mean per class or None: not
    validated) per epoch."""
    history = [{"phase": phase, "epoch": 0, "loss": 1.0, **({"val": {"mean_per_class": value}} if value else {})}
               for phase, value in curve]
    (root / "runs" / run_id / "metrics.json").write_text(json.dumps({"history": history}))


@pytest.fixture
def fixed_store(tmp_path) -> ResultsStore:
    root = tmp_path / "results"
    store = write_store(root, fixed_records())
    write_per_class(root, "lp-s0", [90.0, 60.0, 20.0])
    write_per_class(root, "lp-s1", [80.0, 70.0, 30.0])
    write_history(root, "lp-s0", [("a", 40.0), ("a", None), ("b", 50.0)])
    write_history(root, "lp-s1", [("a", 60.0), ("a", 62.0), ("b", 70.0)])
    return store


def test_val_curves_average_the_seeds_that_validated_each_epoch_and_mark_phase_ends(fixed_store):
    from bench.report.run_files import configuration_curve

    [probe] = [c for c in group_configurations(load_records(fixed_store)) if c.records[0]["run_id"] == "lp-s0"]
    metric, points, boundaries = configuration_curve(probe, fixed_store.root)
    assert metric == "mean_per_class" and points == [(1, 50.0), (2, 62.0), (3, 60.0)] and boundaries == [2]


def test_markdown_report_of_a_fixed_store_matches_the_golden_file(fixed_store, tmp_path):
    report = build_report(load_records(fixed_store), METHOD_ORDER, "results")
    files, _ = render_report(report, ["md"], fixed_store.root)
    markdown = files["leaderboard.md"].decode("utf-8")
    if UPDATE_GOLDEN:
        GOLDEN.write_text(markdown, encoding="utf-8")
    assert markdown == GOLDEN.read_text(encoding="utf-8"), "BENCH_UPDATE_GOLDEN=1 accepts a deliberate change"
    assert "/nonexistent" not in markdown and str(tmp_path) not in markdown


# Hand-computed values


def test_mean_and_sample_std_by_hand():
    value = mean_std([70, 72, 77])  # mean 73; squared deviations 9 + 1 + 16 = 26; 26 / (3 − 1) = 13
    assert value.mean == 73.0 and value.n == 3
    assert value.std == pytest.approx(math.sqrt(13)) and stat(value) == "73.00 ± 3.61"
    assert stat(mean_std([70.0])) == "70.00"  # one seed: no ±
    assert stat(mean_std([70.0, None, float("nan")])) == "70.00"  # undefined values are left out, never 0
    assert mean_std([None, None]) is None and stat(None) == "–"
    assert stat(mean_std([30.0, 35.0]), seeds=3) == "32.50 ± 3.54 (n=2)"  # sqrt(12.5) = 3.5355


def test_best_on_val_is_chosen_on_val_not_test():
    better_val = [record("b0", "lpt", "d", 0, 56.0, (58.0,), {"lr": 0.2}),
                  record("b1", "lpt", "d", 1, 58.0, (59.0,), {"lr": 0.2})]
    better_test = [record("a0", "lpt", "d", 0, 55.0, (90.0,)), record("a1", "lpt", "d", 1, 56.0, (92.0,))]
    chosen = best_on_val(group_configurations(better_test + better_val))
    assert [entry["run_id"] for entry in chosen.records] == ["b0", "b1"]  # val 57.0 beats 55.5
    assert chosen.metric("test", "overall").mean == 58.5


def test_best_on_val_ties_prefer_more_seeds_then_the_earliest_run():
    one_seed = Configuration([record("x0", "lpt", "d", 0, 50.0, hparams={"lr": 0.3})])
    two_seeds = Configuration([record("y0", "lpt", "d", 0, 49.0), record("y1", "lpt", "d", 1, 51.0)])
    assert best_on_val([one_seed, two_seeds]) is two_seeds
    early = Configuration([record("z0", "lpt", "d", 0, 50.0, finished_at="2026-01-01T00:00:00")])
    late = Configuration([record("w0", "lpt", "d", 0, 50.0, finished_at="2026-02-01T00:00:00")])
    assert best_on_val([late, early]) is early


def test_a_flagged_configuration_is_marked_and_never_preferred_to_a_healthy_one():
    flags = {"ok": False, "flags": ["collapsed: 100% of val predictions are class 0 ('a')"]}
    collapsed = [record("c0", "vpt_deep", "d", 0, 90.0, (12.0,), {"lr": 1.0}, health=flags)]
    healthy = [record("h0", "vpt_deep", "d", 0, 60.0, (58.0,), health={"ok": True, "flags": []})]
    assert best_on_val(group_configurations(collapsed + healthy)).records[0]["run_id"] == "h0"
    assert best_on_val(group_configurations(collapsed)).records[0]["run_id"] == "c0"  # the only one: shown
    report = build_report(collapsed, ["vpt_deep"], "results")
    files, _ = render_report(report, ["md"], None)
    markdown = files["leaderboard.md"].decode() if isinstance(files["leaderboard.md"], bytes) \
        else files["leaderboard.md"]
    assert "| vpt_deep⚠ |" in markdown
    assert "⚠ vpt_deep: training flagged in 1 of 1 seed(s) (collapsed: 100% of val predictions" in markdown


def test_configurations_differ_in_everything_but_the_seed():
    runs = [record("a", "lpt", "d", 0), record("b", "lpt", "d", 1),
            record("c", "lpt", "d", 0, pretrained=False), record("e", "lpt", "d", 0, hparams={"lr": 0.5}),
            record("f", "lpt", "d", 0, shot_convention="lpt")]
    assert [c.seeds for c in group_configurations(runs)] == [2, 1, 1, 1]


def test_leaderboard_rows_in_registry_order_unknown_last_and_stopped_trials_excluded():
    report = build_report(fixed_records(), METHOD_ORDER, "results")
    places = next(section for section in report.datasets if section.dataset == "places_lt")
    assert [row.configuration.method for row in places.leaderboard] == [
        "linear_probe", "lpt", "lptpp", "lptpp_visual", "lptpp_no_adapter", "mystery_method"]
    lpt = places.leaderboard[1]
    assert lpt.candidates == 5  # two configurations and three finished sweep trials; the stopped one is out
    assert [entry["run_id"] for entry in lpt.configuration.records] == ["lpt-b-s0", "lpt-b-s1"]
    assert places.stopped_excluded == 1
    assert all(row.configuration.records[0].get("stopped_early") is None for row in places.leaderboard)


def test_ablation_deltas_against_the_full_method_by_hand():
    report = build_report(fixed_records(), METHOD_ORDER, "results")
    (ablation,) = next(section for section in report.datasets if section.dataset == "places_lt").ablations
    deltas = {row.variant: row.delta_overall for row in ablation.rows}
    assert [row.variant for row in ablation.rows] == ["lptpp", "lptpp_visual", "lptpp_no_adapter"]
    assert deltas == {"lptpp": 0.0, "lptpp_visual": pytest.approx(62.5 - 65.0),
                      "lptpp_no_adapter": pytest.approx(67.0 - 65.0)}
    assert signed(-2.5) == "−2.50" and signed(2.0) == "+2.00"


def test_sweep_summary_ranks_finished_trials_on_val():
    report = build_report(fixed_records(), METHOD_ORDER, "results")
    (sweep,) = next(section for section in report.datasets if section.dataset == "places_lt").sweeps
    assert [entry["tags"]["trial"] for entry in sweep.top] == ["t1", "t3", "t0"]
    assert sweep.stopped == 1 and sweep.searched == ["lr", "prompt_length"]
    assert set(sweep.importance) == {"lr", "prompt_length"}
    assert sum(sweep.importance.values()) == pytest.approx(1.0)


def test_importance_needs_two_trials_and_a_varying_parameter():
    assert param_importances([({"lr": 0.1}, 50.0)]) is None
    assert param_importances([({"lr": 0.1}, 50.0), ({"lr": 0.1}, 52.0)]) is None
    trials = [({"lr": 0.001, "head": "cosine"}, 50.0), ({"lr": 0.01, "head": "linear"}, 55.0),
              ({"lr": 0.1, "head": "cosine"}, 52.0)]
    assert param_importances(trials) == param_importances(trials)  # seeded: reproducible


def test_distributions_inferred_from_observed_values():
    assert distribution([0.001, 0.1]).log and not distribution([0.1, 0.5]).log
    assert (distribution([5, 20]).low, distribution([5, 20]).high) == (5, 20)
    assert distribution([True, False]).choices == (False, True)


def test_number_formats():
    assert (parameters(259_200), parameters(6_040_000), parameters(930)) == ("259.2K", "6.04M", "930")
    assert (duration(42.0), duration(420.0), duration(7200.0)) == ("42.0 s", "7.0 min", "2.0 h")
    assert (device(CPU), device("NVIDIA H100 80GB HBM3")) == ("cpu ×2", "H100 80GB HBM3")


# Published rows


def test_published_rows_are_apart_from_measured_rows_and_only_for_datasets_in_the_store():
    report = build_report(fixed_records(), METHOD_ORDER, "results")
    places = next(section for section in report.datasets if section.dataset == "places_lt")
    assert [(p.method, p.overall, p.many, p.medium, p.few) for p in places.published] == [
        ("lpt", "50.07", "49.27", "52.31", "46.88")]
    assert "inat2018" not in [section.dataset for section in report.datasets]
    everything = build_report(fixed_records(), METHOD_ORDER, "results", published="all")
    inat = next(section for section in everything.datasets if section.dataset == "inat2018")
    assert inat.leaderboard == [] and inat.published
    hidden = build_report(fixed_records(), METHOD_ORDER, "results", published="none")
    assert all(not section.published for section in hidden.datasets)


# Other formats, plots and files


def test_tex_csv_and_plots(fixed_store):
    report = build_report(load_records(fixed_store), METHOD_ORDER, "results")
    files, _ = render_report(report, ["tex", "csv", "html"], fixed_store.root)
    tex = files["leaderboard.tex"].decode()
    assert r"\toprule" in tex and r"linear\_probe" in tex and r"73.00 $\pm$ 3.61" in tex
    assert "lpt (published) & 50.07 & 49.27 & 52.31 & 46.88" in tex
    rows = list(csv.DictReader(io.StringIO(files["leaderboard.csv"].decode())))
    linear_probe = next(row for row in rows if (row["dataset"], row["method"]) == ("places_lt",
                                                                                   "linear_probe"))
    assert [linear_probe[f"test_overall_{part}"] for part in ("mean", "std", "n")] == [
        "73.0", repr(math.sqrt(13)), "3"]
    assert [linear_probe[name] for name in ("test_few_mean", "test_few_n", "trainable_params")] == [
        "32.5", "2", "1930"]
    assert escape("a_b & 5% ± 1") == r"a\_b \& 5\% $\pm$ 1"
    plots = sorted(name for name in files if name.startswith("plots/"))
    assert plots == sorted(f"plots/{dataset}_{kind}.png" for dataset in ("places_lt", "cifar100_lt")
                           for kind in ("shot_groups", "accuracy_vs_params", "accuracy_vs_train_time"
                                        ) + (("per_class", "val_curves") if dataset == "places_lt" else ()))
    assert all(files[name].startswith(b"\x89PNG") for name in plots)


def test_plots_are_deterministic(tmp_path):
    store = write_store(tmp_path, [record("a", "lpt", "d", 0), record("b", "lpt", "d", 1, test=(55.0,))])
    report = build_report(load_records(store), METHOD_ORDER, "results")
    first, _ = render_report(report, ["html"], tmp_path)
    second, _ = render_report(report, ["html"], tmp_path)
    assert first == second


def test_html_is_self_contained(fixed_store):
    report = build_report(load_records(fixed_store), METHOD_ORDER, "results")
    html = render_report(report, ["html"], fixed_store.root)[0]["report.html"].decode()
    assert html.count('src="data:image/png;base64,') == 8
    assert not re.search(r"<script|<link|@import|url\(|https?://|src=\"(?!data:)", html)


def test_formats_are_checked():
    assert parse_formats("md, HTML,md") == ["md", "html"]
    for bad in ("pdf", "md,pdf", ""):
        with pytest.raises(Exception, match="unknown report format"):
            parse_formats(bad)


def test_empty_or_missing_store_says_so(tmp_path):
    with pytest.raises(NothingToReport, match="no records in .*: run `bench run` first"):
        load_records(ResultsStore(tmp_path / "missing"))
    with pytest.raises(NothingToReport, match="no records of dataset inat2018"):
        load_records(write_store(tmp_path / "store", [record("a", "lpt", "places_lt")]), "inat")


# The command


def test_cli_writes_the_requested_formats(fixed_store, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", "--out", str(fixed_store.root), "--report-dir", str(out),
                                      "--format", "md,html,tex,csv", "--dataset", "places"])
    assert result.exit_code == 0, result.output
    assert {path.name for path in out.iterdir()} == {*FILES.values(), "plots"}
    assert "cifar100_lt" not in (out / "leaderboard.md").read_text()
    assert "wrote 9 files" in result.output and "linear_probe" in result.output


def test_cli_on_an_empty_store_exits_1_and_writes_nothing(tmp_path):
    result = CliRunner().invoke(app, ["report", "--out", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "no records in" in result.output and "run `bench run` first" in result.output
    assert not (tmp_path / "missing").exists()


def test_cli_unknown_format_exits_2_and_writes_nothing(fixed_store, tmp_path):
    result = CliRunner().invoke(app, ["report", "--out", str(fixed_store.root), "--format", "md,docx",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "unknown report format docx" in result.output
    assert not (tmp_path / "out").exists()


# The HTML in a browser

CHROMIUM = shutil.which("chromium")
CONSOLE_MESSAGE = re.compile(r":CONSOLE[(:]|Uncaught")


def screenshot(page: Path, png: Path) -> str:
    """Render `page` in headless Chromium; return what it logged."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--enable-logging=stderr", "--v=0", f"--user-data-dir={png.parent / 'chromium-profile'}",
               f"--screenshot={png}", "--window-size=1280,2000", page.as_uri()]
    completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and png.is_file(), completed.stderr[-2000:]
    return completed.stderr


def colours(png: Path) -> int:
    with Image.open(png) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 24))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed")
def test_html_report_renders_in_headless_chromium_without_console_errors(fixed_store, tmp_path):
    report = build_report(load_records(fixed_store), METHOD_ORDER, "results")
    html = render_report(report, ["html"], fixed_store.root)[0]["report.html"]
    (page,) = write_files(tmp_path / "out", {"report.html": html})
    log = screenshot(page, tmp_path / "report.png")
    assert not CONSOLE_MESSAGE.search(log), [line for line in log.splitlines() if "CONSOLE" in line]
    assert colours(tmp_path / "report.png") > 100  # text, tables and plots, not a blank page

    broken = tmp_path / "broken.html"  # the checks above can fail: a script error and a blank page are seen
    broken.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    assert CONSOLE_MESSAGE.search(screenshot(broken, tmp_path / "broken.png"))
    assert colours(tmp_path / "broken.png") == 1


def test_each_method_declares_its_report_place_and_variants_follow_their_parent():
    import bench.methods  # noqa: F401  (registers the methods)
    from bench.method_groups import METHOD_GROUPS
    from bench.methods.base import METHODS, register_method

    listed = METHODS.items()
    assert all(cls.report_group in METHOD_GROUPS for _, cls in listed)
    assert [cls.report_order() for _, cls in listed] == sorted(cls.report_order() for _, cls in listed)
    groups = [cls.report_group for _, cls in listed]
    assert groups == sorted(groups, key=METHOD_GROUPS.index) and set(groups) == set(METHOD_GROUPS)
    names = [name for name, _ in listed]
    for name, cls in listed:  # a variant stands after its parent, with only the parent's variants between
        if cls.variant_of:
            between = names[names.index(cls.variant_of) + 1:names.index(name)]
            assert all(METHODS.get(other).variant_of == cls.variant_of for other in between), name
    assert names[:2] == ["linear_probe", "finetune"] and names.index("lpt") < names.index("lptpp") < names.index("cpe")
    unplaced = type("Unplaced", (), {"__module__": "bench.methods.unplaced"})  # as a method file of this package
    with pytest.raises(ValueError, match="declares report group 'plugin'"):
        register_method("unplaced_method")(unplaced)
    assert "unplaced_method" not in METHODS.names()


def test_reports_order_rows_by_the_order_records_carry_without_importing_the_methods():
    """Records carry `report_order`: `bench report` orders them without importing the methods (and torch); a
    record without it (written before records carried it) is placed by the registry, an unknown method last."""
    code = textwrap.dedent("""
        import sys
        from bench.report import method_order
        records = [{"method": "b_plugin", "report_order": [4, 0.0, 0]}, {"method": "mine", "report_order": [1, 5, 1]},
                   {"method": "first", "report_order": [0, 10.0, 0]}]
        print(method_order(records), "bench.methods" in sys.modules, "torch" in sys.modules)
        print(method_order([{"method": "lpt"}, {"method": "zz_gone"}, {"method": "linear_probe"}]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "['first', 'mine', 'b_plugin'] False False"
    assert out[1] == "['linear_probe', 'lpt', 'zz_gone']"

"""Benchmark protocols: validated files, `bench benchmark` end to end on the embedded protocol, reports that
keep protocols apart."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import PROBE_ONLY, shared_path
from typer.testing import CliRunner

from bench import runner
from bench.cli import app
from bench.errors import BenchError
from bench.protocols import find_protocol, load_protocol, shipped_protocols
from bench.selection import selection_key
from bench.store import ResultsStore

EMBEDDED = find_protocol("embedded")


def test_every_shipped_protocol_loads():
    names = {path.stem for path in shipped_protocols()}
    assert {"embedded", "cifar10_lt_cpu", "places_lt_lpt", "inat2018_lpt", "cifar100_lt_lpt", "imagenet_lt"} <= names
    for name in names:
        protocol = load_protocol(name)
        assert protocol.methods and protocol.seeds and protocol.description
    for name in ("places_lt_lpt", "inat2018_lpt", "cifar100_lt_lpt", "imagenet_lt"):
        assert "arXiv" in load_protocol(name).source  # paper protocols cite their source


def test_epoch_scale_applies_to_every_reference_schedule(tmp_path):
    full = load_protocol("cifar10_lt_cpu")  # v2: every reference schedule in full, so no epoch count is pinned
    assert full.epoch_scale == 1.0 and "phase1_epochs" not in full.overrides("lpt")
    text = find_protocol("cifar10_lt_cpu").read_text().replace("epoch_scale = 1.0", "epoch_scale = 0.05")
    protocol = load_protocol(write(tmp_path, text.replace('name = "cifar10_lt_cpu"', 'name = "mine"')))
    assert protocol.overrides("lpt")["phase1_epochs"] == "4" and protocol.overrides("lpt")["phase2_epochs"] == "4"
    assert protocol.overrides("finetune")["epochs"] == "1"
    assert protocol.overrides("vpt_deep")["epochs"] == "5" and protocol.overrides("vpt_deep")["warmup_epochs"] == "1"
    assert protocol.overrides("lpt")["warmup_epochs"] == "1" and protocol.overrides("la")["warmup_epochs"] == "0"
    assert all(protocol.overrides(m)["image_size"] == "64" for m in protocol.methods)


def test_a_reference_warmup_is_scaled_kept_and_shorter_than_every_phase():
    from bench.protocols import scaled_warmup

    assert scaled_warmup(10, 0.05, 5) == 1  # VPT: 10 of 100 → 1 of 5, not dropped
    assert scaled_warmup(10, 0.5, 50) == 5
    assert scaled_warmup(1, 0.05, 1) == 0  # a one-epoch phase has no room for warm-up
    assert scaled_warmup(0, 0.5, 45) == 0


def write(tmp_path: Path, text: str, name: str = "mine") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


def variant(**changes) -> str:
    """The embedded protocol's text with top-level keys replaced (value: TOML text, None: removed)."""
    text = EMBEDDED.read_text().replace('name = "embedded"', 'name = "mine"')
    for key, value in changes.items():
        pattern = re.compile(rf"^{key} = .*$", re.MULTILINE)
        text = pattern.sub("" if value is None else f"{key} = {value}", text) if pattern.search(text) \
            else f"{key} = {value}\n" + text
    return text


@pytest.mark.parametrize(("changes", "message"), [
    ({"colour": '"blue"'}, "unknown key(s) colour"),
    ({"methods": '["lpt", "lpf"]'}, "unknown method 'lpf'"),
    ({"seeds": "[0, 0]"}, "distinct non-negative integers"),
    ({"dataset": None}, "missing dataset"),
    ({"selection": '"test_overall"'}, "search.selection = 'test_overall'"),
    ({"epoch_scale": "0"}, "budget.epoch_scale = 0"),
    ({"image_size": '"big"'}, "image_size"),
    ({"wd_steps": "-3"}, "wd_steps"),
])
def test_bad_protocols_are_one_line_errors_naming_the_file(tmp_path, changes, message):
    path = write(tmp_path, variant(**changes))
    with pytest.raises(BenchError) as caught:
        load_protocol(path)
    text = str(caught.value)
    assert message in text and path in text and "\n" not in text


def test_a_setting_no_method_declares_is_refused(tmp_path):
    path = write(tmp_path, variant().replace("[settings]", "[settings]\nprompt_lenght = 5"))
    with pytest.raises(BenchError, match="settings.prompt_lenght is declared by none"):
        load_protocol(path)
    with pytest.raises(BenchError, match="must match the file name"):
        load_protocol(write(tmp_path, variant(), name="other"))


def test_the_hash_covers_what_makes_rows_comparable(tmp_path):
    """Run ids carry the hash, so a run is reused only by a protocol that would run it the same way."""
    base = load_protocol(write(tmp_path, variant()))
    more_seeds = load_protocol(write(tmp_path, variant(seeds="[0, 1, 2]"), "mine"))
    assert more_seeds.hash == base.hash  # adding seeds (or methods) keeps earlier runs
    other_size = load_protocol(write(tmp_path, variant(image_size="8"), "mine"))
    assert other_size.hash != base.hash
    other_lpt = load_protocol(write(tmp_path, variant().replace("lr = 0.1", "lr = 0.05"), "mine"))
    assert other_lpt.hash != base.hash  # a method's own pins change what its runs are


def test_a_protocol_may_pin_the_precision_and_it_is_part_of_the_hash(tmp_path):
    """`amp` in [settings] reaches every method's runs, and a protocol pinned to another precision (or to any,
    against one that follows each device's default) has another hash; an unknown precision is refused."""
    base = re.sub(r"^amp = .*\n", "", variant(), flags=re.MULTILINE)  # the shipped file pins fp32
    unpinned = load_protocol(write(tmp_path, base))
    pinned = {amp: load_protocol(write(tmp_path, base.replace("[settings]", f'[settings]\namp = "{amp}"')))
              for amp in ("off", "bf16")}
    assert all(protocol.overrides(method)["amp"] == amp for amp, protocol in pinned.items()
               for method in protocol.methods)
    assert "amp" not in unpinned.overrides("lpt")
    assert len({unpinned.hash, pinned["off"].hash, pinned["bf16"].hash}) == 3
    with pytest.raises(BenchError, match="amp"):
        load_protocol(write(tmp_path, base.replace("[settings]", '[settings]\namp = "fp8"')))


def test_a_protocol_may_restrict_the_search_to_named_hyperparameters(tmp_path):
    """`[search] searched` draws only the named hyperparameters (of those each method gives a space); it is part
    of the hash, and a name no method searches is refused."""
    from bench.benchmark import search_trials

    base = variant().replace('trials = 2', 'trials = 3')
    restricted = load_protocol(write(tmp_path, base.replace("[search]", '[search]\nsearched = ["lr", "weight_decay"]')))
    everything = load_protocol(write(tmp_path, base))
    assert restricted.hash != everything.hash and "of lr, weight_decay" in restricted.describe()
    drawn = {trial.method: trial for trial in search_trials(restricted) if trial.key.endswith("c02-s0")}
    # finetune also declares cosine_scale, la_tau, ...; lr is the embedded protocol's pin, so never drawn
    assert drawn["finetune"].searched == ("weight_decay",)
    assert set(drawn["lpt"].searched) <= {"lr", "weight_decay"}
    wide = {trial.method: trial for trial in search_trials(everything) if trial.key.endswith("c02-s0")}
    assert "cosine_scale" in wide["finetune"].searched
    with pytest.raises(BenchError, match="search.searched: colour has a search space in none of the methods"):
        load_protocol(write(tmp_path, base.replace("[search]", '[search]\nsearched = ["colour"]')))


def test_bench_benchmark_embedded_end_to_end(tmp_path):
    """Searches 2 configurations per method at seed 0, runs the chosen one at seed 1, reports; a second
    invocation needs --resume and then re-runs nothing; a run outside the protocol gets its own table."""
    out = tmp_path / "results"
    cli = CliRunner()
    result = cli.invoke(app, ["benchmark", "embedded", "--out", str(out), "--format", "md,csv"])
    assert result.exit_code == 0, result.output
    records = ResultsStore(out).records()
    protocol = load_protocol("embedded")
    methods = len(protocol.methods)
    assert len(records) == methods * 3  # methods × (2 searched configurations + 1 more seed)
    assert {r["tags"]["protocol"] for r in records} == {"embedded"}
    assert {r["tags"]["protocol_hash"] for r in records} == {protocol.hash}
    for method in protocol.methods:
        searched = [r for r in records if r["method"] == method and r["tags"]["stage"] == "search"]
        final = [r for r in records if r["method"] == method and r["tags"]["stage"] == "seeds"]
        assert {r["seed"] for r in searched} == {0} and [r["seed"] for r in final] == [1]
        best = max(sorted(searched, key=lambda r: r["run_id"]),
                   key=lambda r: (r["health"]["ok"], selection_key(r["val"], "mean_per_class")))
        assert final[0]["hparams"] == best["hparams"]  # the seed-1 run uses the configuration chosen on val
    report = (out / "reports" / "embedded" / "leaderboard.md").read_text()
    assert f"protocol embedded {protocol.hash}" in report and "± " in report
    csv_rows = (out / "reports" / "embedded" / "leaderboard.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + methods and all(f"embedded {protocol.hash}" in row for row in csv_rows[1:])
    assert all(",2,2," in row for row in csv_rows[1:])  # 2 seeds, 2 configurations searched per method

    again = cli.invoke(app, ["benchmark", "embedded", "--out", str(out)])
    assert again.exit_code == 2 and "add --resume" in again.output
    resumed = cli.invoke(app, ["benchmark", "embedded", "--out", str(out), "--resume", "--format", "md"])
    assert resumed.exit_code == 0, resumed.output
    assert len(ResultsStore(out).records()) == methods * 3  # nothing re-run

    # a second protocol on the same dataset (one method, one seed, no search) and a run outside any protocol
    other = write(tmp_path, PROBE_ONLY)
    second = cli.invoke(app, ["benchmark", other, "--out", str(out)])
    assert second.exit_code == 0, second.output
    runner.execute(runner.RunSpec(method="finetune", dataset="digits_lt", backbone="vit_micro",
                                  allow_random_init=True, out=str(out), overrides={"epochs": "1", "image_size": "16"}))
    both = cli.invoke(app, ["report", "--out", str(out), "--format", "csv", "--report-dir", str(tmp_path / "rep")])
    assert both.exit_code == 0, both.output
    rows = (tmp_path / "rep" / "leaderboard.csv").read_text().splitlines()[1:]
    assert sum(f"embedded {protocol.hash}" in row for row in rows) == methods
    assert sum(row.startswith("digits_lt,mine ") for row in rows) == 1
    outside = [row for row in rows if row.startswith("digits_lt,,")]
    assert len(outside) == 1 and outside[0].startswith("digits_lt,,finetune")
    shown = cli.invoke(app, ["report", "--out", str(out), "--format", "md", "--report-dir", str(tmp_path / "rep")])
    for title in ("digits_lt · protocol embedded", "digits_lt · protocol mine",
                  "digits_lt · runs outside any protocol"):
        assert title in shown.output
    only = cli.invoke(app, ["report", "--out", str(out), "--protocol", "embedded", "--format", "csv",
                            "--report-dir", str(tmp_path / "only")])
    assert only.exit_code == 0 and len((tmp_path / "only" / "leaderboard.csv").read_text().splitlines()) == 1 + methods
    config = json.loads(next((out / "runs").glob("embedded-*-seeds-lpt-s1/config.json")).read_text())
    assert config["hparams"]["phase1_epochs"] == 3


def test_benchmark_through_ray(tmp_path):
    ray = pytest.importorskip("ray")
    out = tmp_path / "results"
    try:
        result = CliRunner().invoke(app, ["benchmark", write(tmp_path, PROBE_ONLY), "--out", str(out), "--executor",
                                          "ray", "--cpus-per-trial", "1", "--format", "md"])
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    (record,) = ResultsStore(out).records()
    assert record["tags"]["protocol"] == "mine" and record["tags"]["stage"] == "seeds" and record["seed"] == 0


def test_a_protocol_without_its_data_fails_before_any_run(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    result = CliRunner().invoke(app, ["benchmark", "places_lt_lpt", "--out", str(tmp_path), "--allow-download"])
    assert result.exit_code == 1 and "places_lt needs its data" in result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "benchmarks").exists()


def test_shipped_protocols_name_weights_by_tag_and_the_preflight_says_how_to_supply_them(tmp_path, monkeypatch):
    """No shipped protocol names a local file; missing weights are one line naming the file looked for and the
    fix, before anything is written; --weights FILE supplies them offline."""
    import huggingface_hub.constants

    assert all(load_protocol(path.stem).weights is None for path in shipped_protocols())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    cli, out = CliRunner(), tmp_path / "results"
    missing = cli.invoke(app, ["benchmark", "cifar10_lt_cpu", "--out", str(out)])
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1, missing.output
    assert "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in missing.output and "--weights FILE" in missing.output
    wrong = cli.invoke(app, ["benchmark", "cifar10_lt_cpu", "--out", str(out), "--weights", str(tmp_path / "no.pt")])
    assert wrong.exit_code == 1 and f"--weights {tmp_path / 'no.pt'}: file not found" in wrong.output
    assert not out.exists()
    weights = shared_path("assets/vit_tiny_patch16_224.safetensors")  # the shared copy, passed as the override
    supplied = cli.invoke(app, ["benchmark", "cifar10_lt_cpu", "--out", str(out), "--weights", str(weights)])
    assert supplied.exit_code == 1 and "cifar10_lt needs its data" in supplied.output  # past the weights


def test_an_interrupted_benchmark_says_how_to_continue_with_the_same_resources(tmp_path, monkeypatch):
    import shlex

    import bench.benchmark

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.benchmark, "run_benchmark", interrupted)
    result = CliRunner().invoke(app, ["benchmark", "embedded", "--executor", "ray", "--out", str(tmp_path / "my results"),
                                      "--cpus-per-trial", "2", "--gpus-per-trial", "2", "--nproc-per-trial", "2"])
    assert result.exit_code == 130, result.output
    command = result.output.split("continue with: ", 1)[1].strip()
    assert shlex.split(command) == ["bench", "benchmark", "embedded", "--resume", "--executor", "ray", "--out",
                                    str(tmp_path / "my results"), "--cpus-per-trial", "2", "--gpus-per-trial", "2",
                                    "--nproc-per-trial", "2"]


# a protocol whose LMPT runs on its own (CLIP) tower beside the probe on the protocol's: one seed, no search
OWN_BACKBONE = """name = "mine"
description = "the probe on the micro ViT, LMPT on the random micro CLIP"
dataset = "digits_lt"
backbone = "vit_micro.fmnist"
random_init = true
seeds = [0]
methods = ["linear_probe", "lmpt"]
[settings]
image_size = 16
augment = "none"
[method_settings.lmpt]
epochs = 2
n_ctx = 4
[method_backbones]
lmpt = "clip_micro"
"""


def test_a_method_may_run_on_its_own_backbone_and_the_weights_file_stays_with_the_protocols(tmp_path):
    """[method_backbones] gives LMPT its CLIP tower (part of the hash, said in the description); --weights is the
    protocol backbone's file and never reaches the other tower; the report row names each run's backbone."""
    from bench.benchmark import search_trials

    path = write(tmp_path, OWN_BACKBONE)
    protocol = load_protocol(path)
    assert protocol.backbone_for("lmpt") == "clip_micro" and protocol.backbone_for("linear_probe") == "vit_micro.fmnist"
    assert "(lmpt on clip_micro)" in protocol.describe()
    (tmp_path / "other").mkdir()
    without = load_protocol(write(tmp_path / "other", OWN_BACKBONE.replace('lmpt = "clip_micro"', "")))
    assert without.hash != protocol.hash and not without.method_backbones
    assert {t.method: t.backbone for t in search_trials(load_protocol(path))} == {
        "linear_probe": "vit_micro.fmnist", "lmpt": "clip_micro"}

    out = tmp_path / "results"
    weights = Path(__file__).parents[1] / "bench" / "pretrained" / "vit_micro_fmnist.safetensors"
    result = CliRunner().invoke(app, ["benchmark", path, "--out", str(out), "--weights", str(weights),
                                      "--format", "csv"])
    assert result.exit_code == 0, result.output
    records = {r["method"]: r for r in ResultsStore(out).records()}
    assert records["lmpt"]["backbone"] == "clip_micro" and records["linear_probe"]["backbone"] == "vit_micro.fmnist"
    configs = {m: json.loads(next((out / "runs").glob(f"mine-*-{m}-s0/config.json")).read_text())
               for m in ("lmpt", "linear_probe")}
    assert configs["lmpt"]["spec"]["weights"] is None and configs["linear_probe"]["spec"]["weights"] == str(weights)
    rows = (out / "reports" / "mine" / "leaderboard.csv").read_text()
    assert "lmpt,clip_micro" in rows and "linear_probe,vit_micro.fmnist" in rows


@pytest.mark.parametrize(("table", "message"), [
    ('lpt = "clip_micro"', "[method_backbones] lpt is not one of the protocol's methods"),
    ('lmpt = "vit_micro.fmnist"', "a backbone name other than the protocol's"),
    ('lmpt = "resnet_colour"', "resnet_colour"),
])
def test_bad_method_backbones_are_one_line_errors(tmp_path, table, message):
    path = write(tmp_path, OWN_BACKBONE.replace('lmpt = "clip_micro"', table))
    with pytest.raises(BenchError) as caught:
        load_protocol(path)
    assert message in str(caught.value) and path in str(caught.value) and "\n" not in str(caught.value)


def test_a_method_backbone_without_its_weights_fails_before_any_run(tmp_path, monkeypatch):
    """The paper protocols run LMPT on CLIP ViT-B/16; offline without it cached, the preflight names the method,
    the tower and the fixes, and writes nothing."""
    import huggingface_hub.constants

    assert load_protocol("inat2018_lpt").backbone_for("lmpt") == "open_clip:ViT-B-16-quickgelu@openai"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    text = OWN_BACKBONE.replace("random_init = true\n", "").replace('"clip_micro"',
                                                                    '"open_clip:ViT-B-16-quickgelu@openai"')
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["benchmark", write(tmp_path, text), "--out", str(out)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "lmpt runs on its own backbone" in result.output and "--allow-download" in result.output
    assert "leave lmpt out" in result.output and "--weights" not in result.output
    assert not out.exists()

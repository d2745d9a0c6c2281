"""PEMT: the prompt attention, the gates' zero init, the task-sparsity term, the stage-1 models, the shot-group
sources and the source datasets, phase freezing, parameter accounting at ViT-B/16 sizes, every variant end to end, and learning on the
embedded default.

Measured on the embedded default (`bench run --method pemt --seed S`, S = 0-4; 2-core Xeon, one torch thread,
20-33 s a run): test overall 84.6, 82.4, 79.4, 78.0, 80.8 % (mean 81.0; chance 10 %); the gates' largest
deviation from uniform on test (a source's mean weight in a block minus 1/2, two sources) 0.500, 0.499, 0.500,
0.495, 0.499: in every run some block's gate settles on one source. The thresholds leave wide margins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CheckpointSnapshots, make_places_lt
from rich.console import Console

from bench import runner
from bench.backbones import create_backbone
from bench.engine import epoch_lr
from bench.errors import BenchError
from bench.methods.base import METHODS
from bench.methods.pemt import PEMT_HPARAMS
from bench.methods.pemt_model import OUTSIDE, PEMTNet, attend_prompts, task_sparsity

VARIANTS = ("pemt", "pemt_no_aux", "pemt_uniform_gate", "pemt_no_prompt_attn", "pemt_no_target_adapter",
            "pemt_adapter_only")
HP = {name: declared.default for name, declared in PEMT_HPARAMS.items()} | {"lora_rank": 4, "lora_alpha": 4.0,
                                                                            "prompt_length": 3}
LEARNS_OVERALL = 60.0  # test overall %, seed 0; measured 78.0-84.6 over seeds 0-4 (chance 10)
GATE_DEVIATION = 0.1  # the gates' largest deviation from uniform on test; measured 0.495-0.500
QUICK = {"image_size": "16", "source_epochs": "1", "epochs": "1", "lora_rank": "4", "lora_alpha": "4"}


def tiny_net(sources=([0, 1], [2, 3, 4]), **switches) -> PEMTNet:
    torch.manual_seed(0)
    backbone = create_backbone("vit_micro", allow_random_init=True, image_size=16)
    return PEMTNet(backbone, [list(s) for s in sources], 5, HP, **switches)


# ----------------------------------------------------------------------------------------- units


def test_the_target_prompt_adds_its_attention_over_each_source_prompt():
    torch.manual_seed(0)
    target, first, second = torch.randn(3, 8), torch.randn(4, 8), torch.randn(2, 8)
    expected = target.clone()
    for source in (first, second):
        for i in range(3):
            weights = torch.exp(target[i] @ source.t())
            expected[i] += (weights / weights.sum()) @ source
    torch.testing.assert_close(attend_prompts(target, [first, second]), expected)
    torch.testing.assert_close(attend_prompts(target, []), target)
    assert torch.equal(attend_prompts(target, [first], 0.5, training=False), attend_prompts(target, [first]))
    assert not torch.equal(attend_prompts(target, [first], 0.5, training=True), attend_prompts(target, [first]))


def test_the_task_sparsity_term_weighs_one_minus_each_experts_cosine_by_its_mean_gate():
    output = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # [B=1, T=2, D=2]
    same = output * 3  # cosine 1 at every token
    crossed = torch.tensor([[[0.0, 1.0], [-1.0, 1.0]]])  # cosines 0 and 1/√2
    gates = torch.tensor([[0.25, 0.75]])
    expected = 0.25 * 0.0 + 0.75 * (1 - (0.0 + 2 ** -0.5) / 2)
    torch.testing.assert_close(task_sparsity(output, [same, crossed], gates), torch.tensor(expected))
    batch = torch.tensor([[0.2, 0.8], [0.6, 0.4]])  # ḡ is the gate averaged over the batch: (0.4, 0.6)
    outputs, experts = torch.cat([output, output]), [torch.cat([same, same]), torch.cat([crossed, crossed])]
    torch.testing.assert_close(task_sparsity(outputs, experts, batch), torch.tensor(0.6 * (1 - 2 ** -0.5 / 2)))


def test_gates_start_uniform_and_learn_from_the_task_sparsity_term():
    net = tiny_net().train()
    images = torch.randn(4, 3, 16, 16)
    net.tally = torch.zeros(4, 2)
    logits = net(images)
    torch.testing.assert_close(net.tally, torch.full((4, 2), 2.0))  # 4 images × 1/2 in every block
    aux = net.aux_loss()
    assert len(net._aux) == 4 and aux > 0
    aux.backward()
    assert all(block.gate.grad.abs().sum() > 0 for block in net.blocks)
    assert all(block.adapter.down.weight.grad is not None for block in net.blocks)
    assert logits.shape == (4, 5)
    uniform = tiny_net(learned_gate=False)
    assert all(block.gate is None for block in uniform.blocks)
    torch.testing.assert_close(uniform.gates(0, torch.randn(2, 7, 256)), torch.full((2, 2), 0.5))


def test_a_source_model_runs_its_own_lora_and_scores_only_its_classes():
    net = tiny_net().eval()
    net.source = 1
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # random changes: a change along the all-ones direction vanishes in the LayerNorms
        before = net(images)
        for block in net.blocks:
            block.loras[0].b.add_(torch.randn_like(block.loras[0].b))  # the other source's LoRA: no effect
            block.adapter.up.weight.add_(torch.randn_like(block.adapter.up.weight))  # nor the target adapter
        torch.testing.assert_close(net(images), before)
        assert (before[:, :2] == OUTSIDE).all() and (before[:, 2:] != OUTSIDE).all()
        for block in net.blocks:
            block.loras[1].b.add_(torch.randn_like(block.loras[1].b))
        assert (net(images) - before)[:, 2:].abs().max() > 1e-2
    assert not net._aux  # no task-sparsity term outside stage 2


def test_linear_schedule_decays_to_one_epoch_of_the_peak_per_remaining_epoch():
    assert [epoch_lr(1.0, e, 4, 0, schedule="linear") for e in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert epoch_lr(1.0, 1, 5, 1, schedule="linear") == 1.0 and epoch_lr(1.0, 4, 5, 1, schedule="linear") == 0.25
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        epoch_lr(1.0, 0, 4, 0, schedule="step")


# ----------------------------------------------------------------------------------------- runs


def run(tmp_path, method: str, overrides: dict, callbacks=(), embedded: bool = False) -> dict:
    tower = {} if embedded else {"backbone": "vit_micro", "allow_random_init": True}
    spec = runner.RunSpec(method=method, dataset="digits_lt", out=str(tmp_path), overrides=overrides, **tower)
    return runner.execute(spec, console=Console(quiet=True), callbacks=callbacks).record


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_runs_end_to_end_and_records_its_sources(tmp_path, variant):
    record = run(tmp_path, variant, QUICK)
    pemt = record["extras"]["pemt"]
    assert METHODS.get(variant).variant_of == (None if variant == "pemt" else "pemt")
    assert 0 <= record["test"]["overall"] <= 100
    phases = [entry["phase"] for entry in record["selected"]]
    if variant == "pemt_adapter_only":
        assert phases == ["pemt_target"] and pemt["sources"] == "none" and not pemt["gate_means"]
        return
    # digits_lt's shot groups (standard): many = class 0 alone (skipped), medium = 1-5, few = 6-9
    assert phases == ["pemt_source_medium", "pemt_source_few", "pemt_target"]
    assert [(s["name"], s["classes"], s["train_images"]) for s in pemt["source_tasks"]] == \
        [("medium", [1, 2, 3, 4, 5], 231), ("few", [6, 7, 8, 9], 38)]
    assert pemt["skipped_sources"][0]["name"] == "many" and pemt["sources"] == "shot_groups"
    means = np.array(pemt["gate_means"]["test"]["per_block"])
    assert means.shape == (4, 2) and np.allclose(means.sum(1), 1.0)
    assert pemt["aux_weight"] == (0.0 if variant == "pemt_no_aux" else 0.1)
    assert (pemt["gate"] == "uniform") == (variant == "pemt_uniform_gate")


def test_source_datasets_each_train_a_phase_on_their_own_images_and_select_on_their_own_val(tmp_path, monkeypatch):
    """sources=datasets (the paper's reading): every other registered dataset under $BENCH_DATA_ROOT (here a
    Places-LT copy; the others absent, and recorded so) trains its own stage-1 phase over its own classes on its
    own train images, and validates on its own val split; stage 2 then learns the target with that one source."""
    make_places_lt(tmp_path / "data" / "Places_LT", download_layout=False, train_scale=2)
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "data"))
    record = run(tmp_path, "pemt", {**QUICK, "sources": "datasets", "source_epochs": "2"})
    assert "pemt: one source (places_lt): its gate weight is 1 in every block" in record["notes"]
    pemt = record["extras"]["pemt"]
    assert pemt["sources"] == "datasets" and [s["phase"] for s in record["selected"]] == [
        "pemt_source_places_lt", "pemt_target"]
    [source] = pemt["source_tasks"]
    assert (source["dataset"], source["num_classes"], source["train_images"], source["val_images"]) == \
        ("places_lt", 3, 12, 3)
    assert source["data_root"] == str((tmp_path / "data" / "Places_LT").resolve())
    assert {s["name"] for s in pemt["skipped_sources"]} == {"cifar10_lt", "cifar100_lt", "imagenet_lt", "inat2018"}
    assert {"places_lt:train", "places_lt:val", "train", "val", "test"} <= set(record["data_paths"])
    history = [entry for entry in record_history(tmp_path) if entry["phase"] == "pemt_source_places_lt"]
    assert len(history) == 2  # each epoch scored on Places-LT's val: 3 images, so overall is a multiple of 1/3
    assert all(float(entry["val"]["overall"] * 3 / 100).is_integer() for entry in history)
    assert np.allclose(pemt["gate_means"]["test"]["mean"], [1.0])  # one source: its gate weight is 1
    assert 0 <= record["test"]["overall"] <= 100


def record_history(tmp_path) -> list[dict]:
    import json

    [run_dir] = (tmp_path / "runs").iterdir()
    return json.loads((run_dir / "metrics.json").read_text())["history"]


@pytest.mark.parametrize(("places", "overrides", "message"), [
    (False, {}, (r"^pemt: sources=datasets reads the other registered datasets from \$BENCH_DATA_ROOT, which holds "
                r"none of them; set BENCH_DATA_ROOT to the folder that holds them, or use sources=shot_groups$")),
    (True, {"source_datasets": "imagenet_lt"}, (r"^pemt: source dataset imagenet_lt has no folder under "
                                               r"\$BENCH_DATA_ROOT; name others in source_datasets, or set")),
    (True, {"source_datasets": "colour"}, r"unknown dataset 'colour'"),
    (True, {"source_datasets": "places,digits_lt"}, r"^pemt: source dataset digits_lt is the target; name others"),
])
def test_source_datasets_that_are_not_there_are_one_line_errors(tmp_path, monkeypatch, places, overrides, message):
    (tmp_path / "data").mkdir()
    if places:
        make_places_lt(tmp_path / "data" / "Places_LT", download_layout=False)
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "data"))
    with pytest.raises(BenchError, match=message):
        run(tmp_path, "pemt", {**QUICK, "sources": "datasets", **overrides})
    monkeypatch.delenv("BENCH_DATA_ROOT")
    with pytest.raises(BenchError, match=r"from \$BENCH_DATA_ROOT, which is not set; set BENCH_DATA_ROOT"):
        run(tmp_path, "pemt", {**QUICK, "sources": "datasets"})


STAGE_KEYS = {  # the checkpoint keys each phase may change
    "pemt_source_medium": (".loras.0.", "source_prompts.0", "source_heads.0."),
    "pemt_source_few": (".loras.1.", "source_prompts.1", "source_heads.1."),
    "pemt_target": ("target_prompt", ".gate", ".adapter.", "norm", "head."),
}


def test_each_stage_changes_only_its_own_modules(tmp_path):
    snapshots = CheckpointSnapshots()
    run(tmp_path, "pemt", {**QUICK, "source_epochs": "2", "epochs": "2", "model_selection": "last"}, [snapshots])
    snapshots.assert_each_phase_changes_only(STAGE_KEYS, epochs=2)
    trained = {k for k in snapshots.snapshots[-1][1] if "backbone" in k}
    assert trained and all("norm" in k for k in trained)  # of the tower, the LayerNorms alone learn


@pytest.mark.slow
def test_pemt_learns_on_the_embedded_default_and_its_gates_leave_uniform(tmp_path):
    record = run(tmp_path, "pemt", {}, embedded=True)
    assert record["pretrained"] and record["hparams"]["lr"] == 2e-2
    assert record["test"]["overall"] >= LEARNS_OVERALL, record["test"]
    deviation = record["extras"]["pemt"]["gate_means"]["test"]["max_deviation_from_uniform"]
    assert deviation >= GATE_DEVIATION, record["extras"]["pemt"]["gate_means"]["test"]


def test_parameter_accounting_on_vit_b16_with_the_official_sizes():
    """Stage 1 per source: LoRA r 64 on every fc2 (3072 → 768), 10 prompt tokens, a head; stage 2: the target
    prompt, gates [3072, S], adapters 768 → 48 → 768, every LayerNorm (2 per block + the final one), a head."""
    backbone = create_backbone("vit_base_patch16_224.augreg_in21k", allow_random_init=True)
    defaults = {name: declared.default for name, declared in PEMT_HPARAMS.items()}
    net = PEMTNet(backbone, [list(range(35)), list(range(35, 70)), list(range(70, 100))], 100, defaults)
    count = lambda parameters: sum(p.numel() for p in parameters)
    lora = 12 * (64 * 3072 + 768 * 64)
    assert count(net.source_parameters(2)) == lora + 10 * 768 + 768 * 30 + 30
    adapters = 12 * (768 * 48 + 48 + 48 * 768 + 768)
    norms = (2 * 12 + 1) * 2 * 768
    assert count(net.target_parameters()) == 10 * 768 + 12 * 3072 * 3 + adapters + norms + 768 * 100 + 100

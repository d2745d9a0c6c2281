"""LPT++: the MoE scorer and mixture, phase freezing, the VL head's text initialisation, parameter accounting
for the ViT-B/16 pair, and every registered variant end to end on the embedded default."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import CheckpointSnapshots, OnEpoch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from rich.console import Console
from typer.testing import CliRunner

from bench import runner
from bench.backbones import create_backbone
from bench.cli import app
from bench.data import Transform
from bench.datasets.base import load_dataset
from bench.methods.base import METHODS
from bench.methods.lptpp import LPTPP_HPARAMS, Expert, MixtureOfExperts, Scorer, mixture
from bench.pixel_cache import split_pixels
from bench.store import ResultsStore

VARIANTS = ("lptpp", "lptpp_visual", "lptpp_vl", "lptpp_no_adapter", "lptpp_no_group_prompts", "lptpp_mean")
HP = {name: declared.default for name, declared in LPTPP_HPARAMS.items()}
TINY = {**HP, "prompt_length": 2, "pool_size": 4, "adapter_bottleneck": 8}


def tiny_experts() -> list[Expert]:
    torch.manual_seed(0)
    visual = create_backbone("vit_micro", allow_random_init=True, image_size=16)
    vl = create_backbone("clip_micro", allow_random_init=True, image_size=16)
    return [Expert("visual", visual, 5, TINY, True), Expert("vl", vl, 5, TINY, True)]


def test_scorer_weights_are_positive_sum_to_one_and_depend_on_the_input():
    torch.manual_seed(0)
    scorer = Scorer([8, 6], hidden=16, inputs="features+confidence")
    torch.nn.init.normal_(scorer.net[-1].weight)  # as after training (it starts at zero: uniform weights)
    features = [torch.randn(4, 8), torch.randn(4, 6)]
    probabilities = [torch.softmax(torch.randn(4, 5), -1), torch.softmax(torch.randn(4, 5), -1)]
    weights = scorer(features, probabilities)
    assert weights.shape == (4, 2) and (weights > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(4))
    assert not torch.allclose(weights[0], weights[1])


def test_untrained_scorer_is_the_uniform_average():
    scorer = Scorer([8, 6], hidden=16, inputs="features")
    weights = scorer([torch.randn(3, 8), torch.randn(3, 6)], [torch.full((3, 5), 0.2)] * 2)
    torch.testing.assert_close(weights, torch.full((3, 2), 0.5))


def test_ensemble_output_is_the_weighted_mixture_of_expert_probabilities():
    experts = tiny_experts()
    scorer = Scorer([e.lpt.head.in_features for e in experts], 16, "features+confidence")
    torch.nn.init.normal_(scorer.net[-1].weight)
    model = MixtureOfExperts(experts, "scorer", 20.0, scorer).eval()
    for expert in experts:
        expert.lpt.stage = "group"
        expert.set_adapters(True)
    views = [torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)]  # each expert's images, in its preprocessing
    with torch.no_grad():
        features, probabilities = model.expert_outputs(views)
        weights = model.weights(features, probabilities)
        by_loop = sum(weights[:, e:e + 1] * probabilities[e] for e in range(2))
        torch.testing.assert_close(model(views).exp(), by_loop)
        torch.testing.assert_close(mixture(weights, probabilities), by_loop)
        own = torch.softmax(20.0 * experts[1].lpt(views[1]), -1)
    torch.testing.assert_close(probabilities[1], own)


# ----------------------------------------------------------------------------------------- phases

FAST = ["--set", "image_size=16", "--set", "batch_size=64", "--set", "prompt_length=2", "--set", "pool_size=4",
        "--set", "adapter_bottleneck=8", "--set", "scorer_hidden=16"]
ONE_EPOCH = [item for key in ("phase1_epochs", "phase2_epochs", "adapter_epochs", "scorer_epochs")
             for item in ("--set", f"{key}=1")]


VIT_DEFAULT = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash",
               "crop_fraction": 0.875}
OPEN_CLIP_DEFAULT = {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD), "interpolation": "bicubic",
                     "resize_mode": "shortest", "crop_fraction": 1.0}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_runs_end_to_end_on_the_embedded_default(tmp_path, variant):
    result = CliRunner().invoke(app, ["run", "--method", variant, "--out", str(tmp_path), *FAST, *ONE_EPOCH])
    assert result.exit_code == 0, result.output
    record = ResultsStore(tmp_path).records()[0]
    assert record["method"] == variant and 0 <= record["test"]["overall"] <= 100
    assert record["test_ms_per_image"] > 0
    experts = record["extras"]["experts"]
    sources = {expert["name"]: (expert["pretrained"], expert["weights_source"]) for expert in experts}
    assert sources.get("visual", (True, "shipped")) == (True, "shipped")  # vit_micro.fmnist
    assert sources.get("vl", (False, "random")) == (False, "random")  # clip_micro: no weights to ship
    names = [expert["name"] for expert in experts]
    assert names == {"lptpp_visual": ["visual"], "lptpp_vl": ["vl"]}.get(variant, ["visual", "vl"])
    phases = [entry["phase"] for entry in record["selected"]]
    assert ("lptpp_group" in phases) == (variant != "lptpp_no_group_prompts")
    assert ("lptpp_adapters" in phases) == (variant != "lptpp_no_adapter")
    assert ("lptpp_scorer" in phases) == (variant in ("lptpp", "lptpp_no_adapter", "lptpp_no_group_prompts"))
    assert record["trainable_params"] == sum(e["trainable_params"] for e in experts) + \
        record["extras"]["scorer_params"]
    # each tower's own preprocessing: the ViT's the harness default, the CLIP tower's open_clip's
    towers = {"lptpp_visual": ["vit_micro.fmnist"], "lptpp_vl": ["clip_micro"]}.get(variant, ["vit_micro.fmnist", "clip_micro"])
    assert sorted(record["preprocessing"]) == sorted(towers)
    assert record["preprocessing"].get("vit_micro.fmnist", VIT_DEFAULT) == VIT_DEFAULT
    assert record["preprocessing"].get("clip_micro", OPEN_CLIP_DEFAULT) == OPEN_CLIP_DEFAULT


def test_each_expert_is_fed_its_own_towers_view(tmp_path, monkeypatch):
    """The mixture gets a view per expert: the CLIP tower's is open_clip's preprocessing of the same images
    (shortest side to the size, no crop margin, CLIP's normalisation), not the ViT's."""
    seen = []
    forward = MixtureOfExperts.forward

    def spy(self, views):
        seen.append([view.clone() for view in views])
        return forward(self, views)

    monkeypatch.setattr(MixtureOfExperts, "forward", spy)
    settings = {"image_size": "16", "eval_batch_size": "8", "prompt_length": "2", "pool_size": "4",
                "adapter_bottleneck": "8", "scorer_hidden": "16", "vl_backbone": "clip_micro",
                **{k: "0" for k in ("phase1_epochs", "phase2_epochs", "adapter_epochs", "scorer_epochs")}}
    runner.execute(runner.RunSpec(method="lptpp", dataset="digits_lt", backbone="vit_micro", allow_random_init=True,
                                  out=str(tmp_path), overrides=settings))
    dataset = load_dataset("digits_lt", None, {})
    pixels, _ = split_pixels(dataset.val, None, Console(quiet=True), print)  # val is predicted first
    towers = [create_backbone(name, allow_random_init=True, image_size=16) for name in ("vit_micro", "clip_micro")]
    for view, tower in zip(seen[0], towers, strict=True):
        torch.testing.assert_close(view, Transform(16, tower.preprocessing).batch(pixels[:8], None))
    assert towers[1].preprocessing.resize_mode == "shortest" and towers[0].preprocessing.resize_mode == "squash"


PHASE_PARAMETERS = {  # which checkpoint keys each phase may change
    "lptpp_shared": ("lpt.prompted.prompts", "lpt.head.weight"),
    "lptpp_group": ("lpt.pool", "lpt.keys", "lpt.head.weight"),
    "lptpp_adapters": ("adapters.",),
    "lptpp_scorer": ("scorer.",),
}


def test_each_phase_changes_only_its_own_modules(tmp_path):
    snapshots = CheckpointSnapshots()
    settings = {"image_size": "16", "batch_size": "64", "prompt_length": "2", "pool_size": "4", "lr": "0.5",
                "adapter_bottleneck": "8", "scorer_hidden": "16", "vl_backbone": "clip_micro",
                "warmup_epochs": "0", "model_selection": "last",
                **{k: "2" for k in ("phase1_epochs", "phase2_epochs", "adapter_epochs", "scorer_epochs")}}
    spec = runner.RunSpec(method="lptpp", dataset="digits_lt", backbone="vit_micro", allow_random_init=True,
                          out=str(tmp_path), overrides=settings)
    runner.execute(spec, callbacks=[snapshots])
    snapshots.assert_each_phase_changes_only(PHASE_PARAMETERS, epochs=2)


def test_vl_head_starts_as_the_normalised_text_embeddings(tmp_path):
    heads = []

    def first_epoch(entry):
        run_dir = next((tmp_path / "runs").iterdir())
        state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
        heads.append(state["experts.0.lpt.head.weight"])

    settings = {"image_size": "16", "batch_size": "64", "lr": "1e-12", "warmup_epochs": "0",  # head ~unchanged
                **{k: "1" for k in ("phase1_epochs", "phase2_epochs", "adapter_epochs", "scorer_epochs")}}
    spec = runner.RunSpec(method="lptpp_vl", dataset="digits_lt", backbone="clip_micro", allow_random_init=True,
                          out=str(tmp_path), overrides=settings)
    runner.execute(spec, callbacks=[OnEpoch(first_epoch)])
    text = torch.load(next((tmp_path / "cache" / "text").glob("*.pt")), weights_only=True)
    assert text.shape == heads[0].shape == (10, 32)
    torch.testing.assert_close(heads[0], F.normalize(text, dim=-1))
    torch.testing.assert_close(heads[0].norm(dim=-1), torch.ones(10))


# ----------------------------------------------------------------------------------------- accounting


def test_parameter_accounting_for_the_vit_b16_pair():
    """Exact trainable count of the default LPT++ on ViT-B/16 (in21k) + CLIP ViT-B/16 for C classes."""
    classes = 1000
    visual = create_backbone("vit_base_patch16_224.augreg_in21k", allow_random_init=True)
    vl = create_backbone("open_clip:ViT-B-16-quickgelu@openai", allow_random_init=True)
    experts = [Expert("visual", visual, classes, HP, True), Expert("vl", vl, classes, HP, True)]
    scorer = Scorer([768, 512], HP["scorer_hidden"], HP["scorer_input"])
    adapters = 12 * (768 * 64 + 64 + 64 * 768 + 768 + 1)  # down, up, learnable scale per block
    expected = {
        "visual": 92_160 + 921_600 + 20 * 768 + adapters + 768 * classes,
        "vl": 92_160 + 921_600 + 20 * 512 + adapters + 512 * classes,  # CLIP's feature is the 512-d projection
    }
    for expert in experts:
        # the backbone is frozen: prompts, keys, head, adapters
        count = sum(p.numel() for p in expert.parameters() if p.requires_grad)
        assert count == expected[expert.name]
    assert sum(p.numel() for p in scorer.parameters()) == (768 + 512 + 4) * 256 + 256 + 256 * 2 + 2
    backbones = sum(p.numel() for p in visual.parameters()) + sum(p.numel() for p in vl.parameters())
    assert sum(p.numel() for p in visual.parameters()) == 85_798_656
    total = sum(expected.values()) + sum(p.numel() for p in scorer.parameters())
    without_heads = total - 1280 * classes
    print(f"LPT++ ViT-B/16 pair, {classes} classes: {total:,} trainable ({100 * total / backbones:.2f} % of "
          f"{backbones:,} backbone parameters); without the heads {without_heads:,} "
          f"({100 * without_heads / backbones:.2f} %)")
    assert 0.01 < without_heads / backbones < 0.04


def test_variants_are_registered_with_descriptions():
    for name in VARIANTS:
        assert METHODS.get(name).description

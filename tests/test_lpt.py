"""LPT: parameter counts, the exact shared-prefix speed-up, phase-2 gradient flow, A-GCL, dual sampling,
official-checkpoint import, and an end-to-end run that resumes in the right phase."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import OnEpoch, make_places_lt
from rich.console import Console

from bench import runner
from bench.backbones import create_backbone
from bench.data import Preprocessing, Transform
from bench.datasets.base import load_dataset
from bench.errors import BenchError
from bench.methods.agcl import AGCLoss, asymmetric_focal, cloud_offsets
from bench.methods.common import dual_index_batches, dual_steps
from bench.methods.lpt import ScaledCrossEntropy, dual_loss, ib_weight
from bench.methods.lpt_model import LPTModel


def micro_lpt(classes: int = 5, tower: str = "vit_micro", **kwargs) -> LPTModel:
    torch.manual_seed(0)
    backbone = create_backbone(tower, allow_random_init=True, image_size=16)
    return LPTModel(backbone, classes, prompt_length=3, pool_size=6, shared_layers=backbone.num_blocks // 2,
                    **kwargs)


def freeze_for(model: LPTModel, stage: str) -> None:
    """What the engine does when a phase starts: only the phase's parameters require grad."""
    wanted = {id(p) for p in model.stage_parameters(stage)}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    model.stage = stage


# ------------------------------------------------------------------------------------------- parameters


def test_vit_b16_prompts_and_keys_are_1029120_parameters():
    backbone = create_backbone("vit_base_patch16_224.augreg_in21k", allow_random_init=True)
    model = LPTModel(backbone, num_classes=365)
    assert sum(p.numel() for p in backbone.parameters()) == 85_798_656
    assert model.shared_prompts.numel() == 92_160
    assert model.pool.numel() == 921_600 and model.keys.numel() == 15_360
    assert model.shared_prompts.numel() + model.pool.numel() + model.keys.numel() == 1_029_120
    assert tuple(model.head.weight.shape) == (365, 768)  # 768 × C, no bias
    assert [n for n, _ in model.head.named_parameters()] == ["weight"]


def test_bad_structure_is_refused():
    backbone = create_backbone("vit_micro", allow_random_init=True)
    with pytest.raises(BenchError, match="shared_layers=4"):
        LPTModel(backbone, 3, shared_layers=4)
    with pytest.raises(BenchError, match="top_k=3"):
        LPTModel(backbone, 3, pool_size=2, top_k=3, shared_layers=2)


# --------------------------------------------------------------------------------------- shared prefix


@pytest.mark.parametrize("tower", ["vit_micro", "clip_micro"], ids=["timm", "open_clip"])
def test_shared_prefix_equals_the_plain_two_pass_computation(tower):
    model = micro_lpt(tower=tower).eval()
    model.stage = "group"
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        model.shared_prefix = True
        fast, fast_match, fast_chosen = model.group_features(images)
        model.shared_prefix = False
        plain, plain_match, plain_chosen = model.group_features(images)
    assert torch.equal(fast_chosen, plain_chosen)
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast_match, plain_match, rtol=0, atol=1e-6)


def test_query_is_the_phase1_feature_and_group_prompts_change_the_output():
    model = micro_lpt().eval()
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        phase1 = model.prompted(images)
        assert torch.equal(model.query(model.prompted.embed(images)), phase1)
        model.stage = "group"
        feature, _, _ = model.group_features(images)
    assert not torch.allclose(feature, phase1)


# -------------------------------------------------------------------------------------- gradient flow


def test_phase2_gradients_reach_only_pool_entries_chosen_keys_and_head():
    model = micro_lpt()
    freeze_for(model, "group")
    images, labels = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])
    cosine, matching = model.forward_with_matching(images)
    _, _, chosen = model.group_features(images)
    F.cross_entropy(20 * cosine, labels).backward()
    for name, p in model.prompted.backbone.named_parameters():
        assert p.grad is None, name
    assert model.shared_prompts.grad is None
    assert model.keys.grad is None  # classification loss alone: keys get nothing (top-k is not differentiable)
    used = torch.zeros(model.pool.shape[0], dtype=torch.bool)
    used[chosen.reshape(-1)] = True
    row_norms = model.pool.grad.flatten(1).norm(dim=1)
    assert (row_norms[used] > 0).all() and (row_norms[~used] == 0).all()
    assert model.head.weight.grad is not None

    model.zero_grad(set_to_none=True)
    (-matching).backward()  # the matching term alone
    key_norms = model.keys.grad.norm(dim=1)
    assert (key_norms[used] > 0).all() and (key_norms[~used] == 0).all()
    assert model.pool.grad is None or model.pool.grad.abs().sum() == 0


def test_the_pool_gradient_is_bitwise_the_same_at_every_repeat_on_two_threads():
    """Images that chose the same pool entry add their gradients into it. Through `pool[chosen]` (whose backward
    is an accumulating index_put, parallel and unordered on several CPU threads) the sum's order varied, so two
    runs of the embedded default at one seed drifted apart: 6e-6 of the loss in fp32, 2 % in bf16."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        backbone = create_backbone("vit_micro", allow_random_init=True, image_size=16)
        model = LPTModel(backbone, 10, prompt_length=10, pool_size=20, shared_layers=2)  # the embedded default's
        query, weights = torch.randn(32, model.keys.shape[1]), torch.randn(32, *model.pool.shape[1:])
        gradients = []
        for _ in range(10):
            model.pool.grad = None
            prompts, _, _ = model.select(query)
            (prompts * weights).sum().backward()
            gradients.append(model.pool.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(gradient, gradients[0]) for gradient in gradients[1:])


def test_phase1_trains_shared_prompts_and_head_only():
    model = micro_lpt()
    freeze_for(model, "shared")
    cosine, matching = model.forward_with_matching(torch.randn(2, 3, 16, 16))
    assert matching.item() == 0
    cosine.sum().backward()
    assert model.shared_prompts.grad.abs().sum() > 0
    assert model.pool.grad is None and model.keys.grad is None
    assert all(p.grad is None for p in model.prompted.backbone.parameters())


# ---------------------------------------------------------------------------------------------- A-GCL


def by_hand(cosine, labels, counts, eps, lam, m, s, smoothing, gamma_pos, gamma_neg) -> float:
    """The reference recipe written out element by element."""
    delta = [math.log(max(counts)) - math.log(n) for n in counts]
    top = max(delta)
    total = 0.0
    for b, row in enumerate(cosine):
        y = labels[b]
        z = []
        for j, c in enumerate(row):
            c = c - lam * eps[b][j] * delta[j] / top
            if j == y:
                c -= m
            z.append(s * c)
        norm = math.log(sum(math.exp(v) for v in z))
        loss = 0.0
        for j, v in enumerate(z):
            log_p = v - norm
            p = math.exp(log_p)
            t = (1 - smoothing + smoothing / len(row)) if j == y else smoothing / len(row)
            w = (1 - p) ** gamma_pos if j == y else p ** gamma_neg
            loss -= t * w * log_p
        total += loss
    return total / len(cosine)


COSINE = [[0.30, -0.10, 0.05], [0.10, 0.20, 0.40]]
LABELS = [0, 2]
COUNTS = [100, 10, 1]


@pytest.mark.parametrize("gammas", [(0.0, 4.0), (0.5, 8.0)], ids=["class-balanced", "instance-balanced"])
def test_agcl_without_noise_matches_hand_computation(gammas):
    loss = AGCLoss(COUNTS, *gammas, noise=False)
    value = loss(torch.tensor(COSINE, dtype=torch.float64), torch.tensor(LABELS)).item()
    expected = by_hand(COSINE, LABELS, COUNTS, [[0] * 3] * 2, 0.5, 0.1, 20.0, 0.1, *gammas)
    assert value == pytest.approx(expected, rel=1e-6)
    assert value != pytest.approx(by_hand(COSINE, LABELS, COUNTS, [[0] * 3] * 2, 0.5, -0.1, 20.0, 0.1, *gammas))


def test_agcl_with_a_given_cloud_pushes_tail_logits_down():
    eps = [[0.9, 0.5, 0.7], [0.2, 0.4, 1.0]]
    loss = AGCLoss(COUNTS, 0.0, 4.0)
    value = loss(torch.tensor(COSINE, dtype=torch.float64), torch.tensor(LABELS), cloud=torch.tensor(eps)).item()
    assert value == pytest.approx(by_hand(COSINE, LABELS, COUNTS, eps, 0.5, 0.1, 20.0, 0.1, 0.0, 4.0), rel=1e-6)


def test_agcl_noise_is_non_negative_zero_for_the_largest_class_and_scaled_by_rarity():
    torch.manual_seed(0)
    loss = AGCLoss(COUNTS, 0.0, 4.0, margin=0.0, scale=1.0)
    cosine = torch.zeros(20_000, 3)
    drop = -loss.adjusted_logits(cosine, torch.zeros(20_000, dtype=torch.long))  # λ·ε·δ/max δ per entry
    assert (drop >= 0).all()
    assert (drop[:, 0] == 0).all()  # largest class: δ = 0
    expected_mean = 0.5 * (1 / 3) * math.sqrt(2 / math.pi)  # λ · E|N(0, 1/3)| (the clamp at 1 is a 3σ event)
    assert drop[:, 2].mean().item() == pytest.approx(expected_mean, rel=0.03)
    assert drop[:, 1].mean().item() == pytest.approx(expected_mean * cloud_offsets(COUNTS)[1].item(), rel=0.03)
    assert drop.max().item() <= 0.5


def test_asymmetric_focal_reduces_to_smoothed_cross_entropy_without_focusing():
    logits, labels = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 4, (6,))
    expected = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert asymmetric_focal(logits, labels, 0.0, 0.0, 0.1).item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("gammas", [(0.0, 4.0), (0.5, 8.0)], ids=["class-balanced", "instance-balanced"])
def test_asymmetric_focal_gradient_is_float64s_where_a_probability_rounds_to_one(gammas):
    """Rows whose top probability is 1.0 in float32: confidently wrong (label 0) and confidently right (label 1).
    A `where` over two powers gave NaN on the wrong row ((1 − p)^0.5 at a non-target p = 1); the official code
    gives NaN on the right row with γ+ = 0.5 (0 · ∞), whose limit is 0."""
    logits, labels = torch.tensor([[-10.0, 19.0, -10.0]] * 2), torch.tensor([0, 1])
    grads = []
    for dtype in (torch.float32, torch.float64):
        x = logits.detach().to(dtype).requires_grad_(True)
        asymmetric_focal(x, labels, *gammas).backward()
        grads.append(x.grad)
    assert grads[0].isfinite().all()
    torch.testing.assert_close(grads[0].double(), grads[1], rtol=0, atol=1e-8)


# ------------------------------------------------------------------------------------------ sampling


def test_lpt_ce_trains_both_batches_with_plain_cross_entropy_on_scaled_cosine():
    from bench.methods.base import METHODS

    variant = METHODS.get("lpt_ce")
    assert variant.variant_of == "lpt" and variant.loss_kind == "ce" and METHODS.get("lpt").loss_kind == "agcl"
    cosine, labels = torch.rand(6, 4) * 2 - 1, torch.tensor([0, 1, 2, 3, 3, 0])
    loss = ScaledCrossEntropy(20.0)
    assert torch.allclose(loss(cosine, labels), F.cross_entropy(20.0 * cosine, labels))


@pytest.mark.parametrize("per", ["epoch", "iteration"])
def test_warmup_per_iteration_raises_the_rate_at_every_step_and_per_epoch_holds_it(per):
    """The official schedulers step per epoch (a one-epoch warm-up holds 1e-6 for the whole epoch); with
    warmup_per=iteration the rate climbs the same line step by step, and after the warm-up both are per epoch."""
    from bench.engine import Engine, epoch_lr
    from bench.methods.base import Phase

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.02)
    optimizer.param_groups[0]["base_lr"] = 0.02
    phase = Phase(name="p", epochs=4, parameters=[weight], warmup_epochs=1, warmup_per=per)
    rates = []
    for epoch in (0, 1):
        optimizer.param_groups[0]["lr"] = epoch_lr(0.02, epoch, 4, 1)  # what the engine sets at the epoch's start
        for step in range(5):
            Engine._warmup_step(phase, optimizer, epoch, step, 5)
            rates.append(optimizer.param_groups[0]["lr"])
    assert rates[5:] == [epoch_lr(0.02, 1, 4, 1)] * 5  # after the warm-up: one rate per epoch either way
    if per == "epoch":
        assert rates[:5] == [1e-6] * 5
    else:
        assert rates[:5] == pytest.approx([1e-6 + (0.02 - 1e-6) * step / 5 for step in range(5)])


def test_class_aware_batches_of_256_hold_64_classes_of_4_and_uniform_batches_are_distinct():
    labels = np.repeat(np.arange(128), np.linspace(200, 2, 128).astype(int))
    pairs = dual_index_batches(labels, 256, 4, np.random.default_rng(0))
    assert len(pairs) == len(labels) // 256 + 1
    for balanced, uniform in pairs:
        classes, counts = np.unique(labels[balanced], return_counts=True)
        assert len(balanced) == 256 and len(classes) == 64 and (counts == 4).all()
        assert all(len(set(labels[balanced[i:i + 4]])) == 1 for i in range(0, 256, 4))
        assert len(uniform) == 256 and len(set(uniform)) == 256


def test_dual_steps_per_epoch_are_the_official_loops():
    """N // B + 1, but no more than the official class-aware loader holds (max n_c · C images, whole batches):
    one fewer on this balanced set; at least one."""
    assert dual_steps(np.repeat(np.arange(10), [8, 6, 4, 3, 2, 2, 2, 1, 1, 1]), 16) == 30 // 16 + 1
    assert dual_steps(np.repeat(np.arange(10), 8), 16) == 80 // 16
    assert dual_steps(np.repeat(np.arange(3), 2), 16) == 1


def test_instance_balanced_weight_decays_as_half_of_remaining_fraction():
    assert [ib_weight(0.5, e, 90) for e in (0, 45, 89)] == pytest.approx([0.5, 0.25, 0.5 / 90])
    assert ib_weight(0.5, 90, 90) == 0.0


def test_dual_loss_combines_the_two_batches_with_eta_and_the_matching_term():
    class Fixed(torch.nn.Module):
        def forward_with_matching(self, images):
            return images, images.new_tensor(0.3)

    losses = {"class_balanced": lambda c, y: c.sum(), "instance_balanced": lambda c, y: 10 * c.sum()}
    cb, ib = torch.ones(2, 3), torch.full((2, 3), 2.0)
    value = dual_loss(Fixed(), losses, (cb, None, ib, None, 0.25), match_weight=0.5)
    assert value.item() == pytest.approx((6 - 0.15) + 0.25 * (120 - 0.15))


# ----------------------------------------------------------------------------------- checkpoint import


def official_checkpoint(path, classes: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """A state dict in the official LPT_places.pth format for the micro backbone (4 blocks, width 64)."""
    torch.manual_seed(seed)
    backbone = create_backbone("vit_micro", allow_random_init=True)
    state = {f"module.{k}": v for k, v in backbone.model.state_dict().items()}
    prompts = {"Prompt_Tokens": (4, 10, 64), "Prompt_Tokens_pool": (20, 2, 10, 64), "Prompt_Keys": (20, 64),
               "head.weight": (64, classes)}
    for name, shape in prompts.items():
        state[f"module.prompt_learner.{name}"] = torch.randn(shape)
    torch.save(state, path)
    return state


def test_bench_eval_reads_the_official_checkpoint_format(tmp_path):
    make_places_lt(tmp_path / "places", download_layout=False)
    state = official_checkpoint(tmp_path / "LPT_places.pth", classes=3)
    spec = runner.RunSpec(method="lpt", dataset="places", backbone="vit_micro", data_root=str(tmp_path / "places"),
                          overrides={"split_dir": "", "shot_convention": "lpt"}, out=str(tmp_path / "out"),
                          checkpoint=str(tmp_path / "LPT_places.pth"))
    result = runner.execute(spec)
    record = result.record
    assert record["pretrained"] is True and record["checkpoint"]["sha256"]
    assert record["shot_convention"] == "lpt" and record["train_time_s"] == 0
    # the official eval transform (bilinear, both sides to 8/7 of the size, centre crop), recorded in the
    # record and the run's config.json
    official = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "resize_mode": "squash",
                "crop_fraction": 0.875}
    assert json.loads(json.dumps(record["preprocessing"])) == {"vit_micro": official}
    assert json.loads((result.run_dir / "config.json").read_text())["preprocessing"] == {"vit_micro": official}

    # The same prediction computed independently from the raw tensors.
    backbone = create_backbone("vit_micro", allow_random_init=True)
    backbone.model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()
                                    if not k.startswith("module.prompt_learner.")})
    model = LPTModel(backbone, 3, shared_layers=2).eval()
    model.stage = "group"
    with torch.no_grad():
        model.shared_prompts.copy_(state["module.prompt_learner.Prompt_Tokens"])
        model.pool.copy_(state["module.prompt_learner.Prompt_Tokens_pool"])
        model.keys.copy_(state["module.prompt_learner.Prompt_Keys"])
        model.head.weight.copy_(state["module.prompt_learner.head.weight"].t())
    dataset = load_dataset("places", tmp_path / "places", {"split_dir": ""})
    official_eval = Preprocessing(backbone.mean, backbone.std, "bilinear", "squash", crop_fraction=7 / 8)
    transform = Transform(backbone.image_size, official_eval)
    images = torch.stack([transform.pil()(dataset.test.images.load(i)) for i in range(len(dataset.test))])
    with torch.no_grad():
        predicted = model(images).argmax(1).numpy()
    expected = 100 * (predicted == dataset.test.labels).mean()
    assert record["test"]["overall"] == pytest.approx(expected)


def test_bench_eval_names_a_mismatched_checkpoint(tmp_path):
    make_places_lt(tmp_path / "places", download_layout=False)
    official_checkpoint(tmp_path / "ckpt.pth", classes=5)
    spec = runner.RunSpec(method="lpt", dataset="places", backbone="vit_micro", data_root=str(tmp_path / "places"),
                          overrides={"split_dir": ""}, out=str(tmp_path / "out"), checkpoint=str(tmp_path / "ckpt.pth"))
    with pytest.raises(BenchError, match="head.weight has shape"):
        runner.execute(spec)
    with pytest.raises(BenchError, match="cannot import checkpoints"):
        runner.execute(runner.RunSpec(**{**spec.__dict__, "method": "finetune"}))


# ---------------------------------------------------------------------------------------- end to end

FAST_LPT = {"phase1_epochs": "2", "phase2_epochs": "2", "image_size": "16", "batch_size": "64", "lr": "0.05",
            "warmup_epochs": "0", "prompt_length": "2", "pool_size": "4"}


def test_lpt_run_resumes_in_the_right_phase_and_epoch(tmp_path):
    def spec(out):
        return runner.RunSpec(method="lpt", dataset="digits_lt", backbone="vit_micro", allow_random_init=True,
                              out=str(out), overrides=FAST_LPT)

    whole = runner.execute(spec(tmp_path / "whole")).record

    class Stop(Exception):
        pass

    def stop_in_phase2(entry):
        if entry["phase"] == "lpt_group" and entry["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        runner.execute(spec(tmp_path / "cut"), callbacks=[OnEpoch(stop_in_phase2)])
    run_dir = next((tmp_path / "cut" / "runs").iterdir())
    assert (run_dir / "checkpoints" / "phase-lpt_shared.pt").exists()
    assert not (run_dir / "checkpoints" / "phase-lpt_group.pt").exists()
    resumed = runner.resume(run_dir).record
    assert (run_dir / "checkpoints" / "phase-lpt_group.pt").exists()
    assert [h["phase"] for h in resumed["selected"]] == ["lpt_shared", "lpt_group"]
    assert resumed["test"] == whole["test"]
    assert resumed["trainable_params"] == whole["trainable_params"]


def test_a_phase_switched_off_is_never_entered_so_phase_one_alone_predicts_with_its_own_model(tmp_path):
    """With phase2_epochs=0 the run is phase 1 alone: its record's val is the kept epoch's, measured with the shared
    prompts (entering the empty phase 2 used to switch the model to its untrained group prompts)."""
    spec = runner.RunSpec(method="lpt", dataset="digits_lt", seed=0, out=str(tmp_path),
                          overrides={"phase1_epochs": "3", "phase2_epochs": "0"})
    record = runner.execute(spec, console=Console(quiet=True)).record
    kept = record["selected"][0]
    assert [entry["phase"] for entry in record["selected"]] == ["lpt_shared"]
    assert record["val"]["mean_per_class"] == pytest.approx(kept["val"])

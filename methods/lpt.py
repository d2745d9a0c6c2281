"""`lpt`: Long-tailed Prompt Tuning (Dong et al., ICLR 2023), following the official code (DongSky/LPT,
phase2_test/) and ../shared/reference/lpt.md.

Phase 1 (`lpt_shared`): shared deep prompts + cosine head on the frozen backbone.
Phase 2 (`lpt_group`): group-specific prompt pool + keys + the phase-1 head; shared prompts frozen.
Both phases: A-GCL loss with dual sampling — per step a class-aware batch (γ+ 0, γ− 4) and a uniform batch
(γ+ 0.5, γ− 8) weighted η_e = η0·(E − e)/E — and in phase 2 the matching term −w·S on both batches.
Optimiser as the official script: SGD momentum 0.9, weight decay 0.01, lr 0.02 × batch/256, one warm-up
epoch from 1e-6, per-epoch cosine; one deviation: the warm-up rises per step (`warmup_per`), measured to end the
early collapse the official per-epoch warm-up causes. Each phase keeps its best epoch on val (`model_selection`), never on test.

`import_checkpoint` reads the official whole-model state dict (`LPT_places.pth`) for `bench eval`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import read_state_dict
from bench.errors import BenchError
from bench.hparams import (
    AT_LEAST_ONE,
    AUTO_OR_NON_NEGATIVE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Choice,
    HParam,
    IntRange,
    LogUniform,
    Uniform,
)
from bench.methods.agcl import GAMMAS, lpt_losses
from bench.methods.base import Method, Phase, register_method, register_variant
from bench.methods.common import dual_image_batches, optimizer_factory, predict_images
from bench.methods.lpt_model import LPTModel

LPT_HPARAMS: dict[str, HParam] = {
    "prompt_length": HParam(10, Choice((5, 10, 20)), "prompt tokens per block (shared and per pool entry)",
                            bounds=AT_LEAST_ONE),
    "pool_size": HParam(20, Choice((10, 20, 40)), "group-specific prompt pool entries m",
                        bounds=AT_LEAST_ONE),
    "top_k": HParam(2, Choice((1, 2, 4)), "pool entries chosen per image (their prompts are averaged)",
                    bounds=AT_LEAST_ONE),
    "shared_layers": HParam(-1, IntRange(3, 9), "leading blocks with shared prompts only, the rest also get "
                            "group prompts; -1 = half the blocks (6 of ViT-B/16's 12, as official)",
                            bounds=AUTO_OR_NON_NEGATIVE),
    "phase1_epochs": HParam(90, help="phase 1 epochs (not published; 90 assumed, as phase 2)",
                            bounds=NON_NEGATIVE),
    "phase2_epochs": HParam(90, help="phase 2 epochs (official default 90)",
                            bounds=NON_NEGATIVE),
    "batch_size": HParam(256, Choice((64, 128, 256)), "images per batch, for each of the two sampled batches",
                         bounds=AT_LEAST_ONE),
    "lr": HParam(0.02, LogUniform(0.002, 0.2), "SGD learning rate per 256 images (scaled by batch_size/256)",
                 bounds=POSITIVE),
    "weight_decay": HParam(0.01, LogUniform(1e-4, 0.1), "weight decay",
                           bounds=NON_NEGATIVE),
    "warmup_epochs": HParam(1, help="linear warm-up epochs from 1e-6, per phase",
                            bounds=NON_NEGATIVE),
    "warmup_per": HParam("iteration", help="iteration (this harness's default): the warm-up rate rises at every "
                         "step, over the same epochs and from the same 1e-6 | epoch: it changes once per epoch, as "
                         "the official timm CosineLRScheduler stepped per epoch, which holds 1e-6 for the whole first "
                         "epoch and then collapses phase 1 for 100-200+ steps (README, \"LPT's early collapse, "
                         "measured\")", choices=("iteration", "epoch")),
    "per_class": HParam(4, Choice((2, 4, 8)), "class-aware batch: images per drawn class",
                        bounds=AT_LEAST_ONE),
    "ib_weight": HParam(0.5, Uniform(0.0, 1.0), "η0: weight of the uniform batch, decaying as η0·(E−e)/E "
                        "(0 disables dual sampling)",
                        bounds=NON_NEGATIVE),
    "match_weight": HParam(0.5, help="weight of the query-key matching term in phase 2",
                           bounds=NON_NEGATIVE),
    "agcl_cloud": HParam(0.5, Uniform(0.0, 1.0), "A-GCL λ: Gaussian-cloud magnitude (0 switches the noise off)",
                         bounds=NON_NEGATIVE),
    "agcl_margin": HParam(0.1, help="A-GCL target cosine margin m",
                          bounds=NON_NEGATIVE),
    "agcl_scale": HParam(20.0, help="A-GCL logit scale s",
                         bounds=POSITIVE),
    "agcl_smoothing": HParam(0.1, help="A-GCL label smoothing",
                             bounds=FRACTION),
    "head_dropout": HParam(0.1, help="dropout on the feature before the cosine head during training",
                           bounds=FRACTION),
    "shared_prefix": HParam(True, help="compute the blocks before the first group prompt once for the query "
                            "and main passes (exact; false: plain two passes)"),
    "layernorm_eps": HParam(0.0, help="LayerNorm eps of the backbone; 0 keeps its own (1e-6 for timm ViTs); the "
                            "official LPT code built 1e-5",
                            bounds=NON_NEGATIVE),
}

OFFICIAL_KEYS = {  # official checkpoint name (after the DataParallel prefix) → what it is
    "prompt_learner.Prompt_Tokens": "shared prompts [depth, L, D]",
    "prompt_learner.Prompt_Tokens_pool": "prompt pool [m, depth − s, L, D]",
    "prompt_learner.Prompt_Keys": "keys [m, D]",
    "prompt_learner.head.weight": "cosine head [D, C]",
}
OFFICIAL_PREFIX = "prompt_learner."


def set_layernorm_eps(module: nn.Module, eps: float) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.LayerNorm):
            layer.eps = eps


class ScaledCrossEntropy:
    """Plain cross-entropy on s · cosine: `lpt_ce`'s loss for both batches (no cloud, margin, focal weights or
    smoothing), so the ablation isolates A-GCL."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.scale * cosine.float(), labels)


def ib_weight(eta0: float, epoch: int, epochs: int) -> float:
    """η_e = max(0, η0 · (E − e) / E): the uniform batch's weight, decaying over the phase."""
    return max(0.0, eta0 * (epochs - epoch) / epochs)


def dual_loss(model: LPTModel, losses: dict, batch, match_weight: float) -> torch.Tensor:
    """[A-GCL_cb − w·S_cb] + η_e·[A-GCL_ib − w·S_ib] (S = 0 in the shared stage)."""
    images_cb, labels_cb, images_ib, labels_ib, eta = batch
    cosine, matching = model.forward_with_matching(images_cb)
    loss = losses["class_balanced"](cosine, labels_cb) - match_weight * matching
    if eta > 0:
        cosine, matching = model.forward_with_matching(images_ib)
        loss = loss + eta * (losses["instance_balanced"](cosine, labels_ib) - match_weight * matching)
    return loss


def dual_sampling_phase(ctx, name: str, epochs: int, parameters: list[nn.Parameter], loss, on_start,
                        towers=None) -> Phase:
    """A phase in LPT's recipe: dual-sampled batches carrying η_e, SGD at lr × batch/256, warm-up + cosine;
    with `towers`, the images of each batch are a view per tower (`dual_image_batches`)."""
    hp = ctx.hparams
    batches, steps = dual_image_batches(ctx, name, hp["batch_size"], hp["per_class"], towers)

    def with_eta(epoch: int):
        eta = ib_weight(hp["ib_weight"], epoch, epochs)
        for batch in batches(epoch):
            yield (*batch, eta)

    scaled = {**hp, "optimizer": "sgd", "lr": hp["lr"] * hp["batch_size"] / 256}
    return Phase(name=name, epochs=epochs, parameters=parameters, make_optimizer=optimizer_factory(scaled),
                 batches=with_eta, loss=loss, warmup_epochs=hp["warmup_epochs"], steps_per_epoch=steps,
                 on_start=on_start, warmup_per=hp["warmup_per"])


@register_method("lpt", group="lpt", place=10)
class LPT(Method):
    description = "LPT: shared + group-specific prompts, A-GCL loss, dual sampling (two phases)"
    hparams = LPT_HPARAMS
    # the official transforms (DongSky/LPT phase2_test/train_dual_dualloss.py), whatever the tower:
    # torchvision's default bilinear filter (RandomResizedCrop and Resize) and the eval resize of both sides
    # to 8/7 of the size, then a centre crop (its floor, size·8//7, is rounded here: the same at 224 px)
    preprocessing = {"interpolation": "bilinear", "resize_mode": "squash", "crop_fraction": 7 / 8}
    # short phases without warm-up keep the embedded run under 20 s on 2 CPU cores; lr 0.1 was the best on val
    # of 0.02 / 0.05 / 0.1 / 0.2 / 0.4 with the pretrained micro tower (val overall 65 / 81 / 85 / 79 / 78, seed 0);
    # the tower has 4 blocks, so the searched shared depth is 1..3 (the declared space is for 12-block ViT-B/16)
    embedded_preset = {"lr": "0.1", "phase1_epochs": "6", "phase2_epochs": "6", "warmup_epochs": "0"}
    embedded_space = {"shared_layers": {"int": [1, 3]}}

    loss_kind = "agcl"  # lpt_ce: plain cross-entropy on s·cosine (the ablation of A-GCL)

    def setup(self) -> None:
        ctx, hp = self.ctx, self.hp
        if hp["layernorm_eps"] > 0:
            set_layernorm_eps(ctx.backbone, hp["layernorm_eps"])
        shared_layers = hp["shared_layers"] if hp["shared_layers"] >= 0 else ctx.backbone.num_blocks // 2
        self.net = LPTModel(ctx.backbone, ctx.dataset.num_classes, hp["prompt_length"], hp["pool_size"],
                            hp["top_k"], shared_layers, hp["head_dropout"], hp["shared_prefix"]).to(ctx.device)
        self.losses = (lpt_losses(ctx.dataset.train_counts, hp) if self.loss_kind == "agcl"
                       else dict.fromkeys(GAMMAS, ScaledCrossEntropy(hp["agcl_scale"])))

    def model(self) -> nn.Module:
        return self.net

    def _phase(self, name: str, stage: str, epochs: int, match_weight: float) -> Phase:
        def enter() -> None:
            self.net.stage = stage

        return dual_sampling_phase(self.ctx, name, epochs, self.net.stage_parameters(stage),
                                   lambda batch: dual_loss(self.net, self.losses, batch, match_weight), enter)

    def phases(self) -> list[Phase]:
        hp = self.hp
        return [self._phase("lpt_shared", "shared", hp["phase1_epochs"], 0.0),
                self._phase("lpt_group", "group", hp["phase2_epochs"], hp["match_weight"])]

    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return predict_images(self.ctx, self.net, split)

    # -- official checkpoint ------------------------------------------------------------------------------
    checkpoint_prefixes = (OFFICIAL_PREFIX,)  # keys that are the method's, not the backbone's

    def import_checkpoint(self, path: Path) -> None:
        """Load the official LPT state dict's prompts, keys and head (the backbone part is loaded as the
        backbone's weights); the model then predicts with group prompts."""
        state = read_state_dict(path)
        missing = [k for k in OFFICIAL_KEYS if k not in state]
        if missing:
            raise BenchError(f"{path} is not an official LPT checkpoint: no {missing[0]} "
                             f"({OFFICIAL_KEYS[missing[0]]})")
        net = self.net
        head = state["prompt_learner.head.weight"]
        expected = {
            "prompt_learner.Prompt_Tokens": (net.shared_prompts.shape, "prompt_length"),
            "prompt_learner.Prompt_Tokens_pool": (net.pool.shape, "pool_size / shared_layers / prompt_length"),
            "prompt_learner.Prompt_Keys": (net.keys.shape, "pool_size"),
            "prompt_learner.head.weight": (net.head.weight.t().shape, "the dataset (number of classes)"),
        }
        for key, (shape, fix) in expected.items():
            if tuple(state[key].shape) != tuple(shape):
                raise BenchError(f"{path}: {key} has shape {tuple(state[key].shape)} but this run expects "
                                 f"{tuple(shape)}; check {fix}")
        with torch.no_grad():
            net.shared_prompts.copy_(state["prompt_learner.Prompt_Tokens"])
            net.pool.copy_(state["prompt_learner.Prompt_Tokens_pool"])
            net.keys.copy_(state["prompt_learner.Prompt_Keys"])
            net.head.load_weight(head.t())
        net.stage = "group"


register_variant(LPT, "lpt_ce",
                 "LPT ablation: plain cross-entropy on s·cosine in place of A-GCL (both phases, both "
                 "batches)",
                 loss_kind="ce")

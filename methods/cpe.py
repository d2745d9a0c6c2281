"""`cpe` and its ablation variants: CPE, ComPlementary Experts (Ma et al., AAAI 2024, arXiv 2312.15702), adapted
from long-tailed semi-supervised learning on a WRN trained from scratch to single-label long-tailed learning on
the harness's frozen ViT tower.

What the official code (machengcheng2016/CPE-LTSSL: semilearn/imb_algorithms/cpe/cpe.py, nets/wrn/wrn_cbn.py,
config/classic_cv_imb/fixmatch_cpe/*.yaml) does, and what this keeps:

- **Three experts**: linear heads on one feature, expert k trained with the logit-adjusted cross-entropy
  CE(z_k + τ_k·log π, y), τ = (0, 2, 4) (`la_tau_lb1..3`), π the labelled class prior: each expert fits one
  assumed test class distribution (long-tailed, uniform, inverse).
- **Classwise BatchNorm** (CBN): three BN copies (head, medium, tail) of the feature; each expert's logit is
  the mean of its head applied to the three copies. Every image passes through all three copies (so their batch
  statistics are the same), but the strong view's loss routes an image through the medium copy only when its
  class lies beyond cut1, and through the tail copy only beyond cut2; that routed term is all that makes the
  copies differ (without it the three stay identical). Here the copies normalise the pooled feature (the
  original normalises the WRN's last feature map before pooling), and the cuts are frequency ranks: cut1 = the
  number of many-shot classes, cut2 = many + medium, under the run's `shot_convention` (the original's cuts
  are class indices of CIFAR-10-LT, whose classes are sorted by frequency).
- **Routed images**: the original routes unlabelled images through their strong (RandAugment) view under
  confident pseudo-labels (FixMatch). With no unlabelled data, this routes the labelled images' strong view
  (FixMatch's RandAugment + Cutout, `bench.randaugment`, after the harness's crop and flip) under their true
  labels, all of them (the pseudo-label confidence mask has nothing to filter). The strong view shares the
  weak view's crop and flip (the harness's views of one batch, bench.data.views; USB draws them apart). The
  routed term is plain CE (no logit adjustment, as the original's), summed over the routes and divided by their
  number, weighted by `routed_weight` (`ulb_loss_ratio`) and added for each expert; the weak view trains the
  experts' adjusted CE. Weak and strong views of a batch go through the tower together (`use_cat`), so BN sees
  both.
- **Prediction**: the τ = 2 expert (`CPE.evaluate` reads `logits_2`) on an exponential moving average of the
  trained weights (USB's EMA, decay `ema_m` 0.999, from the first step; BN running statistics are the live
  ones, as USB's `apply_shadow` swaps parameters only). Deviation: the decay warms up, min(0.999, (1 + t) /
  (10 + t)) at step t (`ema_warmup`), because 0.999 from the first step over a short schedule leaves the average
  near the initial weights (measured: val mean per-class 15.5 against 37.5 without the EMA on the
  `cifar10_lt_cpu` protocol's ~100 steps); over the official 262,144 steps the warm-up ends at step 8,990.
  The record keeps every expert's val and test accuracy and their mean's (`extra_record`).
- **Representation**: the WRN learns its features; a frozen tower cannot, so `cpe` adds the harness's
  AdaptFormer adapters (methods/peft.py) to the trained set; `cpe_frozen` trains the BN copies and heads only.
- **Optimiser**: the harness's PEFT recipe, as `adaptformer` (LIFT's: SGD momentum 0.9, lr 0.01, weight decay
  5e-4 on every trained tensor, batch 128, 10 epochs, per-epoch cosine). The original's, for a WRN-28-2 from
  scratch: SGD lr 0.03, momentum 0.9, Nesterov, weight decay 5e-4 (none on BN and biases), 64 labelled + 128
  unlabelled images a step for 262,144 steps, USB's per-step cosine over 7/16 of a period (so not a constant
  rate: it ends near 0.2× its start). Its rate and length are made for training a network from scratch, not for
  tuning adapters on a pretrained tower, so every PEFT method here shares one recipe and compares on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.hparams import FRACTION, NON_NEGATIVE, Choice, HParam, Uniform
from bench.methods.base import Method, Phase, register_method, register_variant
from bench.methods.common import image_batches, optimizer_factory, optimizer_hparams, predict_images
from bench.methods.losses import log_prior
from bench.methods.peft import add_adapters
from bench.methods.tuned import ADAPTER_HPARAMS, PEFT_OPTIMIZER
from bench.metrics import evaluate_logits, shot_groups

TAUS = (0.0, 2.0, 4.0)  # la_tau_lb1..3 (official configs: 0, 2, 4)
ROUTES = ("head", "medium", "tail")
ACCURACIES = ("overall", "mean_per_class", "many", "medium", "few")
SOURCE = ("the harness's PEFT recipe, LIFT's (shijxcs/LIFT), as adaptformer; CPE's own, SGD 0.03 Nesterov for a "
          "WRN from scratch, is in methods/cpe.py's docstring")


def test_head_hparam(taus: tuple[float, ...]) -> HParam:
    choices = (*(f"{tau:g}" for tau in taus), "mean")
    return HParam("2", help="which expert predicts: the τ of one (" + " | ".join(choices[:-1]) + ") or mean (the "
                  "experts' mean logit); official: τ = 2 (CPE.evaluate reads logits_2)", choices=choices)


CPE_HPARAMS: dict[str, HParam] = {
    **optimizer_hparams(**{**PEFT_OPTIMIZER, "source": SOURCE}),
    **ADAPTER_HPARAMS,
    "routed_weight": HParam(1.0, Uniform(0.5, 2.0), "weight of the routed strong-view CE through the classwise BN "
                            "copies (official ulb_loss_ratio, λ_u: 1.0)", bounds=NON_NEGATIVE),
    "ema": HParam(True, help="predict with an exponential moving average of the trained weights (official: USB's "
                  "EMA model is the one evaluated)"),
    "ema_decay": HParam(0.999, Choice((0.99, 0.995, 0.999)), "EMA decay per step (official ema_m: 0.999)",
                        bounds=FRACTION),
    "ema_warmup": HParam(True, help="at step t, decay min(ema_decay, (1 + t) / (10 + t)) (TensorFlow's "
                         "ExponentialMovingAverage with num_updates), so the average forgets the initial weights on "
                         "a short schedule; a deviation: the official EMA decays at ema_m from the first step, which "
                         "at 0.999 leaves ~90 % initial weights after 100 steps; the warm-up reaches 0.999 at step "
                         "8,990 of its 262,144"),
    "test_head": test_head_hparam(TAUS),
}


def routing(train_counts: np.ndarray, convention: str) -> torch.Tensor:
    """Which BN copies each class's images are routed through in the strong-view loss, [3, C] bool (head,
    medium, tail): head always; medium when the class's frequency rank is at least cut1 (the number of many-shot
    classes), tail when at least cut2 (many + medium). Ranks count from the most frequent class, ties in class
    order."""
    counts = np.asarray(train_counts)
    groups = shot_groups(counts, convention)
    rank = np.empty(len(counts), dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(len(counts))
    cut1 = int((groups == "many").sum())
    cut2 = cut1 + int((groups == "medium").sum())
    return torch.as_tensor(np.stack([np.ones(len(counts), bool), rank >= cut1, rank >= cut2]))


def cpe_loss(weak: torch.Tensor, strong: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor,
             routes: torch.Tensor, routed_weight: float) -> torch.Tensor:
    """Σ_k [CE(mean_copies(weak_k) + offset_k, y) + routed_weight · routed CE_k].

    weak, strong: copy logits [experts, copies, B, C]; offsets [experts, C] (τ_k · log π); routes [copies, C]
    (`routing`, one row per copy). The routed CE of expert k sums CE(strong_k,c, y) over the copies c each image's
    class is routed through and divides by the number of those routes (all terms unadjusted)."""
    experts, copies, batch = strong.shape[:3]
    adjusted = weak.mean(1) + offsets[:, None, :].to(weak.dtype)
    supervised = F.cross_entropy(adjusted.flatten(0, 1), labels.repeat(experts), reduction="none")
    per_route = F.cross_entropy(strong.flatten(0, 2), labels.repeat(experts * copies), reduction="none")
    weights = routes[:, labels].to(per_route.dtype)  # [copies, B]
    routed = (per_route.view(experts, copies, batch) * weights).sum((1, 2)) / weights.sum()
    return supervised.view(experts, batch).mean(1).sum() + routed_weight * routed.sum()


class ClasswiseBN(nn.Module):
    """`copies` BatchNorm1d copies of a feature (PyTorch's defaults, as the original's BNH/BNM/BNT):
    [B, D] → [copies, B, D]."""

    def __init__(self, dim: int, copies: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm1d(dim) for _ in range(copies))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([norm(features) for norm in self.norms])


class CPENet(nn.Module):
    """Tower (with its adapters) → classwise BN copies → one linear head per expert."""

    def __init__(self, backbone: nn.Module, adapters: list[nn.Module], num_classes: int, experts: int, copies: int):
        super().__init__()
        self.backbone, self.adapters = backbone, nn.ModuleList(adapters)
        self.cbn = ClasswiseBN(backbone.feature_dim, copies)
        self.heads = nn.ModuleList(nn.Linear(backbone.feature_dim, num_classes) for _ in range(experts))

    def copy_logits(self, images: torch.Tensor) -> torch.Tensor:
        """[experts, copies, B, C]."""
        normalised = self.cbn(self.backbone(images))
        return torch.stack([head(normalised) for head in self.heads])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Every expert's logit (the mean over the copies), flattened: [B, experts · C]."""
        return self.copy_logits(images).mean(1).transpose(0, 1).flatten(1)


class WeightAverage(nn.Module):
    """An exponential moving average of `parameters`, held as buffers with its step count (so checkpoints keep
    both): USB's EMA, shadow ← d · shadow + (1 − d) · weight after every step, starting from the initial weights,
    with d = decay, or with `warmup` d_t = min(decay, (1 + t) / (10 + t)) at step t = 0, 1, ..."""

    def __init__(self, parameters: list[nn.Parameter], decay: float, warmup: bool):
        super().__init__()
        self.tracked, self.decay, self.warmup = parameters, decay, warmup
        for index, parameter in enumerate(parameters):
            self.register_buffer(f"w{index}", parameter.detach().clone())
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def shadows(self) -> list[torch.Tensor]:
        return [getattr(self, f"w{index}") for index in range(len(self.tracked))]

    def current_decay(self) -> torch.Tensor:
        """The decay the next update applies, a float64 0-d tensor where the step count is (so an update never
        waits for the device)."""
        t = self.steps.double()
        return torch.clamp((1 + t) / (10 + t), max=self.decay) if self.warmup else torch.full_like(t, self.decay)

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for shadow, parameter in zip(self.shadows(), self.tracked, strict=True):
            shadow.mul_(decay.to(shadow.dtype)).addcmul_(parameter, (1 - decay).to(shadow.dtype))
        self.steps += 1

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in place of the live ones, then the live ones back (USB's apply_shadow)."""
        live = [parameter.detach().clone() for parameter in self.tracked]
        with torch.no_grad():
            for shadow, parameter in zip(self.shadows(), self.tracked, strict=True):
                parameter.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for saved, parameter in zip(live, self.tracked, strict=True):
                    parameter.copy_(saved)


class CPEModel(nn.Module):
    """What the checkpoints hold: the network and, with `ema`, the average of its trained weights."""

    def __init__(self, net: CPENet, ema: WeightAverage | None):
        super().__init__()
        self.net, self.ema = net, ema


class CPE(Method):
    """The full CPE; variants drop experts, the BN copies or the adapters."""

    description = ("CPE: three logit-adjusted experts (τ 0, 2, 4) over classwise BN copies, tail images routed "
                   "through them on a RandAugment view; AdaptFormer adapters; EMA; the τ = 2 expert predicts")
    hparams = CPE_HPARAMS
    # 12 epochs instead of the common preset's 40 (each step runs a weak and a strong view through the tower) at
    # a 5× larger AdamW rate, chosen on val over seeds 0 and 1 among 8-20 epochs at 2e-3-2e-2 (val 88 / 86 %).
    # The EMA decay follows the schedule's length: 0.999 over its 144 steps would leave the average mostly at the
    # initial weights.
    embedded_preset = {"epochs": "12", "lr": "1e-2", "ema_decay": "0.9"}
    embedded_space = {"ema_decay": {"choice": [0.8, 0.9, 0.95]}}  # decays that fit the embedded schedule
    taus = TAUS
    classwise = True
    adapters = True

    def setup(self) -> None:
        ctx, hp = self.ctx, self.hp
        backbone = ctx.backbone
        created = add_adapters(backbone, bottleneck=hp["adapter_bottleneck"], scale=hp["adapter_scale"],
                               learnable_scale=hp["adapter_learnable_scale"], input=hp["adapter_input"],
                               layernorm=hp["adapter_layernorm"]) if self.adapters else []
        counts = ctx.dataset.train_counts
        routes = routing(counts, ctx.options.shot_convention) if self.classwise else torch.ones(1, len(counts), dtype=bool)
        net = CPENet(backbone, created, ctx.dataset.num_classes, len(self.taus), len(routes)).to(ctx.device)
        self.trainable = [p for module in (net.adapters, net.cbn, net.heads) for p in module.parameters()]
        ema = (WeightAverage(self.trainable, hp["ema_decay"], hp["ema_warmup"]).to(ctx.device) if hp["ema"]
               else None)
        self.module = CPEModel(net, ema)
        self.routes = routes.to(ctx.device)
        self.offsets = (torch.tensor(self.taus, dtype=torch.float64)[:, None] * log_prior(counts)).float().to(
            ctx.device)
        self.logits: dict[str, torch.Tensor] = {}  # per split, the last prediction's expert logits [N, E, C]
        self.labels: dict[str, torch.Tensor] = {}

    def model(self) -> nn.Module:
        return self.module

    def loss(self, batch) -> torch.Tensor:
        (weak, strong), labels = batch
        logits = self.module.net.copy_logits(torch.cat([weak, strong]))
        return cpe_loss(logits[:, :, :len(labels)], logits[:, :, len(labels):], labels, self.offsets,
                        self.routes, self.hp["routed_weight"])

    def phases(self) -> list[Phase]:
        ctx, net, ema = self.ctx, self.module.net, self.module.ema
        views = (ctx.transform(train=True), ctx.transform(train=True, strong=True))
        batches, steps = image_batches(ctx, "cpe", "instance_balanced", transform=views)
        state = [*net.cbn.buffers(), *(ema.buffers() if ema is not None else ())]
        return [Phase(name="cpe", epochs=self.hp["epochs"], parameters=self.trainable,
                      make_optimizer=optimizer_factory(self.hp), batches=batches, loss=self.loss,
                      warmup_epochs=self.hp["warmup_epochs"], steps_per_epoch=steps, state=state,
                      after_step=ema.update if ema is not None else None)]

    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        ema = self.module.ema
        with ema.swapped() if ema is not None else nullcontext():
            flat, labels = predict_images(self.ctx, self.module.net, split)
        logits = flat.view(len(flat), len(self.taus), -1)
        self.logits[split], self.labels[split] = logits, labels
        return self._chosen(logits), labels

    def _chosen(self, logits: torch.Tensor) -> torch.Tensor:
        head = self.hp["test_head"]
        return logits.mean(1) if head == "mean" else logits[:, self.taus.index(float(head))]

    def extra_record(self) -> dict:
        """Every expert's val and test accuracies and those of the experts' mean logit (the last prediction of
        each split: the kept weights), with the routing the BN copies got."""

        def accuracies(scores: torch.Tensor, split: str) -> dict:
            summary = evaluate_logits(self.labels[split].numpy(), scores.numpy(), self.ctx.dataset.train_counts,
                                      self.ctx.options.shot_convention).summary()
            return {name: summary[name] for name in ACCURACIES}

        splits = [split for split in ("val", "test") if split in self.logits]
        experts = [{"tau": tau, **{split: accuracies(self.logits[split][:, k], split) for split in splits}}
                   for k, tau in enumerate(self.taus)]
        mean = {split: accuracies(self.logits[split].mean(1), split) for split in splits}
        routes = dict(zip(ROUTES, self.routes.sum(1).tolist(), strict=False))  # one copy without CBN
        return {"cpe": {"experts": experts, "experts_mean": mean, "test_head": self.hp["test_head"],
                        "ema": self.hp["ema"], "classes_routed": routes}}


register_method("cpe", group="comparator", place=10)(CPE)
register_variant(CPE, "cpe_1head",
                 "CPE ablation: the τ = 2 expert only (classwise BN, routing and EMA kept)",
                 taus=(2.0,), hparams={**CPE_HPARAMS, "test_head": test_head_hparam((2.0,))})
register_variant(CPE, "cpe_no_cbn",
                 "CPE ablation: one BN copy instead of three (the strong-view CE unrouted)",
                 classwise=False)
register_variant(CPE, "cpe_frozen",
                 "CPE ablation: no adapters, the tower stays frozen (BN copies and heads trained)",
                 adapters=False, hparams={k: v for k, v in CPE_HPARAMS.items() if not k.startswith("adapter_")})

"""Classifiers on frozen, cached backbone features.

`linear_probe` (and cRT's classifier, `bench.methods.decoupling`) follow the standard linear-evaluation
protocol (CLIP's and scikit-learn's): features standardised with the train split's statistics, a multinomial
logistic regression trained to convergence with full-batch L-BFGS, and its L2 weight decay chosen on val from a
log-spaced grid. Each weight decay is one "epoch" of the phase, fitted to convergence and warm-started from the
previous (larger) one; the engine's best-on-val selection keeps the best, so the choice is recorded, resumable,
and never looks at test. The objective is Σ_i s_i w_i ℓ_i / Σ_i s_i w_i + wd/2 · ||W||² (bias not penalised),
s_i the sampler's probability of image i (`sampling_weights`), w and ℓ the loss's class weights and per-sample
losses (`loss_terms`); with cross-entropy and instance-balanced sampling it is scikit-learn's
`LogisticRegression(C = 1 / (N · wd))`.

`CachedFeatureMethod` holds the cached features and predicts from them; `FeatureMethod` trains its head with
minibatches (clip_probe).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from bench.methods.base import Method, Phase, register_method
from bench.methods.common import feature_batches, optimizer_factory
from bench.methods.losses import loss_hparams, loss_terms, make_loss
from bench.methods.samplers import sampling_weights
from torch import nn

from bench.errors import BenchError
from bench.features import cached_features
from bench.hparams import AT_LEAST_ONE, POSITIVE, HParam

SPLITS = ("train", "val", "test")
CHUNK = 65536  # rows per forward/backward inside one L-BFGS evaluation (bounds memory on large datasets)


class CachedFeatureMethod(Method):
    """A head (`self.head`) on frozen features of every split, computed once and cached on disk."""

    def setup(self) -> None:
        ctx = self.ctx
        self.features = {name: cached_features(ctx, name) for name in SPLITS}
        self.head = self.build_head().to(ctx.device)

    def build_head(self) -> nn.Module:
        raise NotImplementedError

    def model(self) -> nn.Module:
        return self.head

    def predicts_from_features(self) -> bool:
        return True

    @torch.no_grad()
    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.head.eval()
        logits = self.head(self.features[split].to(self.ctx.device)).float().cpu()
        return logits, torch.as_tensor(getattr(self.ctx.dataset, split).labels)


class FeatureMethod(CachedFeatureMethod):
    """A head trained with minibatches on the cached features (clip_probe)."""

    def setup(self) -> None:
        super().setup()
        self.loss = make_loss(self.hp["loss"], self.ctx.dataset.train_counts, self.hp)

    def phases(self) -> list[Phase]:
        batches, steps = feature_batches(self.ctx, "probe", self.hp["sampler"], lambda: self.features["train"],
                                         self.ctx.dataset.train.labels)
        return [Phase(
            name="probe", epochs=self.hp["epochs"], parameters=list(self.head.parameters()),
            make_optimizer=optimizer_factory(self.hp), batches=batches,
            loss=lambda batch: self.loss(self.head(batch[0]), batch[1]),
            warmup_epochs=self.hp["warmup_epochs"], steps_per_epoch=steps,
        )]


def probe_hparams(sampler: str, reference: str) -> dict[str, HParam]:
    return {
        "wd_max": HParam(1e-1, help="largest L2 weight decay of the grid searched on val (the logistic-regression "
                         f"protocol of CLIP and scikit-learn; {reference})", bounds=POSITIVE),
        "wd_min": HParam(1e-7, help="smallest weight decay of the grid", bounds=POSITIVE),
        "wd_steps": HParam(13, help="log-spaced weight decays from wd_max down to wd_min (13: every half decade); "
                           "each is one epoch, fitted to convergence, and the best on val is kept; 1 fits wd_max "
                           "alone (needed without a val split)", bounds=AT_LEAST_ONE),
        "max_iter": HParam(1000, help="L-BFGS iterations per weight decay (it stops earlier once converged)",
                           bounds=AT_LEAST_ONE),
        "standardize": HParam(True, help="standardise features with the train split's mean and std (as "
                              "scikit-learn's StandardScaler before LogisticRegression)"),
        **loss_hparams("ce"),
        "sampler": HParam(sampler, help="whose sampling distribution weights each training image's loss: "
                          "instance_balanced | class_balanced | square_root | class_aware",
                          choices=("instance_balanced", "class_balanced", "square_root", "class_aware")),
    }


def weight_decays(hp: dict) -> np.ndarray:
    if hp["wd_steps"] == 1:
        return np.asarray([hp["wd_max"]])
    if hp["wd_min"] > hp["wd_max"]:
        raise BenchError(f"wd_min={hp['wd_min']} is above wd_max={hp['wd_max']}; swap them")
    return np.logspace(np.log10(hp["wd_max"]), np.log10(hp["wd_min"]), hp["wd_steps"])


class StandardizedLinear(nn.Module):
    """x → W·(x − μ)/σ + b, μ and σ from the train split's features (buffers, not trained)."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.linear = nn.Linear(dim, classes)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_statistics(self, features: torch.Tensor, standardize: bool) -> None:
        if standardize:
            self.mean.copy_(features.mean(0))
            self.std.copy_(features.std(0, correction=0).clamp_min(1e-6))  # population std, as StandardScaler

    def normalise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.normalise(features.to(self.mean.dtype)))


def probe_phase(method: Method, name: str, head: StandardizedLinear, train_features: Callable[[], torch.Tensor],
                on_start: Callable[[], None] | None = None) -> Phase:
    """The full-batch L-BFGS fit of `head` on `train_features()` (called when the phase starts), one weight
    decay per epoch."""
    ctx, hp = method.ctx, method.hp
    decays = weight_decays(hp)
    if len(decays) > 1 and (len(ctx.dataset.val) == 0 or hp["model_selection"] != "best_val"):
        raise BenchError(f"{method.name} chooses its weight decay on val among wd_steps={hp['wd_steps']} values, "
                         "and this run has no val split or keeps the last epoch; fix one weight decay with "
                         "--set wd_steps=1 --set wd_max=VALUE")
    labels = torch.as_tensor(ctx.dataset.train.labels, device=ctx.device)
    terms = loss_terms(hp["loss"], ctx.dataset.train_counts, hp)
    weights = torch.as_tensor(sampling_weights(hp["sampler"], ctx.dataset.train.labels), dtype=torch.float32,
                              device=ctx.device)
    inputs: dict[str, torch.Tensor] = {}

    def start() -> None:
        if on_start:
            on_start()
        features = train_features().to(ctx.device).float()
        head.set_statistics(features, hp["standardize"])
        inputs["z"] = head.normalise(features)

    def fit(epoch: int) -> float:
        z, linear, wd = inputs["z"], head.linear, float(decays[epoch])
        if epoch == 0:  # later weight decays start from the previous solution (a regularisation path)
            with torch.no_grad():
                linear.weight.zero_()
                linear.bias.zero_()
        with torch.no_grad():
            normaliser = sum(float((weights[i:i + CHUNK] * terms(linear(z[i:i + CHUNK]), labels[i:i + CHUNK])[1])
                                   .sum()) for i in range(0, len(z), CHUNK))
        optimizer = torch.optim.LBFGS([linear.weight, linear.bias], lr=1.0, max_iter=hp["max_iter"],
                                      tolerance_grad=1e-7, tolerance_change=1e-10, history_size=20,
                                      line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            total = 0.0
            for i in range(0, len(z), CHUNK):
                weighted, _ = terms(linear(z[i:i + CHUNK]), labels[i:i + CHUNK])
                part = (weights[i:i + CHUNK] * weighted).sum() / normaliser
                part.backward()
                total += float(part.detach())
            penalty = 0.5 * wd * linear.weight.square().sum()
            penalty.backward()
            return torch.tensor(total + float(penalty.detach()))

        optimizer.step(closure)
        with torch.enable_grad():
            loss = float(closure())
        ctx.log.info(f"{name}: weight decay {wd:.3g} fitted (objective {loss:.4f})")
        return loss

    return Phase(name=name, epochs=len(decays), parameters=list(head.linear.parameters()), fit_epoch=fit,
                 on_start=start)


@register_method("linear_probe")
class LinearProbe(CachedFeatureMethod):
    description = "frozen backbone, features cached on disk, logistic regression (full-batch L-BFGS on " \
                  "standardised features, weight decay chosen on val)"
    hparams = probe_hparams("instance_balanced", "as in CLIP's linear probes, which sweep C on val")

    def build_head(self) -> nn.Module:
        return StandardizedLinear(self.ctx.backbone.feature_dim, self.ctx.dataset.num_classes)

    def phases(self) -> list[Phase]:
        return [probe_phase(self, "probe", self.head, lambda: self.features["train"])]

    def extra_record(self) -> dict:
        """The weight decays tried, one per epoch; `selected` names the epoch kept (chosen on val)."""
        return {"weight_decays": weight_decays(self.hp).tolist()}

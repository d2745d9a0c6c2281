"""Long-tail classification losses: functions of (logits [B, C], labels [B], training counts [C]) returning a
scalar mean loss, plus `make_loss`, which builds one from a name and the hyperparameter dict.

- `cross_entropy`: plain CE.
- `logit_adjusted_loss` (Menon et al., ICLR 2021): CE on logits + tau * log(prior),
  prior = counts / sum(counts).
- `balanced_softmax_loss` (Ren et al., NeurIPS 2020): CE on logits + log(counts). log(counts) and log(prior)
  differ by the constant log(sum(counts)) in every column, and softmax is invariant to adding the same
  constant to every logit of a row, so Balanced Softmax equals the logit-adjusted loss with tau = 1 exactly.
- `class_balanced_loss` (Cui et al., CVPR 2019): CE weighted by the effective-number weights of
  `class_balanced_weights`, normalised as torch's `F.cross_entropy(weight=w)`:
  sum_i w_{y_i} CE_i / sum_i w_{y_i}.
- `focal_loss` (Lin et al., ICCV 2017): -(1 - p_y)^gamma log p_y; with class weights it uses the same
  normalisation as the class-balanced loss, so `cb_focal` with gamma = 0 equals `cb`.

Counts are the number of training images per class (1-D tensor, array or list); every class must have at least
one, since the prior enters through its logarithm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import BenchError, UsageError
from bench.hparams import FRACTION, NON_NEGATIVE, Choice, HParam, Uniform
from bench.registry import nearest

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES = ("ce", "la", "bs", "cb", "focal", "cb_focal")

LOSS_HPARAMS: dict[str, HParam] = {
    "loss": HParam("ce", Choice(LOSSES), "training loss: " + " | ".join(LOSSES), choices=LOSSES),
    "la_tau": HParam(1.0, Uniform(0.5, 2.0), "logit-adjusted loss: tau (scale of log prior)", bounds=NON_NEGATIVE),
    "cb_beta": HParam(0.9999, Choice((0.99, 0.999, 0.9999)), "class-balanced loss: effective-number beta",
                      bounds=FRACTION),
    "focal_gamma": HParam(2.0, Choice((0.5, 1.0, 2.0)), "focal loss: focusing exponent gamma",
                          bounds=NON_NEGATIVE),
}


def loss_hparams(default: str) -> dict[str, HParam]:
    """LOSS_HPARAMS with another default loss (e.g. `la` for the logit-adjustment method)."""
    declared = LOSS_HPARAMS["loss"]
    return {**LOSS_HPARAMS, "loss": HParam(default, declared.space, declared.help, choices=declared.choices)}


def _counts(counts) -> torch.Tensor:
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().numpy()
    values = torch.as_tensor(np.asarray(counts), dtype=torch.float64).reshape(-1)
    if values.numel() == 0:
        raise BenchError("class counts are empty; expected one training count per class")
    if (values <= 0).any():
        empty = torch.nonzero(values <= 0).reshape(-1)[:5].tolist()
        raise BenchError(f"classes {empty} have no training images; long-tail losses need every count ≥ 1")
    return values


def log_prior(counts) -> torch.Tensor:
    """log(counts / sum(counts)) as float64 on the CPU."""
    values = _counts(counts)
    return torch.log(values / values.sum())


def _check(logits: torch.Tensor, num_classes: int | None = None) -> None:
    if logits.dim() != 2:
        raise BenchError(f"logits have shape {tuple(logits.shape)}; expected [batch, classes]")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise BenchError(f"logits have {logits.shape[1]} classes but the training counts name {num_classes}")


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def _adjusted_ce(logits: torch.Tensor, labels: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    _check(logits, offset.numel())
    return F.cross_entropy(logits + offset.to(device=logits.device, dtype=logits.dtype), labels)


def logit_adjusted_loss(logits: torch.Tensor, labels: torch.Tensor, counts, tau: float = 1.0) -> torch.Tensor:
    """Menon et al. 2021: CE(logits + tau * log prior, labels)."""
    return _adjusted_ce(logits, labels, tau * log_prior(counts))


def balanced_softmax_loss(logits: torch.Tensor, labels: torch.Tensor, counts) -> torch.Tensor:
    """Ren et al. 2020: CE(logits + log counts, labels); identical to `logit_adjusted_loss` with tau = 1."""
    return _adjusted_ce(logits, labels, torch.log(_counts(counts)))


def class_balanced_weights(counts, beta: float = 0.9999) -> torch.Tensor:
    """Cui et al. 2019: w_c = (1 - beta) / (1 - beta^{n_c}), scaled so that sum_c w_c = C (float64, CPU)."""
    if not 0.0 <= beta < 1.0:
        raise UsageError(f"cb_beta={beta}: must lie in [0, 1)")
    values = _counts(counts)
    weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), values))
    return weights * (values.numel() / weights.sum())


def class_balanced_loss(logits: torch.Tensor, labels: torch.Tensor, counts,
                        beta: float = 0.9999) -> torch.Tensor:
    """Weighted CE, sum_i w_{y_i} CE_i / sum_i w_{y_i} (torch's `F.cross_entropy(weight=w)` convention)."""
    weights = class_balanced_weights(counts, beta)
    _check(logits, weights.numel())
    return F.cross_entropy(logits, labels, weight=weights.to(device=logits.device, dtype=logits.dtype))


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Lin et al. 2017: mean_i -(1 - p_{y_i})^gamma log p_{y_i}. With class weights w:
    sum_i w_{y_i} FL_i / sum_i w_{y_i}, so gamma = 0 reproduces `F.cross_entropy(weight=w)`."""
    _check(logits)
    log_p = F.log_softmax(logits, dim=1).gather(1, labels.reshape(-1, 1)).reshape(-1)
    per_sample = -torch.pow(1.0 - log_p.exp(), gamma) * log_p
    if weight is None:
        return per_sample.mean()
    w = weight.to(device=logits.device, dtype=logits.dtype)[labels]
    return (w * per_sample).sum() / w.sum()


def loss_terms(name: str, counts, hp: Mapping | None = None
               ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Per-sample (w_{y_i} · ℓ_i, w_{y_i}) of loss `name`, whose value on a batch is Σ_i w_{y_i} ℓ_i /
    Σ_i w_{y_i} (w = 1 except for cb and cb_focal): the form a full-batch solver needs to weight samples
    (Σ_i s_i w ℓ / Σ_i s_i w) and to split the sum into chunks. Equals `make_loss(name)` when every s_i = 1."""
    hp = dict(hp or {})

    def value(key: str):
        return hp.get(key, LOSS_HPARAMS[key].default)

    if name not in LOSSES:
        raise UsageError(f"unknown loss {name!r}; {nearest(name, list(LOSSES))}")
    offset = None
    if name in ("la", "bs"):
        offset = _Cached(log_prior(counts) * (1.0 if name == "bs" else float(value("la_tau"))))
    gamma = float(value("focal_gamma")) if name in ("focal", "cb_focal") else None
    weights = _Cached(class_balanced_weights(counts, float(value("cb_beta")))) if name in ("cb", "cb_focal") \
        else None

    def terms(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if offset is not None:
            logits = logits + offset.on(logits)
        log_p = F.log_softmax(logits, dim=1).gather(1, labels.reshape(-1, 1)).reshape(-1)
        per_sample = -log_p if gamma is None else -torch.pow(1.0 - log_p.exp(), gamma) * log_p
        w = weights.on(logits)[labels] if weights is not None else torch.ones_like(per_sample)
        return w * per_sample, w

    return terms


class _Cached:
    """Keeps one copy of a per-class tensor per (device, dtype), so a training step converts nothing."""

    def __init__(self, values: torch.Tensor):
        self.values = values
        self._copies: dict[tuple, torch.Tensor] = {}

    def on(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        copy = self._copies.get(key)
        if copy is None:
            copy = self._copies[key] = self.values.to(device=like.device, dtype=like.dtype)
        return copy


def make_loss(name: str, counts, hp: Mapping | None = None) -> LossFn:
    """A loss `f(logits, labels)` by name; `la_tau`, `cb_beta`, `focal_gamma` are read from `hp` (defaults
    from `LOSS_HPARAMS` where absent). Per-class offsets and weights are computed here, once."""
    hp = dict(hp or {})

    def value(key: str):
        return hp.get(key, LOSS_HPARAMS[key].default)

    if name not in LOSSES:
        raise UsageError(f"unknown loss {name!r}; {nearest(name, list(LOSSES))}")
    if name == "ce":
        return cross_entropy
    num_classes = _counts(counts).numel()
    if name in ("la", "bs"):
        tau = 1.0 if name == "bs" else float(value("la_tau"))
        offset = _Cached(tau * log_prior(counts))

        def adjusted(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            _check(logits, num_classes)
            return F.cross_entropy(logits + offset.on(logits), labels)

        return adjusted
    if name == "focal":
        gamma = float(value("focal_gamma"))
        return lambda logits, labels: focal_loss(logits, labels, gamma)
    weights = _Cached(class_balanced_weights(counts, float(value("cb_beta"))))
    if name == "cb":
        def balanced(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            _check(logits, num_classes)
            return F.cross_entropy(logits, labels, weight=weights.on(logits))

        return balanced
    gamma = float(value("focal_gamma"))

    def balanced_focal(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check(logits, num_classes)
        return focal_loss(logits, labels, gamma, weight=weights.on(logits))

    return balanced_focal

"""LMPT's two losses in their single-label form: the distribution-balanced (DB) loss and the class-specific
embedding loss (CSEL).

**DB loss** (Wu et al., ECCV 2020; LMPT's lmpt/dbl.py `ResampleLoss` with use_sigmoid, reweight_func
"rebalance", focal and logit_reg, built in lmpt/train.py). Per image b and class c, with one-hot targets y:
- rebalancing weight r_bc = (1/n_c) / Σ_j y_bj/n_j = n_{y_b}/n_c, mapped to w_bc = α + σ(β (r_bc − μ));
- negative-tolerant regularisation: z_bc = logit_bc + ν_c, ν_c = −κ log(N/n_c − 1)/λ (N the training images);
  negatives' logits scaled by λ and their weights divided by λ;
- focal modulation: ℓ_bc = s · w_bc (1 − p_bc)^γ BCE(z_bc, y_bc), p_bc = exp(−BCE(z_bc, y_bc)); the mean over
  the B × C entries.
A single-label image is the one-positive case of a multi-label one, so the form is kept: y is the one-hot row.
Deviation: the released copy reduces BCE to its batch mean before the focal factor (binary_cross_entropy in
lmpt/dbl.py passes reduction='mean' to torch whatever it is asked), which makes (1 − p)^γ one number per
batch; here it is per entry, as in the DB loss it copies (Wu et al.'s element-wise focal term).

**CSEL** (LMPT, Xia et al. 2024, §3.4; lmpt/csel.py and lmpt/train.py). The released form does not run as
published (the repository's issues #5 and #7): it normalises its re-weighting over a dimension its tensors do
not have (`sum(dim=2)` of a [B, C] tensor), and lmpt/train.py feeds it a softmax of the raw class counts,
which underflows to zeros that are then inverted. Also its hinge `relu(m − y·d)` is applied to a distance
d = 1 − cos, which pushes positives apart and pulls negatives together, the reverse of the paper's aim that an
image's caption lie close to its class's prompt. Reconstructed from the paper's stated intent:
- d_bc = 1 − s_bc, s_bc the mean cosine of aligned tokens of image b's caption and class c's prompt
  (`lmpt_model.caption_prompt_similarity`, the token-level comparison of lmpt/train.py);
- the hinge embedding loss: ℓ_bc = d_bc for the image's class, max(0, m_c − d_bc) for the others, with the
  class-aware margin m_c = m · n_c^(−1/4) (n_c training images of class c, as the paper defines it);
- re-weighting w_c = n_c^(−γ) / Σ_j n_j^(−γ) (the normalisation over classes csel.py meant);
- L = (1/B) Σ_b Σ_c w_c ℓ_bc: the weights form a distribution over classes, so each image's loss is their
  weighted mean (the released `.mean()` over B × C would add a factor 1/C that vanishes on 8142 classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.methods.losses import _counts


def distribution_balanced_loss(logits: torch.Tensor, labels: torch.Tensor, counts, *, alpha: float, beta: float,
                               mu: float, neg_scale: float, init_bias: float, focal_gamma: float,
                               balance: float) -> torch.Tensor:
    """The DB loss of this module's docstring, for logits [B, C] and labels [B]."""
    n = _counts(counts).to(device=logits.device, dtype=torch.float32)
    positive = F.one_hot(labels, n.numel()).bool()
    ratio = n[labels][:, None] / n[None, :]
    weight = alpha + torch.sigmoid(beta * (ratio - mu))
    z = logits.float() - torch.log(n.sum() / n - 1) * init_bias / neg_scale
    z = torch.where(positive, z, neg_scale * z)
    weight = torch.where(positive, weight, weight / neg_scale)
    bce = F.binary_cross_entropy_with_logits(z, positive.float(), reduction="none")
    return (balance * weight * (1 - torch.exp(-bce)) ** focal_gamma * bce).mean()


def binary_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain sigmoid BCE with one-hot targets, the mean over B × C (lmpt/train.py's `bce`)."""
    return F.binary_cross_entropy_with_logits(logits.float(), F.one_hot(labels, logits.shape[1]).float())


def csel_margins_and_weights(counts, margin: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(m_c = margin · n_c^(−1/4), w_c = n_c^(−γ) / Σ_j n_j^(−γ)), float32 [C] on the CPU."""
    n = _counts(counts)
    weights = n ** -gamma
    return (margin * n ** -0.25).float(), (weights / weights.sum()).float()


def class_specific_embedding_loss(similarity: torch.Tensor, labels: torch.Tensor, margins: torch.Tensor,
                                  weights: torch.Tensor) -> torch.Tensor:
    """The reconstructed CSEL of this module's docstring, for caption-prompt similarity [B, C] and labels [B]."""
    distance = 1 - similarity.float()
    positive = F.one_hot(labels, similarity.shape[1]).bool()
    hinge = torch.where(positive, distance, torch.relu(margins - distance))
    return (hinge * weights).sum(dim=1).mean()

"""LPT's A-GCL loss (asymmetric Gaussian-clouded logit loss) on cosine logits.

For cosine logits c [B, C], labels y and training counts n:

1. δ_j = log(max n) − log(n_j)  (0 for the largest class, largest for the rarest);
2. ε_bj = |clamp(N(0, σ = 1/3), −1, 1)|, one draw per sample and class (training only);
3. c̃_bj = c_bj − λ · ε_bj · δ_j / max_k δ_k  (every column, the target's included: tail logits are pushed down
   by a non-negative "cloud", so the model must separate tail classes by a wider margin);
4. c̃_by −= m  (additive cosine margin on the target);
5. z = s · c̃;
6. asymmetric single-label focal loss with label smoothing ε on p = softmax(z): targets t_y = 1 − ε + ε/C,
   t_j = ε/C; weights w_y = (1 − p_y)^γ+, w_j = p_j^γ− (not detached, as the official code; finite gradients
   where a probability rounds to 1, see `asymmetric_focal`);
   L = −mean_b Σ_j t_bj · w_bj · log p_bj.

LPT uses γ+ = 0, γ− = 4 on class-balanced batches and γ+ = 0.5, γ− = 8 on instance-balanced batches (`GAMMAS`).
Evaluation never adds noise: prediction is the argmax of the raw cosine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.errors import BenchError

GAMMAS = {"class_balanced": (0.0, 4.0), "instance_balanced": (0.5, 8.0)}  # (γ+, γ−) per batch kind
NOISE_STD = 1.0 / 3.0


def cloud_offsets(counts) -> torch.Tensor:
    """δ_j / max_k δ_k with δ_j = log(max n) − log(n_j): 0 for the largest class, 1 for the rarest."""
    n = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
    if n.numel() == 0 or (n <= 0).any():
        raise BenchError("A-GCL needs at least one training image in every class")
    delta = torch.log(n.max()) - torch.log(n)
    top = delta.max()
    return delta / top if top > 0 else delta  # a balanced set has no tail: no cloud


def gaussian_cloud(shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """|clamp(N(0, σ=1/3), −1, 1)|, the non-negative perturbation magnitudes."""
    noise = torch.randn(shape, generator=generator, device=device) * NOISE_STD
    return noise.clamp_(-1.0, 1.0).abs_()


def asymmetric_focal(logits: torch.Tensor, labels: torch.Tensor, gamma_pos: float, gamma_neg: float,
                     smoothing: float = 0.1) -> torch.Tensor:
    """Single-label asymmetric focal loss with label smoothing (step 6 above), mean over the batch."""
    classes = logits.shape[-1]
    log_p = F.log_softmax(logits, dim=-1)
    p = log_p.exp()
    target = F.one_hot(labels, classes).to(logits.dtype)
    # one power of one base, as the official ASLSingleLabel: a `where` over two powers would also differentiate
    # the branch it drops, and (1 − p)^0.5 at a non-target p = 1 gives 0 · ∞ = NaN there. The clamp keeps the
    # target's (1 − p_y)^γ+ finite where p_y rounds to 1 (the official gradient is NaN there; the limit is 0).
    base = torch.where(target.bool(), 1 - p, p).clamp(min=torch.finfo(p.dtype).tiny)
    weight = base.pow(gamma_neg + (gamma_pos - gamma_neg) * target)
    smoothed = target * (1 - smoothing) + smoothing / classes
    return -(smoothed * weight * log_p).sum(dim=-1).mean()


class AGCLoss:
    """A-GCL as a callable ``loss(cosine, labels)``; ``noise=False`` switches the Gaussian cloud off."""

    def __init__(self, counts, gamma_pos: float, gamma_neg: float, *, cloud: float = 0.5, margin: float = 0.1,
                 scale: float = 20.0, smoothing: float = 0.1, noise: bool = True):
        self.offsets = cloud_offsets(counts)
        self.gamma_pos, self.gamma_neg = float(gamma_pos), float(gamma_neg)
        self.cloud, self.margin, self.scale, self.smoothing, self.noise = cloud, margin, scale, smoothing, noise
        self._offsets_on: dict[tuple, torch.Tensor] = {}

    def _offsets(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._offsets_on:
            self._offsets_on[key] = self.offsets.to(device=like.device, dtype=like.dtype)
        return self._offsets_on[key]

    def adjusted_logits(self, cosine: torch.Tensor, labels: torch.Tensor,
                        cloud: torch.Tensor | None = None) -> torch.Tensor:
        """z = s · (c − λ·ε·δ/max δ − m·onehot(y)); ``cloud`` supplies ε (else drawn when noise is on)."""
        if cosine.dim() != 2 or cosine.shape[1] != self.offsets.numel():
            raise BenchError(f"A-GCL got logits of shape {tuple(cosine.shape)}, expected [batch, "
                             f"{self.offsets.numel()}]")
        cosine = cosine.float()
        if cloud is None and self.noise and self.cloud > 0:
            cloud = gaussian_cloud(cosine.shape, device=cosine.device)
        if cloud is not None:
            cosine = cosine - self.cloud * cloud.to(cosine) * self._offsets(cosine)
        margin = F.one_hot(labels, cosine.shape[1]).to(cosine) * self.margin
        return self.scale * (cosine - margin)

    def __call__(self, cosine: torch.Tensor, labels: torch.Tensor, cloud: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.adjusted_logits(cosine, labels, cloud)
        return asymmetric_focal(logits, labels, self.gamma_pos, self.gamma_neg, self.smoothing)


def lpt_losses(counts, hp) -> dict[str, AGCLoss]:
    """The two A-GCL instances of LPT's dual sampling, keyed by batch kind, from the method's hyperparameters."""
    return {kind: AGCLoss(counts, gp, gn, cloud=hp["agcl_cloud"], margin=hp["agcl_margin"], scale=hp["agcl_scale"],
                          smoothing=hp["agcl_smoothing"], noise=hp["agcl_cloud"] > 0)
            for kind, (gp, gn) in GAMMAS.items()}

"""Classifiers on frozen, cached backbone features.

`linear_probe` (and cRT's classifier, `bench.methods.decoupling`) follow the standard linear-evaluation
protocol (CLIP's and scikit-learn's): features standardised with the train split's statistics, a multinomial
logistic regression trained to convergence with full-batch L-BFGS, and its L2 weight decay chosen from a
log-spaced grid, never on test. On a balanced val split each decay is one "epoch" of the phase, fitted on train
and warm-started from the previous (larger) one, and the engine's best-on-val selection keeps the best. On a
long-tailed or absent one (a carved val holds one or two images of a tail class, too few to choose on) the
decay is chosen by stratified k-fold cross-validation over train ∪ val under the selection rule, which scores
every one of them, and then fitted on train (`wd_search`: auto decides; cv or val force one). The objective is
Σ_i s_i w_i ℓ_i / Σ_i s_i w_i + wd/2 · ||W||² (bias not penalised), s_i the sampler's probability of image i
(`sampling_weights`), w and ℓ the loss's class weights and per-sample losses (`loss_terms`); with
cross-entropy and instance-balanced sampling it is scikit-learn's `LogisticRegression(C = 1 / (N · wd))`.

`CachedFeatureMethod` holds the cached features and predicts from them; `FeatureMethod` trains its head with
minibatches (clip_probe).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from bench.atomic_io import atomic_write_json, read_json
from bench.errors import BenchError
from bench.features import cached_features
from bench.hparams import AT_LEAST_ONE, POSITIVE, Bounds, HParam
from bench.methods.base import Method, Phase, register_method
from bench.methods.common import feature_batches, optimizer_factory
from bench.methods.losses import loss_hparams, loss_terms, make_loss
from bench.methods.samplers import sampling_weights
from bench.metrics import class_balanced_mean, evaluate, sample_nll
from bench.selection import selection_key

SPLITS = ("train", "val", "test")
CHUNK = 65536  # rows per forward/backward inside one L-BFGS evaluation (bounds memory on large datasets)
CV_FILE = "probe_cv.json"  # in the run folder: the cross-validation table of the weight-decay search


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
        "wd_max": HParam(1e-1, help="largest L2 weight decay of the grid searched (the logistic-regression "
                         f"protocol of CLIP and scikit-learn; {reference})", bounds=POSITIVE),
        "wd_min": HParam(1e-7, help="smallest weight decay of the grid", bounds=POSITIVE),
        "wd_steps": HParam(13, help="log-spaced weight decays from wd_max down to wd_min (13: every half decade); "
                           "1 fits wd_max alone", bounds=AT_LEAST_ONE),
        "wd_search": HParam("auto", help="how the weight decay is chosen, never on test: cv — k-fold "
                            "cross-validation over train ∪ val, stratified by class, scored by the selection rule on "
                            "the pooled out-of-fold predictions (scikit-learn's LogisticRegressionCV), so every image "
                            "of a tail class is scored, not the one or two a carved val holds; the chosen decay is "
                            "then fitted on train | val — each decay fitted on train and scored on val, one per "
                            "epoch (CLIP's protocol) | auto — val where the val split is balanced (as official and "
                            "unused-image splits are), cv where it is long-tailed or absent",
                            choices=("auto", "cv", "val")),
        "cv_folds": HParam(5, help="folds of the cross-validation (wd_search=cv)", bounds=Bounds(2, None)),
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


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold: within a class, images shuffled and dealt round the folds from a random first fold,
    so every class is spread as evenly as its size allows."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        assignment[members] = (np.arange(members.size) + rng.integers(folds)) % folds
    return assignment


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


class LBFGSFit:
    """Full-batch L-BFGS of a linear layer on standardised features to convergence, at one weight decay:
    minimises Σ_i s_i w_i ℓ_i / Σ_i s_i w_i + wd/2 · ||W||², in chunks of CHUNK rows."""

    def __init__(self, hp: dict, counts, device: torch.device):
        self.hp, self.counts, self.device = hp, counts, device
        self.terms = loss_terms(hp["loss"], counts, hp)

    def __call__(self, linear: nn.Linear, z: torch.Tensor, labels: torch.Tensor, wd: float) -> float:
        weights = torch.as_tensor(sampling_weights(self.hp["sampler"], labels.cpu().numpy()), dtype=torch.float32,
                                  device=self.device)
        terms = self.terms
        with torch.no_grad():
            normaliser = sum(float((weights[i:i + CHUNK] * terms(linear(z[i:i + CHUNK]), labels[i:i + CHUNK])[1])
                                   .sum()) for i in range(0, len(z), CHUNK))
        optimizer = torch.optim.LBFGS([linear.weight, linear.bias], lr=1.0, max_iter=self.hp["max_iter"],
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
            return float(closure())


def reset(linear: nn.Linear) -> None:
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()


def cross_validate(method: Method, fit: LBFGSFit, z: torch.Tensor, labels: torch.Tensor,
                   decays: np.ndarray) -> dict:
    """The weight decay chosen by k-fold cross-validation over (z, labels): per fold a regularisation path
    over `decays` (each fit warm-started from the previous, larger one), each held-out image's prediction and NLL kept; each
    decay scored on the pooled out-of-fold predictions by the selection rule. Returns the table and the
    choice."""
    ctx, hp = method.ctx, method.hp
    metric = ctx.options.selection_metric
    folds = stratified_folds(labels.cpu().numpy(), hp["cv_folds"], ctx.seed)
    # per decay, each image's out-of-fold prediction and NLL (not its scores: [decays, images] stays small)
    predicted = np.zeros((len(decays), len(z)), dtype=np.int64)
    nll = np.zeros((len(decays), len(z)))
    truth = labels.cpu().numpy()
    linear = nn.Linear(z.shape[1], ctx.dataset.num_classes).to(ctx.device)
    for fold in range(hp["cv_folds"]):
        inside = torch.as_tensor(folds != fold, device=ctx.device)
        held = ~inside.cpu().numpy()
        reset(linear)
        for index, wd in enumerate(decays):
            fit(linear, z[inside], labels[inside], float(wd))
            with torch.no_grad():
                scores = linear(z[~inside]).float().cpu().numpy()
            predicted[index, held] = scores.argmax(axis=1)
            nll[index, held] = sample_nll(truth[held], scores)
    summaries = [{**evaluate(truth, predicted[i], ctx.dataset.train_counts, ctx.options.shot_convention)
                  .summary(), "nll_balanced": class_balanced_mean(truth, nll[i])} for i in range(len(decays))]
    chosen = max(range(len(decays)), key=lambda i: (selection_key(summaries[i], metric), -i))
    return {"folds": hp["cv_folds"], "images": len(z), "metric": f"cv_{metric}",
            "weight_decays": [float(wd) for wd in decays], "chosen": float(decays[chosen]),
            "scores": [summary[metric] for summary in summaries],
            "nll_balanced": [summary["nll_balanced"] for summary in summaries]}


def probe_phase(method: Method, name: str, head: StandardizedLinear, train_features: Callable[[], torch.Tensor],
                val_features: Callable[[], torch.Tensor], on_start: Callable[[], None] | None = None) -> Phase:
    """The full-batch L-BFGS fit of `head` on `train_features()` (called when the phase starts). wd_search=cv:
    one epoch, the weight decay cross-validated over train ∪ val (the table kept in `probe_cv.json` in the run
    folder), then fitted on train; wd_search=val: one weight decay per epoch, the engine keeping the best on
    val."""
    ctx, hp = method.ctx, method.hp
    decays = weight_decays(hp)
    by_val = weight_decay_search(hp, ctx.dataset) == "val"
    if by_val and len(decays) > 1 and (len(ctx.dataset.val) == 0 or ctx.options.model_selection != "best_val"):
        raise BenchError(f"{method.name} chooses its weight decay on val among wd_steps={hp['wd_steps']} values, "
                         "and this run has no val split or keeps the last epoch; choose it by cross-validation "
                         "(--set wd_search=cv) or fix one weight decay with --set wd_steps=1 --set wd_max=VALUE")
    labels = torch.as_tensor(ctx.dataset.train.labels, device=ctx.device)
    fit = LBFGSFit(hp, ctx.dataset.train_counts, ctx.device)
    inputs: dict[str, torch.Tensor] = {}

    def start() -> None:
        if on_start:
            on_start()
        features = train_features().to(ctx.device).float()
        head.set_statistics(features, hp["standardize"])
        inputs["z"] = head.normalise(features)

    def fit_by_val(epoch: int) -> float:
        if epoch == 0:  # later weight decays start from the previous solution (a regularisation path)
            reset(head.linear)
        loss = fit(head.linear, inputs["z"], labels, float(decays[epoch]))
        ctx.log.info(f"{name}: weight decay {decays[epoch]:.3g} fitted (objective {loss:.4f})")
        return loss

    def fit_by_cv(epoch: int) -> float:
        wd = float(decays[0])
        if len(decays) > 1:
            val_labels = torch.as_tensor(ctx.dataset.val.labels, device=ctx.device)
            pooled = torch.cat([inputs["z"], head.normalise(val_features().to(ctx.device).float())])
            table = cross_validate(method, fit, pooled, torch.cat([labels, val_labels]), decays)
            atomic_write_json(ctx.run_dir / CV_FILE, table)
            wd = table["chosen"]
            ctx.log.info(f"{name}: weight decay {wd:.3g} chosen by {table['folds']}-fold cross-validation over "
                         f"train ∪ val ({table['images']} images; {table['metric']} " + ", ".join(
                             f"{d:.3g}: {v:.2f}" for d, v in zip(decays, table["scores"], strict=True)) + ")")
        reset(head.linear)
        loss = fit(head.linear, inputs["z"], labels, wd)
        ctx.log.info(f"{name}: weight decay {wd:.3g} fitted on train (objective {loss:.4f})")
        return loss

    return Phase(name=name, epochs=len(decays) if by_val else 1, parameters=list(head.linear.parameters()),
                 fit_epoch=fit_by_val if by_val else fit_by_cv, on_start=start)


def weight_decay_search(hp: dict, dataset) -> str:
    """`wd_search` resolved: auto is val on a balanced val split (every class the same number of images), cv on
    a long-tailed or absent one."""
    if hp["wd_search"] != "auto":
        return hp["wd_search"]
    counts = np.bincount(dataset.val.labels, minlength=dataset.num_classes) if len(dataset.val) else None
    return "val" if counts is not None and counts.min() == counts.max() else "cv"


def probe_record(method: Method) -> dict:
    """What the record keeps of the weight-decay search: the grid, how it was searched and, by
    cross-validation, its table."""
    search = weight_decay_search(method.hp, method.ctx.dataset)
    record = {"weight_decays": weight_decays(method.hp).tolist(), "wd_search": search}
    table = method.ctx.run_dir / CV_FILE
    if search == "cv" and table.exists():
        record["probe_cv"] = read_json(table)
    return record


@register_method("linear_probe", group="baseline", place=10)
class LinearProbe(CachedFeatureMethod):
    description = "frozen backbone, features cached on disk, logistic regression (full-batch L-BFGS on " \
                  "standardised features, weight decay chosen on val)"
    hparams = probe_hparams("instance_balanced", "as in CLIP's linear probes, which sweep C on val")

    def build_head(self) -> nn.Module:
        return StandardizedLinear(self.ctx.backbone.feature_dim, self.ctx.dataset.num_classes)

    def phases(self) -> list[Phase]:
        return [probe_phase(self, "probe", self.head, lambda: self.features["train"],
                            lambda: self.features["val"])]

    def extra_record(self) -> dict:
        return probe_record(self)

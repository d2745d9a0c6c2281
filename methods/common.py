"""Building blocks shared by methods: optimisers, sampled image or feature batches, prediction over a split."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from bench.context import RunContext
from bench.data import Transform, chunks
from bench.datasets.base import LongTailDataset
from bench.distributed import world
from bench.hparams import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Choice, HParam, LogUniform, Space
from bench.methods.samplers import SAMPLERS, class_aware, epoch_indices
from bench.seeding import derived_seed

OPTIMIZERS = ("sgd", "adamw")
SAMPLER_NAMES = tuple(SAMPLERS)


def optimizer_hparams(lr: float, weight_decay: float, optimizer: str, epochs: int, batch_size: int,
                      warmup_epochs: int = 0, source: str = "", lr_space: Space | None = None) -> dict[str, HParam]:
    """The optimiser and schedule of a recipe; `source` (the paper or code the defaults follow) ends each help."""
    cite = f" ({source})" if source else ""
    return {
        "epochs": HParam(epochs, help="training epochs" + cite, bounds=NON_NEGATIVE),
        "batch_size": HParam(batch_size, Choice((32, 64, 128, 256)), "training batch size" + cite,
                             bounds=AT_LEAST_ONE),
        "lr": HParam(lr, lr_space or LogUniform(lr / 10, lr * 10), "peak learning rate" + cite, bounds=POSITIVE),
        "weight_decay": HParam(weight_decay, LogUniform(weight_decay / 10, weight_decay * 10), "weight decay" + cite,
                               bounds=NON_NEGATIVE),
        "optimizer": HParam(optimizer, help="sgd (momentum 0.9) | adamw" + cite, choices=OPTIMIZERS),
        "warmup_epochs": HParam(warmup_epochs, help="linear warm-up epochs before the cosine decay" + cite,
                                bounds=NON_NEGATIVE),
    }


def sampler_hparams(default: str = "instance_balanced") -> dict[str, HParam]:
    return {"sampler": HParam(default, help="training sampler: " + " | ".join(SAMPLER_NAMES), choices=SAMPLER_NAMES)}


def optimizer_factory(hp: dict) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
    def make(parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        if hp["optimizer"] == "sgd":
            return torch.optim.SGD(parameters, lr=hp["lr"], momentum=0.9, weight_decay=hp["weight_decay"])
        return torch.optim.AdamW(parameters, lr=hp["lr"], weight_decay=hp["weight_decay"])

    return make


def steps(num_samples: int, batch_size: int) -> Callable[[], int]:
    return lambda: -(-num_samples // batch_size)


def image_batches(ctx: RunContext, phase_name: str, sampler: str, batch_size: int | None = None,
                  transform: Transform | tuple[Transform, ...] | None = None
                  ) -> tuple[Callable[[int], Iterator], Callable]:
    """Augmented train batches on the device, drawn by `sampler`, reproducible per (seed, phase, epoch); with a
    tuple of transforms, a tuple of views per batch (bench.data.views: the same crops and flips in each)."""
    transform = transform or ctx.transform(train=True)
    batch_size = batch_size or ctx.hparams["batch_size"]
    split = ctx.dataset.train

    def batches(epoch: int) -> Iterator:
        seed = derived_seed(ctx.seed, phase_name, epoch)
        indices = epoch_indices(sampler, split.labels, seed)
        shares = world().shard_batches(chunks(indices, batch_size))
        yield from ctx.feed("train").batches(transform, shares, world().noise_seed(seed, "augment"))

    return batches, steps(len(split), batch_size)




def dual_steps(labels: np.ndarray, batch_size: int) -> int:
    """LPT's iterations per epoch, as the official loop counts them: N // batch + 1, but no more than its
    class-aware loader holds (max n_c · C images, in whole batches; fewer on a nearly balanced set); at least 1."""
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    return max(1, min(len(labels) // batch_size + 1, int(counts.max()) * counts.size // batch_size))


def dual_index_batches(labels: np.ndarray, batch_size: int, per_class: int, rng: np.random.Generator
                       ) -> list[tuple[list[int], list[int]]]:
    """One epoch of LPT's dual sampling: per step a class-aware batch (`per_class` images of each drawn class,
    from the class-aware sampler) and a uniform batch (`batch_size` distinct random images, drawn afresh each
    step as the official loop does)."""
    steps_ = dual_steps(labels, batch_size)
    balanced = class_aware(labels, steps_ * batch_size, rng, per_class).reshape(steps_, batch_size)
    uniform_size = min(batch_size, len(labels))
    return [(balanced[i].tolist(), rng.choice(len(labels), uniform_size, replace=False).tolist())
            for i in range(steps_)]


def tower_transforms(ctx: RunContext, train: bool, towers: Sequence | None
                     ) -> Transform | tuple[Transform, ...]:
    """The run backbone's transform; with `towers`, one per tower (batches then carry a view per tower, each
    in its tower's own preprocessing, with the same crops and flips)."""
    if towers is None:
        return ctx.transform(train)
    return tuple(ctx.transform(train, tower) for tower in towers)


def dual_image_batches(ctx: RunContext, phase_name: str, batch_size: int, per_class: int,
                       towers: Sequence | None = None) -> tuple[Callable[[int], Iterator], Callable]:
    """Augmented (class-aware images, labels, uniform images, labels) per step on the device, reproducible per
    (seed, phase, epoch); images are views per tower where `towers` are given (`tower_transforms`)."""
    transform = tower_transforms(ctx, True, towers)
    split = ctx.dataset.train

    def batches(epoch: int) -> Iterator:
        seed = derived_seed(ctx.seed, phase_name, epoch)
        pairs = dual_index_batches(split.labels, batch_size, per_class, np.random.default_rng(seed))
        flat = [world().shard(indices) for pair in pairs for indices in pair]
        loader = iter(ctx.feed("train").batches(transform, flat, world().noise_seed(seed, "augment")))
        for balanced, uniform in zip(loader, loader, strict=True):
            yield (*balanced, *uniform)

    return batches, lambda: dual_steps(split.labels, batch_size)


def feature_batches(ctx: RunContext, phase_name: str, sampler: str, features: Callable[[], torch.Tensor],
                    labels: np.ndarray) -> tuple[Callable[[int], Iterator], Callable]:
    """Batches of precomputed features; `features` is called on first use (after earlier phases ran)."""
    batch_size = ctx.hparams["batch_size"]
    targets = torch.as_tensor(labels)

    def batches(epoch: int) -> Iterator:
        table = features()
        order = epoch_indices(sampler, labels, derived_seed(ctx.seed, phase_name, epoch))
        for share in world().shard_batches(chunks(order, batch_size)):
            idx = torch.as_tensor(share, dtype=torch.long)
            yield table[idx].to(ctx.device), targets[idx].to(ctx.device)

    return batches, steps(len(labels), batch_size)


@torch.no_grad()
def predict_images(ctx: RunContext, model: nn.Module, split_name: str, towers: Sequence | None = None,
                   dataset: LongTailDataset | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of `model` over a split of the run's dataset (or of `dataset`); it gets a view per tower
    where `towers` are given."""
    dataset = dataset or ctx.dataset
    split = getattr(dataset, split_name)
    transform = tower_transforms(ctx, False, towers)
    model.eval()
    logits = []
    share = world().shard(range(len(split)))  # over several ranks: each predicts its share, and all gather
    for images, _ in ctx.feed(split_name, dataset).batches(transform, chunks(share, ctx.eval_batch_size), 0):
        with ctx.autocast():
            logits.append(model(images).float().cpu())
    local = torch.cat(logits) if logits else torch.zeros(0, dataset.num_classes)
    return world().gather_rows(local), torch.as_tensor(split.labels)

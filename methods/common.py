"""Building blocks shared by methods: optimisers, image batches, and prediction over a split."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from bench.context import RunContext
from bench.data import eval_loader, eval_transform, train_loader, train_transform
from bench.seeding import derived_seed
from bench.hparams import Choice, HParam, LogUniform

OPTIMIZERS = ("sgd", "adamw")


def optimizer_hparams(lr: float, weight_decay: float, optimizer: str, epochs: int, batch_size: int,
                      warmup_epochs: int = 0) -> dict[str, HParam]:
    return {
        "epochs": HParam(epochs, help="training epochs"),
        "batch_size": HParam(batch_size, Choice((32, 64, 128, 256)), "training batch size"),
        "lr": HParam(lr, LogUniform(lr / 10, lr * 10), "peak learning rate"),
        "weight_decay": HParam(weight_decay, LogUniform(weight_decay / 10, weight_decay * 10), "weight decay"),
        "optimizer": HParam(optimizer, help="sgd (momentum 0.9) | adamw", choices=OPTIMIZERS),
        "warmup_epochs": HParam(warmup_epochs, help="linear warm-up epochs before the cosine decay"),
    }


def optimizer_factory(hp: dict) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
    def make(parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        if hp["optimizer"] == "sgd":
            return torch.optim.SGD(parameters, lr=hp["lr"], momentum=0.9, weight_decay=hp["weight_decay"])
        return torch.optim.AdamW(parameters, lr=hp["lr"], weight_decay=hp["weight_decay"])

    return make


def image_batches(ctx: RunContext, phase_name: str) -> tuple[Callable[[int], Iterator], Callable[[], int]]:
    """Shuffled, augmented train batches on the device, reproducible per (seed, phase, epoch)."""
    backbone = ctx.backbone
    hflip = ctx.dataset.hflip_ok
    transform = train_transform(backbone.image_size, backbone.mean, backbone.std, ctx.hparams["augment"], hflip)
    batch_size = ctx.hparams["batch_size"]
    split = ctx.dataset.train

    def batches(epoch: int) -> Iterator:
        loader = train_loader(split, transform, batch_size, ctx.num_workers, derived_seed(ctx.seed, phase_name, epoch))
        for images, labels in loader:
            yield images.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True)

    return batches, lambda: -(-len(split) // batch_size)


@torch.no_grad()
def predict_images(ctx: RunContext, model: nn.Module, split_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    split = getattr(ctx.dataset, split_name)
    backbone = ctx.backbone
    loader = eval_loader(split, eval_transform(backbone.image_size, backbone.mean, backbone.std),
                         ctx.hparams["eval_batch_size"], ctx.num_workers)
    model.eval()
    logits = []
    for images, _ in loader:
        images = images.to(ctx.device, non_blocking=True)
        with ctx.autocast():
            logits.append(model(images).float().cpu())
    return torch.cat(logits), torch.as_tensor(split.labels)

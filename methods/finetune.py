"""Full fine-tuning of the backbone and a linear head with cross-entropy."""

from __future__ import annotations

import torch
from torch import nn

from bench.methods.base import Method, Phase, register_method
from bench.methods.common import image_batches, optimizer_factory, optimizer_hparams, predict_images


class BackboneWithHead(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


@register_method("finetune")
class Finetune(Method):
    description = "full fine-tuning of backbone + linear head with cross-entropy (instance-balanced batches)"
    hparams = optimizer_hparams(lr=1e-4, weight_decay=0.05, optimizer="adamw", epochs=10, batch_size=64,
                                warmup_epochs=1)

    def setup(self) -> None:
        ctx = self.ctx
        self.net = BackboneWithHead(ctx.backbone, ctx.dataset.num_classes).to(ctx.device)

    def model(self) -> nn.Module:
        return self.net

    def phases(self) -> list[Phase]:
        batches, steps = image_batches(self.ctx, "finetune")
        return [Phase(
            name="finetune", epochs=self.hp["epochs"], parameters=list(self.net.parameters()),
            make_optimizer=optimizer_factory(self.hp), batches=batches,
            loss=lambda batch: nn.functional.cross_entropy(self.net(batch[0]), batch[1]),
            warmup_epochs=self.hp["warmup_epochs"], steps_per_epoch=steps,
        )]

    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return predict_images(self.ctx, self.net, split)

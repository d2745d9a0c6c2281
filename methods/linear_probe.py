"""Linear probe: a linear classifier on frozen, cached backbone features."""

from __future__ import annotations

import torch
from torch import nn

from bench.seeding import derived_seed
from bench.features import cached_features
from bench.methods.base import Method, Phase, register_method
from bench.methods.common import optimizer_factory, optimizer_hparams


@register_method("linear_probe")
class LinearProbe(Method):
    description = "frozen backbone, features cached on disk, linear classifier trained with cross-entropy"
    hparams = optimizer_hparams(lr=1e-3, weight_decay=1e-4, optimizer="adamw", epochs=30, batch_size=256)

    def setup(self) -> None:
        ctx = self.ctx
        self.head = nn.Linear(ctx.backbone.feature_dim, ctx.dataset.num_classes).to(ctx.device)
        self.features = {name: cached_features(ctx, getattr(ctx.dataset, name)) for name in ("train", "val", "test")}
        self.train_labels = torch.as_tensor(ctx.dataset.train.labels)

    def model(self) -> nn.Module:
        return self.head

    def phases(self) -> list[Phase]:
        features = self.features["train"]
        batch_size = self.hp["batch_size"]
        device = self.ctx.device

        def batches(epoch: int):
            generator = torch.Generator().manual_seed(derived_seed(self.ctx.seed, "probe", epoch))
            order = torch.randperm(len(features), generator=generator)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                yield features[idx].to(device), self.train_labels[idx].to(device)

        return [Phase(
            name="probe", epochs=self.hp["epochs"], parameters=list(self.head.parameters()),
            make_optimizer=optimizer_factory(self.hp), batches=batches,
            loss=lambda batch: nn.functional.cross_entropy(self.head(batch[0]), batch[1]),
            warmup_epochs=self.hp["warmup_epochs"], steps_per_epoch=lambda: -(-len(features) // batch_size),
        )]

    @torch.no_grad()
    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.head.eval()
        logits = self.head(self.features[split].to(self.ctx.device)).float().cpu()
        return logits, torch.as_tensor(getattr(self.ctx.dataset, split).labels)

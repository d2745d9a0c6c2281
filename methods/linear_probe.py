"""Linear probe: a linear classifier on frozen, cached backbone features."""

from __future__ import annotations

import torch
from bench.methods.base import Method, Phase, register_method
from bench.methods.common import feature_batches, optimizer_factory, optimizer_hparams, sampler_hparams
from bench.methods.losses import loss_hparams, make_loss
from torch import nn

from bench.features import cached_features


class FeatureMethod(Method):
    """A head trained on frozen features of every split, computed once and cached on disk."""

    def setup(self) -> None:
        ctx = self.ctx
        self.head = self.build_head().to(ctx.device)
        self.features = {name: cached_features(ctx, getattr(ctx.dataset, name)) for name in ("train", "val", "test")}
        self.loss = make_loss(self.hp["loss"], ctx.dataset.train_counts, self.hp)

    def build_head(self) -> nn.Module:
        return nn.Linear(self.ctx.backbone.feature_dim, self.ctx.dataset.num_classes)

    def model(self) -> nn.Module:
        return self.head

    def phases(self) -> list[Phase]:
        batches, steps = feature_batches(self.ctx, "probe", self.hp["sampler"], lambda: self.features["train"],
                                         self.ctx.dataset.train.labels)
        return [Phase(
            name="probe", epochs=self.hp["epochs"], parameters=list(self.head.parameters()),
            make_optimizer=optimizer_factory(self.hp), batches=batches,
            loss=lambda batch: self.loss(self.head(batch[0]), batch[1]),
            warmup_epochs=self.hp["warmup_epochs"], steps_per_epoch=steps,
        )]

    def predicts_from_features(self) -> bool:
        return True

    @torch.no_grad()
    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.head.eval()
        logits = self.head(self.features[split].to(self.ctx.device)).float().cpu()
        return logits, torch.as_tensor(getattr(self.ctx.dataset, split).labels)


@register_method("linear_probe")
class LinearProbe(FeatureMethod):
    description = "frozen backbone, features cached on disk, linear classifier (cross-entropy by default)"
    hparams = {**optimizer_hparams(lr=1e-3, weight_decay=1e-4, optimizer="adamw", epochs=30, batch_size=256),
               **loss_hparams("ce"), **sampler_hparams()}

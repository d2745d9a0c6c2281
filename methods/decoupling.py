"""Decoupling representation and classifier (Kang et al., ICLR 2020): cRT and LWS.

Phase 1 learns the representation: full fine-tuning with cross-entropy and instance-balanced batches
(`repr_epochs=0` keeps the pretrained backbone as the representation). Phase 2 freezes it, computes its features
once (evaluation transform), and trains on them with class-balanced sampling: cRT re-initialises and re-trains
the linear classifier, here as the linear probe does (standardised features, full-batch L-BFGS on the
class-balanced objective, weight decay chosen on val: `bench.methods.linear_probe`); LWS keeps the phase-1
classifier and learns one scale per class with minibatch SGD.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.errors import BenchError
from bench.features import cached_features, extract_features
from bench.hparams import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, HParam
from bench.methods.base import Method, Phase, register_method
from bench.methods.common import (
    feature_batches,
    image_batches,
    optimizer_factory,
    optimizer_hparams,
    predict_images,
    sampler_hparams,
)
from bench.methods.linear_probe import StandardizedLinear, probe_hparams, probe_phase, probe_record
from bench.methods.tuned import TunedClassifier

SPLITS = ("train", "val", "test")


REPRESENTATION_WEIGHT_DECAY = 5e-4  # Kang et al.'s stage 1 and LIFT's full fine-tuning


def representation_hparams(repr_epochs: int) -> dict[str, HParam]:
    """Phase 1: Kang et al. learn the representation by plain instance-balanced cross-entropy training (their
    feat_uniform.yaml); from a pretrained ViT that is full fine-tuning, here with `finetune`'s recipe (LIFT's:
    SGD momentum 0.9, weight decay 5e-4, batch 128, no warm-up, per-epoch cosine)."""
    return {
        "repr_epochs": HParam(repr_epochs, help="phase 1 (representation) epochs, fine-tuning with instance-"
                              "balanced cross-entropy (Kang et al. 2020, stage 1); 0 keeps the pretrained backbone",
                              bounds=NON_NEGATIVE),
        "repr_lr": HParam(5e-4, help="phase 1 learning rate (SGD momentum 0.9, weight decay 5e-4: finetune's, "
                          "from LIFT)", bounds=POSITIVE),
        "repr_batch_size": HParam(128, help="phase 1 batch size (finetune's, from LIFT)", bounds=AT_LEAST_ONE),
    }


class ScaledClassifier(nn.Module):
    """LWS: logits of a frozen linear classifier, each class's scaled by a learned f_c (initially 1)."""

    def __init__(self, classifier: nn.Linear):
        super().__init__()
        self.classifier = classifier
        self.scales = nn.Parameter(torch.ones(classifier.out_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features) * self.scales


class Decoupled(Method):
    def setup(self) -> None:
        ctx = self.ctx
        backbone = ctx.backbone
        self.net = TunedClassifier(backbone, nn.Linear(backbone.feature_dim, ctx.dataset.num_classes), [])
        self.classifier = self.second_classifier()
        self.holder = nn.ModuleDict({"net": self.net, "classifier": self.classifier}).to(ctx.device)
        self.features: dict[str, torch.Tensor] = {}

    def second_classifier(self) -> nn.Module:
        raise NotImplementedError

    def model(self) -> nn.Module:
        return self.holder

    def _freeze_representation(self) -> None:
        """Features of every split from the (now fixed) representation; the pretrained one's come from disk."""
        ctx = self.ctx
        if self.hp["repr_epochs"] == 0:
            self.features = {s: cached_features(ctx, s) for s in SPLITS}
            return
        transform = ctx.transform()
        self.features = {s: extract_features(ctx, s, transform) for s in SPLITS}

    def predicts_from_features(self) -> bool:
        return bool(self.features)

    def classifier_phase(self) -> Phase:
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        ctx, hp = self.ctx, self.hp
        phases = []
        if hp["repr_epochs"] > 0:
            repr_hp = {**hp, "batch_size": hp["repr_batch_size"], "lr": hp["repr_lr"], "optimizer": "sgd",
                       "weight_decay": REPRESENTATION_WEIGHT_DECAY}
            batches, steps = image_batches(ctx, "representation", "instance_balanced", hp["repr_batch_size"])
            phases.append(Phase(
                name="representation", epochs=hp["repr_epochs"], parameters=list(self.net.parameters()),
                make_optimizer=optimizer_factory(repr_hp), batches=batches,
                loss=lambda batch: nn.functional.cross_entropy(self.net(batch[0]), batch[1]),
                steps_per_epoch=steps,
            ))
        return [*phases, self.classifier_phase()]

    @torch.no_grad()
    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.features:  # still learning the representation
            return predict_images(self.ctx, self.net, split)
        self.classifier.eval()
        logits = self.classifier(self.features[split].to(self.ctx.device)).float().cpu()
        return logits, torch.as_tensor(getattr(self.ctx.dataset, split).labels)


@register_method("crt", group="baseline", place=100)
class ClassifierRetraining(Decoupled):
    description = "cRT: a new linear classifier fitted on the class-balanced objective over frozen features of " \
                  "the backbone fine-tuned in stage 1 (repr_epochs 0: the pretrained one)"
    hparams = {**probe_hparams("class_balanced", "Kang et al. 2020 re-train the classifier on class-balanced "
                               "samples; here to convergence"), **representation_hparams(repr_epochs=10)}

    def second_classifier(self) -> nn.Module:
        return StandardizedLinear(self.ctx.backbone.feature_dim, self.ctx.dataset.num_classes)

    def classifier_phase(self) -> Phase:
        return probe_phase(self, "classifier", self.classifier, lambda: self.features["train"],
                           lambda: self.features["val"], on_start=self._freeze_representation)

    def extra_record(self) -> dict:
        return probe_record(self)


@register_method("lws", group="baseline", place=110)
class LearnableWeightScaling(Decoupled):
    description = "LWS: representation and classifier by fine-tuning, then per-class logit scales learned " \
                  "with class-balanced sampling"
    hparams = {**optimizer_hparams(lr=0.1, weight_decay=5e-4, optimizer="sgd", epochs=5, batch_size=256,
                                   source="Kang et al. 2020, facebookresearch/classifier-balancing "
                                          "config/Places_LT/cls_lws.yaml: lr 0.1 at batch 256, 5 epochs"),
               **sampler_hparams("class_balanced"), **representation_hparams(repr_epochs=10)}

    def second_classifier(self) -> nn.Module:
        if self.hp["repr_epochs"] == 0:
            raise BenchError("lws rescales a classifier learned in phase 1; set repr_epochs to 1 or more")
        return ScaledClassifier(self.net.head)

    def classifier_phase(self) -> Phase:
        ctx, hp = self.ctx, self.hp
        batches, steps = feature_batches(ctx, "classifier", hp["sampler"], lambda: self.features["train"],
                                         ctx.dataset.train.labels)
        return Phase(
            name="classifier", epochs=hp["epochs"], parameters=[self.classifier.scales],
            make_optimizer=optimizer_factory(hp), batches=batches,
            loss=lambda batch: nn.functional.cross_entropy(self.classifier(batch[0]), batch[1]),
            warmup_epochs=hp["warmup_epochs"], steps_per_epoch=steps, on_start=self._freeze_representation,
        )

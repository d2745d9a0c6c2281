"""CLIP baselines: zero-shot classification from class-name prompts, and a text-initialised cosine probe."""

from __future__ import annotations

import torch
from torch import nn

from bench.errors import BenchError
from bench.features import cached_features
from bench.hparams import POSITIVE, HParam
from bench.methods.base import Method, Phase, register_method
from bench.methods.common import optimizer_hparams, sampler_hparams
from bench.methods.linear_probe import FeatureMethod
from bench.methods.losses import loss_hparams
from bench.methods.peft import CosineClassifier
from bench.text import class_text_embeddings

TEMPLATES = {"templates": HParam("openai", help="class-name prompts: openai (80 templates) | single",
                                 choices=("openai", "single"))}


def require_clip(method: Method) -> None:
    if method.ctx.backbone.family != "open_clip":
        raise BenchError(f"{method.name} needs a CLIP backbone (--backbone open_clip:ARCH@TAG or clip_micro), "
                         f"not {method.ctx.backbone.name}")


class TextClassifier(nn.Module):
    """logits = logit_scale · cos(image feature, class text embedding), as CLIP scores zero-shot."""

    def __init__(self, text_embeddings: torch.Tensor, logit_scale: float):
        super().__init__()
        self.register_buffer("text", text_embeddings)
        self.logit_scale = logit_scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * nn.functional.normalize(features, dim=-1) @ self.text.T


@register_method("zeroshot_clip", group="baseline", place=120)
class ZeroShotClip(Method):
    description = "CLIP zero-shot: class names × prompt templates through the text tower; no training"
    hparams = TEMPLATES
    embedded_backbone = "clip_micro"

    def setup(self) -> None:
        require_clip(self)
        ctx = self.ctx
        scale = float(ctx.backbone.clip_model.logit_scale.detach().exp())
        self.classifier = TextClassifier(class_text_embeddings(ctx, self.hp["templates"]), scale).to(ctx.device)
        self.features = {s: cached_features(ctx, s) for s in ("val", "test")}

    def model(self) -> nn.Module:
        return self.classifier

    def phases(self) -> list[Phase]:
        return []

    @torch.no_grad()
    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(self.features[split].to(self.ctx.device)).float().cpu()
        return logits, torch.as_tensor(getattr(self.ctx.dataset, split).labels)


class ScaledCosineHead(nn.Module):
    def __init__(self, cosine: CosineClassifier, scale: float):
        super().__init__()
        self.cosine, self.scale = cosine, scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.cosine(features) * self.scale


@register_method("clip_probe", group="baseline", place=130)
class ClipProbe(FeatureMethod):
    description = "CLIP probe: cosine classifier initialised from class-name text embeddings, trained on frozen " \
                  "CLIP image features"
    embedded_backbone = "clip_micro"
    # LIFT's classifier-only baseline (shijxcs/LIFT: SGD 0.01, wd 5e-4, batch 128, 10 epochs, LA loss, cosine
    # head at scale 25, text-initialised from one template); here on cached features, without augmentation.
    hparams = {**optimizer_hparams(lr=0.01, weight_decay=5e-4, optimizer="sgd", epochs=10, batch_size=128,
                                   source="LIFT's classifier-only baseline"),
               **loss_hparams("la"), **sampler_hparams(),
               "templates": HParam("single", help="class-name prompts: openai (80 templates) | single (LIFT's)",
                                   choices=("openai", "single")),
               "cosine_scale": HParam(25.0, help="logit scale of the cosine classifier (LIFT: 25)", bounds=POSITIVE)}

    def build_head(self) -> nn.Module:
        require_clip(self)
        ctx = self.ctx
        text = class_text_embeddings(ctx, self.hp["templates"]).cpu()
        head = CosineClassifier(ctx.backbone.feature_dim, ctx.dataset.num_classes, init_weight=text)
        return ScaledCosineHead(head, self.hp["cosine_scale"])

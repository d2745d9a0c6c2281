"""One-phase recipes that tune part of the backbone together with a classifier head: full fine-tuning, VPT
(shallow / deep prompts), AdaptFormer adapters, BitFit, and LIFT (AdaptFormer + logit-adjusted loss + cosine
classifier initialised from class-name text embeddings)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bench.hparams import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Choice, HParam
from bench.methods.base import Method, Phase, register_method
from bench.methods.common import (
    image_batches,
    optimizer_factory,
    optimizer_hparams,
    predict_images,
    sampler_hparams,
)
from bench.methods.losses import loss_hparams, make_loss
from bench.methods.peft import (
    ADAPTER_INPUTS,
    CosineClassifier,
    PromptedBackbone,
    add_adapters,
    bitfit_parameters,
)

HEADS = ("linear", "cosine")


class TunedClassifier(nn.Module):
    """features(images) → head; a cosine head's logits are scaled by `scale` (LIFT's convention)."""

    def __init__(self, features: nn.Module, head: nn.Module, extra: list[nn.Module], scale: float = 1.0):
        super().__init__()
        self.features, self.head, self.extra, self.scale = features, head, nn.ModuleList(extra), scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images)) * self.scale


def head_hparams(head: str, head_init: str = "auto", cosine_scale: float = 30.0,
                 templates: str = "openai") -> dict[str, HParam]:
    return {
        "head": HParam(head, help="linear | cosine classifier", choices=HEADS),
        "head_init": HParam(head_init, help="auto (text embeddings on CLIP, else random) | text | random",
                            choices=("auto", "text", "random")),
        "cosine_scale": HParam(cosine_scale, Choice((15.0, 20.0, 25.0, 30.0)), "logit scale of a cosine head",
                               bounds=POSITIVE),
        "templates": HParam(templates, help="class-name prompts for text init: openai (80) | single",
                            choices=("openai", "single")),
    }


VPT_BASE_LRS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0)  # VPT's tune_fgvc.py prompt grid (per 256)
VPT_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)  # VPT's tune_fgvc.py grid
PROMPT_HPARAMS = {
    "prompt_length": HParam(10, Choice((5, 10, 20, 50)), "VPT: prompt tokens per block (deep) or in total",
                            bounds=AT_LEAST_ONE),
    # The VPT reference (KMnP/vpt): configs/base-prompt.yaml (SGD, momentum 0.9, batch 128, cosine, 100 epochs
    # with 10 of warm-up), configs/prompt/cub.yaml (base lr 0.1, weight decay 0.01), tune_fgvc.py (lr = base lr
    # × batch / 256, both searched on val over the grids above).
    "lr": HParam(0.1, Choice(VPT_BASE_LRS), "VPT: base learning rate per 256 images, scaled by batch_size/256 "
                 "(KMnP/vpt tune_fgvc.py; 0.1 as its CUB config; searched on val over its grid)", bounds=POSITIVE),
    "weight_decay": HParam(0.01, Choice(VPT_WEIGHT_DECAYS), "VPT: weight decay on prompts and head weight, not "
                           "the head bias (KMnP/vpt; 0.01 as its CUB config)", bounds=NON_NEGATIVE),
    "epochs": HParam(100, help="VPT: training epochs (KMnP/vpt configs/base-prompt.yaml)", bounds=NON_NEGATIVE),
    "warmup_epochs": HParam(10, help="VPT: linear warm-up epochs (KMnP/vpt configs/base-prompt.yaml)",
                            bounds=NON_NEGATIVE),
    "batch_size": HParam(128, Choice((32, 64, 128, 256)), "VPT: batch size (KMnP/vpt configs/base-prompt.yaml)",
                         bounds=AT_LEAST_ONE),
}
ADAPTER_HPARAMS = {
    "adapter_bottleneck": HParam(64, Choice((8, 16, 32, 64, 128)), "AdaptFormer: bottleneck width r (AdaptFormer "
                                 "paper and code: 64)", bounds=AT_LEAST_ONE),
    "adapter_scale": HParam(0.1, help="AdaptFormer: scale s of the adapter branch (AdaptFormer: 0.1)"),
    "adapter_learnable_scale": HParam(False, help="AdaptFormer: learn s (AdaptFormer: fixed)"),
    "adapter_input": HParam("norm", help="what the adapter reads: norm (the MLP's normalised input, AdaptFormer "
                            "paper Eq. 3-4) | residual (the pre-norm residual, AdaptFormer's code) | block (the "
                            "block's input, LIFT's)", choices=ADAPTER_INPUTS),
    "adapter_layernorm": HParam(False, help="a trainable LayerNorm before the adapter's down-projection (LIFT's)"),
}
# LIFT's AdaptFormer (shijxcs/LIFT models/peft_modules.py, peft_vit.py): its own LayerNorm on the block's input,
# a learnable scale starting at 1; bottleneck 64 here (LIFT sizes it 2^⌊log2(C/24)⌋ per dataset).
LIFT_ADAPTER_HPARAMS = {
    **ADAPTER_HPARAMS,
    "adapter_scale": HParam(1.0, help="LIFT: initial adapter scale (learnable, starts at 1)"),
    "adapter_learnable_scale": HParam(True, help="LIFT: the adapter scale is learned"),
    "adapter_input": HParam("block", help="LIFT: the adapter reads the block's input (norm | residual | block)",
                            choices=ADAPTER_INPUTS),
    "adapter_layernorm": HParam(True, help="LIFT: a trainable LayerNorm before the down-projection"),
}
TUNING_HPARAMS = {"vpt_shallow": PROMPT_HPARAMS, "vpt_deep": PROMPT_HPARAMS, "adaptformer": ADAPTER_HPARAMS,
                  "lift": LIFT_ADAPTER_HPARAMS}


def recipe_hparams(tuning: str, *, loss: str = "ce", head: str = "linear", sampler: str = "instance_balanced",
                   cosine_scale: float = 30.0, templates: str = "openai", **optimizer) -> dict[str, HParam]:
    """A recipe's declarations; a tuning's own entries (VPT's optimiser, from its reference) replace the
    generic optimiser ones."""
    return {**optimizer_hparams(**optimizer), **loss_hparams(loss), **sampler_hparams(sampler),
            **head_hparams(head, cosine_scale=cosine_scale, templates=templates), **TUNING_HPARAMS.get(tuning, {})}


def vpt_optimizer(hp: dict, head: nn.Module) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
    """VPT's optimiser: SGD (momentum 0.9; AdamW when `optimizer` says so) at base lr × batch/256; the head's
    bias is not weight-decayed."""
    lr = hp["lr"] * hp["batch_size"] / 256
    bias = getattr(head, "bias", None)

    def make(parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        decayed = [p for p in parameters if p is not bias]
        groups = [{"params": decayed, "weight_decay": hp["weight_decay"]}]
        if bias is not None and any(p is bias for p in parameters):
            groups.append({"params": [bias], "weight_decay": 0.0})
        if hp["optimizer"] == "adamw":
            return torch.optim.AdamW(groups, lr=lr)
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)

    return make


def build_head(method: Method, feature_dim: int) -> tuple[nn.Module, float]:
    ctx, hp = method.ctx, method.hp
    classes = ctx.dataset.num_classes
    use_text = hp["head_init"] == "text" or (hp["head_init"] == "auto" and ctx.backbone.family == "open_clip")
    if hp["head"] == "linear":
        if use_text and hp["head_init"] == "text":
            ctx.warn("head_init=text applies to cosine heads only; the linear head starts random")
        return nn.Linear(feature_dim, classes), 1.0
    init = None
    if use_text:
        from bench.text import class_text_embeddings

        init = class_text_embeddings(ctx, hp["templates"]).cpu()
        ctx.log.info(f"cosine head initialised from {len(init)} class-name text embeddings")
    return CosineClassifier(feature_dim, classes, init_weight=init), hp["cosine_scale"]


class TunedMethod(Method):
    tuning = "full"

    def setup(self) -> None:
        ctx, hp = self.ctx, self.hp
        backbone = ctx.backbone
        extra: list[nn.Module] = []
        if self.tuning.startswith("vpt"):
            features = PromptedBackbone(backbone, length=hp["prompt_length"], deep=self.tuning == "vpt_deep",
                                        init="xavier_uniform")
            trainable = features.prompt_parameters()
        elif self.tuning in ("adaptformer", "lift"):
            extra = add_adapters(backbone, bottleneck=hp["adapter_bottleneck"], scale=hp["adapter_scale"],
                                 learnable_scale=hp["adapter_learnable_scale"], input=hp["adapter_input"],
                                 layernorm=hp["adapter_layernorm"])
            features, trainable = backbone, [p for adapter in extra for p in adapter.parameters()]
        elif self.tuning == "bitfit":
            features, trainable = backbone, bitfit_parameters(backbone)
        else:
            features, trainable = backbone, list(backbone.parameters())
        head, scale = build_head(self, backbone.feature_dim)
        if self.tuning.startswith("vpt") and isinstance(head, nn.Linear):  # VPT's head init (KMnP/vpt mlp.py)
            nn.init.kaiming_normal_(head.weight, a=0, mode="fan_out")
        self.net = TunedClassifier(features, head, extra, scale).to(ctx.device)
        self.trainable = trainable + list(head.parameters())
        self.loss = make_loss(hp["loss"], ctx.dataset.train_counts, hp)

    def model(self) -> nn.Module:
        return self.net

    def phases(self) -> list[Phase]:
        batches, steps = image_batches(self.ctx, self.tuning, self.hp["sampler"])
        make_optimizer = vpt_optimizer(self.hp, self.net.head) if self.tuning.startswith("vpt") \
            else optimizer_factory(self.hp)
        return [Phase(
            name=self.tuning, epochs=self.hp["epochs"], parameters=self.trainable,
            make_optimizer=make_optimizer, batches=batches,
            loss=lambda batch: self.loss(self.net(batch[0]), batch[1]),
            warmup_epochs=self.hp["warmup_epochs"], steps_per_epoch=steps,
        )]

    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return predict_images(self.ctx, self.net, split)


# LIFT's recipes (shijxcs/LIFT configs/model/*_peft.yaml, *_ft.yaml, trainer.py): SGD momentum 0.9, weight decay
# 5e-4, batch 128, 10 epochs, per-epoch cosine, no warm-up; full fine-tuning at lr 5e-4 (its ImageNet-LT value,
# chosen from the grid below in scripts/run_tab6_peft_methods.sh), PEFT at 0.01.
LIFT_SOURCE = "LIFT, shijxcs/LIFT configs and scripts"
PEFT_OPTIMIZER = {"lr": 0.01, "weight_decay": 5e-4, "optimizer": "sgd", "epochs": 10, "batch_size": 128,
                  "warmup_epochs": 0, "source": LIFT_SOURCE}
FULL_OPTIMIZER = {"lr": 5e-4, "weight_decay": 5e-4, "optimizer": "sgd", "epochs": 10, "batch_size": 128,
                  "warmup_epochs": 0, "source": LIFT_SOURCE,
                  "lr_space": Choice((5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2))}


def _tuned(name: str, place: int, tuning: str, description: str, **recipe) -> type[TunedMethod]:
    """A registered baseline (its report place: `place`) that tunes the backbone as `tuning` says."""
    cls = type(name, (TunedMethod,), {"tuning": tuning, "description": description,
                                      "hparams": recipe_hparams(tuning, **recipe)})
    return register_method(name, group="baseline", place=place)(cls)


_tuned("finetune", 20, "full", "full fine-tuning of backbone + linear head, cross-entropy", **FULL_OPTIMIZER)
_tuned("la", 30, "full", "full fine-tuning with the logit-adjusted loss (Menon et al. 2021)", loss="la",
       **FULL_OPTIMIZER)
_tuned("bs", 40, "full", "full fine-tuning with the balanced softmax loss (Ren et al. 2020)", loss="bs",
       **FULL_OPTIMIZER)
_tuned("vpt_shallow", 50, "vpt_shallow", "frozen ViT + prompt tokens at the input (VPT-shallow) + linear head; "
       "VPT's recipe", **PEFT_OPTIMIZER)
_tuned("vpt_deep", 60, "vpt_deep", "frozen ViT + prompt tokens in every block (VPT-deep) + linear head; VPT's recipe",
       **PEFT_OPTIMIZER)
_tuned("adaptformer", 70, "adaptformer", "frozen ViT + parallel bottleneck adapters on every MLP + linear head",
       **PEFT_OPTIMIZER)
_tuned("bitfit", 80, "bitfit", "frozen ViT except its biases (BitFit) + linear head", **PEFT_OPTIMIZER)
_tuned("lift", 90, "lift", "LIFT: AdaptFormer (LIFT's variant) + logit-adjusted loss + cosine head (scale 25, "
       "text-initialised on CLIP)", loss="la", head="cosine", cosine_scale=25.0, templates="single",
       **PEFT_OPTIMIZER)

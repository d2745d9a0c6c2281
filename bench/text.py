"""Class-name text embeddings from an open_clip text tower, with open_clip's own tokenizer and zero-shot
classifier builder: computed once per (model, names, templates), cached."""

from __future__ import annotations

import hashlib
import json

import torch

from bench.context import RunContext
from bench.errors import BenchError
from bench.tensor_cache import load_cached, save_cached

SINGLE_TEMPLATE = ("a photo of a {}.",)


def templates(name: str) -> tuple[str, ...]:
    if name == "single":
        return SINGLE_TEMPLATE
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def tokenizer_for(backbone):
    """open_clip's tokenizer for the backbone's text tower. Those from the Hugging Face hub are refused: this
    harness does not download them."""
    from bench.backbones import import_open_clip, parse_backbone

    open_clip, arch = import_open_clip(), parse_backbone(backbone.name).arch
    hub_tokenizer = open_clip.get_model_config(arch)["text_cfg"].get("hf_tokenizer_name")
    if hub_tokenizer:
        raise BenchError(f"backbone {backbone.name}: its text tower needs the Hugging Face tokenizer "
                         f"{hub_tokenizer}, which is not loaded offline; use a CLIP tower with open_clip's "
                         "own tokenizer (e.g. open_clip:ViT-B-16-quickgelu@openai) or --set head_init=random")
    return open_clip.get_tokenizer(arch, context_length=backbone.clip_model.context_length)


@torch.no_grad()
def class_text_embeddings(ctx: RunContext, template_set: str = "openai", backbone=None) -> torch.Tensor:
    """[C, D] unit-norm embeddings: each class's prompts encoded, normalised, averaged, normalised again, by
    `backbone`'s text tower (default: the run's backbone). The text tower runs once; the result is cached."""
    backbone = backbone or ctx.backbone
    if backbone.family != "open_clip":
        raise BenchError(f"text embeddings need an open_clip backbone, not {backbone.name}; "
                         "use --backbone open_clip:ARCH@TAG or --set head_init=random")
    prompts = templates(template_set)
    info = backbone.weights_info
    key = hashlib.sha256(json.dumps({
        "backbone": backbone.name, "weights": info.sha256 or info.location, "source": info.source,
        "seed": None if info.pretrained else ctx.seed, "classes": ctx.dataset.class_names, "templates": prompts,
    }).encode()).hexdigest()[:32]
    path = ctx.cache_dir / "text" / f"{key}.pt"
    cached = load_cached(path, (len(ctx.dataset.class_names), -1), ctx.warn)
    if cached is not None:
        return cached.to(ctx.device)
    from open_clip import build_zero_shot_classifier

    model = backbone.clip_model.to(ctx.device).eval()
    classifier = build_zero_shot_classifier(model, tokenizer_for(backbone), ctx.dataset.class_names, prompts,
                                            device=ctx.device)  # [D, C]
    embeddings = classifier.T.float().contiguous()
    save_cached(path, embeddings)
    return embeddings

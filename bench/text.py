"""Class-name text embeddings from an open_clip text tower: computed once per (model, names, templates), cached."""

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
    import open_clip

    context_length = backbone.clip_model.context_length
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


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
    model, tokenize = backbone.clip_model.to(ctx.device).eval(), tokenizer_for(backbone)
    rows = []
    for name in ctx.dataset.class_names:
        tokens = tokenize([template.format(name) for template in prompts]).to(ctx.device)
        encoded = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
        rows.append(torch.nn.functional.normalize(encoded.mean(0), dim=-1))
    embeddings = torch.stack(rows)
    save_cached(path, embeddings)
    return embeddings

"""Frozen-backbone features, computed once and cached on disk by (backbone, weights, transform, split)."""

from __future__ import annotations

import hashlib
import json

import torch

from bench.context import RunContext
from bench.data import describe_transform, eval_loader, eval_transform
from bench.datasets.base import Split
from bench.progress import progress_bars
from bench.tensor_cache import load_cached, save_cached


def feature_key(ctx: RunContext, split: Split, transform_text: str) -> str:
    backbone = ctx.backbone
    info = backbone.weights_info
    identity = {
        "backbone": backbone.name, "weights_source": info.source, "weights": info.sha256 or info.location,
        "transform": transform_text, "split": split.fingerprint, "precision": ctx.precision,
        # random weights differ per seed, so their features do too
        "seed": ctx.seed if not info.pretrained else None,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


@torch.no_grad()
def extract_features(ctx: RunContext, split: Split, transform, description: str) -> torch.Tensor:
    backbone = ctx.backbone.eval()
    loader = eval_loader(split, transform, ctx.eval_batch_size, ctx.num_workers)
    chunks = []
    with progress_bars(ctx.console) as progress:
        bar = progress.bar(description, len(loader))
        for images, _ in loader:
            images = images.to(ctx.device, non_blocking=True)
            with ctx.autocast():
                chunks.append(backbone(images).float().cpu())
            bar.advance()
        bar.close()
    return torch.cat(chunks) if chunks else torch.zeros(0, backbone.feature_dim)


def cached_features(ctx: RunContext, split: Split) -> torch.Tensor:
    """[N, feature_dim] float32 features of `split` under the evaluation transform."""
    backbone = ctx.backbone
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std)
    key = feature_key(ctx, split, describe_transform(transform))
    path = ctx.cache_dir / "features" / f"{key}.pt"
    cached = load_cached(path, (len(split), backbone.feature_dim), ctx.warn)
    if cached is not None:
        ctx.log.info(f"features of {split.name} from cache {path.name}")
        return cached
    features = extract_features(ctx, split, transform, f"features {split.name}")
    save_cached(path, features)
    return features

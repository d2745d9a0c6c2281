"""Frozen-backbone features, computed once and cached on disk by (backbone, weights, transform, split)."""

from __future__ import annotations

import hashlib
import json

import torch

from bench.context import RunContext
from bench.data import Transform, chunks
from bench.distributed import world
from bench.progress_bars import progress_bars
from bench.tensor_cache import load_cached, save_cached


def feature_key(ctx: RunContext, split_name: str, transform_text: str) -> str:
    backbone = ctx.backbone
    info = backbone.weights_info
    identity = {
        "backbone": backbone.name, "weights_source": info.source, "weights": info.sha256 or info.location,
        "transform": transform_text, "split": getattr(ctx.dataset, split_name).fingerprint, "precision": ctx.precision,
        # random weights differ per seed, so their features do too
        "seed": ctx.seed if not info.pretrained else None,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


@torch.no_grad()
def extract_features(ctx: RunContext, split_name: str, transform: Transform) -> torch.Tensor:
    """Features of the split under `transform`; over several ranks each computes its share and all gather."""
    backbone = ctx.backbone.eval()
    batches = chunks(world().shard(range(len(getattr(ctx.dataset, split_name)))), ctx.eval_batch_size)
    features = []
    with progress_bars(ctx.console) as progress:
        bar = progress.bar(f"features {split_name}", len(batches))
        for images, _ in ctx.feed(split_name).batches(transform, batches, 0):
            with ctx.autocast():
                features.append(backbone(images).float().cpu())
            bar.advance()
        bar.close()
    return world().gather_rows(torch.cat(features) if features else torch.zeros(0, backbone.feature_dim))


def cached_features(ctx: RunContext, split_name: str) -> torch.Tensor:
    """[N, feature_dim] float32 features of a split under the evaluation transform."""
    backbone = ctx.backbone
    transform = ctx.transform()
    key = feature_key(ctx, split_name, ctx.feed(split_name).describe(transform))
    path = ctx.cache_dir / "features" / f"{key}.pt"
    cached = load_cached(path, (len(getattr(ctx.dataset, split_name)), backbone.feature_dim), ctx.warn)
    if cached is not None:
        ctx.log.info(f"features of {split_name} from cache {path.name}")
        return cached
    features = extract_features(ctx, split_name, transform)
    save_cached(path, features)
    return features

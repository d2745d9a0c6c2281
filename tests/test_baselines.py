"""Baselines at method level: one optimiser step trains only what the method says; CLIP paths and open_clip's
preprocessing; features cached per preprocessing; post-hoc LA."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from bench.features import cached_features
from bench.prepare import prepare_run
from bench.runner import RunSpec, execute
from bench.text import class_text_embeddings, tokenizer_for

FAST = {"image_size": "16", "batch_size": "16", "epochs": "1", "eval_batch_size": "64"}


def make_method(tmp_path, method: str, backbone: str = "vit_micro", **overrides):
    settings = {k: v for k, v in {**FAST, **overrides}.items() if v is not None}  # None: not declared here
    spec = RunSpec(method=method, dataset="digits_lt", backbone=backbone, allow_random_init=True,
                   overrides=settings, out=str(tmp_path), device="cpu")
    ctx = prepare_run(spec, Console(quiet=True))  # seeded with the spec's seed 0 before the backbone is built
    method = ctx.method_cls(ctx)
    method.setup()
    return method, ctx


def one_step(method):
    phase = method.phases()[0]
    model = method.model()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in phase.parameters:
        p.requires_grad_(True)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = phase.make_optimizer(phase.parameters)
    model.train()
    for step, batch in enumerate(phase.batches(0)):
        optimizer.zero_grad()
        phase.loss(batch).backward()
        optimizer.step()
        if step == 1:  # two steps: a zero-initialised adapter up-projection lets the rest move from step 2
            break
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    return changed, set(before)


def backbone_names(names):
    return {n for n in names if ".model." in f".{n}" and "prompts" not in n}


@pytest.mark.parametrize("method_name, backbone", [
    ("vpt_shallow", "vit_micro"), ("vpt_deep", "vit_micro"), ("adaptformer", "vit_micro"),
    ("bitfit", "vit_micro"), ("lift", "clip_micro"),
])
def test_one_step_changes_only_the_intended_parameters(tmp_path, method_name, backbone):
    method, _ = make_method(tmp_path, method_name, backbone)
    changed, names = one_step(method)
    frozen = backbone_names(names)
    assert frozen, "the backbone's parameters should be inside the model"
    if method_name == "bitfit":
        assert changed & frozen and all(n.endswith("bias") for n in changed & frozen)
        assert {n for n in frozen if n.endswith("bias")} <= changed
    else:
        assert not changed & frozen, f"backbone weights changed: {sorted(changed & frozen)[:3]}"
    assert any(n.startswith("head.") for n in changed)
    tuned = {"vpt_shallow": "prompts", "vpt_deep": "prompts", "adaptformer": "extra.", "lift": "extra."}
    if method_name in tuned:
        assert any(tuned[method_name] in n for n in changed)


def test_crt_trains_only_the_new_classifier_on_frozen_pretrained_features(tmp_path):
    method, _ = make_method(tmp_path, "crt", batch_size=None, epochs=None, wd_steps="1", repr_epochs="0")
    phases = method.phases()
    assert [p.name for p in phases] == ["classifier"]
    model = method.model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    phases[0].on_start()
    phases[0].fit_epoch(0)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"classifier.linear.weight", "classifier.linear.bias"}


def test_zero_shot_is_argmax_of_image_text_similarity(tmp_path):
    method, ctx = make_method(tmp_path, "zeroshot_clip", "clip_micro", templates="single", batch_size=None,
                              epochs=None)
    text = method.classifier.text
    assert text.shape == (10, ctx.backbone.feature_dim)
    assert torch.allclose(text.norm(dim=-1), torch.ones(10), atol=1e-5)
    clip = ctx.backbone.clip_model
    tokens = tokenizer_for(ctx.backbone)([f"a photo of a {name}." for name in ctx.dataset.class_names])
    direct = torch.nn.functional.normalize(clip.encode_text(tokens), dim=-1)
    assert torch.allclose(direct, text, atol=1e-5)
    logits, _ = method.predict("test")
    image = torch.nn.functional.normalize(method.features["test"], dim=-1)
    assert torch.equal(logits.argmax(1), (image @ text.T).argmax(1))


@pytest.mark.parametrize("method_name", ["zeroshot_clip", "clip_probe", "lift"])
def test_clip_towers_prepare_images_as_open_clip_does(tmp_path, method_name):
    """open_clip's own eval transform for the tower (its mean/std, bicubic, shortest side resized to the size,
    centre crop) gives the very images the harness's PIL path gives, and the uint8 path within 2 of 255."""
    import open_clip

    _, ctx = make_method(tmp_path, method_name, "clip_micro", **({"batch_size": None, "epochs": None}
                                                                  if method_name == "zeroshot_clip" else {}))
    transform = ctx.transform()
    config = open_clip.get_model_preprocess_cfg(ctx.backbone.clip_model)
    assert transform.preprocessing.mean == tuple(config.get("mean", open_clip.OPENAI_DATASET_MEAN))
    assert transform.preprocessing.std == tuple(config.get("std", open_clip.OPENAI_DATASET_STD))
    assert (transform.preprocessing.interpolation, transform.preprocessing.resize_mode) == ("bicubic", "shortest")
    assert ctx.transform(train=True).preprocessing == transform.preprocessing  # training resizes alike
    reference = open_clip.image_transform(16, is_train=False, **{k: v for k, v in config.items() if k != "size"})
    pixels = np.random.default_rng(0).integers(0, 256, (3, 24, 40, 3), dtype=np.uint8)  # not square
    theirs = torch.stack([reference(Image.fromarray(image)) for image in pixels])
    assert torch.equal(torch.stack([transform.pil()(Image.fromarray(image)) for image in pixels]), theirs)
    std = torch.tensor(transform.preprocessing.std).view(1, 3, 1, 1) * 255
    assert ((transform.batch(torch.from_numpy(pixels), None) - theirs) * std).abs().max() <= 2.01


def test_cached_features_are_keyed_by_the_preprocessing(tmp_path):
    """Features under another filter, resize mode, crop or normalisation are computed afresh, never reused."""
    method, ctx = make_method(tmp_path, "linear_probe", batch_size=None, epochs=None)
    folder = tmp_path / "cache" / "features"
    bicubic = method.features["test"]
    files = len(list(folder.glob("*.pt")))  # the three splits'
    ctx = dataclasses.replace(ctx, method_preprocessing={"interpolation": "bilinear"})
    bilinear = cached_features(ctx, "test")
    assert len(list(folder.glob("*.pt"))) == files + 1 and not torch.equal(bilinear, bicubic)
    for recipe in ({"resize_mode": "shortest"}, {"crop_fraction": 1.0}, {"mean": (0.4, 0.4, 0.4)}):
        ctx = dataclasses.replace(ctx, method_preprocessing=recipe)
        cached_features(ctx, "test")
    assert len(list(folder.glob("*.pt"))) == files + 4
    ctx = dataclasses.replace(ctx, method_preprocessing={"interpolation": "bilinear"})
    assert torch.equal(cached_features(ctx, "test"), bilinear)  # the same preprocessing: from the cache


def test_clip_probe_head_starts_from_text_embeddings(tmp_path):
    method, _ = make_method(tmp_path, "clip_probe", "clip_micro", templates="single")
    weight = method.head.cosine.weight
    assert torch.allclose(weight, class_text_embeddings(method.ctx, "single"), atol=1e-6)


def test_text_towers_with_hub_tokenizers_are_refused_offline():
    from types import SimpleNamespace

    from bench.errors import BenchError

    with pytest.raises(BenchError, match="needs the Hugging Face tokenizer timm/ViT-B-16-SigLIP, which is not "
                                         "loaded offline; use a CLIP tower with open_clip's own tokenizer"):
        tokenizer_for(SimpleNamespace(name="open_clip:ViT-B-16-SigLIP"))


def test_every_record_carries_trainable_parameters_time_and_posthoc(tmp_path):
    record = execute(RunSpec(method="adaptformer", dataset="digits_lt", backbone="vit_micro", allow_random_init=True,
                             overrides=FAST, out=str(tmp_path))).record
    assert record["trainable_params"] == 4 * (64 * 64 + 64 + 64 * 64 + 64) + 64 * 10 + 10
    assert record["train_time_s"] > 0
    assert 0.0 <= record["posthoc"]["tau"] <= 2.0
    assert set(record["posthoc"]["test"]) >= {"overall", "many", "medium", "few"}
    assert record["preprocessing"] == {"vit_micro": {"mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic",
                                                     "resize_mode": "squash", "crop_fraction": 224 / 256}}

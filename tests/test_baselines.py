"""Baselines at method level: one optimiser step trains only what the method says; CLIP paths; post-hoc LA."""

from __future__ import annotations

import logging

import pytest
import torch
from bench.datasets.base import load_dataset
from rich.console import Console

from bench.context import BackboneRequest, RunContext
from bench.runner import RunSpec, execute, split_options
from bench.seeding import seed_everything
from bench.text import class_text_embeddings, tokenizer_for

FAST = {"image_size": "16", "batch_size": "16", "epochs": "1", "eval_batch_size": "64"}


def make_method(tmp_path, method: str, backbone: str = "vit_micro", **overrides):
    settings = {k: v for k, v in {**FAST, **overrides}.items() if v is not None}  # None: not declared here
    spec = RunSpec(method=method, dataset="digits_lt", backbone=backbone, allow_random_init=True,
                   overrides=settings)
    method_cls, _, hparams, dataset_options = split_options(spec)
    seed_everything(0)
    ctx = RunContext(dataset=load_dataset("digits_lt", None, dataset_options), hparams=hparams,
                     backbone_request=BackboneRequest(backbone, None, False, True), device=torch.device("cpu"),
                     seed=0, run_dir=tmp_path / "run", cache_dir=tmp_path / "cache", console=Console(quiet=True),
                     log=logging.getLogger("test"))
    method = method_cls(ctx)
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


def test_clip_probe_head_starts_from_text_embeddings(tmp_path):
    method, _ = make_method(tmp_path, "clip_probe", "clip_micro", templates="single")
    weight = method.head.cosine.weight
    assert torch.allclose(weight, class_text_embeddings(method.ctx, "single"), atol=1e-6)


def test_every_record_carries_trainable_parameters_time_and_posthoc(tmp_path):
    record = execute(RunSpec(method="adaptformer", dataset="digits_lt", backbone="vit_micro", allow_random_init=True,
                             overrides=FAST, out=str(tmp_path))).record
    assert record["trainable_params"] == 4 * (64 * 64 + 64 + 64 * 64 + 64) + 64 * 10 + 10
    assert record["train_time_s"] > 0
    assert 0.0 <= record["posthoc"]["tau"] <= 2.0
    assert set(record["posthoc"]["test"]) >= {"overall", "many", "medium", "few"}

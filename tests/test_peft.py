"""PEFT modules over the tiny timm and open_clip backbones: exact at init; what one step may change."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import create_backbone
from bench.methods.peft import (
    CosineClassifier,
    PromptedBackbone,
    adapters_disabled,
    add_adapters,
    bitfit_parameters,
)

FAMILIES = ["vit_micro", "clip_micro"]


def count_trainable(*items) -> int:
    """Trainable elements of modules, parameters and lists of them, each parameter once."""
    params = {}
    for item in items:
        if isinstance(item, list):
            item = nn.ModuleList(item) if all(isinstance(i, nn.Module) for i in item) else nn.ParameterList(item)
        for p in item.parameters() if isinstance(item, nn.Module) else [item]:
            params[id(p)] = p
    return sum(p.numel() for p in params.values() if p.requires_grad)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Micro models run fastest on one thread (and do not stall when other processes hold the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_backbone(name, allow_random_init=True).eval()


def images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(module: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, p in module.named_parameters() if not torch.equal(p, before[name])}


def sgd_steps(forward, params: list[nn.Parameter], steps: int = 1, classes: int = 5) -> None:
    optimizer = torch.optim.SGD(params, lr=0.5, momentum=0.9)
    labels = torch.arange(3) % classes
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(forward(images()), labels).backward()
        optimizer.step()


# ------------------------------------------------------------------------------------------------ VPT


@pytest.mark.parametrize("name", FAMILIES)
def test_vpt_placement_between_cls_and_patches_gives_the_same_features(name):
    """VPT inserts its prompts between CLS and the patches; this code appends them after the patches. With no
    position embedding on prompts and their outputs dropped, the pooled features are the same."""
    model = PromptedBackbone(make(name), length=4, deep=True, init="xavier_uniform")
    backbone = model.backbone
    with torch.no_grad():
        appended = model(images())
        tokens = backbone.embed(images())
        count = tokens.shape[1]
        for index in range(backbone.num_blocks):  # VPT's own order: [CLS, prompts_i, patches]
            prompts = model.prompts[index].unsqueeze(0).expand(tokens.shape[0], -1, -1)
            out = backbone.run_block(index, torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], dim=1))
            tokens = torch.cat([out[:, :1], out[:, 1 + model.length:]], dim=1)
        assert tokens.shape[1] == count
        inserted = backbone.pool(tokens)
    torch.testing.assert_close(appended, inserted, rtol=1e-5, atol=1e-5)


def test_vpt_recipe_follows_its_reference(tmp_path):
    """xavier-uniform prompts in ±√(6/(3·p²+D)), a kaiming fan-out head, SGD at base lr × batch/256 with no
    decay on the head bias."""
    import math

    from test_baselines import make_method

    from bench.methods.tuned import VPT_BASE_LRS

    method, ctx = make_method(tmp_path, "vpt_deep", batch_size="64", epochs="1", lr="0.5", weight_decay="0.001")
    backbone = ctx.backbone
    bound = math.sqrt(6 / (3 * backbone.patch_size ** 2 + backbone.embed_dim))
    prompts = method.net.features.prompts
    assert prompts.abs().max() <= bound and prompts.abs().max() > 0.9 * bound
    head = method.net.head
    assert abs(head.weight.std().item() - math.sqrt(2 / head.out_features)) < 0.1 * math.sqrt(2 / head.out_features)
    phase = method.phases()[0]
    optimizer = phase.make_optimizer(phase.parameters)
    assert [group["lr"] for group in optimizer.param_groups] == [0.5 * 64 / 256] * 2
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.001, 0.0]
    assert optimizer.param_groups[1]["params"] == [head.bias]
    assert 0.1 in VPT_BASE_LRS and 50.0 in VPT_BASE_LRS


@pytest.mark.parametrize("name", FAMILIES)
def test_vpt_shapes_and_prompts_matter(name):
    backbone = make(name)
    x = images()
    plain = backbone(x)
    for deep in (True, False):
        model = PromptedBackbone(backbone, length=5, deep=deep)
        tokens = model.forward_features(x)
        assert tokens.shape == backbone.embed(x).shape  # prompt outputs dropped
        out = model(x)
        assert out.shape == plain.shape == (3, backbone.feature_dim)
        assert not torch.allclose(out, plain)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("deep", [True, False])
def test_vpt_zero_length_is_plain_backbone(name, deep):
    backbone = make(name)
    x = images()
    model = PromptedBackbone(backbone, length=0, deep=deep)
    assert torch.equal(model(x), backbone(x))


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_tokens_extra_forms(name):
    backbone = make(name)
    model = PromptedBackbone(backbone, length=4, deep=True)
    x = images()
    tokens = model.embed(x)
    shared = model.forward_tokens(tokens, extra=model.deep_prompt)
    batched = model.forward_tokens(tokens, extra=lambda i: model.prompts[i].expand(3, -1, -1))
    torch.testing.assert_close(shared, batched)
    # split run = whole run; None means no extra tokens for that block
    half = model.forward_tokens(tokens, 0, 1, model.deep_prompt)
    torch.testing.assert_close(model.forward_tokens(half, 1, None, model.deep_prompt), shared)
    none = model.forward_tokens(tokens, extra=lambda i: None)
    plain = tokens
    for i in range(backbone.num_blocks):
        plain = backbone.run_block(i, plain)
    assert torch.equal(none, plain)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("deep", [True, False])
def test_vpt_step_changes_only_prompts_and_head(name, deep):
    backbone = make(name)
    model = PromptedBackbone(backbone, length=3, deep=deep)
    head = nn.Linear(backbone.feature_dim, 5)
    before, prompts_before, head_before = snapshot(backbone), model.prompts.detach().clone(), snapshot(head)
    sgd_steps(lambda x: head(model(x)), model.prompt_parameters() + list(head.parameters()))
    assert changed(backbone, before) == set()
    assert all(p.grad is None for p in backbone.parameters())
    assert not torch.equal(model.prompts, prompts_before)
    assert changed(head, head_before) == {"weight", "bias"}


def test_vpt_parameter_counts():
    backbone = make("vit_micro")
    deep = PromptedBackbone(backbone, length=7, deep=True)
    assert count_trainable(deep) == 4 * 7 * 64  # backbone frozen
    assert count_trainable(deep.prompt_parameters()) == 4 * 7 * 64
    assert count_trainable(PromptedBackbone(backbone, length=7, deep=False)) == 7 * 64
    assert abs(deep.prompts.std().item() - 0.02) < 0.01


# ------------------------------------------------------------------------------------------- adapters


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("variant", ["norm", "residual"])
def test_adapters_zero_init_exact_and_switchable(name, variant):
    backbone = make(name)
    x = images()
    plain = backbone(x)
    keys = list(backbone.state_dict())
    adapters = add_adapters(backbone, bottleneck=8, input=variant)
    assert len(adapters) == backbone.num_blocks
    assert list(backbone.state_dict()) == keys  # adapters live outside the backbone
    assert torch.equal(backbone(x), plain)
    with torch.no_grad():
        for adapter in adapters:
            adapter.up.weight.normal_()
    assert not torch.allclose(backbone(x), plain)
    with pytest.raises(RuntimeError, match="already has adapters"):
        add_adapters(backbone)
    with adapters_disabled(adapters):  # the plain backbone inside, as LPT++'s query pass runs it
        assert torch.equal(backbone(x), plain)
    assert not torch.allclose(backbone(x), plain)


@pytest.mark.parametrize("variant", ["norm", "residual"])
def test_adapter_matches_adaptformer_formula_timm(variant):
    backbone = make("vit_micro")
    block = backbone.blocks[2]
    (adapter,) = add_adapters(backbone, bottleneck=16, scale=0.3, blocks=[2], input=variant)
    with torch.no_grad():
        adapter.up.weight.normal_()
        adapter.up.bias.normal_()
    x = torch.randn(2, 9, 64)
    x1 = x + block.attn(block.norm1(x))
    h = block.norm2(x1) if variant == "norm" else x1
    expected = x1 + block.mlp.fc2(block.mlp.act(block.mlp.fc1(block.norm2(x1)))) \
        + 0.3 * adapter.up(torch.relu(adapter.down(h)))
    torch.testing.assert_close(backbone.run_block(2, x), expected)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("learnable", [False, True])
def test_adapter_steps_change_only_adapters_and_head(name, learnable):
    backbone = make(name).requires_grad_(False)
    adapters = nn.ModuleList(add_adapters(backbone, bottleneck=8, learnable_scale=learnable))
    head = nn.Linear(backbone.feature_dim, 5)
    before, adapters_before, head_before = snapshot(backbone), snapshot(adapters), snapshot(head)
    # two steps: at init the up projection is zero, so down (and scale) get gradient only from step 2
    sgd_steps(lambda x: head(backbone(x)), list(adapters.parameters()) + list(head.parameters()), steps=2)
    assert changed(backbone, before) == set()
    assert changed(adapters, adapters_before) == set(adapters_before)  # every adapter tensor moved
    assert changed(head, head_before) == {"weight", "bias"}


def test_adapter_parameter_counts():
    r, per_block = 16, 64 * 16 + 16 + 16 * 64 + 64
    assert count_trainable(add_adapters(make("vit_micro"), bottleneck=r)) == 4 * per_block
    assert count_trainable(add_adapters(make("vit_micro"), bottleneck=r, learnable_scale=True)) == 4 * (per_block + 1)
    assert count_trainable(add_adapters(make("vit_micro"), bottleneck=r, blocks=[1, 3])) == 2 * per_block


# --------------------------------------------------------------------------------------------- BitFit


@pytest.mark.parametrize("name", FAMILIES)
def test_bitfit_step_changes_only_biases(name):
    backbone = make(name)
    biases = bitfit_parameters(backbone)
    bias_ids = {id(p) for p in biases}
    backbone.requires_grad_(False)
    for p in biases:
        p.requires_grad_(True)
    names = {n for n, p in backbone.named_parameters() if id(p) in bias_ids}
    assert names and all(n.endswith("bias") for n in names)
    if name == "clip_micro":
        assert any(n.endswith("in_proj_bias") for n in names)
    head = nn.Linear(backbone.feature_dim, 5)
    before = snapshot(backbone)
    sgd_steps(lambda x: head(backbone(x)), biases + list(head.parameters()))
    moved = changed(backbone, before)
    assert moved == names  # every bias moved; every non-bias weight bit-identical
    assert count_trainable(backbone) == sum(p.numel() for p in biases)


# ------------------------------------------------------------------------------------ cosine classifier


def test_cosine_classifier():
    torch.manual_seed(0)
    head = CosineClassifier(64, 10, dropout=0.1)
    assert head.weight.shape == (10, 64)
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(10))
    head.eval()
    logits = head(torch.randn(7, 64) * 50)
    assert logits.shape == (7, 10) and logits.abs().max() <= 1 + 1e-6
    text = torch.randn(10, 64) * 3
    seeded = CosineClassifier(64, 10, init_weight=text)
    torch.testing.assert_close(seeded.weight, F.normalize(text, dim=1))
    torch.testing.assert_close(seeded(text), F.normalize(text, dim=1) @ F.normalize(text, dim=1).t())
    assert torch.allclose(seeded(text).diagonal(), torch.ones(10))
    with pytest.raises(ValueError, match="expected"):
        CosineClassifier(64, 10, init_weight=text.t())
    assert count_trainable(head) == 640

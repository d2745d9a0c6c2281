"""The token-level view reproduces timm / open_clip exactly; weights load offline-first and safely."""

from __future__ import annotations

import hashlib
import pickle
import socket
import time

import open_clip  # noqa: F401  (imported at collection, so that no single test pays for it)
import pytest
import timm  # noqa: F401
import torch
from conftest import shared_path
from safetensors.torch import save_file

from bench.backbones import BACKBONES, create_backbone
from bench.errors import BenchError

IMAGES = torch.randn(2, 3, 32, 32)


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt is recorded and refused."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture
def hub_cache(monkeypatch, tmp_path):
    """An empty Hugging Face cache (and torch hub / ~/.cache/clip): nothing to find offline."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "hub"


def put_in_hub_cache(cache, repo: str, filename: str, state: dict) -> None:
    folder, commit = cache / f"models--{repo.replace('/', '--')}", "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    save_file(state, folder / "snapshots" / commit / filename)


def micro_state(name: str, image_size: int | None = None) -> dict[str, torch.Tensor]:
    backbone = create_backbone(name, allow_random_init=True, image_size=image_size)
    model = backbone.clip_model if backbone.family == "open_clip" else backbone.model
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_tensors(module: torch.nn.Module, state: dict, prefix: str = "") -> None:
    for key, value in module.state_dict().items():
        assert torch.equal(value, state[prefix + key]), key


def test_presets_are_described():
    names = BACKBONES.names()
    for name in ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224.augreg_in21k",
                 "vit_base_patch16_224", "open_clip:ViT-B-16-quickgelu@openai", "open_clip:ViT-B-32@openai",
                 "vit_micro", "clip_micro"):
        assert name in names and BACKBONES.get(name).description


def test_timm_token_path_equals_the_model_forward():
    backbone = create_backbone("vit_micro", allow_random_init=True).eval()
    model = backbone.model
    expected = model.forward_head(model.forward_features(IMAGES), pre_logits=True)
    assert torch.equal(backbone(IMAGES), expected)
    assert (backbone.feature_dim, backbone.embed_dim, backbone.num_blocks, backbone.image_size) == (64, 64, 4, 32)
    assert backbone.embed(IMAGES).shape == (2, 1 + 8 * 8, 64) and backbone.family == "timm"
    assert list(backbone.state_dict()) == [f"model.{k}" for k in model.state_dict()]  # blocks not duplicated


def test_open_clip_token_path_equals_encode_image():
    backbone = create_backbone("clip_micro", allow_random_init=True).eval()
    expected = backbone.clip_model.encode_image(IMAGES)
    assert torch.equal(backbone(IMAGES), expected)
    assert torch.equal(backbone(IMAGES), backbone.model(IMAGES))
    assert (backbone.feature_dim, backbone.embed_dim, backbone.num_blocks, backbone.image_size) == (32, 64, 2, 32)
    assert backbone.mean == pytest.approx((0.4815, 0.4578, 0.4082), abs=1e-4) and backbone.family == "open_clip"
    assert not any(name.startswith("transformer.") for name, _ in backbone.named_parameters())  # no text tower


@pytest.mark.parametrize("name", ["vit_micro", "clip_micro"])
def test_blocks_accept_appended_tokens(name):
    backbone = create_backbone(name, allow_random_init=True).eval()
    tokens = backbone.embed(IMAGES)
    count = tokens.shape[1]
    for extra in (5, 3, 0):  # a different number of prompt tokens before each block
        prompts = torch.randn(2, extra, backbone.embed_dim)
        out = backbone.run_block(0, torch.cat([tokens, prompts], dim=1))
        assert out.shape == (2, count + extra, backbone.embed_dim)
        tokens = out[:, :count]
    assert backbone.pool(tokens).shape == (2, backbone.feature_dim)


@pytest.mark.parametrize("name", ["vit_micro", "clip_micro"])
def test_smaller_input_resolution(name):
    backbone = create_backbone(name, allow_random_init=True, image_size=16).eval()
    assert backbone.image_size == 16
    assert backbone.embed(IMAGES[:, :, :16, :16]).shape == (2, 1 + 4 * 4, backbone.embed_dim)
    assert backbone(IMAGES[:, :, :16, :16]).shape == (2, backbone.feature_dim)


def test_timm_weights_round_trip_through_safetensors_and_prefixed_state_dict(tmp_path):
    state = micro_state("vit_micro")
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    torch.save({"model": state, "epoch": 3}, tmp_path / "w.pth")
    for file in ("w.safetensors", "w.pt", "w.pth"):
        loaded = create_backbone("vit_micro", weights=str(tmp_path / file))
        info = loaded.weights_info
        assert info.pretrained and info.source == "file" and info.location == str(tmp_path / file)
        assert info.sha256 == hashlib.sha256((tmp_path / file).read_bytes()).hexdigest()
        assert_same_tensors(loaded.model, state)
        assert all(p.requires_grad and not p.is_meta for p in loaded.parameters())
    smaller = create_backbone("vit_micro", weights=str(tmp_path / "w.safetensors"), image_size=16)
    assert smaller.model.pos_embed.shape == (1, 1 + 4 * 4, 64)  # resampled by timm's checkpoint filter
    assert torch.equal(smaller.model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def test_classification_head_is_ignored_and_other_extra_keys_refused(tmp_path):
    state = micro_state("vit_micro")
    save_file({**state, "head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10)}, tmp_path / "h.safetensors")
    assert create_backbone("vit_micro", weights=str(tmp_path / "h.safetensors")).weights_info.pretrained
    save_file({**state, "extra.weight": torch.zeros(3)}, tmp_path / "x.safetensors")
    with pytest.raises(BenchError, match=r"x.safetensors does not fit vit_micro: 1 unexpected keys \(extra.weight\)"):
        create_backbone("vit_micro", weights=str(tmp_path / "x.safetensors"))
    save_file({"cls_token": torch.zeros(1, 1, 64)}, tmp_path / "partial.safetensors")
    with pytest.raises(BenchError, match="does not fit vit_micro: .* missing keys .*pos_embed"):
        create_backbone("vit_micro", weights=str(tmp_path / "partial.safetensors"))
    save_file({**state, "cls_token": torch.zeros(1, 1, 32)}, tmp_path / "shape.safetensors")
    with pytest.raises(BenchError, match="shape.safetensors does not fit vit_micro: .*cls_token"):
        create_backbone("vit_micro", weights=str(tmp_path / "shape.safetensors"))


def test_open_clip_weights_round_trip_whole_model_and_image_tower(tmp_path):
    state = micro_state("clip_micro")
    save_file(state, tmp_path / "clip.safetensors")
    loaded = create_backbone("clip_micro", weights=str(tmp_path / "clip.safetensors"))
    assert loaded.weights_info.source == "file" and len(loaded.weights_info.sha256) == 64
    assert_same_tensors(loaded.clip_model, state)
    tower = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    torch.save({f"module.{k}": v for k, v in tower.items()}, tmp_path / "tower.pt")
    assert_same_tensors(create_backbone("clip_micro", weights=str(tmp_path / "tower.pt")).model, tower)
    smaller = create_backbone("clip_micro", weights=str(tmp_path / "clip.safetensors"), image_size=16)
    assert smaller.model.positional_embedding.shape == (1 + 4 * 4, 64)  # resized by open_clip's utility
    assert smaller(IMAGES[:, :, :16, :16]).shape == (2, 32)


class Payload:
    pass


def test_corrupt_missing_or_code_carrying_weights_are_refused(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(BenchError, match="cannot read weights file .*bad.safetensors"):
        create_backbone("vit_micro", weights=str(tmp_path / "bad.safetensors"))
    (tmp_path / "bad.pt").write_bytes(b"\x00not a zip")
    with pytest.raises(BenchError, match="bad.pt"):
        create_backbone("vit_micro", weights=str(tmp_path / "bad.pt"))
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"weight": Payload()}, protocol=2))
    with pytest.raises(BenchError, match="cannot read weights file .*evil.pt"):
        create_backbone("vit_micro", weights=str(tmp_path / "evil.pt"))
    with pytest.raises(BenchError, match="weights file not found: .*absent.safetensors"):
        create_backbone("vit_micro", weights=str(tmp_path / "absent.safetensors"))


def test_no_weights_fails_fast_offline_with_the_fixes(hub_cache, no_network):
    start = time.perf_counter()
    with pytest.raises(BenchError, match="timm/vit_tiny_patch16_224.* is missing; pass --weights FILE, "
                                         "populate the Hugging Face cache .* --allow-download"):
        create_backbone("vit_tiny_patch16_224")
    with pytest.raises(BenchError, match=r"timm/vit_base_patch32_clip_224.openai .*--allow-download"):
        create_backbone("open_clip:ViT-B-32@openai")
    with pytest.raises(BenchError, match="random-init test model: pass --weights FILE, or --random-init"):
        create_backbone("vit_micro")
    assert time.perf_counter() - start < 1.5 and no_network == []


def test_random_init_only_when_allowed(hub_cache, no_network):
    backbone = create_backbone("test_vit", allow_random_init=True)  # a tiny timm ViT with hub weights
    assert backbone.weights_info.pretrained is False and backbone.weights_info.source == "random"
    assert no_network == []


def test_weights_found_in_the_hub_cache_load_offline(hub_cache, no_network):
    state = micro_state("test_vit")
    put_in_hub_cache(hub_cache, "timm/test_vit.r160_in1k", "model.safetensors", state)
    backbone = create_backbone("test_vit", allow_download=True)  # a cache hit never goes online
    info = backbone.weights_info
    assert info.pretrained and info.source == "hf_cache" and info.location.endswith("model.safetensors")
    assert_same_tensors(backbone.model, state)
    assert no_network == []


def test_download_is_attempted_only_when_allowed(hub_cache, no_network, monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the hub backs off between retries
    with pytest.raises(BenchError, match="could not download weights for test_vit"):
        create_backbone("test_vit", allow_download=True)
    assert no_network  # it did try, and only here


def test_unknown_backbones_and_tags_suggest_names():
    with pytest.raises(BenchError, match="unknown backbone 'vit_tiny_patch16_22': did you mean vit_tiny_patch16_224"):
        create_backbone("vit_tiny_patch16_22")
    with pytest.raises(BenchError, match="unknown open_clip model .*did you mean ViT-B-16-quickgelu"):
        create_backbone("open_clip:ViT-B-16-quickgelux")
    with pytest.raises(BenchError, match="no pretrained tag 'opnai': did you mean openai"):
        create_backbone("open_clip:ViT-B-16@opnai")
    with pytest.raises(BenchError, match="no pretrained tag 'augreg_in21': did you mean .*augreg_in21k"):
        create_backbone("vit_base_patch16_224.augreg_in21")
    with pytest.raises(BenchError, match="not a timm VisionTransformer"):
        create_backbone("resnet18", allow_random_init=True)


def test_shared_vit_tiny_loads_at_native_and_reduced_resolution():
    weights = str(shared_path("assets/vit_tiny_patch16_224.safetensors"))
    backbone = create_backbone("vit_tiny_patch16_224", weights=weights).eval()
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    assert backbone.feature_dim == 192 and backbone.image_size == 224 and backbone.num_blocks == 12
    assert backbone.weights_info.sha256 == "dedc2c9174c627181e32b9daa5cdc505401f69d35b28e58b4cae503ac49c64b7"
    small = create_backbone("vit_tiny_patch16_224", weights=weights, image_size=112).eval()
    assert small.image_size == 112 and small.model.pos_embed.shape == (1, 1 + 7 * 7, 192)
    with torch.no_grad():
        assert small(torch.randn(1, 3, 112, 112)).shape == (1, 192)

"""The token-level view reproduces timm / open_clip exactly; weights load offline-first and safely."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import shared_path
from safetensors.torch import save_file

from bench.backbones import create_backbone
from bench.errors import BenchError

IMAGES = torch.randn(2, 3, 32, 32)


def test_timm_token_path_equals_the_model_forward():
    backbone = create_backbone("vit_micro", allow_random_init=True).eval()
    model = backbone.model
    expected = model.forward_head(model.forward_features(IMAGES), pre_logits=True)
    assert torch.equal(backbone(IMAGES), expected)
    assert backbone.feature_dim == backbone.embed_dim == 64 and backbone.num_blocks == 4


def test_open_clip_token_path_equals_encode_image():
    backbone = create_backbone("clip_micro", allow_random_init=True).eval()
    expected = backbone.clip_model.encode_image(IMAGES)
    assert torch.allclose(backbone(IMAGES), expected, atol=1e-6)
    assert backbone.feature_dim == 32 and backbone.embed_dim == 64
    assert not any(name.startswith("transformer.") for name, _ in backbone.named_parameters())  # no text tower


@pytest.mark.parametrize("name", ["vit_micro", "clip_micro"])
def test_blocks_accept_appended_tokens(name):
    backbone = create_backbone(name, allow_random_init=True).eval()
    tokens = backbone.embed(IMAGES)
    prompts = torch.zeros(2, 5, backbone.embed_dim)
    out = backbone.run_block(0, torch.cat([tokens, prompts], dim=1))
    assert out.shape == (2, tokens.shape[1] + 5, backbone.embed_dim)


def test_weights_round_trip_through_safetensors_and_prefixed_state_dict(tmp_path):
    source = create_backbone("vit_micro", allow_random_init=True)
    state = {k: v.clone() for k, v in source.model.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    for file in ("w.safetensors", "w.pt"):
        loaded = create_backbone("vit_micro", weights=str(tmp_path / file))
        assert loaded.weights_info.pretrained and loaded.weights_info.source == "file"
        assert len(loaded.weights_info.sha256) == 64
        for key, value in loaded.model.state_dict().items():
            assert torch.equal(value, state[key]), key


class Payload:
    pass


def test_corrupt_or_code_carrying_weights_are_refused(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(BenchError, match="bad.safetensors"):
        create_backbone("vit_micro", weights=str(tmp_path / "bad.safetensors"))
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"weight": Payload()}))
    with pytest.raises(BenchError, match="evil.pt"):
        create_backbone("vit_micro", weights=str(tmp_path / "evil.pt"))


def test_mismatched_weights_name_the_problem(tmp_path):
    save_file({"cls_token": torch.zeros(1, 1, 64)}, tmp_path / "partial.safetensors")
    with pytest.raises(BenchError, match="does not fit vit_micro: missing"):
        create_backbone("vit_micro", weights=str(tmp_path / "partial.safetensors"))


def test_no_weights_fails_unless_random_init_is_allowed(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to find offline
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(BenchError, match="--weights FILE"):
        create_backbone("vit_tiny_patch16_224")
    with pytest.raises(BenchError, match="--random-init"):
        create_backbone("vit_micro")
    backbone = create_backbone("vit_tiny_patch16_224", allow_random_init=True, image_size=32)
    assert backbone.weights_info.pretrained is False and backbone.weights_info.source == "random"


def test_unknown_backbone_suggests_names():
    with pytest.raises(BenchError, match="did you mean"):
        create_backbone("vit_tiny_patch16_22")
    with pytest.raises(BenchError, match="unknown open_clip model"):
        create_backbone("open_clip:ViT-B-16-quickgelux")


def test_shared_vit_tiny_loads_at_native_and_reduced_resolution():
    weights = str(shared_path("assets/vit_tiny_patch16_224.safetensors"))
    backbone = create_backbone("vit_tiny_patch16_224", weights=weights)
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    assert backbone.feature_dim == 192 and backbone.image_size == 224
    small = create_backbone("vit_tiny_patch16_224", weights=weights, image_size=112)
    assert small.image_size == 112
    assert small.model.pos_embed.shape[1] == 1 + 7 * 7
    assert small(torch.randn(1, 3, 112, 112)).shape == (1, 192)

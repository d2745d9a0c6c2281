"""Vision transformers from timm and open_clip behind one token-level view, with offline-first weights.

The view exposes the real model's own pieces (patch embedding, blocks, final norm): prompt and adapter
methods insert tokens or modules between blocks without re-implementing a ViT.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bench.errors import BenchError
from bench.registry import Registry, nearest

OPEN_CLIP_PREFIX = "open_clip:"


@dataclass(frozen=True)
class WeightsInfo:
    pretrained: bool
    source: str  # 'file' | 'hf_cache' | 'download' | 'random'
    location: str
    sha256: str | None = None


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # 'timm' | 'open_clip'
    arch: str
    description: str
    tag: str | None = None  # open_clip pretrained tag
    micro: dict = field(default_factory=dict)  # config of a tiny random-init model; empty for real ones


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def _preset(name: str, family: str, arch: str, description: str, tag: str | None = None, **micro) -> None:
    BACKBONES.add(name, BackboneSpec(name, family, arch, description, tag, micro))


_preset("vit_tiny_patch16_224", "timm", "vit_tiny_patch16_224", "ViT-Ti/16 (5.5 M), ImageNet; CPU-friendly")
_preset("vit_small_patch16_224", "timm", "vit_small_patch16_224", "ViT-S/16 (22 M), ImageNet")
_preset("vit_base_patch16_224.augreg_in21k", "timm", "vit_base_patch16_224.augreg_in21k",
        "ViT-B/16 (86 M), ImageNet-21k: LPT's backbone")
_preset("vit_base_patch16_224", "timm", "vit_base_patch16_224", "ViT-B/16, ImageNet-21k fine-tuned on ImageNet-1k")
_preset("open_clip:ViT-B-16-quickgelu@openai", "open_clip", "ViT-B-16-quickgelu",
        "CLIP ViT-B/16 image tower, OpenAI weights (quickgelu matches them; plain ViT-B-16 does not)", "openai")
_preset("open_clip:ViT-B-32@openai", "open_clip", "ViT-B-32-quickgelu", "CLIP ViT-B/32 image tower, OpenAI weights",
        "openai")
_preset("vit_micro", "timm", "vit_micro", "tiny random-init ViT (4 blocks, width 64, 32 px) for CPU tests",
        img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4)
_preset("clip_micro", "open_clip", "clip_micro", "tiny random-init CLIP (2 blocks, width 64, 32 px) for CPU tests",
        image_size=32, patch_size=4, width=64, layers=2, embed_dim=32)


def parse_backbone(name: str) -> BackboneSpec:
    if name in BACKBONES.names():
        return BACKBONES.get(name)
    if name.startswith(OPEN_CLIP_PREFIX):
        import open_clip

        arch, _, tag = name[len(OPEN_CLIP_PREFIX):].partition("@")
        if arch not in open_clip.list_models():
            raise BenchError(f"unknown open_clip model {arch!r}: {nearest(arch, open_clip.list_models())}")
        return BackboneSpec(name, "open_clip", arch, "open_clip model", tag or None)
    import timm

    if not timm.is_model(name):
        vocabulary = BACKBONES.names() + timm.list_models("vit_*")
        raise BenchError(f"unknown backbone {name!r}: {nearest(name, vocabulary)} (see `bench list backbones`)")
    return BackboneSpec(name, "timm", name, "timm model")


class TokenBackbone(nn.Module):
    """embed(x) → tokens [B, 1+N, D]; run_block(i, tokens) for each block; pool(tokens) → [B, feature_dim].

    Blocks accept any number of tokens, so prompts can be appended after the patch tokens and dropped again.
    For open_clip, `clip_model` holds the whole CLIP model (text tower included) outside this module's
    parameters, for methods that need class-name embeddings.
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module, weights_info: WeightsInfo, image_size: int,
                 mean, std, clip_model: nn.Module | None = None):
        super().__init__()
        self.name, self.family, self.weights_info = spec.name, spec.family, weights_info
        self.model = model
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.__dict__["clip_model"] = clip_model  # not a submodule: its text tower is not the backbone's
        if spec.family == "timm":
            self.blocks = model.blocks
            self.embed_dim = self.feature_dim = model.embed_dim
        else:
            self.blocks = model.transformer.resblocks
            self.embed_dim = model.transformer.width
            self.feature_dim = model.proj.shape[1] if model.proj is not None else self.embed_dim
        self.num_blocks = len(self.blocks)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model
        if self.family == "timm":
            return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
        return model._embeds(images)

    def run_block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        block = self.blocks[index]
        if self.family == "open_clip" and not self.model.transformer.batch_first:
            return block(tokens.transpose(0, 1)).transpose(0, 1)
        return block(tokens)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        model = self.model
        if self.family == "timm":
            return model.forward_head(model.norm(tokens), pre_logits=True)
        pooled, _ = model._pool(tokens)
        return pooled @ model.proj if model.proj is not None else pooled

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(images)
        for index in range(self.num_blocks):
            tokens = self.run_block(index, tokens)
        return self.pool(tokens)


@contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Force huggingface_hub offline for one call (it reads HF_HUB_OFFLINE only at import)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline or before
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors of a .safetensors file or a plain state dict (never unpickling code), and the file's sha256."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BenchError(f"weights file not found: {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (any parse failure means the same thing to the user)
        reason = str(error).splitlines()[0][:160]
        raise BenchError(f"cannot read weights file {path}: {reason}; expected .safetensors or a tensor "
                         "state dict") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchError(f"weights file {path} holds no tensor state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}, digest


def _create_timm(spec: BackboneSpec, image_size: int | None, pretrained: bool) -> nn.Module:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if spec.micro:
        config = dict(spec.micro, img_size=image_size or spec.micro["img_size"])
        return VisionTransformer(num_classes=0, **config)
    kwargs = {"img_size": image_size} if image_size else {}
    model = timm.create_model(spec.arch, pretrained=pretrained, num_classes=0, **kwargs)
    if not isinstance(model, VisionTransformer):
        raise BenchError(f"backbone {spec.name} is not a timm VisionTransformer; prompt methods need a ViT")
    return model


def _create_open_clip(spec: BackboneSpec, image_size: int | None, pretrained: str | None) -> nn.Module:
    import open_clip

    if spec.micro:
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        micro = spec.micro
        vision = CLIPVisionCfg(layers=micro["layers"], width=micro["width"], patch_size=micro["patch_size"],
                               image_size=image_size or micro["image_size"], head_width=32)
        text = CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)
        return CLIP(embed_dim=micro["embed_dim"], vision_cfg=vision, text_cfg=text)
    kwargs = {"force_image_size": image_size} if image_size else {}
    return open_clip.create_model(spec.arch, pretrained=pretrained, **kwargs)


def _load_file_into(model: nn.Module, spec: BackboneSpec, path: str) -> str:
    state, digest = read_state_dict(path)
    if spec.family == "timm":
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, model)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    else:
        from open_clip.model import resize_pos_embed

        vision_only = not any(k.startswith("visual.") for k in state)
        if vision_only:  # the text tower keeps its own initialisation
            state = {f"visual.{k}": v for k, v in state.items()}
        resize_pos_embed(state, model)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys
               if spec.family == "timm" or not vision_only or k.startswith("visual.")]
    if missing or result.unexpected_keys:
        problem = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise BenchError(f"weights file {path} does not fit {spec.name}: {problem}; pick the matching --backbone")
    return digest


def create_backbone(name: str, *, weights: str | None = None, allow_download: bool = False,
                    allow_random_init: bool = False, image_size: int | None = None) -> TokenBackbone:
    spec = parse_backbone(name)
    create = _create_timm if spec.family == "timm" else _create_open_clip
    if weights:
        model = create(spec, image_size, False if spec.family == "timm" else None)
        digest = _load_file_into(model, spec, weights)
        info = WeightsInfo(True, "file", str(Path(weights).expanduser().resolve()), digest)
    elif spec.micro or (spec.family == "open_clip" and not spec.tag):
        if not allow_random_init:
            raise BenchError(f"backbone {name} has no pretrained weights here: pass --weights FILE or allow "
                             "random weights with --random-init")
        model, info = create(spec, image_size, False if spec.family == "timm" else None), WeightsInfo(
            False, "random", "random init")
    else:
        model, info = _pretrained(spec, create, image_size, allow_download, allow_random_init)
    if spec.family == "timm":
        config = getattr(model, "pretrained_cfg", {})
        view = TokenBackbone(spec, model, info, model.patch_embed.img_size[0], config.get("mean", (0.5,) * 3),
                             config.get("std", (0.5,) * 3))
    else:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        visual = model.visual
        size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        view = TokenBackbone(spec, visual, info, size, getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN,
                             getattr(visual, "image_std", None) or OPENAI_DATASET_STD, clip_model=model)
    return view


def _pretrained(spec: BackboneSpec, create, image_size, allow_download: bool, allow_random_init: bool):
    tag = True if spec.family == "timm" else spec.tag
    try:
        with hub_offline(True):
            return create(spec, image_size, tag), WeightsInfo(True, "hf_cache", spec.name)
    except Exception as offline_error:  # noqa: BLE001  (timm/open_clip raise many kinds for a cache miss)
        if allow_download:
            try:
                with hub_offline(False):
                    return create(spec, image_size, tag), WeightsInfo(True, "download", spec.name)
            except Exception as error:  # noqa: BLE001
                raise BenchError(f"could not download weights for {spec.name}: {str(error).splitlines()[0][:200]}")
        if allow_random_init:
            return create(spec, image_size, False if spec.family == "timm" else None), WeightsInfo(
                False, "random", "random init (no weights found)")
        reason = str(offline_error).splitlines()[0][:120]
        raise BenchError(f"no weights for {spec.name} offline ({reason}): pass --weights FILE, populate the "
                         "Hugging Face cache (HF_HOME), or allow --allow-download; --random-init runs without")

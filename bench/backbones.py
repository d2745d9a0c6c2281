"""Vision transformers from timm and open_clip behind one token-level view, with offline-first weights.

The view exposes the real model's own pieces (patch embedding, blocks, final norm): prompt and adapter
methods insert tokens or modules between blocks without re-implementing a ViT.

Weights resolve in this order, and `weights_info` records which one was used: explicit file → weights shipped
inside this package (`bench/pretrained`, each with its provenance file; the micro towers of the embedded
default) → the library's local cache (Hugging Face hub cache, or torch hub / ~/.cache/clip for url-only
weights) → download, only with allow_download → random init, only with allow_random_init. A file found in the
cache is handed to timm / open_clip by its path, so they make no network lookup for it.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bench.atomic_io import file_sha256
from bench.data import RESIZE_MODES, Preprocessing
from bench.errors import BenchError, first_line, shorten
from bench.registry import Registry, nearest

OPEN_CLIP_PREFIX = "open_clip:"
MICRO_CONFIGS = Path(__file__).with_name("open_clip_configs")  # open_clip model configs of the micro towers
SHIPPED = Path(__file__).with_name("pretrained")  # weights shipped with the package: NAME.safetensors + NAME.json
PRETRAIN_SCRIPT = "scripts/pretrain_micro_tower.py"
WEIGHT_FIXES = ("pass --weights FILE, populate the Hugging Face cache (HF_HOME) on a connected machine, "
                "or pass --allow-download")


@dataclass(frozen=True)
class WeightsInfo:
    pretrained: bool
    source: str  # 'file' | 'shipped' | 'hf_cache' | 'download' | 'random'
    location: str
    sha256: str | None = None
    provenance: dict | None = None  # of shipped weights: how they were made (their .json beside them)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # 'timm' | 'open_clip'
    arch: str  # timm name (with tag) or open_clip model name
    description: str
    tag: str | None = None  # open_clip pretrained tag
    micro: dict = field(default_factory=dict)  # config of a tiny model built here; empty for library ones
    shipped: str | None = None  # a micro model's weights shipped in SHIPPED (file stem); None: random init


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def _preset(name: str, family: str, arch: str, description: str, tag: str | None = None,
            shipped: str | None = None, **micro) -> None:
    BACKBONES.add(name, BackboneSpec(name, family, arch, description, tag, micro, shipped))


_preset("vit_tiny_patch16_224", "timm", "vit_tiny_patch16_224", "ViT-Ti/16 (5.5 M), ImageNet; CPU-friendly")
_preset("vit_small_patch16_224", "timm", "vit_small_patch16_224", "ViT-S/16 (22 M), ImageNet")
_preset("vit_base_patch16_224.augreg_in21k", "timm", "vit_base_patch16_224.augreg_in21k",
        "ViT-B/16 (86 M), ImageNet-21k: LPT's backbone")
_preset("vit_base_patch16_224", "timm", "vit_base_patch16_224", "ViT-B/16, ImageNet-21k fine-tuned on ImageNet-1k")
_preset("open_clip:ViT-B-16-quickgelu@openai", "open_clip", "ViT-B-16-quickgelu",
        "CLIP ViT-B/16 image tower, OpenAI weights (quickgelu matches them; plain ViT-B-16 does not)", "openai")
_preset("open_clip:ViT-B-32@openai", "open_clip", "ViT-B-32-quickgelu", "CLIP ViT-B/32 image tower, OpenAI weights",
        "openai")
VIT_MICRO = {"patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4}
_preset("vit_micro", "timm", "vit_micro", "tiny random-init ViT (4 blocks, width 64, 32 px) for CPU tests",
        img_size=32, **VIT_MICRO)
_preset("vit_micro.fmnist", "timm", "vit_micro", "vit_micro pretrained on Fashion-MNIST at 16 px, shipped with "
        f"the package (the embedded default's tower; {PRETRAIN_SCRIPT})", shipped="vit_micro_fmnist",
        img_size=16, **VIT_MICRO)
_preset("clip_micro", "open_clip", "clip_micro", "tiny random-init CLIP (2 blocks, width 64, 32 px): the CLIP tower of "
        "CLIP methods on the embedded default and in tests (no CLIP weights are shipped)",
        **json.loads((MICRO_CONFIGS / "clip_micro.json").read_text()))


@functools.cache
def import_open_clip():
    """open_clip, with the micro towers' configs registered, so that its factory and tokenizer know them."""
    import open_clip

    open_clip.add_model_config(MICRO_CONFIGS)
    return open_clip


def _suggest(name: str, vocabulary: list[str]) -> str:
    return nearest(name, vocabulary) if vocabulary else "it has none"


def parse_backbone(name: str) -> BackboneSpec:
    """A preset, any timm ViT name (optionally `.tag`), or `open_clip:ARCH[@TAG]`."""
    if name in BACKBONES.names():
        return BACKBONES.get(name)
    if name.startswith(OPEN_CLIP_PREFIX):
        open_clip = import_open_clip()
        arch, _, tag = name[len(OPEN_CLIP_PREFIX):].partition("@")
        if arch not in open_clip.list_models():
            raise BenchError(f"unknown open_clip model {arch!r}: {nearest(arch, open_clip.list_models())}")
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if tag and tag not in tags:
            raise BenchError(f"open_clip model {arch} has no pretrained tag {tag!r}: {_suggest(tag, tags)}")
        return BackboneSpec(name, "open_clip", arch, "open_clip model", tag or None)
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        vocabulary = BACKBONES.names() + timm.list_models("vit_*")
        raise BenchError(f"unknown backbone {name!r}: {nearest(name, vocabulary)} (see `bench list backbones`)")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        raise BenchError(f"timm model {arch} has no pretrained tag {tag!r}: "
                         f"{_suggest(name, timm.list_pretrained(f'{arch}.*'))}")
    return BackboneSpec(name, "timm", name, "timm model")


class TokenBackbone(nn.Module):
    """embed(x) → tokens [B, P+N, D] (P = num_prefix_tokens, 1 = CLS for plain ViTs); run_block(i, tokens) for
    each block, batch-first; pool(tokens) → [B, feature_dim]; forward = pool ∘ blocks ∘ embed.

    Blocks accept any number of tokens, so prompts can be appended after the patch tokens and dropped again.
    `model` is the real timm VisionTransformer or open_clip image tower; `blocks` is its own block list (a
    view, not re-registered, so state_dict keys are the model's). For open_clip, `clip_model` holds the whole
    CLIP model (text tower, logit_scale) outside this module's parameters, for class-name embeddings.
    `preprocessing` is what the tower's library says its images need.
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module, weights_info: WeightsInfo,
                 preprocessing: Preprocessing, clip_model: nn.Module | None = None):
        super().__init__()
        self.name, self.family, self.weights_info = spec.name, spec.family, weights_info
        self.model = model
        self.preprocessing = preprocessing
        self.__dict__["clip_model"] = clip_model  # not a submodule: its text tower is not the backbone's
        if spec.family == "timm":
            self.embed_dim = model.embed_dim
            self.feature_dim = getattr(model, "num_features", model.embed_dim)
            self.image_size = int(model.patch_embed.img_size[0])
            self.patch_size = int(model.patch_embed.patch_size[0])
            self.num_prefix_tokens = model.num_prefix_tokens
        else:
            self.embed_dim = model.transformer.width
            self.feature_dim = model.proj.shape[1] if model.proj is not None else self.embed_dim
            size = model.image_size
            self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
            self.patch_size = int(model.conv1.kernel_size[0])
            self.num_prefix_tokens = 1
        self.num_blocks = len(self.blocks)

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocessing.std

    @property
    def blocks(self) -> nn.Module:
        return self.model.blocks if self.family == "timm" else self.model.transformer.resblocks

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model
        if self.family == "timm":
            return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
        return model._embeds(images)  # conv1, class token, positional embedding, patch dropout, ln_pre

    def run_block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        block = self.blocks[index]
        if self.family == "open_clip" and not getattr(self.model.transformer, "batch_first", True):
            return block(tokens.transpose(0, 1)).transpose(0, 1)
        return block(tokens)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        model = self.model
        if self.family == "timm":
            return model.forward_head(model.norm(tokens), pre_logits=True)
        pooled, _ = model._pool(tokens)  # ln_post and CLS pooling, in the tower's own order
        return pooled @ model.proj if model.proj is not None else pooled

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(images)
        for index in range(self.num_blocks):
            tokens = self.run_block(index, tokens)
        return self.pool(tokens)


RUN_CHECKPOINT_KEYS = {"phase", "next_epoch", "model", "optimizer"}  # what bench.engine saves as last.pt


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a plain state dict; torch.load runs with weights_only, never code."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (any parse failure means the same thing to the user)
        raise BenchError(f"cannot read weights file {path}: {first_line(error, 160)}; expected .safetensors "
                         "or a tensor state dict (pickled code is never loaded)") from None
    if isinstance(state, dict) and RUN_CHECKPOINT_KEYS <= state.keys():
        run = path.parents[1] if path.parent.name == "checkpoints" else path.parent
        raise BenchError(f"{path} is a checkpoint of a run of this harness (training state, not weights); "
                         f"continue that run with `bench run --resume {run}`, or see its results with "
                         f"`bench show {run}`")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchError(f"weights file {path} holds no tensor state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _check_fit(model: nn.Module, state: dict, spec: BackboneSpec, path: Path, assign: bool = False,
               ignore_missing=lambda key: False) -> None:
    try:
        result = model.load_state_dict(state, strict=False, assign=assign)
    except RuntimeError as error:  # shape mismatches
        reason = shorten(str(error), 240)
        raise BenchError(f"weights file {path} does not fit {spec.name}: {reason}") from None
    missing = [k for k in result.missing_keys if not ignore_missing(k)]
    for problem, keys in (("missing", missing), ("unexpected", result.unexpected_keys)):
        if keys:
            shown = ", ".join(keys[:4]) + (", …" if len(keys) > 4 else "")
            raise BenchError(f"weights file {path} does not fit {spec.name}: {len(keys)} {problem} keys "
                             f"({shown}); pick the matching --backbone")


def _create_timm(spec: BackboneSpec, image_size: int | None, pretrained: bool, file: str | None = None
                 ) -> nn.Module:
    """`pretrained` with a `file`: the library loads that local file; without: it fetches its weights."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if spec.micro:
        return VisionTransformer(num_classes=0, **dict(spec.micro, img_size=image_size or spec.micro["img_size"]))
    kwargs = {"img_size": image_size} if image_size else {}
    if file:
        kwargs["pretrained_cfg_overlay"] = {"file": file}
    model = timm.create_model(spec.arch, pretrained=pretrained, num_classes=0, **kwargs)
    if not isinstance(model, VisionTransformer):
        raise BenchError(f"backbone {spec.name} is not a timm VisionTransformer; prompt methods need a ViT")
    return model


def _create_open_clip(spec: BackboneSpec, image_size: int | None, pretrained: bool, file: str | None = None
                      ) -> nn.Module:
    """As `_create_timm`; the tag's normalisation and activation apply whatever the weights' source."""
    import open_clip

    if spec.micro:  # its open_clip config (bench/open_clip_configs), without the factory's weight lookup
        from open_clip.model import CLIP

        vision = spec.micro["vision_cfg"]
        return CLIP(**dict(spec.micro, vision_cfg=dict(vision, image_size=image_size or vision["image_size"])))
    tag_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag) if spec.tag else {}
    kwargs = {"force_image_size": image_size} if image_size else {}
    return open_clip.create_model(spec.arch, pretrained=file or (spec.tag if pretrained else None),
                                  force_quick_gelu=bool(tag_cfg.get("quick_gelu")),
                                  force_preprocess_cfg=tag_cfg, **kwargs)


def _create(spec: BackboneSpec, image_size: int | None, pretrained: bool, file: str | None = None
            ) -> nn.Module:
    return (_create_timm if spec.family == "timm" else _create_open_clip)(spec, image_size, pretrained, file)


def _load_file(spec: BackboneSpec, image_size: int | None, path: Path, ignore_prefixes: tuple[str, ...] = ()
               ) -> nn.Module:
    if spec.family == "timm" and path.suffix == ".npz":  # original big_vision / augreg release format
        model = _create_timm(spec, image_size, False)
        try:
            model.load_pretrained(str(path))
        except Exception as error:  # noqa: BLE001
            raise BenchError(f"weights file {path} does not fit {spec.name}: {first_line(error)}") from None
        return model
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(ignore_prefixes)}
    if spec.family == "timm":
        from timm.models.vision_transformer import checkpoint_filter_fn

        with torch.device("meta"):  # every tensor comes from the file: skip the (slow) random init
            model = _create_timm(spec, image_size, False)
        state = checkpoint_filter_fn(state, model)  # resamples position embeddings to this image size
        state = {k: v for k, v in state.items() if not k.startswith("head.")}  # classifier: not the backbone's
        shapes = model.state_dict()
        state = {k: v.to(shapes[k].dtype) if k in shapes else v for k, v in state.items()}
        _check_fit(model, state, spec, path, assign=True)
        if not any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
            return model
        model = _create_timm(spec, image_size, False)  # non-persistent buffers need a real build
        _check_fit(model, state, spec, path)
        return model
    from open_clip.model import resize_pos_embed

    model = _create_open_clip(spec, image_size, False)
    vision_only = not any(k.startswith("visual.") for k in state)
    if vision_only:  # an image-tower file: the text tower keeps its own initialisation
        state = {f"visual.{k}": v for k, v in state.items()}
    resize_pos_embed(state, model)
    _check_fit(model, state, spec, path, ignore_missing=lambda k: vision_only and not k.startswith("visual."))
    return model


def _safe_alternatives(filename: str) -> list[str]:
    """The safetensors names timm and open_clip try before a .bin on the hub."""
    special = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
    if filename in special:
        return [special[filename]]
    return [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []


def library_weights(spec: BackboneSpec) -> tuple[str | None, str]:
    """(local path of the weights timm / open_clip would load, or None; a description of what they look for)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if spec.family == "timm":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(spec.arch)
        hub_id, hub_file, url = (cfg.hf_hub_id, cfg.hf_hub_filename, cfg.url) if cfg else (None, None, None)
        url_dir = Path(torch.hub.get_dir()) / "checkpoints"
    else:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag)
        hub_id, hub_file = os.path.split(cfg.get("hf_hub", "")) if cfg.get("hf_hub") else (None, None)
        url, url_dir = cfg.get("url"), Path("~/.cache/clip").expanduser()
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        hub_file = hub_file or ("pytorch_model.bin" if spec.family == "timm" else "open_clip_pytorch_model.bin")
        files = _safe_alternatives(hub_file) + [hub_file]
        for file in files:
            found = try_to_load_from_cache(repo, file, cache_dir=constants.HF_HUB_CACHE, revision=revision or None)
            if isinstance(found, str):
                return found, f"{repo}/{file}"
        return None, f"{repo} ({' or '.join(files)}) in the Hugging Face cache {constants.HF_HUB_CACHE}"
    if url:
        target = url_dir / os.path.basename(url)
        return (str(target) if target.is_file() else None), f"{target} (from {url})"
    return None, f"pretrained weights for {spec.name} (the library registers none)"


RANDOM_INIT_FIX = "--random-init"


def _missing_offline(spec: BackboneSpec, wanted: str, random_init_fix: str = RANDOM_INIT_FIX,
                     fixes: str = WEIGHT_FIXES) -> BenchError:
    return BenchError(f"no pretrained weights for {spec.name} offline: {wanted} is missing; {fixes} "
                      f"(or {random_init_fix} to run without)")


def _random_only(spec: BackboneSpec, random_init_fix: str = RANDOM_INIT_FIX) -> BenchError:
    what = "is a random-init test model" if spec.micro else "names no pretrained tag (open_clip:ARCH@TAG)"
    return BenchError(f"backbone {spec.name} {what}: pass --weights FILE, or {random_init_fix} to run without")


def _needs_weights(spec: BackboneSpec) -> bool:
    """Whether the backbone's weights come from its library (timm / open_clip): not shipped, not a test model."""
    return not (spec.shipped or spec.micro or (spec.family == "open_clip" and not spec.tag))


def check_weights_available(name: str, *, allow_download: bool = False, allow_random_init: bool = False,
                            random_init_fix: str = RANDOM_INIT_FIX, fixes: str = WEIGHT_FIXES) -> None:
    """Raise, without building anything, what `create_backbone` would raise for missing weights (no --weights
    file given): a benchmark says it once, before any run starts. `random_init_fix` names how the caller
    allows random weights, `fixes` how it supplies the pretrained ones."""
    spec = parse_backbone(name)
    if spec.shipped:
        read_provenance(spec)
    elif not _needs_weights(spec):
        if not allow_random_init:
            raise _random_only(spec, random_init_fix)
    elif not (allow_download or allow_random_init):
        cached, wanted = library_weights(spec)
        if cached is None:
            raise _missing_offline(spec, wanted, random_init_fix, fixes)


def _from_library(spec: BackboneSpec, image_size: int | None, allow_download: bool,
                  allow_random_init: bool) -> tuple[nn.Module, WeightsInfo]:
    cached, wanted = library_weights(spec)
    if cached is None and not allow_download:
        if allow_random_init:
            info = WeightsInfo(False, "random", f"random init; missing {wanted}")
            return _create(spec, image_size, False), info
        raise _missing_offline(spec, wanted)
    try:  # a cache hit is loaded from its path and never touches the network, even with allow_download
        model = _create(spec, image_size, True, cached)
    except BenchError:
        raise
    except Exception as error:  # noqa: BLE001  (timm / open_clip / the hub raise many kinds)
        verb = "load cached" if cached else "download"
        raise BenchError(f"could not {verb} weights for {spec.name} ({cached or wanted}): "
                         f"{first_line(error)}") from None
    if cached:
        return model, WeightsInfo(True, "hf_cache", cached)
    return model, WeightsInfo(True, "download", library_weights(spec)[0] or wanted)


@dataclass(frozen=True)
class BackboneRequest:
    """A run's backbone as asked for: its name, a weights file, and whether the network and random init may serve."""

    name: str
    weights: str | None
    allow_download: bool
    allow_random_init: bool
    ignore_prefixes: tuple[str, ...] = ()  # weights-file keys that belong to a method checkpoint, not the backbone


def open_backbone(request: BackboneRequest, image_size: int, device: torch.device, warn: Callable[[str], None],
                  say: Callable[[str], None]) -> TokenBackbone:
    """A run's backbone on `device` at `image_size` (0: native); a random init is warned of, shipped weights'
    provenance is said."""
    backbone = create_backbone(request.name, weights=request.weights, allow_download=request.allow_download,
                               allow_random_init=request.allow_random_init, image_size=image_size or None,
                               ignore_prefixes=request.ignore_prefixes)
    info = backbone.weights_info
    if not info.pretrained:
        warn(f"backbone {request.name} is randomly initialised (pretrained: false)")
    elif info.provenance:
        made = info.provenance
        say(f"backbone {request.name}: weights shipped with lt-bench, pretrained on {made['data']['name']} "
            f"({made['recipe']['epochs']} epochs, seed {made['recipe']['seed']}, {made['test_accuracy']} % on its "
            f"test set); provenance in {Path(info.location).with_suffix('.json')}")
    return backbone.to(device)


def create_backbone(name: str, *, weights: str | None = None, allow_download: bool = False,
                    allow_random_init: bool = False, image_size: int | None = None,
                    ignore_prefixes: tuple[str, ...] = ()) -> TokenBackbone:
    """The token view of backbone `name` at `image_size` (None: native; smaller sizes resample position
    embeddings). The network is used only with allow_download, random weights only with allow_random_init.
    Keys of the weights file under `ignore_prefixes` are skipped (a method checkpoint holding the backbone)."""
    spec = parse_backbone(name)
    if weights:
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise BenchError(f"weights file not found: {path}")
        model = _load_file(spec, image_size, path, ignore_prefixes)
        info = WeightsInfo(True, "file", str(path), file_sha256(path))
    elif spec.shipped:
        path = SHIPPED / f"{spec.shipped}.safetensors"
        provenance = read_provenance(spec)
        model = _load_file(spec, image_size, path, ignore_prefixes)
        info = WeightsInfo(True, "shipped", str(path), provenance["sha256"], provenance)
    elif not _needs_weights(spec):
        if not allow_random_init:
            raise _random_only(spec)
        model, info = _create(spec, image_size, False), WeightsInfo(False, "random", "random init")
    else:
        model, info = _from_library(spec, image_size, allow_download, allow_random_init)
    if spec.family == "timm":
        config = getattr(model, "pretrained_cfg", None) or {}
        return TokenBackbone(spec, model, info, Preprocessing(config.get("mean", (0.5,) * 3),
                                                              config.get("std", (0.5,) * 3)))
    import open_clip

    visual = model.visual
    plain = isinstance(visual, open_clip.transformer.VisionTransformer)
    if not plain or getattr(visual, "attn_pool", None) is not None:
        kind = "attention pooling" if plain else type(visual).__name__
        raise BenchError(f"backbone {name}: the token view needs a plain open_clip ViT image tower, not {kind}; "
                         "pick a ViT-* model")
    return TokenBackbone(spec, visual, info, open_clip_preprocessing(spec, model), clip_model=model)


def read_provenance(spec: BackboneSpec) -> dict:
    """The provenance of a tower's shipped weights, checked against the file it describes."""
    path, about = SHIPPED / f"{spec.shipped}.safetensors", SHIPPED / f"{spec.shipped}.json"
    rebuild = f"reinstall lt-bench, or rebuild them with `python {PRETRAIN_SCRIPT}`"
    if not path.is_file() or not about.is_file():
        missing = path if not path.is_file() else about
        raise BenchError(f"backbone {spec.name}: its shipped weights are incomplete, {missing} is missing; {rebuild}")
    try:
        provenance = json.loads(about.read_text())
    except ValueError as error:
        raise BenchError(f"backbone {spec.name}: {about} is not JSON ({first_line(error)}); {rebuild}") from None
    if provenance.get("sha256") != file_sha256(path):
        raise BenchError(f"backbone {spec.name}: {path.name} is not the file its provenance {about.name} describes "
                         f"(sha256 differs); {rebuild}")
    return provenance


def open_clip_preprocessing(spec: BackboneSpec, model: nn.Module) -> Preprocessing:
    """open_clip's eval preprocessing of the model (`image_transform`): its preprocess_cfg (the tag's, which
    `_create_open_clip` forces whatever the weights' source) over open_clip's defaults; no crop margin
    (open_clip resizes to the image size, then crops it)."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    config = merge_preprocess_dict(PreprocessCfg(), import_open_clip().get_model_preprocess_cfg(model))
    if config["resize_mode"] not in RESIZE_MODES:
        raise BenchError(f"backbone {spec.name}: open_clip resizes its images with resize_mode "
                         f"{config['resize_mode']!r}, which this harness does not implement (only "
                         f"{' | '.join(RESIZE_MODES)})")
    mean, std = ((v,) * 3 if isinstance(v, (int, float)) else v for v in (config["mean"], config["std"]))
    interpolation = "bilinear" if config["interpolation"] == "bilinear" else "bicubic"  # as open_clip's eval
    return Preprocessing(mean, std, interpolation, config["resize_mode"], crop_fraction=1.0)

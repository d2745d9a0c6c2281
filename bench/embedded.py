"""The embedded default: scikit-learn's digits made long-tailed, a tiny random-init ViT, and per-method presets
that keep a run short on a 2-core CPU. `bench run`, `bench sweep` and `bench ablate` apply them alike."""

from __future__ import annotations

EMBEDDED_DATASET = "digits_lt"
EMBEDDED_ALIASES = (EMBEDDED_DATASET, "default", "digits")
EMBEDDED_BACKBONE = "vit_micro"
# A tiny random-init ViT learns 8×8 digits best at 16 px, without crops, with AdamW at a larger learning rate
# (the reference recipes' SGD at their learning rates are made for pretrained towers; finetune reaches 78 % test
# with this preset, 28 % with LIFT's SGD recipe at lr 2e-3); LPT gets short phases without warm-up so the default
# run stays well under two minutes on 2 CPU cores.
EMBEDDED_PRESET = {"image_size": "16", "augment": "none", "lr": "2e-3", "epochs": "40", "batch_size": "32",
                   "optimizer": "adamw", "warmup_epochs": "0"}
_LPT_PRESET = {"lr": "0.05", "phase1_epochs": "6", "phase2_epochs": "6", "warmup_epochs": "0"}
_LPTPP_PRESET = {**_LPT_PRESET, "phase1_epochs": "2", "phase2_epochs": "2", "adapter_epochs": "2",
                 "scorer_epochs": "2", "vl_backbone": "clip_micro"}
_LPTPP_FAMILY = ("lptpp", "lptpp_visual", "lptpp_vl", "lptpp_no_adapter", "lptpp_no_group_prompts", "lptpp_mean")
EMBEDDED_METHOD_PRESETS = {"lpt": _LPT_PRESET, **{name: _LPTPP_PRESET for name in _LPTPP_FAMILY}}
EMBEDDED_BACKBONES = {name: "clip_micro" for name in ("lptpp_vl", "clip_probe", "zeroshot_clip")}  # CLIP towers
# Search spaces declared for 12-block ViT-B/16 that the micro towers (4 and 2 blocks) cannot take.
EMBEDDED_SWEEP_SPACES = {"lpt": {"shared_layers": {"int": [1, 3]}},
                         **{key: {"shared_layers": "default"} for key in _LPTPP_FAMILY}}


def is_embedded(dataset: str, backbone: str | None) -> bool:
    return dataset in EMBEDDED_ALIASES and backbone is None


def embedded_preset(method: str) -> tuple[str, dict[str, str]]:
    """(backbone, --set preset) of `method` on the embedded dataset."""
    from bench.methods.base import METHODS

    name = METHODS.canonical(method)
    return EMBEDDED_BACKBONES.get(name, EMBEDDED_BACKBONE), {**EMBEDDED_PRESET, **EMBEDDED_METHOD_PRESETS.get(name, {})}


def applicable_preset(method: str, dataset: str, given: dict[str, str], searched=()) -> tuple[str, dict[str, str]]:
    """(backbone, the preset's values this method declares, except keys given by --set or searched)."""
    from bench.runner import declared_options

    declared = declared_options(method, dataset)
    backbone, preset = embedded_preset(method)
    return backbone, {k: v for k, v in preset.items() if k in declared and k not in given and k not in searched}


def embedded_sweep_space(method: str) -> dict:
    from bench.methods.base import METHODS

    return EMBEDDED_SWEEP_SPACES.get(METHODS.canonical(method), {})

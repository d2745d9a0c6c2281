"""The embedded default: scikit-learn's digits made long-tailed, a micro ViT pretrained on Fashion-MNIST (its
weights ship with the package: `vit_micro.fmnist`, made by scripts/pretrain_micro_tower.py), and a preset that
keeps a run short on a 2-core CPU. Methods that need a CLIP tower use `clip_micro`, which has no pretrained
weights (random init, said in the run's output and record). The runner applies it (with each method's own
`embedded_preset`, `embedded_backbone` and, for sweeps, `embedded_space`), so `bench run`, sweeps, ablations and
Python callers get the same runs."""

from __future__ import annotations

EMBEDDED_DATASET = "digits_lt"
EMBEDDED_ALIASES = (EMBEDDED_DATASET, "default", "digits")
EMBEDDED_BACKBONE = "vit_micro.fmnist"
# 8×8 digits at 16 px, without crops, with AdamW at a larger learning rate: chosen for the random-init micro ViT
# that came before the shipped tower (finetune reached 78 % test with this preset, 28 % with LIFT's SGD recipe at
# lr 2e-3, whose learning rates are made for pretrained towers). Kept for vit_micro.fmnist, which was pretrained
# at 16 px; only LPT's lr was chosen again, on val (methods/lpt.py). Finetune now reaches 84.8 % test (seed 0).
EMBEDDED_PRESET = {"image_size": "16", "augment": "none", "lr": "2e-3", "epochs": "40", "batch_size": "32",
                   "optimizer": "adamw", "warmup_epochs": "0"}


def is_embedded(dataset: str, backbone: str | None) -> bool:
    return dataset in EMBEDDED_ALIASES and backbone is None

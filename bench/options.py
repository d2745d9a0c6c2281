"""The options every run takes (`--set key=value`, beside each method's and each dataset's own), their typed
view (`CommonOptions`), and the one declaration of every --set key of a (method, dataset) pair. Light: no torch,
so protocols, sweep definitions and the CLI load it fast."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from bench import selection
from bench.hparams import AUTO_OR_NON_NEGATIVE, NON_NEGATIVE, Choice, HParam, merge_declarations
from bench.metrics import SHOT_CONVENTIONS

AUGMENTATIONS = ("rrc_flip", "crop_flip", "none")


def _option(default: Any, **declaration: Any) -> Any:
    """A field of `CommonOptions` that carries its --set declaration."""
    return field(default=default, metadata={"declared": HParam(default, **declaration)})


@dataclass(frozen=True)
class CommonOptions:
    """The options common to every method and dataset, resolved and typed (the run's other --set values are
    the method's and the dataset's own)."""

    image_size: int = _option(0, help="input resolution; 0 = the backbone's native size", bounds=NON_NEGATIVE)
    augment: str = _option("rrc_flip", space=Choice(AUGMENTATIONS), help="train augmentation (flips are dropped "
                           "where the dataset forbids them)", choices=AUGMENTATIONS)
    eval_batch_size: int = _option(-1, help="batch size for evaluation and feature extraction; -1 = 32 on CPU "
                                   "(measured fastest for ViT-Tiny on 2 cores), 256 on GPU")
    num_workers: int = _option(-1, help="DataLoader workers for splits fed image by image; -1 = 0 on CPU (workers "
                               "would take the cores the model computes on), on GPU one per CPU this run may use "
                               "(its Ray trial's share, else the process's CPU affinity shared among this node's "
                               "ranks) less one, at most 8", bounds=AUTO_OR_NON_NEGATIVE)
    data_cache: str = _option("auto", help="auto: splits of small images (one size, sides ≤ 64 px: CIFAR, digits) "
                              "are decoded once into uint8 pixels and augmented a batch at a time as tensors | off: "
                              "every split decoded image by image through PIL each epoch", choices=("auto", "off"))
    amp: str = _option("auto", help="mixed precision: auto (bf16 autocast on GPUs, fp16 on GPUs without bf16; fp32 "
                       "on CPUs) | bf16 (opt-in on a CPU: faster than fp32 on larger towers where the CPU has bf16 "
                       "instructions, emulated and slow where it has not, which the run's notes say) | fp16 (GPU "
                       "only) | off (fp32)", choices=("auto", "bf16", "fp16", "off"))
    compile: bool = _option(False, help="torch.compile (inductor) each backbone block before training: a one-off "
                            "compile of tens of seconds, then faster steps where the compiler wins (measured by "
                            "scripts/lpt_speed.py --compile; off by default)")
    val_every: int = _option(1, help="validate every N epochs (0: only after each phase's last epoch)",
                             bounds=NON_NEGATIVE)
    model_selection: str = _option("best_val", help="which epoch's weights each phase keeps: best_val (the best "
                                   "selection_metric on val among validated epochs) | last",
                                   choices=("best_val", "last"))
    selection_metric: str = _option(selection.DEFAULT_METRIC, help="the val metric every choice in the run "
                                    "maximises (a phase's best epoch, a probe's weight decay, post-hoc tau): "
                                    "mean_per_class matches a balanced test set's overall accuracy; ties go to the "
                                    "lower class-balanced val NLL, then the earlier candidate",
                                    choices=selection.METRIC_CHOICES)
    shot_convention: str = _option("standard", help="many/medium/few thresholds: " + " | ".join(
        f"{name} ({convention.description})" for name, convention in SHOT_CONVENTIONS.items()),
        choices=tuple(SHOT_CONVENTIONS))

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> CommonOptions:
        """The common options among a run's resolved --set values."""
        return cls(**{name: values[name] for name in COMMON_OPTIONS})


COMMON_OPTIONS: dict[str, HParam] = {option.name: option.metadata["declared"] for option in fields(CommonOptions)}


def declared_options(method: str, dataset: str) -> dict[str, HParam]:
    """The one declaration of every --set key of a (method, dataset) pair: common, method and dataset options."""
    # the registries import torch and every method: loaded when a pair is asked about, not with this module
    import bench.datasets
    import bench.methods  # noqa: F401  (importing the two packages registers every dataset and method)
    from bench.datasets.base import DATASETS
    from bench.methods.base import METHODS

    method_cls, dataset_spec = METHODS.get(method), DATASETS.get(dataset)
    return merge_declarations(("common", COMMON_OPTIONS), (f"method {method_cls.name}", method_cls.hparams),
                              (f"dataset {dataset_spec.name}", dataset_spec.options))

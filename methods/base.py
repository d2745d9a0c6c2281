"""A method is a recipe of training phases over a (mostly frozen) backbone, plus how it predicts.

The engine owns everything around the recipe: seeding, the epoch loop, mixed precision, the learning-rate
schedule, checkpoints and resume, evaluation and the run record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bench.embedded import EMBEDDED_BACKBONE
from bench.hparams import HParam
from bench.method_groups import METHOD_GROUPS, PLUGIN_GROUP, order_key
from bench.registry import Registry

if TYPE_CHECKING:
    from bench.context import RunContext
    from bench.metrics import Metrics


@dataclass(frozen=True)
class Plateau:
    """A learning rate that drops by `factor` (not below `min_lr`) once the phase's val selection metric has not
    improved for more than `patience` validated epochs: torch's ReduceLROnPlateau (mode max, its default
    threshold 1e-4 relative, no cooldown). The engine replays it over the phase's val history at the start of
    each epoch, so a resumed run gets the same rates from its checkpointed history without a scheduler state."""

    patience: int
    factor: float = 0.1
    min_lr: float = 0.0

    def lr(self, base_lr: float, metrics: Sequence[float]) -> float:
        """The rate after the val `metrics` seen so far (in epoch order), from `base_lr`."""
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
        schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=self.factor,
                                                              patience=self.patience, min_lr=self.min_lr)
        for value in metrics:
            schedule.step(value)
        return optimizer.param_groups[0]["lr"]


@dataclass
class Phase:
    """One stage of training: which parameters learn, from which batches, under which loss."""

    name: str
    epochs: int
    parameters: list[nn.Parameter]
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None
    batches: Callable[[int], Iterable[Any]] | None = None  # epoch → batches already on the device
    loss: Callable[[Any], torch.Tensor] | None = None
    # A method that runs a whole epoch itself (a full-batch solver) gives `fit_epoch` (epoch → its loss) instead
    # of make_optimizer / batches / loss; the engine still validates, selects, checkpoints and resumes.
    fit_epoch: Callable[[int], float] | None = None
    warmup_epochs: int = 0
    schedule: str = "cosine"  # the per-epoch decay after warm-up: cosine | linear (bench.engine.epoch_lr)
    # "epoch": each warm-up epoch holds one rate (LPT's and VPT's official schedulers, stepped per epoch: the first
    # epoch at 1e-6); "iteration": the rate rises at every step of the warm-up (needs steps_per_epoch)
    warmup_per: str = "epoch"
    # None: the engine's per-epoch cosine schedule (with warm-up); a Plateau: the rate follows val instead, and
    # the phase validates after every epoch whatever val_every says
    plateau: Plateau | None = None
    steps_per_epoch: Callable[[], int] | None = None  # for progress bars
    on_start: Callable[[], None] | None = None  # runs when the phase is entered, fresh or resumed
    # Buffers of the method's model() that training changes outside the optimizer (an EMA of the weights, BN
    # running statistics): checkpointed, resumed and restored with the best epoch like the parameters, but
    # neither optimised nor counted as trainable.
    state: list[torch.Tensor] = field(default_factory=list)
    after_step: Callable[[], None] | None = None  # runs after every optimizer step (e.g. an EMA update)
    # A phase that learns another dataset's labels (PEMT's source datasets) validates on that dataset's val split
    # instead of the run's: its metrics, or None where that dataset has no val split (the phase keeps its last
    # epoch). None: the run's val split.
    validate: Callable[[], Metrics | None] | None = None


class Method:
    """Subclasses set `name`, `description`, `hparams`; build the model in `setup`, list `phases`, `predict`."""

    name: str = ""
    description: str = ""
    hparams: Mapping[str, HParam] = {}
    checkpoint_prefixes: tuple[str, ...] = ()  # keys of an imported checkpoint that are the method's own
    default_backbone: str | None = None  # when --backbone is not given (None: the harness default)
    variant_of: str | None = None  # an ablation variant of this method (`bench ablate` runs them side by side)
    # where reports list it (bench.method_groups): set by register_method / register_variant
    report_group: str = PLUGIN_GROUP
    report_place: float = 0.0
    report_variant: int = 0
    # fields of bench.data.Preprocessing the method's recipe fixes over each tower's own (empty: every tower
    # gets the preprocessing its library states)
    preprocessing: Mapping[str, Any] = {}
    # On the embedded default (digits, no --backbone) the runner builds this tower (the shipped pretrained
    # vit_micro.fmnist unless the method names another, e.g. clip_micro for CLIP methods) and adds the method's preset to the common one (bench.embedded.EMBEDDED_PRESET); sweeps there search this space instead.
    embedded_backbone: str = EMBEDDED_BACKBONE
    embedded_preset: Mapping[str, str] = {}
    embedded_space: Mapping[str, object] = {}

    @classmethod
    def report_order(cls) -> tuple[int, float, int]:
        """Where reports list the method (records carry it as `report_order`)."""
        return order_key(cls.report_group, cls.report_place, cls.report_variant)

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.hp = ctx.hparams

    def setup(self) -> None:
        raise NotImplementedError

    def model(self) -> nn.Module:
        """The module whose trainable parameters the checkpoints hold."""
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def towers(self) -> list[nn.Module]:
        """The frozen towers images are prepared for, each in its own preprocessing (recorded per tower): the
        run's backbone, unless the method builds more."""
        return [self.ctx.backbone]

    def predicts_from_features(self) -> bool:
        """True when predictions come from features computed beforehand (the backbone's forward pass is not
        part of the measured test time)."""
        return False

    def extra_record(self) -> dict:
        """Method-specific fields for the run record, kept under its `extras` (e.g. per-expert costs)."""
        return {}

    @torch.no_grad()
    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [N, C], labels [N]) on split 'train' | 'val' | 'test', in eval mode."""
        raise NotImplementedError




def register_method(name: str, group: str = PLUGIN_GROUP, place: float = 0.0,
                    aliases: tuple[str, ...] = ()) -> Callable[[type[Method]], type[Method]]:
    """Registers a Method class under `name`, listed in reports in `group` at `place` (bench.method_groups). This
    package's methods each name one of METHOD_GROUPS; a plugin's method (another package's, through the
    `lt_bench.methods` entry points) may leave the group out and is listed after them."""

    def decorate(cls: type[Method]) -> type[Method]:
        if cls.__module__.startswith(f"{__package__}.") and group not in METHOD_GROUPS:
            raise ValueError(f"method {name!r} declares report group {group!r}: this package's methods name one "
                             f"of {', '.join(METHOD_GROUPS)} (bench/method_groups.py)")
        cls.name, cls.report_group, cls.report_place = name, group, place
        METHODS.add(name, cls, aliases)
        return cls

    return decorate


def register_variant(parent: type[Method], name: str, description: str, **switches) -> type[Method]:
    """Registers an ablation variant of the registered method `parent`: a subclass whose class attributes
    `switches` turn parts off (`bench ablate` runs it beside its parent; reports list it after the parent and
    its earlier variants)."""
    variant = 1 + sum(cls.variant_of == parent.name for _, cls in METHODS.items())
    cls = type(name, (parent,), {"description": description, "variant_of": parent.name, "report_variant": variant,
                                 "__module__": parent.__module__, **switches})
    return register_method(name, parent.report_group, parent.report_place)(cls)


# listed in report order
METHODS: Registry[type[Method]] = Registry("method", order=lambda method: method.report_order())
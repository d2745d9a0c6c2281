"""Training-step parity of `lpt` (phase 2) with the official LPT code (DongSky/LPT, `phase2_test/`).

    git clone https://github.com/DongSky/LPT /tmp/LPT-official      # or any copy of its phase2_test/*.py
    python scripts/official_training_parity.py /tmp/LPT-official [--weights vit_tiny_patch16_224.safetensors]

OFFICIAL_DIR is the repository (or its `phase2_test/` folder); when it is absent the script says so in one line
and exits 0. Nothing of the official code is part of this repository: it is imported from OFFICIAL_DIR at run
time. What runs from it:
- `PromptModels_pool/structure.py` (the phase-2 model `VPT_ViT`), `cb_loss.py` (`AGCL`) over `loss.py`
  (`ASLSingleLabel`), `sampler.py` (`ClassAwareSampler`), `vtab/LT_dataset.py` (`label_freq`), `utils.py`;
- from `train_dual_dualloss.py`'s `main()`, taken from the file's syntax tree and executed as written: the
  statements that scale the lr, build the two losses and the loaders, freeze the model, wrap it in
  DataParallel, build the optimiser and the scheduler, and, per epoch, the training loop followed by
  `scheduler.step(epoch + 1)`; and its argparse defaults. The rest of `main()` (datasets on disk, ViT-B/16
  weights, `phase1.pth`, validation) is not run.
Ours runs as a run would: `lpt`'s own setup and `lpt_group` phase, stepped by the engine's epoch loop.

Compared: (a) A-GCL value and gradient for both batch kinds; (b) the phase-2 objective; (c) the gradient of
every trainable tensor; (d) the tensors after 5 SGD steps, and the lr per step and per epoch; besides, the
defaults, the steps per epoch and the class-aware sampler's structure.

Both models are built from the same weights: ViT-Tiny/16 at 32 px (random init from --seed, or --weights),
10 classes with training counts 8, 6, 4, 3, 2, 2, 2, 1, 1, 1, prompts, pool, keys and a head with rows of
unequal norm (as after phase 1) copied from ours into the official model. Both train 5 steps (3 epochs of
N // B + 1 = 2 steps, the last cut after its first step) on the same class-aware batches of 16 (4 classes × 4,
drawn by our sampler) and uniform batches of 16. Randomness is made equal by seeding, not by injection: each
side draws its own head-dropout masks and Gaussian clouds, from the same seed at the same call.

Adapters (the official code targets timm 0.5 and CUDA); none changes a computation:
- `VPT_ViT` calls timm 0.5's positional `VisionTransformer.__init__` (img_size, patch_size, in_chans,
  num_classes, embed_dim, depth, ...); the installed timm has another order. `Timm05VisionTransformer` takes
  the old order and passes it by keyword, and adds `pre_logits = Identity` (timm 0.5's, without a
  representation layer). It is in place only while `structure.py` is imported.
- `AGCL.__init__` builds `torch.cuda.FloatTensor(counts)`: a CPU `torch.FloatTensor` while it is built.
- `DataParallel` is built with CUDA reported absent, so it calls the model directly on the CPU.
- `cb_loss.py`'s `from loss import ASLSingleLabel` resolves to the official `loss.py`.

Differences are max |ours − official| and that divided by max |official| ("rel"), per quantity; every rel must
be ≤ 1e-5 (exit 1 otherwise). The head's official orientation [D, C] is transposed to ours [C, D].
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import random
import sys
import tempfile
import types
from contextlib import contextmanager
from dataclasses import replace
from operator import attrgetter
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from rich.console import Console
from timm.scheduler import CosineLRScheduler
from torch import nn

from bench.backbones import create_backbone
from bench.engine import Engine, epoch_lr
from bench.hparams import resolve
from bench.methods.common import dual_steps
from bench.methods.lpt import LPT
from bench.methods.samplers import class_aware
from bench.progress_bars import Bars

TOLERANCE = 1e-5
COUNTS = (8, 6, 4, 3, 2, 2, 2, 1, 1, 1)
BATCH, PER_CLASS, EPOCHS, STEPS, IMAGE_SIZE = 16, 4, 3, 5, 32
# lr 0.32 per 256 images is 0.02 at batch 16, the official default's step size (0.02 at batch 256): 5 steps then
# move the tensors far more than float32's spacing, so their change can be compared to 1e-5. LayerNorm eps 1e-5:
# the official model builds its LayerNorms with torch's default
OURS = {"batch_size": str(BATCH), "lr": "0.32", "per_class": str(PER_CLASS), "phase2_epochs": str(EPOCHS),
        "layernorm_eps": "1e-5", "warmup_per": "epoch"}  # the official schedule (ours ramps per step by default)
TRAINABLE = ("pool", "keys", "head")  # phase 2's trainable tensors, as ours names them
OFFICIAL_NAMES = {"pool": "Prompt_Tokens_pool", "keys": "Prompt_Keys", "head": "head.weight",
                  "shared prompts": "Prompt_Tokens"}
SETUP_STATEMENTS = ("args.lr =", "criterion =", "criterion_ibs =", "train_sampler =", "train_loader =",
                    "train_loader_ibs =", "model.Freeze()",
                    "model.prompt_learner.Prompt_Tokens.requires_grad_(False)",
                    "model = torch.nn.parallel.DataParallel(model)", "optimizer =", "scheduler =")


# ------------------------------------------------------------------------------------ the official code


@contextmanager
def aliased_modules(modules: dict[str, types.ModuleType]):
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def load(path: Path, name: str, aliases: dict[str, types.ModuleType] | None = None) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"lpt_official_{name}", path)
    module = importlib.util.module_from_spec(spec)
    with aliased_modules(aliases or {}):
        spec.loader.exec_module(module)
    return module


def timm05_vision_transformer() -> type:
    from timm.models.vision_transformer import VisionTransformer

    class Timm05VisionTransformer(VisionTransformer):
        """timm 0.5's positional constructor over the installed timm (see the module docstring)."""

        def __init__(self, img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
                     qkv_bias, representation_size, distilled, drop_rate, attn_drop_rate, drop_path_rate,
                     embed_layer, norm_layer, act_layer, weight_init):
            if representation_size is not None or distilled:
                raise ValueError("the adapter covers timm 0.5 ViTs without a representation layer or distillation")
            super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                             embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                             qkv_bias=qkv_bias, drop_rate=drop_rate, pos_drop_rate=drop_rate,
                             attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, embed_layer=embed_layer,
                             norm_layer=norm_layer, act_layer=act_layer, weight_init=weight_init)
            self.pre_logits = nn.Identity()

    return Timm05VisionTransformer


class Official:
    """The official modules, and the statements of `train_dual_dualloss.py` that train, compiled from its syntax
    tree: `parser` (its argparse defaults), `setup`, `scheduler`, `train_epoch` (one epoch's loop) and
    `scheduler_step`, and `loader` (the class-aware loader's statements)."""

    def __init__(self, root: Path):
        loss = load(root / "loss.py", "loss")
        self.cb_loss = load(root / "cb_loss.py", "cb_loss", {"loss": loss})
        with mock.patch("timm.models.vision_transformer.VisionTransformer", timm05_vision_transformer()):
            self.structure = load(root / "PromptModels_pool" / "structure.py", "structure")
        self.sampler = load(root / "sampler.py", "sampler")
        self.utils = load(root / "utils.py", "utils")
        self.lt_dataset = load(root / "vtab" / "LT_dataset.py", "LT_dataset")
        self.script = root / "train_dual_dualloss.py"
        module = ast.parse(self.script.read_text())
        main = next(node for node in module.body if isinstance(node, ast.FunctionDef) and node.name == "main")
        epochs = next(node for node in main.body if isinstance(node, ast.For) and ast.unparse(node.target) == "epoch")
        first_loop = next(i for i, node in enumerate(epochs.body) if isinstance(node, ast.For))
        self.parser = self._compile(self._select(module.body, ("parser",)))
        self.setup = self._compile(self._select(main.body, SETUP_STATEMENTS))
        self.loader = self._compile(self._select(main.body, ("train_sampler =", "train_loader =")))
        self.scheduler = self._compile(self._select(main.body, ("scheduler =",)))
        self.train_epoch = self._compile(epochs.body[:first_loop + 1])
        self.scheduler_step = self._compile(self._select(epochs.body, ("scheduler.step(",)))

    def _select(self, body: list[ast.stmt], prefixes: tuple[str, ...]) -> list[ast.stmt]:
        """The statements of `body` that start with one of `prefixes`, in the file's order; each must match."""
        texts = [ast.unparse(node) for node in body]
        for prefix in prefixes:
            if not any(text.startswith(prefix) for text in texts):
                raise SystemExit(f"{self.script}: no statement `{prefix}…` where expected; the official script "
                                 "changed")
        return [node for node, text in zip(body, texts) if text.startswith(prefixes)]

    def _compile(self, body: list[ast.stmt]):
        return compile(ast.Module(body=body, type_ignores=[]), str(self.script), "exec")

    def run_setup(self, namespace: dict) -> None:
        with mock.patch.object(torch.cuda, "FloatTensor", torch.FloatTensor), \
                mock.patch.object(torch.cuda, "is_available", return_value=False):
            exec(self.setup, namespace)


# ---------------------------------------------------------------------------------------------- ours


class TrainSplit:
    def __init__(self, labels: np.ndarray):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)


class Context:
    """What `lpt` and the engine read of a run context: backbone, hyperparameters, a training split, and a
    feed that returns the images of a fixed bank (no transform) for the sampled indices."""

    def __init__(self, backbone, labels: np.ndarray, images: torch.Tensor, run_dir: Path):
        self.backbone, self.labels, self.images = backbone, labels, images
        self.hparams = resolve(LPT.hparams, OURS)
        self.dataset = types.SimpleNamespace(num_classes=len(COUNTS), train_counts=np.bincount(labels),
                                             train=TrainSplit(labels))
        self.device, self.seed, self.run_dir, self.primary_run_dir = torch.device("cpu"), 0, run_dir, None

    def transform(self, train: bool = False, backbone=None) -> None:
        return None

    def feed(self, split_name: str) -> Context:
        return self

    def batches(self, transform, index_lists, seed):
        for indices in index_lists:
            yield self.images[indices], torch.as_tensor(self.labels[indices])

    @contextmanager
    def autocast(self):
        yield


# ------------------------------------------------------------------------------ equal draws, recording


class SeededCalls:
    """Seeds torch before each call at one point of the computation (head dropout, the cloud of one batch kind):
    call k at point `salt` gets seed 7919·salt + k on both sides, so each side's own draw is the same."""

    def __init__(self, salt: int):
        self.salt, self.calls, self.inputs = salt, 0, []

    def seed(self, *_) -> None:
        torch.manual_seed(7919 * self.salt + self.calls)
        self.calls += 1

    def wrap(self, loss):
        def call(cosine, labels):
            self.inputs.append(cosine.detach().clone())
            self.seed()
            return loss(cosine, labels)

        return call


def snapshot(params: dict, grad: bool = False) -> dict[str, torch.Tensor]:
    """name → (gradient or value) in our orientation; `params` maps name → (parameter, transposed?)."""
    out = {}
    for name, (param, transposed) in params.items():
        tensor = (param.grad if grad else param).detach()
        out[name] = (tensor.t() if transposed else tensor).clone()
    return out


def record_steps(optimizer: torch.optim.Optimizer, params: dict, objective, log: list) -> None:
    """Wrap `optimizer.step`: per step the objective, lr and gradients before it, the tensors after it."""
    step = optimizer.step

    def recorded(*args, **kwargs):
        entry = {"objective": objective(), "lr": optimizer.param_groups[0]["lr"],
                 "grad": snapshot({k: v for k, v in params.items() if k in TRAINABLE}, grad=True)}
        result = step(*args, **kwargs)
        log.append({**entry, "value": snapshot(params)})
        return result

    optimizer.step = recorded


class UniformDraws:
    """`next(iter(train_loader_ibs))` as the official loop calls it, once per step: each `iter` gives the next
    of the given uniform batches (the last again once they run out: the loop draws one before it breaks)."""

    def __init__(self, batches: list):
        self.batches = list(batches)

    def __iter__(self):
        return iter([self.batches.pop(0) if len(self.batches) > 1 else self.batches[0]])


# ------------------------------------------------------------------------------------------- the table


class Table:
    def __init__(self):
        self.rows: list[tuple[str, float, float]] = []

    def compare(self, name: str, ours, official) -> None:
        ours = torch.as_tensor(ours, dtype=torch.float64)
        official = torch.as_tensor(official, dtype=torch.float64)
        if ours.shape != official.shape:
            self.rows.append((f"{name} (shapes {tuple(ours.shape)} vs {tuple(official.shape)})", np.inf, np.inf))
            return
        diff = (ours - official).abs().max().item() if ours.numel() else 0.0
        scale = official.abs().max().item() if official.numel() else 0.0
        self.rows.append((name, diff, diff / scale if scale > 0 else (0.0 if diff == 0 else np.inf)))

    def show(self) -> bool:
        width = max(len(row[0]) for row in self.rows)
        print(f"{'quantity':<{width}}  {'max abs':>9}  {'max rel':>9}")
        for name, diff, rel in self.rows:
            print(f"{name:<{width}}  {diff:9.2e}  {rel:9.2e}  {'PASS' if rel <= TOLERANCE else 'FAIL'}")
        passed = all(rel <= TOLERANCE for _, _, rel in self.rows)
        print(f"{'PASS' if passed else 'FAIL'}: {sum(rel <= TOLERANCE for _, _, rel in self.rows)} of "
              f"{len(self.rows)} quantities within {TOLERANCE:g} relative (rel = max |ours - official| / "
              "max |official|)")
        return passed


# ------------------------------------------------------------------------------------------ the checks


def official_dataset(official: Official, labels: np.ndarray, folder: Path):
    """The official `LT_Dataset` over a split file of our labels (its `label_freq` feeds the official losses)."""
    split_file = folder / "train.txt"
    split_file.write_text("".join(f"image_{i}.jpg {label}\n" for i, label in enumerate(labels)))
    return official.lt_dataset.LT_Dataset(root=str(folder), txt=str(split_file))


def compare_defaults(table: Table, official: Official) -> argparse.Namespace:
    """The official script's argparse defaults and model defaults against ours; returns the official args."""
    namespace = {"argparse": argparse}
    exec(official.parser, namespace)
    args = namespace["parser"].parse_args([])
    model_defaults = {name: p.default for name, p in
                      inspect.signature(official.structure.VPT_ViT.__init__).parameters.items()}
    ours = {name: hp.default for name, hp in LPT.hparams.items()}
    table.compare("defaults: lr, batch, wd, epochs, warm-up, L, m, k",
                  [ours["lr"], ours["batch_size"], ours["weight_decay"], ours["phase2_epochs"],
                   ours["warmup_epochs"], ours["prompt_length"], ours["pool_size"], ours["top_k"]],
                  [args.base_lr, args.batch_size, args.weight_decay, args.epochs, args.warmup_epochs,
                   args.prompt_length, model_defaults["pool_size"], model_defaults["topk"]])
    return args


def compare_agcl(table: Table, official_losses: dict, our_losses: dict, seed: int) -> None:
    """(a) A-GCL value and gradient on random cosine logits and labels, the cloud drawn by each side from one
    seed. Rows 0 and 1 are saturated (cosine 0.95 against −0.5 elsewhere, so the top softmax probability is 1.0
    in float32): confidently wrong (label 4) and confidently right (label 5). Where the official gradient is NaN
    (the right row's (1 − p_y)^0.5 with γ+ = 0.5), that row is left out and the table says so."""
    generator = torch.Generator().manual_seed(seed)
    cosine = torch.rand(64, len(COUNTS), generator=generator) * 2 - 1
    labels = torch.randint(0, len(COUNTS), (64,), generator=generator)
    cosine[:2], cosine[:2, 5], labels[:2] = -0.5, 0.95, torch.tensor([4, 5])
    for kind, title in (("class_balanced", "cb (γ+ 0, γ− 4)"), ("instance_balanced", "ib (γ+ 0.5, γ− 8)")):
        values, grads = [], []
        for loss in (our_losses[kind], official_losses[kind]):
            logits = cosine.clone().requires_grad_(True)
            torch.manual_seed(seed)
            value = loss(logits, labels)
            value.backward()
            values.append(value.detach())
            grads.append(logits.grad)
        finite = grads[1].isfinite().all(dim=1)
        left_out = f", official NaN in {int((~finite).sum())} row: left out" if not finite.all() else ""
        table.compare(f"(a) A-GCL {title}: value", *values)
        table.compare(f"(a) A-GCL {title}: d/d logits{left_out}", grads[0][finite], grads[1][finite])
        table.compare(f"(a) A-GCL {title}: ours finite in every row", grads[0].isfinite().all(), True)


def compare_schedule(table: Table, official: Official, args: argparse.Namespace, base_lr: float) -> None:
    """(d) The official scheduler statement over a 90-epoch phase (1 and 3 warm-up epochs) against epoch_lr."""
    for warmup in (1, 3):
        run = argparse.Namespace(**{**vars(args), "epochs": 90, "warmup_epochs": warmup})
        namespace = {"args": run, "CosineLRScheduler": CosineLRScheduler,
                     "optimizer": torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)}
        exec(official.scheduler, namespace)
        lrs = []
        for epoch in range(90):
            lrs.append(namespace["optimizer"].param_groups[0]["lr"])
            namespace["epoch"] = epoch
            exec(official.scheduler_step, namespace)
        table.compare(f"(d) lr per epoch, 90 epochs, warm-up {warmup}",
                      [epoch_lr(base_lr, e, 90, warmup) for e in range(90)], lrs)


class StepCounter(nn.Module):
    """Stand-in model, losses and optimiser for the official epoch loop: it counts the loop's steps."""

    def __init__(self):
        super().__init__()
        self.logits, self.steps = nn.Parameter(torch.zeros(1, len(COUNTS))), 0

    def forward(self, images):
        return self.logits.expand(len(images), -1), self.logits.sum()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.logits.grad = None

    def step(self) -> None:
        self.steps += 1


def compare_steps(table: Table, official: Official, folder: Path) -> None:
    """Steps per epoch of the official epoch loop (its class-aware loader with drop_last, cut by its own break
    rule) against ours, on the long-tailed set and on a balanced one of 8 images per class."""
    ours, theirs = [], []
    for name, counts in (("long_tailed", COUNTS), ("balanced", (8,) * len(COUNTS))):
        labels = np.repeat(np.arange(len(COUNTS)), counts)
        (folder / name).mkdir()
        counter = StepCounter()
        namespace = {"args": argparse.Namespace(batch_size=BATCH, epochs=1), "device": "cpu", "epoch": 0,
                     "train_dataset": official_dataset(official, labels, folder / name),
                     "DataLoader": torch.utils.data.DataLoader, "tqdm": lambda iterable, **_: iterable,
                     "ClassAwareSampler": official.sampler.ClassAwareSampler,
                     "CBEffectNumSampler": official.sampler.CBEffectNumSampler,
                     "Averager": official.utils.Averager, "compute_acc": official.utils.compute_acc,
                     "model": counter, "optimizer": counter, "criterion": lambda logits, _: logits.sum(),
                     "criterion_ibs": lambda logits, _: logits.sum()}
        exec(official.loader, namespace)
        batch = (torch.zeros(BATCH, 1), torch.zeros(BATCH, dtype=torch.long))
        namespace.update(train_loader=[batch] * len(namespace["train_loader"]), train_loader_ibs=UniformDraws([batch]))
        exec(official.train_epoch, namespace)
        theirs.append(counter.steps)
        ours.append(dual_steps(labels, BATCH))
    table.compare("steps per epoch: long-tailed set, balanced set", ours, theirs)


def compare_sampler(table: Table, official: Official, dataset, labels: np.ndarray, seed: int) -> None:
    """The class-aware sampler over 50 class cycles: the same counts per class and per image, same-class
    blocks of 4 (the draws themselves differ: Python's `random` there, numpy here)."""
    random.seed(seed)
    sampler = official.sampler.ClassAwareSampler(dataset, num_samples_cls=PER_CLASS)
    cycles = 50 * len(COUNTS) * PER_CLASS // len(sampler)
    drawn = {"official": np.array([i for _ in range(cycles) for i in sampler]),
             "ours": class_aware(labels, cycles * len(sampler), np.random.default_rng(seed), PER_CLASS)}

    def profile(draw: np.ndarray) -> tuple:
        blocks = labels[draw].reshape(-1, PER_CLASS)
        uses = np.bincount(draw, minlength=len(labels))
        within = np.concatenate([np.sort(uses[labels == c]) for c in range(len(COUNTS))])
        return np.bincount(labels[draw]), within, (blocks == blocks[:, :1]).all(axis=1).mean()

    ours, theirs = profile(drawn["ours"]), profile(drawn["official"])
    table.compare("class-aware sampler: draws per class", ours[0], theirs[0])
    table.compare("class-aware sampler: uses per image, sorted in class", ours[1], theirs[1])
    table.compare("class-aware sampler: one-class blocks of 4", ours[2], theirs[2])


def train_both(table: Table, official: Official, namespace: dict, method: LPT, model: nn.Module
               ) -> list[list[float]]:
    """(b)-(d) Five steps of phase 2, the official loop and our engine's, on the same batches; returns the lr
    per step of both."""
    net, ctx = method.net, method.ctx
    phase = method.phases()[1]
    batches = [list(phase.batches(epoch)) for epoch in range(EPOCHS)]
    steps_per_epoch = phase.steps_per_epoch()
    batches[-1] = batches[-1][:STEPS - steps_per_epoch * (EPOCHS - 1)]
    phase = replace(phase, batches=lambda epoch: iter(batches[epoch]))

    learner = model.prompt_learner
    sides = {"ours": {"params": {"pool": (net.pool, False), "keys": (net.keys, False),
                                 "head": (net.head.weight, False), "shared prompts": (net.shared_prompts, False)},
                      "dropout": net.head.dropout, "log": []},
             "official": {"params": {name: (attrgetter(attr)(learner), name == "head")
                                     for name, attr in OFFICIAL_NAMES.items()},
                          "dropout": model.dropout, "log": []}}
    for side in sides.values():
        side["start"] = snapshot(side["params"])
        side["dropout"].register_forward_pre_hook(SeededCalls(0).seed)
        side["clouds"] = {"class_balanced": SeededCalls(1), "instance_balanced": SeededCalls(2)}

    # ours: the engine's epoch loop (lr set per epoch by epoch_lr) over the `lpt_group` phase
    engine = Engine(method, ctx)
    engine._freeze_all_but(phase)
    phase.on_start()
    for kind, seeder in sides["ours"]["clouds"].items():
        method.losses[kind] = seeder.wrap(method.losses[kind])
    optimizer = phase.make_optimizer(phase.parameters)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])  # as Engine.train does
    objective = {}

    def loss(batch):
        objective["value"] = phase.loss(batch)
        return objective["value"]

    record_steps(optimizer, sides["ours"]["params"], lambda: objective["value"].item(), sides["ours"]["log"])
    for epoch in range(EPOCHS):
        engine._train_epoch(phase, 1, epoch, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                            Bars(None, Console(quiet=True)), loss, None)

    # official: its epoch loop and scheduler step, on the same batches, with a loader as long as its own
    for kind, name in (("class_balanced", "criterion"), ("instance_balanced", "criterion_ibs")):
        namespace[name] = sides["official"]["clouds"][kind].wrap(namespace[name])
    record_steps(namespace["optimizer"], sides["official"]["params"], lambda: namespace["loss"].item(),
                 sides["official"]["log"])
    loader_length = len(namespace["train_loader"])
    for epoch, epoch_batches in enumerate(batches):
        loader = [(images, labels) for images, labels, *_ in epoch_batches][:loader_length]
        if len(epoch_batches) == steps_per_epoch:  # a whole epoch: the loop's own rule ends it
            loader += [loader[-1]] * (loader_length - len(loader))
        namespace.update(epoch=epoch, train_loader=loader,
                         train_loader_ibs=UniformDraws([(images, labels) for _, _, images, labels, _ in epoch_batches]))
        exec(official.train_epoch, namespace)
        exec(official.scheduler_step, namespace)

    ours, theirs = sides["ours"], sides["official"]
    for kind, title in (("class_balanced", "class-aware"), ("instance_balanced", "uniform")):
        table.compare(f"cosine logits, {title} batches, steps 1-{STEPS}",
                      torch.stack(ours["clouds"][kind].inputs), torch.stack(theirs["clouds"][kind].inputs))
    table.compare("(b) phase-2 objective, step 1", ours["log"][0]["objective"], theirs["log"][0]["objective"])
    table.compare(f"(b) phase-2 objective, steps 1-{STEPS}", [e["objective"] for e in ours["log"]],
                  [e["objective"] for e in theirs["log"]])
    for name in TRAINABLE:
        table.compare(f"(c) gradient of {name}, step 1", ours["log"][0]["grad"][name], theirs["log"][0]["grad"][name])
    for name in TRAINABLE:
        table.compare(f"(c) gradient of {name}, steps 2-{STEPS}",
                      torch.stack([e["grad"][name] for e in ours["log"][1:]]),
                      torch.stack([e["grad"][name] for e in theirs["log"][1:]]))
    table.compare(f"(d) lr per step, steps 1-{STEPS}", [e["lr"] for e in ours["log"]],
                  [e["lr"] for e in theirs["log"]])
    for name in (*TRAINABLE, "shared prompts"):
        table.compare(f"(d) {name} after {STEPS} steps", ours["log"][-1]["value"][name],
                      theirs["log"][-1]["value"][name])
    for name in TRAINABLE:
        table.compare(f"(d) {name}: change over {STEPS} steps",
                      ours["log"][-1]["value"][name] - ours["start"][name],
                      theirs["log"][-1]["value"][name] - theirs["start"][name])
    return [[e["lr"] for e in side["log"]] for side in (ours, theirs)]


def build(official: Official, weights: str | None, seed: int, run_dir: Path):
    """Our LPT (through the method's own setup) and the official VPT_ViT with the same weights and prompts."""
    torch.manual_seed(seed)
    backbone = create_backbone("vit_tiny_patch16_224", weights=weights, allow_random_init=True,
                               image_size=IMAGE_SIZE)
    labels = np.repeat(np.arange(len(COUNTS)), COUNTS)
    ctx = Context(backbone, labels, torch.randn(len(labels), 3, IMAGE_SIZE, IMAGE_SIZE), run_dir)
    method = LPT(ctx)
    method.setup()
    net, hp = method.net, ctx.hparams
    with torch.no_grad():  # rows of unequal norm, as a head leaves phase 1 (the cosine head normalises them)
        net.head.weight.mul_(torch.rand(len(COUNTS), 1) + 0.5)
    model = official.structure.VPT_ViT(
        img_size=IMAGE_SIZE, patch_size=backbone.patch_size, embed_dim=backbone.embed_dim, depth=backbone.num_blocks,
        num_heads=backbone.blocks[0].attn.num_heads, num_classes=len(COUNTS), Prompt_Token_num=hp["prompt_length"],
        VPT_type="Deep", topk=hp["top_k"], pool_size=hp["pool_size"], share_blocks=net.shared_layers)
    missing, unexpected = model.load_state_dict(backbone.model.state_dict(), strict=False)
    if unexpected or any(not key.startswith("prompt_learner.") for key in missing):
        raise SystemExit(f"the official model does not take the backbone's weights: missing {missing}, "
                         f"unexpected {unexpected}")
    with torch.no_grad():
        learner = model.prompt_learner
        learner.Prompt_Tokens.copy_(net.shared_prompts)
        learner.Prompt_Tokens_pool.copy_(net.pool)
        learner.Prompt_Keys.copy_(net.keys)
        learner.head.weight.copy_(net.head.weight.t())
    return method, model, labels


def main() -> int:
    parser = argparse.ArgumentParser(description="Training-step parity of lpt with the official LPT code",
                                     epilog="See the module docstring for what runs and how.")
    parser.add_argument("official_dir", type=Path, help="a copy of DongSky/LPT (or its phase2_test folder)")
    parser.add_argument("--weights", help="ViT-Tiny/16 weights file (default: random init from --seed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.official_dir.is_dir():
        print(f"skipped: no official LPT code at {args.official_dir}")
        return 0
    root = args.official_dir / "phase2_test" if (args.official_dir / "phase2_test").is_dir() else args.official_dir
    if not (root / "train_dual_dualloss.py").is_file():
        print(f"error: {root} has no train_dual_dualloss.py; give a copy of DongSky/LPT or its phase2_test folder")
        return 2
    torch.set_num_threads(min(2, torch.get_num_threads()))
    official = Official(root)
    table = Table()
    with tempfile.TemporaryDirectory() as folder:
        method, model, labels = build(official, args.weights, args.seed, Path(folder))
        official_args = compare_defaults(table, official)
        hp = method.ctx.hparams
        run_args = argparse.Namespace(**{**vars(official_args), "base_lr": hp["lr"], "batch_size": BATCH,
                                         "epochs": EPOCHS, "weight_decay": hp["weight_decay"],
                                         "warmup_epochs": hp["warmup_epochs"]})
        dataset = official_dataset(official, labels, Path(folder))
        namespace = {"torch": torch, "optim": torch.optim, "args": run_args, "model": model, "device": "cpu",
                     "train_dataset": dataset, "AGCL": official.cb_loss.AGCL, "CosineLRScheduler": CosineLRScheduler,
                     "DataLoader": torch.utils.data.DataLoader, "tqdm": lambda iterable, **_: iterable,
                     "ClassAwareSampler": official.sampler.ClassAwareSampler,
                     "CBEffectNumSampler": official.sampler.CBEffectNumSampler,
                     "Averager": official.utils.Averager, "compute_acc": official.utils.compute_acc}
        official.run_setup(namespace)
        compare_agcl(table, {"class_balanced": namespace["criterion"],
                             "instance_balanced": namespace["criterion_ibs"]}, method.losses, args.seed)
        compare_schedule(table, official, official_args, hp["lr"])
        compare_sampler(table, official, dataset, labels, args.seed)
        compare_steps(table, official, Path(folder))
        lrs = train_both(table, official, namespace, method, model)
    weights = method.ctx.backbone.weights_info
    print(f"ViT-Tiny/16 at {IMAGE_SIZE} px ({weights.source}: {weights.location}), {len(COUNTS)} classes "
          f"{list(COUNTS)}, batches {BATCH} + {BATCH}, {EPOCHS}-epoch phase 2 cut after {STEPS} steps, seed "
          f"{args.seed}; torch {torch.__version__}")
    print("lr per step, ours:     " + ", ".join(f"{lr:.6g}" for lr in lrs[0]))
    print("lr per step, official: " + ", ".join(f"{lr:.6g}" for lr in lrs[1]))
    return 0 if table.show() else 1


if __name__ == "__main__":
    sys.exit(main())

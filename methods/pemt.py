"""`pemt` and its ablation variants: PEMT (Lin et al., Findings of ACL 2024, arXiv 2402.15082), a mixture of
source-task LoRAs gated by task correlation, carried over from T5 to a frozen ViT (the modules and what each
follows in the official code: methods/pemt_model.py).

- Sources. PEMT's sources are other tasks. Two readings, and the record says which:
  - `sources=datasets`, the paper's: the other registered datasets (leave-one-out), each a source task over its
    own classes, read from $BENCH_DATA_ROOT with their default options. `source_datasets` names them; left
    empty, every one whose folder is there is taken (the record lists those taken and those absent).
  - `sources=shot_groups` (the default): the target's many / medium / few-shot training subsets (the harness's
    shot groups of `shot_convention`, from the train counts), each a task over its own classes. This is the
    long-tail reading of "tasks", and what the embedded default and a machine with one dataset can run. A group
    with fewer than two classes cannot train a classifier and is skipped (the record says so). It is the
    default because the other reading's sources depend on which datasets a machine holds: a default that did
    would make two machines' runs of one protocol different methods.
- Stage 1, a phase per source (`pemt_source_<name>`): the source's LoRA (`mlp.fc2` of every block), its task
  prompt and its head, trained with cross-entropy on the source's training images (instance-balanced). The epoch
  kept is the best on the source's own validation data, as the official stage 1 keeps its best epoch on the
  source's validation set: a source dataset's val split (its last epoch where it has none), or for a shot group
  the target's val split, where the source model scores the classes it does not know `OUTSIDE`.
- Stage 2 (`pemt_target`): the target prompt (attending over the frozen source prompts), the zero-initialised
  gates, the target adapters, the tower's LayerNorms and a new linear head, on the whole training set, with
  cross-entropy + `aux_weight` × the task-sparsity term.
- Optimiser, both stages: AdamW, weight decay 0, learning rate decayed linearly per epoch (the official
  Hugging Face Trainer: get_linear_schedule_with_warmup; the engine's `schedule="linear"`).

Deviations: the tower is a frozen ViT, not T5 (no decoder: the loss averages the aux term over the encoder
blocks only); the task prompts have `prompt_length` tokens (the official length is that of the tokenised task
description) and start from patch tokens of the task's own images (`prompt_init`; officially the description's
token embeddings); the stage-1 warm-up of 500 steps is left out (the engine's warm-up counts whole epochs) and so
is the Trainer's gradient clipping at norm 1 (the engine has none); classification heads replace T5's text output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.data import chunks
from bench.datasets.base import DATA_ROOT_ENV, DATASETS, LongTailDataset, data_folders, load_dataset
from bench.distributed import world
from bench.errors import BenchError
from bench.hparams import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Choice, HParam, LogUniform
from bench.methods.base import Method, Phase, register_method, register_variant
from bench.methods.common import image_batches, optimizer_factory, predict_images, steps
from bench.methods.pemt_model import LORA_B_INITS, PEMTNet, patch_token_prompt
from bench.methods.samplers import epoch_indices
from bench.metrics import GROUPS, Metrics, evaluate_logits, shot_groups
from bench.seeding import derived_seed

SOURCE_KINDS = ("shot_groups", "datasets")
PROMPT_INITS = ("patch_tokens", "trunc_normal")
CODE = "JachinLin2022/PEMT"

PEMT_HPARAMS: dict[str, HParam] = {
    "sources": HParam("shot_groups", help="the source tasks: shot_groups (the target's many/medium/few-shot "
                      "subsets; this harness's long-tail reading, and the default because it does not depend on "
                      "which datasets a machine holds) | datasets (the other registered datasets under "
                      f"${DATA_ROOT_ENV}, leave-one-out: the paper's other tasks, {CODE} run_pemt_stage1.sh)",
                      choices=SOURCE_KINDS),
    "source_datasets": HParam("", help="with sources=datasets: the source datasets, comma-separated; empty: every "
                              f"other registered dataset whose folder is under ${DATA_ROOT_ENV} (recorded)"),
    "source_epochs": HParam(5, help=f"stage 1 epochs per source ({CODE} run_pemt_stage1.sh: 5)", bounds=NON_NEGATIVE),
    "source_lr": HParam(5e-4, LogUniform(5e-5, 5e-3), f"stage 1 AdamW learning rate ({CODE} run_pemt_stage1.sh: "
                        "5e-4)", bounds=POSITIVE),
    "source_batch_size": HParam(128, Choice((32, 64, 128)), f"stage 1 batch size ({CODE} run_pemt_stage1.sh: 128)",
                                bounds=AT_LEAST_ONE),
    "epochs": HParam(20, help=f"stage 2 epochs ({CODE} run_pemt_stage2.sh: 20)", bounds=NON_NEGATIVE),
    "lr": HParam(3e-4, LogUniform(3e-5, 3e-3), f"stage 2 AdamW learning rate ({CODE} run_pemt_stage2.sh: 3e-4)",
                 bounds=POSITIVE),
    "batch_size": HParam(32, Choice((32, 64, 128)), f"stage 2 batch size ({CODE} run_pemt_stage2.sh: 32)",
                         bounds=AT_LEAST_ONE),
    "weight_decay": HParam(0.0, help="AdamW weight decay of both stages (the Hugging Face Trainer's default 0, "
                           f"which {CODE} keeps)", bounds=NON_NEGATIVE),
    "warmup_epochs": HParam(0, help=f"stage 2 warm-up epochs before the linear decay ({CODE} run_pemt_stage2.sh: "
                            "warmup_steps 0)", bounds=NON_NEGATIVE),
    "lora_rank": HParam(64, Choice((8, 16, 32, 64)), f"rank r of each source's LoRA on mlp.fc2 ({CODE} "
                        "modeling_t5.py: 64; lower it for narrow towers)", bounds=AT_LEAST_ONE),
    "lora_alpha": HParam(64.0, help=f"LoRA alpha; the update is scaled by alpha / r ({CODE} modeling_t5.py: 64)",
                         bounds=POSITIVE),
    "lora_b_init": HParam("kaiming", help=f"init of LoRA's B: kaiming (kaiming-uniform, {CODE} adapters/lora.py "
                          "for a single expert, its zero init commented out) | zero (the LoRA paper's)",
                          choices=LORA_B_INITS),
    "prompt_length": HParam(10, Choice((5, 10, 20)), "task prompt tokens after CLS (this harness: images have no "
                            f"task description, whose token count sets the length in {CODE})", bounds=AT_LEAST_ONE),
    "prompt_init": HParam("patch_tokens", help="task prompt init: patch_tokens (patch tokens of the task's own "
                          f"images, the counterpart of {CODE}'s init from the task description's token embeddings) "
                          "| trunc_normal (std 0.02, VPT's)", choices=PROMPT_INITS),
    "prompt_attn_dropout": HParam(0.1, help=f"dropout on the prompt attention weights ({CODE} modeling_t5.py: "
                                  "0.1)", bounds=FRACTION),
    "adapter_reduction": HParam(16, Choice((8, 16, 32)), "target adapter width = tower width / this "
                                f"({CODE} run_pemt_stage2.sh: task_reduction_factor 16, 768 → 48)",
                                bounds=AT_LEAST_ONE),
    "aux_weight": HParam(0.1, help=f"weight of the task-sparsity term ({CODE} modeling_t5.py: 0.1)",
                         bounds=NON_NEGATIVE),
}


@dataclass(frozen=True)
class Source:
    """A source task: its name, the target classes it covers (or, for a source dataset, its number of classes),
    its training images (indices into the train split of the target, or of `dataset`)."""

    name: str
    classes: list[int] | int
    indices: np.ndarray
    dataset: LongTailDataset | None = None  # a source dataset (None: a subset of the target)
    root: str | None = None  # its data folder


def adamw(lr: float, weight_decay: float):
    return optimizer_factory({"optimizer": "adamw", "lr": lr, "weight_decay": weight_decay})


def subset_batches(ctx, phase_name: str, indices: np.ndarray, batch_size: int,
                   dataset: LongTailDataset | None = None):
    """Augmented batches of the training images `indices` (of the run's dataset, or of `dataset`), shuffled per
    (seed, phase, epoch)."""
    transform = ctx.transform(train=True, dataset=dataset)
    labels = (dataset or ctx.dataset).train.labels[indices]

    def batches(epoch: int):
        seed = derived_seed(ctx.seed, phase_name, epoch)
        order = indices[epoch_indices("instance_balanced", labels, seed)]
        shares = world().shard_batches(chunks(order, batch_size))
        yield from ctx.feed("train", dataset).batches(transform, shares, world().noise_seed(seed, "augment"))

    return batches, steps(len(indices), batch_size)


class PEMT(Method):
    """The full PEMT; the variants switch parts off."""

    description = ("PEMT: per-source LoRA + task prompt (stage 1), then a gated mixture of the source LoRAs "
                   "guided by prompt attention, with target adapters (stage 2); sources: shot groups or datasets")
    hparams = PEMT_HPARAMS
    # The micro tower is 64 wide: LoRA rank 8 (alpha 8 keeps the official scale alpha / r = 1), stage-1 batches of
    # 32 (the few-shot source has 38 images) at the embedded default's lr 2e-3; stage 2's lr 2e-2 was chosen on val
    # (seed 0) over 2e-3 / 5e-3 / 1e-2 / 2e-2 / 4e-2: val mean per class 57 / 75 / 77 / 79 / 80, the plateau's middle.
    embedded_preset = {"lora_rank": "8", "lora_alpha": "8", "source_batch_size": "32", "source_lr": "2e-3",
                       "epochs": "20", "lr": "2e-2", "batch_size": "32"}
    use_sources = True
    prompt_attention = True
    learned_gate = True
    target_adapter = True
    use_aux = True

    def setup(self) -> None:
        ctx, hp = self.ctx, self.hp
        self.sources, self.skipped = self._sources() if self.use_sources else ([], [])
        self.net = PEMTNet(ctx.backbone, [s.classes for s in self.sources], ctx.dataset.num_classes, hp,
                           prompt=self.use_sources, prompt_attention=self.prompt_attention,
                           learned_gate=self.learned_gate, adapter=self.target_adapter).to(ctx.device)
        if self.use_sources and hp["prompt_init"] == "patch_tokens":
            self._init_prompts()
        self.gate_means: dict[str, torch.Tensor] = {}

    def _sources(self) -> tuple[list[Source], list[dict]]:
        """The source tasks (and those left out, with why) of the reading `sources` names."""
        read = self._dataset_sources if self.hp["sources"] == "datasets" else self._shot_group_sources
        sources, skipped = read()
        if len(sources) == 1:
            self.ctx.warn(f"pemt: one source ({sources[0].name}): its gate weight is 1 in every block")
        return sources, skipped

    def _shot_group_sources(self) -> tuple[list[Source], list[dict]]:
        ctx, hp = self.ctx, self.hp
        groups = shot_groups(ctx.dataset.train_counts, ctx.options.shot_convention)
        labels = ctx.dataset.train.labels
        sources, skipped = [], []
        for name in GROUPS:
            classes = np.flatnonzero(groups == name)
            if len(classes) < 2:
                skipped.append({"name": name, "classes": classes.tolist(),
                                "reason": "a source needs two or more classes to train a classifier"})
                continue
            sources.append(Source(name, classes.tolist(), np.flatnonzero(np.isin(labels, classes))))
        if not sources:
            raise BenchError(f"pemt: no shot group of {ctx.dataset.name} ({hp['shot_convention']} convention) has two "
                             "or more classes, so there is no source task; use pemt_adapter_only")
        return sources, skipped

    def _dataset_sources(self) -> tuple[list[Source], list[dict]]:
        """The paper's reading: the other registered datasets (those named in `source_datasets`, or every one
        whose folder is under $BENCH_DATA_ROOT), each with its default options, over its own classes."""
        ctx, named = self.ctx, [n.strip() for n in self.hp["source_datasets"].split(",") if n.strip()]
        target = DATASETS.get(ctx.dataset_name)
        folders = {name: folder for name, folder in data_folders().items()
                   if name != target.name and DATASETS.get(name).dirname != target.dirname}
        fix = f"set {DATA_ROOT_ENV} to the folder that holds them, or use sources=shot_groups"
        if not named and not any(folders.values()):
            where = "which holds none of them" if folders else "which is not set"
            raise BenchError(f"pemt: sources=datasets reads the other registered datasets from ${DATA_ROOT_ENV}, "
                             f"{where}; {fix}")
        chosen = list(dict.fromkeys(DATASETS.canonical(name) for name in named)) or [
            name for name, folder in folders.items() if folder is not None]
        for name in chosen:
            if folders.get(name) is None:
                where = "is the target" if name == target.name else f"has no folder under ${DATA_ROOT_ENV}"
                raise BenchError(f"pemt: source dataset {name} {where}; name others in source_datasets, or {fix}")
        sources = []
        for name in chosen:
            dataset = load_dataset(name, folders[name], {})
            sources.append(Source(name, dataset.num_classes, np.arange(len(dataset.train)), dataset,
                                  str(folders[name])))
        skipped = [{"name": name, "reason": f"no folder under ${DATA_ROOT_ENV}" if folder is None else "not named "
                    "in source_datasets"} for name, folder in folders.items() if name not in chosen]
        return sources, skipped

    def _init_prompts(self) -> None:
        """Each task's prompt from patch tokens of its own training images (drawn per seed and task)."""
        ctx, net, length = self.ctx, self.net, self.hp["prompt_length"]
        tasks = [(s.name, s.indices, p, s.dataset) for s, p in zip(self.sources, net.source_prompts, strict=True)]
        tasks.append(("target", np.arange(len(ctx.dataset.train)), net.target_prompt, None))
        for name, indices, prompt, dataset in tasks:
            rng = np.random.default_rng(derived_seed(ctx.seed, "pemt_prompt", name))
            drawn = rng.choice(indices, length, replace=len(indices) < length)
            images, _ = next(iter(ctx.feed("train", dataset).batches(ctx.transform(), [drawn.tolist()], 0)))
            with torch.no_grad():
                prompt.copy_(patch_token_prompt(ctx.backbone, images, rng))

    def model(self) -> nn.Module:
        return self.net

    # -- phases -------------------------------------------------------------------------------------------
    def _source_phase(self, index: int, source: Source) -> Phase:
        hp, name = self.hp, f"pemt_source_{source.name}"
        batches, count = subset_batches(self.ctx, name, source.indices, hp["source_batch_size"], source.dataset)

        def enter() -> None:
            self.net.source = index

        return Phase(name=name, epochs=hp["source_epochs"], parameters=self.net.source_parameters(index),
                     make_optimizer=adamw(hp["source_lr"], hp["weight_decay"]), batches=batches,
                     loss=lambda batch: F.cross_entropy(self.net(batch[0]), batch[1]), steps_per_epoch=count,
                     on_start=enter, schedule="linear",
                     validate=(lambda: self._source_val(source)) if source.dataset is not None else None)

    def _source_val(self, source: Source) -> Metrics | None:
        """A source dataset's model on that dataset's own val split (None where it has none)."""
        dataset = source.dataset
        if len(dataset.val) == 0:
            return None
        logits, labels = predict_images(self.ctx, self.net, "val", dataset=dataset)
        return evaluate_logits(labels.numpy(), logits.float().numpy(), dataset.train_counts,
                               self.hp["shot_convention"])

    @property
    def aux_weight(self) -> float:
        return self.hp["aux_weight"] if self.use_aux and self.sources else 0.0

    def _target_loss(self, batch) -> torch.Tensor:
        loss = F.cross_entropy(self.net(batch[0]), batch[1])
        return loss + self.aux_weight * self.net.aux_loss() if self.aux_weight else loss

    def _target_phase(self) -> Phase:
        hp = self.hp
        batches, count = image_batches(self.ctx, "pemt_target", "instance_balanced")

        def enter() -> None:
            self.net.source = None

        return Phase(name="pemt_target", epochs=hp["epochs"], parameters=self.net.target_parameters(),
                     make_optimizer=adamw(hp["lr"], hp["weight_decay"]), batches=batches, loss=self._target_loss,
                     warmup_epochs=hp["warmup_epochs"], steps_per_epoch=count, on_start=enter, schedule="linear")

    def phases(self) -> list[Phase]:
        return [*(self._source_phase(i, s) for i, s in enumerate(self.sources)), self._target_phase()]

    # -- prediction and record ----------------------------------------------------------------------------
    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the model of the current stage; in stage 2 the gates' mean per block is kept per split."""
        net, current = self.net, self.net.source
        if current is not None and self.sources[current].dataset is not None:
            net.source = None  # stopped inside a source dataset's phase: its head knows none of the target's
            # classes, so the target's splits are scored by the (untrained) stage-2 model
        tally = bool(self.sources) and net.source is None
        net.tally = torch.zeros(len(net.blocks), len(self.sources), device=self.ctx.device) if tally else None
        try:
            logits, labels = predict_images(self.ctx, net, split)
        finally:
            sums, net.tally, net.source = net.tally, None, current
        if sums is not None:
            self.gate_means[split] = world().mean(sums / sums.sum(-1, keepdim=True)).cpu()
        return logits, labels

    def extra_record(self) -> dict:
        """Which sources were used (and skipped), the switches, and the gates' mean weights on val and test."""
        net = self.net
        return {"pemt": {
            "sources": self.hp["sources"] if self.use_sources else "none",
            "source_tasks": [source_entry(s) for s in self.sources],
            "skipped_sources": self.skipped,
            "gate": "learned" if self.learned_gate else "uniform", "prompt_attention": self.prompt_attention,
            "target_adapter": self.target_adapter, "aux_weight": self.aux_weight,
            "prompt_length": net.length, "lora_rank": self.hp["lora_rank"] if self.sources else 0,
            "gate_means": {split: {"per_block": means.tolist(), "mean": means.mean(0).tolist(),
                                   "max_deviation_from_uniform": float((means - 1 / means.shape[1]).abs().max())}
                           for split, means in self.gate_means.items()},
        }}


def source_entry(source: Source) -> dict:
    if source.dataset is None:
        return {"name": source.name, "classes": source.classes, "train_images": len(source.indices)}
    return {"name": source.name, "dataset": source.dataset.name, "data_root": source.root,
            "num_classes": source.classes, "train_images": len(source.indices),
            "val_images": len(source.dataset.val)}


register_method("pemt", group="comparator", place=30)(PEMT)
register_variant(PEMT, "pemt_no_aux",
                 "PEMT ablation: no task-sparsity term (cross-entropy alone)",
                 use_aux=False)
register_variant(PEMT, "pemt_uniform_gate",
                 "PEMT ablation: the source LoRAs mixed with fixed uniform weights (no gate)",
                 learned_gate=False)
register_variant(PEMT, "pemt_no_prompt_attn",
                 "PEMT ablation: the target prompt does not attend over the source prompts",
                 prompt_attention=False)
register_variant(PEMT, "pemt_no_target_adapter",
                 "PEMT ablation: no target adapters in stage 2",
                 target_adapter=False)
register_variant(PEMT, "pemt_adapter_only",
                 "PEMT ablation: stage 2's target adapters, LayerNorms and head only (no sources, prompts "
                 "or LoRAs)",
                 use_sources=False)

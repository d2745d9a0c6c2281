"""`lmpt` and its ablation variants: LMPT, prompt tuning with a class-specific embedding loss (Xia et al., ACL
2024 ALVR workshop, arXiv 2305.04536; official code richard-peng-xia/LMPT, read for its facts, not copied).

LMPT is multi-label (VOC-LT, COCO-LT); this is its single-label long-tailed form on the harness's CLIP towers:
- prompts: CoOp class-specific contexts [C, n_ctx, width] on the text tower, N(0, 0.02), class token at the end
  (`lmpt_model`); both CLIP towers frozen; logits = CLIP's logit scale · cos(image, class text feature) (the
  tower's own learned scale; `logit_scale` overrides it, as the embedded preset does: see there);
- loss: λ · DB(logits) + (1 − λ) · CSEL(captions, prompts) (`lmpt_losses`, which states what of the released
  CSEL was reconstructed and why); a single-label image is the one-positive case, so the sigmoid DB loss keeps
  its form with one-hot targets;
- captions: one per training image from a captions file (`captions=FILE`: a JSON object mapping each image's
  name, as the dataset names it (its path relative to the data root; "sklearn-digits[12]" for digits), to
  its caption, from any offline captioner; the record holds the file's path and sha256). No dataset here ships
  captions, so the default is the explicit `captions=template`: each image is captioned "a photo of a
  {class}.", which the run says in a warning and records. Failing instead would leave `lmpt` unrunnable on
  every shipped dataset; with the template it equals `lmpt_template`, and the warning says so;
- optimiser as lmpt/train.py and train.sh: SGD lr 5e-4, momentum 0.9, weight decay 1e-4, batch 64, 50 epochs,
  ReduceLROnPlateau (mode max, patience 5, min lr 1e-7). The original stepped it on, and kept the epoch best
  on, the test mAP; here both follow val (the engine's `Plateau` and `model_selection`), never test;
- augmentation and normalisation are the harness's (`augment`, the tower's own open_clip preprocessing); the
  original resized to 224 with flips only and normalised with ImageNet statistics;
- cost: the contexts are C · n_ctx · width parameters (iNaturalist 2018 with ViT-B/16: 8142 · 16 · 512 = 66.7M),
  and every step encodes all C prompts, `text_chunk` classes at a time (recomputed in the backward pass when
  there is more than one chunk); both are recorded (`extra_record`).
On the embedded default LMPT runs the random-init `clip_micro` tower (no CLIP weights ship), said in the run's
warnings and record.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import torch
from torch import nn

from bench.atomic_io import file_sha256
from bench.data import chunks
from bench.distributed import world
from bench.errors import BenchError
from bench.hparams import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Bounds, Choice, HParam
from bench.methods.base import Method, Phase, Plateau, register_method, register_variant
from bench.methods.clip_baselines import TextClassifier, require_clip
from bench.methods.common import optimizer_factory, optimizer_hparams, predict_images, sampler_hparams, steps
from bench.methods.lmpt_losses import (
    binary_cross_entropy,
    class_specific_embedding_loss,
    csel_margins_and_weights,
    distribution_balanced_loss,
)
from bench.methods.lmpt_model import LMPTNet, PromptLearner, check_text_tower, prompt_token_ids
from bench.methods.losses import logit_adjusted_loss
from bench.methods.lptpp import VL_BACKBONE
from bench.methods.samplers import epoch_indices
from bench.seeding import derived_seed
from bench.text import tokenizer_for

TEMPLATE = "a photo of a {}."
SHOWN_TEMPLATE = TEMPLATE.format("{class}")
LOSSES = ("db", "bce", "la")
CODE = "richard-peng-xia/LMPT"
DB_SOURCE = f"{CODE} lmpt/train.py, its DB loss for COCO-LT (the loss itself: lmpt/dbl.py ResampleLoss)"

LMPT_HPARAMS: dict[str, HParam] = {
    **{k: v for k, v in optimizer_hparams(lr=5e-4, weight_decay=1e-4, optimizer="sgd", epochs=50, batch_size=64,
                                          source=f"{CODE} lmpt/train.py and train.sh").items()
       if k != "warmup_epochs"},  # the rate follows val (plateau), not a warm-up and cosine
    **sampler_hparams(),  # lmpt/train.py shuffles the training set
    "plateau_patience": HParam(5, help=f"ReduceLROnPlateau patience, in epochs, on the val selection metric "
                               f"({CODE} lmpt/train.py; it stepped on test mAP)", bounds=NON_NEGATIVE),
    "plateau_factor": HParam(0.1, help="ReduceLROnPlateau factor (torch's default, which lmpt/train.py keeps)",
                             bounds=Bounds(0, 1, low_open=True, high_open=True)),
    "min_lr": HParam(1e-7, help=f"ReduceLROnPlateau min_lr ({CODE} lmpt/train.py)", bounds=NON_NEGATIVE),
    "n_ctx": HParam(16, Choice((4, 8, 16)), f"context vectors per prompt ({CODE} train.sh --n_ctx 16)",
                    bounds=AT_LEAST_ONE),
    "loss": HParam("db", help="classification loss: db (distribution-balanced, LMPT's) | bce (plain sigmoid BCE, "
                   "lmpt/train.py's bce) | la (logit-adjusted softmax CE, Menon et al. 2021; lmpt_softmax)",
                   choices=LOSSES),
    "db_alpha": HParam(0.1, help=f"DB rebalancing map: additive α ({DB_SOURCE})", bounds=NON_NEGATIVE),
    "db_beta": HParam(10.0, help=f"DB rebalancing map: slope β ({DB_SOURCE})", bounds=NON_NEGATIVE),
    "db_mu": HParam(0.2, help=f"DB rebalancing map: shift μ ({DB_SOURCE})"),
    "db_neg_scale": HParam(2.0, help=f"DB negative-tolerant regularisation: negative logit scale λ ({DB_SOURCE})",
                           bounds=POSITIVE),
    "db_init_bias": HParam(0.05, help=f"DB negative-tolerant regularisation: class-prior bias factor κ "
                           f"({DB_SOURCE})", bounds=NON_NEGATIVE),
    "db_focal_gamma": HParam(2.0, help=f"DB focal exponent γ ({DB_SOURCE})", bounds=NON_NEGATIVE),
    "db_balance": HParam(2.0, help=f"DB focal balance factor ({DB_SOURCE})", bounds=POSITIVE),
    "la_tau": HParam(1.0, help="loss=la: scale τ of the log prior (Menon et al. 2021; this harness's default)",
                     bounds=NON_NEGATIVE),
    "lam": HParam(0.5, help=f"λ: loss = λ · classification + (1 − λ) · CSEL ({CODE} train.sh --lam 0.5)",
                  bounds=FRACTION),
    "csel_margin": HParam(0.2, help=f"CSEL base margin m; class c's is m · n_c^(-1/4) ({CODE} lmpt/train.py "
                          "margin=0.2; the paper's class-aware soft margin)", bounds=NON_NEGATIVE),
    "csel_gamma": HParam(2.0, help=f"CSEL re-weighting exponent: w_c ∝ n_c^(-γ) ({CODE} lmpt/csel.py default, "
                         "which lmpt/train.py keeps; its --gamma goes elsewhere)", bounds=NON_NEGATIVE),
    "csel_offset": HParam(2, help=f"CSEL token alignment m: caption tokens :T−m against prompt tokens m: ({CODE} "
                          "train.sh --m_ctx 2)", bounds=NON_NEGATIVE),
    "captions": HParam("template", help="a JSON file mapping each training image's name (its path relative to the "
                       "data root) to a caption from an offline captioner, or template (every image captioned 'a "
                       "photo of a {class}.'; this harness's default, since no dataset here ships captions; said "
                       "in a warning and recorded)"),
    "logit_scale": HParam(0.0, help="scale of the cosine logits; 0 = the CLIP tower's own learned one (100 for "
                          "OpenAI's CLIP, as LMPT uses it; the random-init clip_micro has its init 1/0.07, so the "
                          "embedded preset sets 100: this harness)", bounds=NON_NEGATIVE),
    "text_chunk": HParam(256, help="classes per text-tower pass; with more classes the chunks are recomputed in "
                         "the backward pass so memory holds one chunk's activations (this harness: iNaturalist's "
                         "8142 prompts do not fit at once)", bounds=AT_LEAST_ONE),
}


def read_captions(path: Path) -> dict[str, str]:
    """The captions file: a JSON object, image name → caption."""
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"captions file not found: {path} (--set captions=FILE or captions=template)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BenchError(f"captions file {path} is not readable JSON ({error})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise BenchError(f"captions file {path} must hold one JSON object mapping image names to caption strings")
    return mapping


def caption_tokens(dataset, source: str, tokenizer) -> tuple[torch.Tensor, dict]:
    """([N_train, T] int32 token ids of each training image's caption, what the record says of them)."""
    split = dataset.train
    if source == "template":
        per_class = tokenizer([TEMPLATE.format(name) for name in dataset.class_names]).to(torch.int32)
        return per_class[torch.as_tensor(split.labels)], {"source": "template", "template": SHOWN_TEMPLATE}
    path = Path(source).expanduser().resolve()
    mapping = read_captions(path)
    names = [split.images.describe(i) for i in range(len(split))]
    missing = [name for name in names if name not in mapping]
    if missing:
        raise BenchError(f"captions file {path} has no caption for {len(missing)} of the {len(names)} training "
                         f"images (first: {missing[0]!r}); its keys must be the images' names as the dataset "
                         "gives them (paths relative to the data root)")
    tokens = tokenizer([mapping[name] for name in names]).to(torch.int32)  # cut to the tower's context length
    return tokens, {"source": "file", "path": str(path), "sha256": file_sha256(path), "images": len(names)}


class LMPT(Method):
    """The full LMPT; variants switch the CSEL off, share one context, or caption with the template."""

    description = "LMPT: class-specific CoOp prompts on frozen CLIP, DB loss + class-specific embedding loss"
    hparams = LMPT_HPARAMS
    default_backbone = VL_BACKBONE
    embedded_backbone = "clip_micro"
    # On the random clip_micro every image feature points almost the same way (mean pairwise cosine 0.992 at
    # 16 px): at its init logit scale 1/0.07 even a free cosine head stays near 21 % val, at OpenAI CLIP's 100
    # it reaches 43 %, so the preset sets 100. With n_ctx 8 (16 does not fit the 16-token text tower), 100
    # epochs, patience 20 (in 60 SGD epochs patience 10 gave val 21.0 %, 20 gave 22.3 %) and the common
    # batch 32, mean val (test) over seeds 0-2: SGD lr 1e-3 / 2e-3 / 4e-3 25.7 (26.3) / 28.7 (29.2) /
    # 27.3 (23.6) %, the common preset's AdamW 1e-3 / 2e-3 / 4e-3 32.3 (31.7) / 31.7 (30.1) / 30.0 (29.4) %.
    embedded_preset = {"n_ctx": "8", "epochs": "100", "plateau_patience": "20", "logit_scale": "100", "lr": "1e-3"}
    embedded_space = {"n_ctx": {"choice": [4, 8]}}
    class_specific = True
    use_csel = True
    template_only = False

    def setup(self) -> None:
        require_clip(self)
        ctx, hp = self.ctx, self.hp
        backbone = ctx.backbone.eval()
        clip_model = backbone.clip_model.to(ctx.device).eval().requires_grad_(False)
        check_text_tower(clip_model, backbone.name)
        if hp["csel_offset"] >= clip_model.context_length:
            raise BenchError(f"csel_offset={hp['csel_offset']} leaves no caption tokens to compare: the text tower "
                             f"holds {clip_model.context_length}; lower it")
        tokenizer = tokenizer_for(backbone)
        ids = prompt_token_ids(tokenizer, list(ctx.dataset.class_names), hp["n_ctx"], clip_model.context_length)
        learner = PromptLearner(clip_model, ids, hp["n_ctx"], self.class_specific)
        self.net = LMPTNet(learner, backbone, hp["text_chunk"], hp["csel_offset"], hp["logit_scale"])
        self.net.to(ctx.device)
        self.classify = self._classification_loss()
        self.captions, self.caption_info = None, None
        if self.use_csel:
            tokens, self.caption_info = caption_tokens(ctx.dataset, self._caption_source(), tokenizer)
            self.captions = tokens.to(ctx.device)
            margins, weights = csel_margins_and_weights(ctx.dataset.train_counts, hp["csel_margin"],
                                                        hp["csel_gamma"])
            self.margins, self.weights = margins.to(ctx.device), weights.to(ctx.device)
        elif hp["captions"] != "template":
            ctx.warn(f"{self.name} has no CSEL: captions={hp['captions']} is not used")

    def _caption_source(self) -> str:
        """The template for lmpt_template and for captions=template (both said in a warning), else the file."""
        source = self.hp["captions"]
        if self.template_only and source != "template":
            self.ctx.warn(f"{self.name} captions every image with the template {SHOWN_TEMPLATE!r}: "
                          f"captions={source} is not used")
            return "template"
        if source == "template" and not self.template_only:
            self.ctx.warn(f"{self.name}: no captions file (captions=template): every training image is "
                          f"captioned {SHOWN_TEMPLATE!r}, as lmpt_template; give --set captions=FILE (JSON: image "
                          "name → caption) for LMPT's image captions")
        return source

    def _classification_loss(self):
        hp, counts = self.hp, self.ctx.dataset.train_counts
        if hp["loss"] == "bce":
            return binary_cross_entropy
        if hp["loss"] == "la":
            return partial(logit_adjusted_loss, counts=counts, tau=hp["la_tau"])
        return partial(distribution_balanced_loss, counts=counts, alpha=hp["db_alpha"], beta=hp["db_beta"],
                       mu=hp["db_mu"], neg_scale=hp["db_neg_scale"], init_bias=hp["db_init_bias"],
                       focal_gamma=hp["db_focal_gamma"], balance=hp["db_balance"])

    def model(self) -> nn.Module:
        return self.net

    def _batches(self):
        """(augmented images, labels, their indices in the train split) per step, reproducible per (seed, epoch);
        the indices pick each image's caption."""
        ctx, hp = self.ctx, self.hp
        transform, split = ctx.transform(train=True), ctx.dataset.train

        def batches(epoch: int):
            seed = derived_seed(ctx.seed, "lmpt", epoch)
            shares = world().shard_batches(chunks(epoch_indices(hp["sampler"], split.labels, seed),
                                                  hp["batch_size"]))
            feed = ctx.feed("train").batches(transform, shares, world().noise_seed(seed, "augment"))
            for share, (images, labels) in zip(shares, feed, strict=True):
                yield images, labels, torch.as_tensor(share)

        return batches, steps(len(split), hp["batch_size"])

    def _loss(self, batch) -> torch.Tensor:
        images, labels, indices = batch
        captions = None
        if self.captions is not None:
            ids = self.captions[indices.to(self.captions.device)].long()
            with torch.no_grad():
                captions = self.net.learner.clip_model.token_embedding(ids)
        logits, similarity = self.net(images, captions)
        loss = self.hp["lam"] * self.classify(logits, labels)
        if similarity is None:
            return loss
        return loss + (1 - self.hp["lam"]) * class_specific_embedding_loss(similarity, labels, self.margins,
                                                                           self.weights)

    def phases(self) -> list[Phase]:
        hp = self.hp
        batches, count = self._batches()
        return [Phase("lmpt", hp["epochs"], [self.net.learner.ctx], optimizer_factory(hp), batches, self._loss,
                      plateau=Plateau(hp["plateau_patience"], hp["plateau_factor"], hp["min_lr"]),
                      steps_per_epoch=count)]

    @torch.no_grad()
    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The class text features once, then CLIP's scores of every image against them."""
        with self.ctx.autocast():
            text, _ = self.net.text_features()
        head = TextClassifier(text.float(), self.net.logit_scale)
        return predict_images(self.ctx, nn.Sequential(self.ctx.backbone, head), split)

    def extra_record(self) -> dict:
        """The tower, the prompts' size and layout, the text-tower passes per step, the losses, the captions."""
        learner, info = self.net.learner, self.ctx.backbone.weights_info
        chunks_per_step = math.ceil(learner.num_classes / self.net.chunk)
        return {"tower": self.ctx.backbone.name, "tower_pretrained": info.pretrained,
                "tower_weights_source": info.source,
                "context": "class-specific" if self.class_specific else "generic", "n_ctx": learner.n_ctx,
                "prompt_params": learner.ctx.numel(), "text_width": learner.ctx.shape[-1],
                "text_chunks_per_step": chunks_per_step, "text_recomputed_in_backward": chunks_per_step > 1,
                "classification_loss": self.hp["loss"], "csel": self.use_csel, "captions": self.caption_info,
                "lr_schedule": "ReduceLROnPlateau on val (the original: on test)"}


register_method("lmpt", group="comparator", place=20)(LMPT)
register_variant(LMPT, "lmpt_no_csel",
                 "LMPT ablation: no class-specific embedding loss (λ · DB only)",
                 use_csel=False)
register_variant(LMPT, "lmpt_generic_ctx",
                 "LMPT ablation: one context shared by every class (CoOp's generic context)",
                 class_specific=False)
register_variant(LMPT, "lmpt_softmax",
                 "LMPT ablation: logit-adjusted softmax cross-entropy in place of the DB loss",
                 hparams={**LMPT_HPARAMS, "loss": HParam("la", help=LMPT_HPARAMS["loss"].help, choices=LOSSES)})
register_variant(LMPT, "lmpt_template",
                 "LMPT ablation: every image captioned 'a photo of a {class}.' instead of its caption",
                 template_only=True)

"""`lptpp` and its ablation variants: LPT++ (arXiv 2409.11323), a mixture of long-tailed experts.

What the authors state: frozen ViTs with a universal long-tailed adaptation module (LPT's long-tailed prompts
plus visual adapters); a visual-only expert and a visual-language (CLIP) expert; an MoE scorer whose per-sample
coefficients reweight the experts' confidence scores; three phases, each module learned separately (prompts,
then adapters, then the scorer). The rest is a documented reconstruction (../shared/reference/lpt.md); every
choice below is a hyperparameter, so it is recorded with each run and ablations can vary it:

- expert = `LPTModel` (shared + group prompts, cosine head) + AdaptFormer adapters (`adapter_*`, all blocks);
  the visual expert runs `--backbone`, the VL expert `vl_backbone` (CLIP image tower) with its cosine head
  initialised from class-name × template text embeddings (`templates`; the text tower runs once, cached);
  each expert sees every image in its own tower's preprocessing (open_clip's for the CLIP tower:
  normalisation, filter, shortest-side resize), a view per tower with the same crops and flips;
- phases: `lptpp_shared` (shared prompts + heads), `lptpp_group` (pool + keys + heads; together LPT's two
  phases = the prompt phase), `lptpp_adapters` (adapters only), `lptpp_scorer` (scorer only); what a phase
  trains is frozen afterwards. Every phase uses LPT's A-GCL loss with dual sampling; the scorer phase
  minimises the mixture's negative log-likelihood on the same dual batches;
- the query of the group prompts stays the phase-1 feature: adapters are switched off in the query pass
  (`query_adapters=false`);
- scorer (`scorer_input`, `scorer_hidden`): an MLP on the experts' normalised features and confidences (max
  probability, entropy) → softmax weights α(x) over experts; prediction p = Σ_e α_e(x) softmax(s · cos_e)
  with s = `agcl_scale`. Its last layer starts at zero, so training starts from the uniform average.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from bench.hparams import AT_LEAST_ONE, NON_NEGATIVE, Choice, HParam
from bench.methods.agcl import lpt_losses
from bench.methods.base import Method, Phase, register_method, register_variant
from bench.methods.common import predict_images
from bench.methods.lpt import LPT, LPT_HPARAMS, dual_loss, dual_sampling_phase
from bench.methods.lpt_model import LPTModel
from bench.methods.peft import add_adapters

VL_BACKBONE = "open_clip:ViT-B-16-quickgelu@openai"
SCORER_INPUTS = ("features+confidence", "features", "confidence")

LPTPP_HPARAMS: dict[str, HParam] = {
    **{k: v for k, v in LPT_HPARAMS.items() if k != "layernorm_eps"},
    "adapter_epochs": HParam(30, help="adapter phase epochs (reconstruction)", bounds=NON_NEGATIVE),
    "scorer_epochs": HParam(10, help="scorer phase epochs (reconstruction)", bounds=NON_NEGATIVE),
    "adapter_bottleneck": HParam(64, Choice((16, 32, 64, 128)), "AdaptFormer bottleneck width r",
                                 bounds=AT_LEAST_ONE),
    "adapter_scale": HParam(0.1, help="initial scale of the adapter branch"),
    "adapter_learnable_scale": HParam(True, help="learn the adapter scale"),
    "query_adapters": HParam(False, help="let the adapters act in the group-prompt query pass (false keeps the "
                             "query the phase-1 feature)"),
    "vl_backbone": HParam(VL_BACKBONE, help="the visual-language expert's CLIP image tower (open_clip:ARCH@TAG)"),
    "vl_weights": HParam("", help="weights file for vl_backbone (empty: local Hugging Face cache)"),
    "templates": HParam("openai", help="class-name prompts for the VL head: openai (80) | single",
                        choices=("openai", "single")),
    "scorer_input": HParam(SCORER_INPUTS[0], help="what the MoE scorer sees: " + " | ".join(SCORER_INPUTS),
                           choices=SCORER_INPUTS),
    "scorer_hidden": HParam(256, Choice((64, 128, 256, 512)), "MoE scorer hidden width", bounds=AT_LEAST_ONE),
}


class Expert(nn.Module):
    """One frozen tower with its long-tailed adaptation module: LPT prompts + cosine head + adapters. It takes
    images in its tower's own preprocessing."""

    def __init__(self, name: str, backbone: nn.Module, num_classes: int, hp: dict, adapters: bool):
        super().__init__()
        self.name = name
        shared_layers = hp["shared_layers"] if hp["shared_layers"] >= 0 else backbone.num_blocks // 2
        self.lpt = LPTModel(backbone, num_classes, hp["prompt_length"], hp["pool_size"], hp["top_k"], shared_layers,
                            hp["head_dropout"], hp["shared_prefix"])
        created = add_adapters(backbone, hp["adapter_bottleneck"], hp["adapter_scale"],
                               hp["adapter_learnable_scale"]) if adapters else []
        self.adapters = nn.ModuleList(created)
        self.set_adapters(False)  # active from the adapter phase on
        if not hp["query_adapters"]:
            self.lpt.query_adapters = created

    def set_adapters(self, enabled: bool) -> None:
        for adapter in self.adapters:
            adapter.enabled = enabled

    def forward_with_matching(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lpt.forward_with_matching(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The feature the head sees, in the current stage."""
        if self.lpt.stage == "shared":
            return self.lpt.prompted(images)
        return self.lpt.group_features(images)[0]


class Scorer(nn.Module):
    """α(x) = softmax(MLP(inputs)) over experts; the last layer starts at zero (α uniform)."""

    def __init__(self, feature_dims: list[int], hidden: int, inputs: str):
        super().__init__()
        self.inputs = inputs
        width = (sum(feature_dims) if "features" in inputs else 0) + (2 * len(feature_dims) if "confidence" in inputs
                                                                      else 0)
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, len(feature_dims)))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: list[torch.Tensor], probabilities: list[torch.Tensor]) -> torch.Tensor:
        parts = []
        if "features" in self.inputs:
            parts += [F.normalize(f.float(), dim=-1) for f in features]
        if "confidence" in self.inputs:
            for p in probabilities:
                p = p.float()
                entropy = -(p * p.clamp_min(1e-12).log()).sum(-1, keepdim=True) / torch.log(
                    torch.tensor(float(p.shape[-1])))
                parts += [p.max(-1, keepdim=True).values, entropy]
        return torch.softmax(self.net(torch.cat(parts, dim=-1)), dim=-1)


def mixture(weights: torch.Tensor, probabilities: list[torch.Tensor]) -> torch.Tensor:
    """p = Σ_e α_e · p_e, per sample: weights [B, E], probabilities E × [B, C] → [B, C]."""
    return torch.einsum("be,ebc->bc", weights, torch.stack(probabilities))


class MixtureOfExperts(nn.Module):
    """Experts + combination (`scorer` or uniform `mean`); forward gives log p of the mixture. Its input is a
    view of the images per expert (each in its tower's preprocessing)."""

    def __init__(self, experts: list[Expert], combine: str, scale: float, scorer: Scorer | None):
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.combine, self.scale, self.scorer = combine, scale, scorer

    def expert_outputs(self, views: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features = [expert.features(images) for expert, images in zip(self.experts, views, strict=True)]
        probabilities = [torch.softmax(self.scale * expert.lpt.head(f).float(), dim=-1)
                         for expert, f in zip(self.experts, features, strict=True)]
        return features, probabilities

    def weights(self, features: list[torch.Tensor], probabilities: list[torch.Tensor]) -> torch.Tensor:
        if self.combine == "scorer" and self.scorer is not None:
            return self.scorer(features, probabilities)
        batch = probabilities[0].shape[0]
        return probabilities[0].new_full((batch, len(self.experts)), 1.0 / len(self.experts))

    def forward(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        features, probabilities = self.expert_outputs(views)
        return mixture(self.weights(features, probabilities), probabilities).clamp_min(1e-12).log()


class LPTPlusPlus(Method):
    """The full LPT++; variants switch experts, phases or the combination off."""

    description = "LPT++: visual + visual-language experts (prompts + adapters), MoE scorer, three phases"
    hparams = LPTPP_HPARAMS
    embedded_preset = {**LPT.embedded_preset, "phase1_epochs": "2", "phase2_epochs": "2", "adapter_epochs": "2",
                       "scorer_epochs": "2", "vl_backbone": "clip_micro"}
    embedded_space = {"shared_layers": "default"}  # the searched depths do not fit the micro towers
    experts = ("visual", "vl")
    use_adapters = True
    use_group_prompts = True
    combine = "scorer"

    def setup(self) -> None:
        ctx, hp = self.ctx, self.hp
        built = []
        for name in self.experts:
            backbone = self._backbone(name)
            built.append(Expert(name, backbone, ctx.dataset.num_classes, hp, self.use_adapters))
            if name == "vl":
                from bench.text import class_text_embeddings

                built[-1].lpt.head.load_weight(class_text_embeddings(ctx, hp["templates"], backbone).cpu())
                ctx.log.info(f"VL expert head initialised from class-name text embeddings ({hp['templates']})")
        scorer = None
        if self.combine == "scorer" and len(built) > 1:
            scorer = Scorer([e.lpt.head.in_features for e in built], hp["scorer_hidden"], hp["scorer_input"])
        self.net = MixtureOfExperts(built, self.combine, hp["agcl_scale"], scorer).to(ctx.device)
        self.losses = lpt_losses(ctx.dataset.train_counts, hp)

    def _backbone(self, name: str):
        """The visual expert (and a VL-only model) runs the run's backbone; the VL expert of a pair its own."""
        ctx, hp = self.ctx, self.hp
        if name == "visual" or len(self.experts) == 1:
            backbone = ctx.backbone
        else:
            from bench.backbones import create_backbone

            request = ctx.backbone_request
            backbone = create_backbone(hp["vl_backbone"], weights=hp["vl_weights"] or None,
                                       allow_download=request.allow_download,
                                       allow_random_init=request.allow_random_init,
                                       image_size=ctx.backbone.image_size).to(ctx.device)
            if not backbone.weights_info.pretrained:
                ctx.warn(f"VL expert {hp['vl_backbone']} is randomly initialised (pretrained: false)")
        if name == "vl" and backbone.family != "open_clip":
            raise BenchError(f"the VL expert needs a CLIP image tower (open_clip:ARCH@TAG), not {backbone.name}; "
                             f"pass {'--backbone' if len(self.experts) == 1 else '--set vl_backbone='}"
                             f"{VL_BACKBONE}")
        return backbone

    def model(self) -> nn.Module:
        return self.net

    def towers(self) -> list[nn.Module]:
        """The experts' towers; batches carry a view per tower."""
        return [expert.lpt.prompted.backbone for expert in self.net.experts]

    # -- phases ---------------------------------------------------------------------------------------------
    def _enter(self, stage: str, adapters: bool):
        def enter() -> None:
            for expert in self.net.experts:
                expert.lpt.stage = stage
                expert.set_adapters(adapters)

        return enter

    def _experts_loss(self, match_weight: float):
        def loss(batch) -> torch.Tensor:
            views_cb, labels_cb, views_ib, labels_ib, eta = batch
            return sum(dual_loss(expert, self.losses, (cb, labels_cb, ib, labels_ib, eta), match_weight)
                       for expert, cb, ib in zip(self.net.experts, views_cb, views_ib, strict=True))

        return loss

    def _scorer_loss(self, batch) -> torch.Tensor:
        views_cb, labels_cb, views_ib, labels_ib, eta = batch

        self.net.experts.eval()  # frozen experts predict as at test time (no head dropout)

        def nll(views, labels):
            with torch.no_grad():
                features, probabilities = self.net.expert_outputs(views)
            p = mixture(self.net.weights(features, probabilities), probabilities)
            return -p.gather(1, labels[:, None]).clamp_min(1e-12).log().mean()

        loss = nll(views_cb, labels_cb)
        return loss + eta * nll(views_ib, labels_ib) if eta > 0 else loss

    def phases(self) -> list[Phase]:
        hp, experts, ctx = self.hp, list(self.net.experts), self.ctx
        towers = self.towers()
        heads = [p for e in experts for p in e.lpt.head.parameters()]
        group_stage = "group" if self.use_group_prompts else "shared"
        phases = [dual_sampling_phase(ctx, "lptpp_shared", hp["phase1_epochs"],
                                      [e.lpt.shared_prompts for e in experts] + heads,
                                      self._experts_loss(0.0), self._enter("shared", False), towers)]
        if self.use_group_prompts:
            phases.append(dual_sampling_phase(ctx, "lptpp_group", hp["phase2_epochs"],
                                              [p for e in experts for p in (e.lpt.pool, e.lpt.keys)] + heads,
                                              self._experts_loss(hp["match_weight"]),
                                              self._enter("group", False), towers))
        if self.use_adapters:
            phases.append(dual_sampling_phase(ctx, "lptpp_adapters", hp["adapter_epochs"],
                                              [p for e in experts for p in e.adapters.parameters()],
                                              self._experts_loss(0.0), self._enter(group_stage, True),
                                              towers))
        if self.net.scorer is not None:
            phases.append(dual_sampling_phase(ctx, "lptpp_scorer", hp["scorer_epochs"],
                                              list(self.net.scorer.parameters()), self._scorer_loss,
                                              self._enter(group_stage, self.use_adapters), towers))
        return phases

    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return predict_images(self.ctx, self.net, split, self.towers())

    def extra_record(self) -> dict:
        """Per-expert weights and trainable parameters, and the per-image inference cost in block passes."""
        experts = []
        for expert in self.net.experts:
            lpt = expert.lpt
            info = lpt.prompted.backbone.weights_info
            trainable = sum(p.numel() for p in [lpt.shared_prompts, *lpt.head.parameters(),
                                                *expert.adapters.parameters()])
            if self.use_group_prompts:
                trainable += lpt.pool.numel() + lpt.keys.numel()
            group = self.use_group_prompts
            blocks = lpt.depth + (lpt.depth - (lpt.shared_layers if lpt.prefix_shared else 0) if group else 0)
            experts.append({"name": expert.name, "backbone": lpt.prompted.backbone.name,
                            "pretrained": info.pretrained, "weights_source": info.source,
                            "trainable_params": trainable,
                            "backbone_params": sum(p.numel() for p in lpt.prompted.backbone.parameters()),
                            "tower_passes_per_image": 2 if group else 1, "block_evaluations_per_image": blocks})
        scorer = sum(p.numel() for p in self.net.scorer.parameters()) if self.net.scorer is not None else 0
        return {"experts": experts, "scorer_params": scorer, "combine": self.combine}


register_method("lptpp", group="lptpp", place=10)(LPTPlusPlus)
register_variant(LPTPlusPlus, "lptpp_visual",
                 "LPT++ ablation: the visual expert only (prompts + adapters, no scorer)",
                 experts=("visual",))
register_variant(LPTPlusPlus, "lptpp_vl",
                 "LPT++ ablation: the visual-language (CLIP) expert only; --backbone is the CLIP tower",
                 experts=("vl",), default_backbone=VL_BACKBONE, embedded_backbone="clip_micro")
register_variant(LPTPlusPlus, "lptpp_no_adapter",
                 "LPT++ ablation: no adapter phase (prompts + scorer)",
                 use_adapters=False)
register_variant(LPTPlusPlus, "lptpp_no_group_prompts",
                 "LPT++ ablation: shared prompts only (no group-specific pool)",
                 use_group_prompts=False)
register_variant(LPTPlusPlus, "lptpp_mean",
                 "LPT++ ablation: uniform average of the experts instead of the MoE scorer",
                 combine="mean")

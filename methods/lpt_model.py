"""The LPT model (Dong et al., ICLR 2023) over any frozen `TokenBackbone` (timm ViT or open_clip vision tower).

- Shared prompts (phase 1, VPT-deep): [depth, L, D]; block i sees [CLS, patches, P_i], prompt outputs dropped.
- Group-specific prompt pool (phase 2): `pool` [m, depth − s, L, D] with `keys` [m, F] (F = feature size).
  The query q is the pooled feature of the phase-1 model (shared prompts in every block; nothing trainable
  influences it); the top-k keys by cosine with q select k pool entries, which are AVERAGED into one prompt
  set per image. Blocks < s get the shared prompts only; blocks ≥ s get [P_i, G_i] (2L extra tokens).
- Matching score S = Σ_b Σ_{j ∈ top-k(b)} cos(q_b, k_j) / B; keys learn only through it.
- Head: bias-free cosine classifier (raw cosine logits; the scale s lives in the loss), dropout on the
  feature during training.
- Exact shared-prefix speed-up (`shared_prefix=True`): blocks < s see identical inputs in the query pass and
  the main pass, so they run once and both passes branch from their output (depth + (depth − s) block
  evaluations instead of 2·depth); `shared_prefix=False` is the plain two-pass computation.

`stage` selects the forward: "shared" (phase-1 model) or "group" (full LPT). LPT++ sets `query_adapters`: the
adapters the query pass switches off, so the query stays the phase-1 feature once adapters train (the passes
then no longer share a prefix, and the model runs the plain two passes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from bench.methods.peft import PROMPT_INIT_STD, CosineClassifier, PromptedBackbone, adapters_disabled


class LPTModel(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, prompt_length: int = 10, pool_size: int = 20,
                 top_k: int = 2, shared_layers: int = 6, head_dropout: float = 0.1, shared_prefix: bool = True):
        super().__init__()
        depth = backbone.num_blocks
        if not 0 <= shared_layers < depth:
            raise BenchError(f"shared_layers={shared_layers}: must be in [0, {depth - 1}] for a {depth}-block "
                             "backbone (the blocks from shared_layers on get group prompts)")
        if not 1 <= top_k <= pool_size:
            raise BenchError(f"top_k={top_k}: must be between 1 and pool_size={pool_size}")
        self.prompted = PromptedBackbone(backbone, length=prompt_length, deep=True)
        self.pool = nn.Parameter(torch.empty(pool_size, depth - shared_layers, prompt_length, backbone.embed_dim))
        self.keys = nn.Parameter(torch.empty(pool_size, backbone.feature_dim))
        nn.init.trunc_normal_(self.pool, std=PROMPT_INIT_STD)
        nn.init.trunc_normal_(self.keys, std=PROMPT_INIT_STD)
        self.head = CosineClassifier(backbone.feature_dim, num_classes, dropout=head_dropout)
        self.top_k, self.shared_layers, self.depth = top_k, shared_layers, depth
        self.shared_prefix = shared_prefix
        self.stage = "shared"
        self.query_adapters: list = []  # adapters switched off in the query pass (LPT++; a plain list)

    # -- parameter groups ---------------------------------------------------------------------------------
    @property
    def shared_prompts(self) -> nn.Parameter:
        return self.prompted.prompts

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        """What each LPT phase trains: shared prompts + head, then pool + keys + head."""
        if stage == "shared":
            return [self.shared_prompts, *self.head.parameters()]
        return [self.pool, self.keys, *self.head.parameters()]

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_with_matching(images)[0]

    def forward_with_matching(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cosine logits [B, C], matching score S, a scalar; 0 in the shared stage)."""
        if self.stage == "shared":
            return self.head(self.prompted(images)), images.new_zeros(())
        feature, matching, _ = self.group_features(images)
        return self.head(feature), matching

    @property
    def prefix_shared(self) -> bool:
        """Whether the query and main passes share their first blocks: asked for, and no adapter is active in
        the main pass but off in the query pass (then the two prefixes differ)."""
        return self.shared_prefix and not any(adapter.enabled for adapter in self.query_adapters)

    def query(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The phase-1 feature from tokens that have passed blocks [0, start) with shared prompts."""
        with torch.no_grad(), adapters_disabled(self.query_adapters):
            rest = self.prompted.forward_tokens(tokens, start, self.depth, extra=self.prompted.deep_prompt)
            return self.prompted.pool(rest)

    def select(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(averaged group prompts [B, depth − s, L, D], matching score S, top-k indices [B, k])."""
        similarity = F.normalize(query.float(), dim=-1) @ F.normalize(self.keys, dim=-1).t()  # [B, m]
        scores, chosen = similarity.topk(self.top_k, dim=1)
        # index_select, not pool[chosen]: the latter's backward is an accumulating index_put, which on a CPU
        # with several threads adds duplicate indices (images choosing one entry) in a varying order
        prompts = self.pool.index_select(0, chosen.flatten()).unflatten(0, chosen.shape).mean(dim=1)
        return prompts, scores.sum() / query.shape[0], chosen

    def group_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(feature [B, F], matching score, chosen pool indices) of the full LPT forward."""
        prompted, s = self.prompted, self.shared_layers
        tokens = prompted.embed(images)
        shared_prefix = self.prefix_shared
        if shared_prefix:
            start = prompted.forward_tokens(tokens, 0, s, extra=prompted.deep_prompt)
            query = self.query(start, s)
        else:
            start = tokens
            query = self.query(tokens)
        group, matching, chosen = self.select(query)
        batch = tokens.shape[0]

        def extra(index: int) -> torch.Tensor:
            shared = self.shared_prompts[index]
            if index < s:
                return shared
            own = group[:, index - s]
            return torch.cat([shared.unsqueeze(0).expand(batch, -1, -1).to(own), own], dim=1)

        final = prompted.forward_tokens(start, s if shared_prefix else 0, self.depth, extra=extra)
        return prompted.pool(final), matching, chosen

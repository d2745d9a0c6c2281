"""LMPT's model: CoOp contexts spliced into a frozen open_clip text tower, scored against the frozen image tower.

The prompt of class c is CoOp's "end" layout, [SOT, ctx_c (n_ctx vectors), tokens of the class name, ".", EOT,
padding], as LMPT's lmpt/coop_model.py builds it from the text "X X … X {name}." (one "X" per context vector).
The contexts are the only parameters; the fixed tokens are kept as ids and embedded by the frozen token
embedding a chunk of classes at a time, so no [C, tokens, width] buffer is held (iNaturalist: 8142 × 77 × 512).

The text pass is open_clip's `CLIP.encode_text` from its token embedding on (positional embedding, transformer
with the causal mask, ln_final, the tower's pooling at the EOT token, text projection), with the prompt's
embeddings in place of the looked-up ones; with the contexts set to the token embeddings of a template's words
it gives encode_text of that template exactly (tests/test_lmpt.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bench.errors import BenchError

CONTEXT_WORD = "X"  # the placeholder word whose tokens the contexts replace (CoOp's)


def check_text_tower(clip_model: nn.Module, backbone_name: str) -> None:
    """LMPT splices embeddings into open_clip's own CLIP text tower; a custom (Hugging Face) one has no
    token_embedding to splice into."""
    if not hasattr(clip_model, "token_embedding"):
        raise BenchError(f"LMPT splices prompt contexts into an open_clip CLIP text tower (token_embedding, "
                         f"transformer, ln_final); {backbone_name} has a custom text tower; use e.g. "
                         "open_clip:ViT-B-16-quickgelu@openai")


def prompt_token_ids(tokenizer, class_names: list[str], n_ctx: int, context_length: int) -> torch.Tensor:
    """[C, context_length] token ids of "X … X {name}." per class; refuses a prompt the tokenizer would cut."""
    texts = [" ".join([CONTEXT_WORD] * n_ctx + [name]) + "." for name in class_names]
    for name, text in zip(class_names, texts, strict=True):
        needed = len(tokenizer.encode(text)) + 2  # with SOT and EOT
        if needed > context_length:
            raise BenchError(f"the prompt of class {name!r} needs {needed} tokens with n_ctx={n_ctx} but the "
                             f"text tower holds {context_length}; lower n_ctx")
    ids = tokenizer(texts)
    placeholder = tokenizer.encode(CONTEXT_WORD)
    if len(placeholder) != 1 or not bool((ids[:, 1:1 + n_ctx] == placeholder[0]).all()):
        raise BenchError(f"the tokenizer does not give one token per context placeholder {CONTEXT_WORD!r}")
    return ids


class PromptLearner(nn.Module):
    """Learned contexts, [C, n_ctx, width] (class-specific) or [n_ctx, width] (generic, shared by every class),
    initialised N(0, 0.02) as lmpt/coop_model.py. `prompts(start, stop)` gives the token embeddings of classes
    start..stop-1 with the contexts spliced in."""

    def __init__(self, clip_model: nn.Module, token_ids: torch.Tensor, n_ctx: int, class_specific: bool):
        super().__init__()
        width = clip_model.token_embedding.embedding_dim
        shape = (len(token_ids), n_ctx, width) if class_specific else (n_ctx, width)
        self.ctx = nn.Parameter(torch.empty(shape).normal_(std=0.02))
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.__dict__["clip_model"] = clip_model  # frozen and not a submodule: checkpoints hold the contexts only
        self.n_ctx = n_ctx

    @property
    def num_classes(self) -> int:
        return len(self.token_ids)

    def prompts(self, start: int, stop: int) -> torch.Tensor:
        with torch.no_grad():
            fixed = self.clip_model.token_embedding(self.token_ids[start:stop])
        ctx = self.ctx[start:stop] if self.ctx.dim() == 3 else self.ctx.expand(stop - start, -1, -1)
        return torch.cat([fixed[:, :1], ctx.to(fixed.dtype), fixed[:, 1 + self.n_ctx:]], dim=1)


def encode_embedded(clip_model: nn.Module, embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """open_clip's CLIP.encode_text after its token lookup: `embeddings` [N, T, width] stand in for
    token_embedding(token_ids); `token_ids` still say where the tower pools (the EOT). [N, D], unnormalised."""
    from open_clip.transformer import text_global_pool

    cast = clip_model.transformer.get_cast_dtype()
    x = embeddings.to(cast) + clip_model.positional_embedding.to(cast)
    x = clip_model.ln_final(clip_model.transformer(x, attn_mask=clip_model.attn_mask))
    x = text_global_pool(x, token_ids, clip_model.text_pool_type, eos_token_id=getattr(clip_model, "text_eos_id",
                                                                                       None))
    projection = clip_model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def caption_prompt_similarity(captions: torch.Tensor, prompts: torch.Tensor, offset: int) -> torch.Tensor:
    """[B, C]: the mean over the T − offset aligned positions of cos(caption token t, prompt token t + offset),
    for caption token embeddings [B, T, width] and prompt token embeddings [C, T, width] (LMPT's lmpt/train.py
    compares positions :T−m of the caption with m: of the prompt, m = its --m_ctx). One einsum over unit
    vectors: no [B, C, T, width] tensor."""
    kept = captions.shape[1] - offset
    a = F.normalize(captions[:, :kept].float(), dim=-1)
    p = F.normalize(prompts[:, offset:].float(), dim=-1)
    return torch.einsum("btw,ctw->bc", a, p) / kept


class LMPTNet(nn.Module):
    """Frozen image tower + frozen text tower + the prompt learner (its only parameters). `forward(images,
    captions)` → (logits [B, C], caption-prompt similarity [B, C] or None). Text features are computed
    `chunk` classes at a time; with more classes than one chunk and gradients on, each chunk's text pass is
    recomputed in the backward pass (activation checkpointing), so memory holds one chunk's activations."""

    def __init__(self, learner: PromptLearner, backbone: nn.Module, chunk: int, offset: int,
                 logit_scale: float = 0.0):
        super().__init__()
        self.learner = learner
        self.__dict__["backbone"] = backbone  # frozen image tower, not a submodule
        self.chunk, self.offset = chunk, offset
        self.logit_scale = logit_scale or float(learner.clip_model.logit_scale.detach().exp())

    def _encode(self, start: int, stop: int) -> torch.Tensor:
        return encode_embedded(self.learner.clip_model, self.learner.prompts(start, stop),
                               self.learner.token_ids[start:stop])

    def text_features(self, captions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(unit text features [C, D], caption similarity [B, C] or None), a chunk of classes at a time."""
        total = self.learner.num_classes
        bounds = [(start, min(total, start + self.chunk)) for start in range(0, total, self.chunk)]
        recompute = len(bounds) > 1 and torch.is_grad_enabled() and self.learner.ctx.requires_grad
        features, similarity = [], []
        for start, stop in bounds:
            if recompute:
                features.append(checkpoint(self._encode, start, stop, use_reentrant=False))
            else:
                features.append(self._encode(start, stop))
            if captions is not None:
                similarity.append(caption_prompt_similarity(captions, self.learner.prompts(start, stop),
                                                            self.offset))
        text = F.normalize(torch.cat(features).float(), dim=-1)
        return text, (torch.cat(similarity, dim=1) if captions is not None else None)

    def forward(self, images: torch.Tensor, captions: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            image = F.normalize(self.backbone(images).float(), dim=-1)
        text, similarity = self.text_features(captions)
        return self.logit_scale * image @ text.T, similarity

"""PEMT's modules (Lin et al., Findings of ACL 2024, arXiv 2402.15082) over a frozen `TokenBackbone`.

Read from the official code (JachinLin2022/PEMT, T5): `pemt/adapters/lora.py` (`Linear` with `lora_num` experts
and `w_gate`), `pemt/third_party/models/t5/modeling_t5.py` (`T5DenseReluDense`, `T5LayerFF`, the task-embedding
attention in `T5Stack.forward`, the loss in `T5ForConditionalGeneration.forward`), `pemt/adapters/
adapter_modeling.py` (the target adapter). Carried over to a ViT:

- each source's LoRA sits on the MLP's output projection (timm `mlp.fc2`, open_clip `mlp.c_proj`; T5's `wo`):
  Δ_s(h) = (α/r) · h Aₛᵀ Bₛᵀ on the MLP hidden state h; A kaiming-uniform; B kaiming-uniform as the official
  single-expert LoRA (its zero init is commented out there) or zero (`lora_b_init`);
- the task prompt (T5: task-embedding tokens before the input tokens) sits after the prefix tokens (CLS):
  [CLS, prompt, patches]; it passes through every block and is dropped before pooling;
- the target prompt attends over the frozen source prompts: P = E_t + Σ_s dropout(softmax(E_t E_sᵀ)) E_s (no
  scaling, dropout 0.1 on the attention weights in training, as the code);
- per block a gate W [hidden, S], zero-initialised (uniform weights at start), reads the mean MLP hidden state
  at the prompt positions: g = softmax(mean_prompt(h) W); the fc2 output gets Σ_s g_s Δ_s(h);
- the target adapter follows the MLP (T5LayerFF's adapter after DenseReluDense): f + up(gelu_tanh(down(f))),
  nn.Linear's default init (the official Adapter has no zero init); width = dim // `adapter_reduction`;
- the auxiliary ("task sparsity") term of a block is Σ_s ḡ_s (1 − cos(f', Δ_s)), the cosine per token between
  the block's MLP output after the target adapter f' and each source's ungated LoRA output Δ_s, averaged over
  the batch's tokens, and ḡ_s the gate averaged over the batch; the loss adds 0.1 × its mean over blocks.

Hooks (forward hooks on the output projection and the MLP) add these to the frozen blocks, so the backbone's
modules and state-dict keys stay as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError

LORA_B_INITS = ("kaiming", "zero")
OUTSIDE = -1e4  # a source model's logit for the target classes outside its source (softmax weight 0)


def attend_prompts(target: torch.Tensor, sources: list[torch.Tensor], dropout: float = 0.0,
                   training: bool = False) -> torch.Tensor:
    """P = E_t + Σ_s dropout(softmax(E_t E_sᵀ)) E_s; target [L, D], each source [L_s, D] → [L, D]."""
    prompt = target
    for source in sources:
        weights = F.dropout(torch.softmax(target @ source.t(), dim=-1), dropout, training)
        prompt = prompt + weights @ source
    return prompt


def task_sparsity(output: torch.Tensor, experts: list[torch.Tensor], gates: torch.Tensor) -> torch.Tensor:
    """Σ_s ḡ_s (1 − mean over tokens of cos(output, expert_s)): output [B, T, D], experts S × [B, T, D],
    gates [B, S]."""
    cosine = F.cosine_similarity(output.float().unsqueeze(0), torch.stack(experts).float(), dim=-1)  # [S, B, T]
    return (gates.float().mean(0) * (1 - cosine.flatten(1).mean(1))).sum()


class LoRA(nn.Module):
    """Δ(h) = (α / r) · h Aᵀ Bᵀ: A [r, hidden], B [dim, r]."""

    def __init__(self, hidden: int, dim: int, rank: int, alpha: float, b_init: str):
        super().__init__()
        if b_init not in LORA_B_INITS:
            raise ValueError(f"lora_b_init must be one of {LORA_B_INITS}, got {b_init!r}")
        self.a = nn.Parameter(torch.empty(rank, hidden))
        self.b = nn.Parameter(torch.empty(dim, rank))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        if b_init == "kaiming":
            nn.init.kaiming_uniform_(self.b, a=math.sqrt(5))
        else:
            nn.init.zeros_(self.b)
        self.scaling = alpha / rank

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h @ self.a.t() @ self.b.t()) * self.scaling


class TargetAdapter(nn.Module):
    """f + up(gelu_tanh(down(f))), dim → width → dim (the official Adapter with its residual)."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.down = nn.Linear(dim, width)
        self.up = nn.Linear(width, dim)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f + self.up(F.gelu(self.down(f), approximate="tanh"))


class BlockModules(nn.Module):
    """One block's PEMT modules: a LoRA per source, the gate W [hidden, S] (zero: uniform weights at start;
    None: fixed uniform weights) and the target adapter."""

    def __init__(self, hidden: int, dim: int, sources: int, hp: dict, learned_gate: bool, adapter: bool):
        super().__init__()
        self.loras = nn.ModuleList(LoRA(hidden, dim, hp["lora_rank"], hp["lora_alpha"], hp["lora_b_init"])
                                   for _ in range(sources))
        self.gate = nn.Parameter(torch.zeros(hidden, sources)) if learned_gate and sources else None
        self.adapter = TargetAdapter(dim, max(1, dim // hp["adapter_reduction"])) if adapter else None


def _projection(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the MLP, its output projection) of a timm Block or an open_clip ResidualAttentionBlock."""
    mlp = getattr(block, "mlp", None)
    projection = getattr(mlp, "fc2", None) or getattr(mlp, "c_proj", None)
    if projection is None:
        raise BenchError(f"pemt: {type(block).__name__} has no mlp.fc2 / mlp.c_proj; it needs a timm or open_clip "
                         "ViT tower")
    return mlp, projection


@torch.no_grad()
def patch_token_prompt(backbone: nn.Module, images: torch.Tensor, rng) -> torch.Tensor:
    """A prompt drawn from a task's own images, the image counterpart of the official initialisation from the
    token embeddings of the task's description (`init_task_from_vocab`): for each image one patch token, after
    the position embedding, at a position drawn by `rng` (a numpy Generator) → [len(images), D]."""
    tokens = backbone.embed(images)[:, backbone.num_prefix_tokens:]
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    positions = torch.as_tensor(rng.integers(tokens.shape[1], size=tokens.shape[0]), device=tokens.device)
    return tokens[rows, positions].float()


class PEMTNet(nn.Module):
    """The frozen tower with PEMT's modules; `source` selects the model that runs: s (stage 1: source s's
    prompt, its LoRA alone in every block, its head) or None (stage 2: the target prompt, the gated mixture of
    every source's LoRA, the target adapters, the target head). `source_classes[s]` are the target classes
    source s knows (in stage 1 the model scores the others `OUTSIDE`, so its logits cover every class), or, for
    a source dataset with labels of its own, their number (stage 1 scores those alone).

    Switches for the ablations: `prompt` (False: no prompt at all, nor sources), `prompt_attention` (False:
    the target prompt is E_t alone), `learned_gate` (False: uniform weights 1/S), `adapter` (target adapters)."""

    def __init__(self, backbone: nn.Module, source_classes: list[list[int] | int], num_classes: int, hp: dict, *,
                 prompt: bool = True, prompt_attention: bool = True, learned_gate: bool = True,
                 adapter: bool = True):
        super().__init__()
        if source_classes and not prompt:
            raise ValueError("PEMT's gates read the prompt positions: sources need prompt=True")
        if backbone.__dict__.get("_pemt"):
            raise RuntimeError("backbone already carries PEMT's hooks: they are attached once per backbone")
        backbone.requires_grad_(False)
        self.backbone = backbone
        dim, count = backbone.embed_dim, len(source_classes)
        self.length = hp["prompt_length"] if prompt else 0
        self.source_prompts = nn.ParameterList(nn.Parameter(torch.empty(self.length, dim)) for _ in range(count))
        self.target_prompt = nn.Parameter(torch.empty(self.length, dim)) if prompt else None
        for parameter in self.prompt_parameters():
            nn.init.trunc_normal_(parameter, std=0.02)
        hidden = [_projection(block)[1].in_features for block in backbone.blocks]
        self.blocks = nn.ModuleList(BlockModules(width, dim, count, hp, learned_gate, adapter) for width in hidden)
        self.source_classes = [None if isinstance(classes, int) else torch.as_tensor(classes, dtype=torch.long)
                               for classes in source_classes]
        self.source_heads = nn.ModuleList(nn.Linear(backbone.feature_dim, c if isinstance(c, int) else len(c))
                                          for c in source_classes)
        self.head = nn.Linear(backbone.feature_dim, num_classes)
        self.num_classes, self.prompt_attention = num_classes, prompt_attention
        self.attention_dropout = hp["prompt_attn_dropout"]
        self.source: int | None = None
        self.tally: torch.Tensor | None = None  # [blocks, S] gate sums over the images seen, while set
        self._aux: list[torch.Tensor] = []
        self._stash: tuple | None = None
        for index, block in enumerate(backbone.blocks):
            mlp, projection = _projection(block)
            projection.register_forward_hook(lambda m, i, o, index=index: self._projection_hook(index, i[0], o))
            mlp.register_forward_hook(lambda m, i, o, index=index: self._mlp_hook(index, o))
        backbone.__dict__["_pemt"] = True

    # -- parameter groups ---------------------------------------------------------------------------------
    def prompt_parameters(self) -> list[nn.Parameter]:
        return [*self.source_prompts, *([self.target_prompt] if self.target_prompt is not None else [])]

    def source_parameters(self, source: int) -> list[nn.Parameter]:
        """Stage 1 of `source`: its LoRA in every block, its prompt, its head."""
        loras = [p for modules in self.blocks for p in modules.loras[source].parameters()]
        return [*loras, self.source_prompts[source], *self.source_heads[source].parameters()]

    def target_parameters(self) -> list[nn.Parameter]:
        """Stage 2: the target prompt, the gates, the target adapters, the tower's LayerNorms (the official
        `unfreeze_layer_norms`), the target head."""
        parameters = [self.target_prompt] if self.target_prompt is not None else []
        parameters += [modules.gate for modules in self.blocks if modules.gate is not None]
        parameters += [p for modules in self.blocks if modules.adapter is not None for p in modules.adapter.parameters()]
        parameters += [p for m in self.backbone.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]
        return [*parameters, *self.head.parameters()]

    # -- forward ------------------------------------------------------------------------------------------
    def prompt(self) -> torch.Tensor | None:
        if self.source is not None:
            return self.source_prompts[self.source]
        if self.target_prompt is None or not self.prompt_attention:
            return self.target_prompt
        return attend_prompts(self.target_prompt, list(self.source_prompts), self.attention_dropout, self.training)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled feature of [prefix, prompt, patches] through the blocks (prompt outputs dropped)."""
        backbone, prompt = self.backbone, self.prompt()
        tokens, start = backbone.embed(images), backbone.num_prefix_tokens
        self._aux = []
        if prompt is not None:
            prompt = prompt.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens[:, :start], prompt, tokens[:, start:]], dim=1)
        for index in range(backbone.num_blocks):
            tokens = backbone.run_block(index, tokens)
        if prompt is not None:
            tokens = torch.cat([tokens[:, :start], tokens[:, start + self.length:]], dim=1)
        return backbone.pool(tokens)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feature = self.features(images)
        if self.source is None:
            return self.head(feature)
        local = self.source_heads[self.source](feature)
        if self.source_classes[self.source] is None:  # a source dataset: its own classes
            return local
        logits = local.new_full((local.shape[0], self.num_classes), OUTSIDE)
        return logits.index_copy(1, self.source_classes[self.source].to(local.device), local)

    def aux_loss(self) -> torch.Tensor:
        """The task-sparsity term of the last forward, averaged over blocks (0 without sources)."""
        return torch.stack(self._aux).mean() if self._aux else self.head.weight.new_zeros(())

    def gates(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """[B, S]: softmax(mean of h over the prompt positions · W), or 1/S without a learned gate."""
        modules = self.blocks[index]
        if modules.gate is None:
            return h.new_full((h.shape[0], len(modules.loras)), 1.0 / len(modules.loras))
        start = self.backbone.num_prefix_tokens
        return torch.softmax(h[:, start:start + self.length].mean(1) @ modules.gate.to(h.dtype), dim=-1)

    # -- hooks --------------------------------------------------------------------------------------------
    def _projection_hook(self, index: int, h: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        modules = self.blocks[index]
        if self.source is not None:
            return output + modules.loras[self.source](h)
        if not modules.loras:
            return output
        deltas = [lora(h) for lora in modules.loras]
        gates = self.gates(index, h)
        if self.tally is not None:
            self.tally[index] += gates.detach().float().sum(0)
        self._stash = (gates, deltas)
        return output + torch.einsum("bs,sbtd->btd", gates.to(output.dtype), torch.stack(deltas).to(output.dtype))

    def _mlp_hook(self, index: int, output: torch.Tensor) -> torch.Tensor:
        modules = self.blocks[index]
        if self.source is not None:
            return output
        if modules.adapter is not None:
            output = modules.adapter(output)
        if self._stash is not None and torch.is_grad_enabled():
            gates, deltas = self._stash
            self._aux.append(task_sparsity(output, deltas, gates))
        self._stash = None
        return output

"""Parameter-efficient fine-tuning pieces over a frozen `TokenBackbone` (timm or open_clip ViT).

- `PromptedBackbone`: VPT-deep / VPT-shallow prompts, with a general `forward_tokens` that LPT reuses
  (per-block extra tokens supplied by a callable, appended after the patch tokens, outputs dropped).
- `add_adapters`: AdaptFormer parallel bottleneck adapters on every block's MLP branch,
  attached with forward hooks, so the backbone's modules, parameters and state_dict keys stay untouched.
- `bitfit_parameters`: the bias terms of a backbone (BitFit).
- `CosineClassifier`: bias-free cosine head (raw cosine logits; the scale lives with the caller).

Nothing here changes a backbone weight: prompts and adapters are separate parameters, and the only
mutation of a backbone is `requires_grad_(False)` (PromptedBackbone, `freeze=True`) and the adapter hooks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

PROMPT_INIT_STD = 0.02  # trunc-normal std of LPT's prompts (official LPT code)
PROMPT_INITS = ("trunc_normal", "xavier_uniform")

ExtraTokens = Callable[[int], "torch.Tensor | None"]


# --------------------------------------------------------------------------------------------- prompts


class PromptedBackbone(nn.Module):
    """A frozen TokenBackbone with VPT prompts; `forward(images)` → pooled feature [B, feature_dim].

    Placement (as LPT and VPT): prompt tokens go AFTER the patch tokens, ``[CLS, patches, prompts]``, with no
    position embedding.

    - ``deep=True`` (VPT-deep): ``prompts`` is a parameter [num_blocks, length, D]; before block i, prompts[i]
      is appended, block i runs, and the prompt outputs are dropped.
    - ``deep=False`` (VPT-shallow): ``prompts`` is [length, D], appended once before block 0 and carried
      through all blocks (their outputs feed the next block); dropped before pooling.

    Initialisation: ``trunc_normal`` (std 0.02, LPT's) or ``xavier_uniform`` (VPT's: uniform in ±√(6 / (3·p² + D)),
    p the patch size). ``length=0`` gives exactly the plain backbone. Where the prompts sit in the sequence does
    not change any output (attention is permutation-equivariant, prompts carry no position embedding, and their
    outputs are dropped before pooling): VPT's [CLS, prompts, patches] equals this [CLS, patches, prompts]
    (tests/test_peft.py).
    With ``freeze=True`` (default) the backbone's parameters get ``requires_grad=False``; their values are
    never changed. The backbone's train/eval mode is whatever the caller sets.

    Building block for other prompt methods (LPT): `embed`, `forward_tokens` and `pool` split the forward,
    e.g. ``pool(forward_tokens(embed(x), 0, n, extra))`` where ``extra(i)`` returns the tokens for block i.
    """

    def __init__(self, backbone: nn.Module, length: int = 10, deep: bool = True, freeze: bool = True,
                 init: str = "trunc_normal"):
        super().__init__()
        if length < 0:
            raise ValueError(f"prompt length must be >= 0, got {length}")
        self.backbone = backbone
        self.length, self.deep = length, deep
        if freeze:
            backbone.requires_grad_(False)
        shape = (backbone.num_blocks, length, backbone.embed_dim) if deep else (length, backbone.embed_dim)
        self.prompts = nn.Parameter(torch.empty(shape))
        if init == "xavier_uniform":
            bound = math.sqrt(6.0 / (3 * backbone.patch_size ** 2 + backbone.embed_dim))
            nn.init.uniform_(self.prompts, -bound, bound)
        elif init == "trunc_normal":
            nn.init.trunc_normal_(self.prompts, std=PROMPT_INIT_STD)
        else:
            raise ValueError(f"prompt init must be one of {PROMPT_INITS}, got {init!r}")

    # -- pieces -----------------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed(images)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.backbone.pool(tokens)

    def forward_tokens(self, tokens: torch.Tensor, start: int = 0, stop: int | None = None,
                       extra: ExtraTokens | None = None) -> torch.Tensor:
        """Run blocks [start, stop) on ``tokens`` [B, T, D]; returns [B, T, D].

        ``extra(i)`` gives the extra tokens for block i: [B, L, D], [L, D] (shared across the batch), or
        None (no extra tokens). They are appended after ``tokens`` for block i only and their outputs are
        dropped, so the returned sequence always has the T input tokens. Tokens already in ``tokens`` (e.g.
        shallow prompts) are carried through.
        """
        backbone = self.backbone
        stop = backbone.num_blocks if stop is None else stop
        count = tokens.shape[1]
        for index in range(start, stop):
            added = extra(index) if extra is not None else None
            if added is None or added.shape[-2] == 0:
                tokens = backbone.run_block(index, tokens)
                continue
            added = added.to(tokens.dtype)
            if added.dim() == 2:
                added = added.unsqueeze(0).expand(tokens.shape[0], -1, -1)
            tokens = backbone.run_block(index, torch.cat([tokens, added], dim=1))[:, :count]
        return tokens

    def deep_prompt(self, index: int) -> torch.Tensor:
        """The VPT-deep prompts of block ``index``, [length, D] (a callable usable as ``extra``)."""
        return self.prompts[index]

    # -- whole forward ----------------------------------------------------------------------------------
    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Final tokens [B, 1+N, D] (prompt outputs already dropped), before pooling."""
        tokens = self.embed(images)
        if self.deep:
            return self.forward_tokens(tokens, extra=self.deep_prompt)
        if self.length == 0:
            return self.forward_tokens(tokens)
        count = tokens.shape[1]
        prompts = self.prompts.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.forward_tokens(torch.cat([tokens, prompts], dim=1))[:, :count]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(images))

    def prompt_parameters(self) -> list[nn.Parameter]:
        """The trainable set of VPT (the head is the caller's)."""
        return [self.prompts]

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim


# -------------------------------------------------------------------------------------------- adapters

ADAPTER_INPUTS = ("norm", "residual", "block")


class Adapter(nn.Module):
    """AdaptFormer bottleneck ``s · up(relu(down(h)))``: down D→r, up r→D, up weight and bias zero-init.

    Down-projection init is nn.Linear's default (kaiming-uniform, a=√5) with a zero bias, as the official
    "lora" init. ``scale`` is a fixed float (AdaptFormer default 0.1) or, with ``learnable_scale``, a
    scalar parameter initialised to ``scale`` (the official code initialises its learnable scalar to 1.0;
    pass scale=1.0 for that). ``layernorm`` puts a trainable LayerNorm before the down-projection (LIFT's
    AdaptFormer, shijxcs/LIFT models/peft_modules.py).
    """

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1, learnable_scale: bool = False,
                 input: str = "norm", block_index: int = -1, layernorm: bool = False):
        super().__init__()
        if input not in ADAPTER_INPUTS:
            raise ValueError(f"adapter input must be one of {ADAPTER_INPUTS}, got {input!r}")
        self.norm = nn.LayerNorm(dim) if layernorm else None
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        if learnable_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)), persistent=True)
        self.input, self.block_index = input, block_index
        self.enabled = True  # False: the hooks leave the block's output untouched
        self._residual: torch.Tensor | None = None
        self._handles: list = []

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            h = self.norm(h)
        return self.up(F.relu(self.down(h))) * self.scale.to(h.dtype)

    # Hooks: the MLP's forward hook adds the adapter output to the MLP output (inside the block's
    # ls2 / drop_path2 and residual add). For input="residual", a pre-hook on the block's second norm stashes
    # the pre-norm residual stream, which the MLP hook then feeds the adapter; for input="block" (LIFT's
    # x_out = block(x) + adapter(x)), a pre-hook on the block stashes the block's input.
    def _stash_residual(self, module: nn.Module, inputs: tuple) -> None:
        self._residual = inputs[0]

    def _mlp_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            self._residual = None
            return output
        if self.input == "norm":
            h = inputs[0]
        else:
            h, self._residual = self._residual, None
            if h is None:
                raise RuntimeError(f"adapter with input={self.input!r} found no stashed input: the block's "
                                   "MLP ran outside its block or without its norm")
        return output + self(h)

    def extra_repr(self) -> str:
        learnable = isinstance(self.scale, nn.Parameter)
        return f"block={self.block_index}, input={self.input}, learnable_scale={learnable}"


def _mlp_and_norm(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    mlp = getattr(block, "mlp", None)
    norm = getattr(block, "norm2", None)
    if norm is None:
        norm = getattr(block, "ln_2", None)
    if mlp is None or norm is None:
        raise TypeError(f"{type(block).__name__} has no mlp + norm2/ln_2: adapters support timm Block and "
                        "open_clip ResidualAttentionBlock")
    return mlp, norm


def add_adapters(backbone: nn.Module, bottleneck: int = 64, scale: float = 0.1, learnable_scale: bool = False,
                 blocks: Iterable[int] | None = None, input: str = "norm", layernorm: bool = False
                 ) -> list[Adapter]:
    """Attach AdaptFormer parallel adapters to the MLP branch of ``blocks`` (default: all); returns them.

    Variant implemented (``input="norm"``, default) — the AdaptFormer paper's Eq. 3-4:
    ``x_out = x' + MLP(LN(x')) + s · up(relu(down(LN(x'))))``, i.e. the adapter sees exactly the normalised
    tensor the block feeds its MLP (timm ``norm2`` / open_clip ``ln_2``), and its output is added to the MLP
    output, so it passes through the block's ``ls2``/``ls_2`` and ``drop_path2`` (both identity for the
    ViT-B/16 and CLIP backbones used here: no layer scale, no drop-path).

    ``input="residual"`` is the official AdaptFormer code's variant (ffn_option='parallel',
    adapter_layernorm_option='none'): the adapter sees the pre-norm residual stream x' instead.
    ``input="block"`` with ``layernorm=True`` is LIFT's: the adapter sees the block's input, through its own
    LayerNorm, and its output joins the block's output (shijxcs/LIFT models/peft_vit.py).

    The adapters are NOT submodules of the backbone (backbone parameters and state_dict keys are unchanged):
    the caller owns them (e.g. in an nn.ModuleList), moves them to the device, trains and saves them.
    They are created on the backbone's device and dtype. Raises if the backbone already has adapters.
    """
    if backbone.__dict__.get("_adapters"):
        raise RuntimeError("backbone already has adapters: they are attached once per backbone")
    indices = list(range(backbone.num_blocks)) if blocks is None else sorted(set(blocks))
    for index in indices:
        if not 0 <= index < backbone.num_blocks:
            raise ValueError(f"adapter block {index} out of range: backbone has {backbone.num_blocks} blocks")
    reference = next(backbone.parameters())
    adapters = []
    for index in indices:
        block = backbone.blocks[index]
        mlp, norm = _mlp_and_norm(block)
        adapter = Adapter(backbone.embed_dim, bottleneck, scale, learnable_scale, input, index, layernorm)
        adapter.to(device=reference.device, dtype=reference.dtype)
        if input == "residual":
            adapter._handles.append(norm.register_forward_pre_hook(adapter._stash_residual))
        elif input == "block":
            adapter._handles.append(block.register_forward_pre_hook(adapter._stash_residual))
        adapter._handles.append(mlp.register_forward_hook(adapter._mlp_hook))
        adapters.append(adapter)
    backbone.__dict__["_adapters"] = adapters  # plain attribute: not a submodule
    return adapters


@contextmanager
def adapters_disabled(adapters: Iterable[Adapter]) -> Iterator[None]:
    """Run the plain backbone inside the block: every adapter is switched off, then restored."""
    adapters = list(adapters)
    states = [adapter.enabled for adapter in adapters]
    for adapter in adapters:
        adapter.enabled = False
    try:
        yield
    finally:
        for adapter, state in zip(adapters, states, strict=True):
            adapter.enabled = state


# ---------------------------------------------------------------------------------------------- BitFit


def bitfit_parameters(backbone: nn.Module) -> list[nn.Parameter]:
    """Every bias parameter of the backbone (BitFit): Linear/LayerNorm ``bias`` and MHA ``in_proj_bias``.

    The caller trains only these (+ its head) and freezes the rest.
    """
    return [p for name, p in backbone.named_parameters() if name.rsplit(".", 1)[-1].endswith("bias")]


# ------------------------------------------------------------------------------------------ classifier


class CosineClassifier(nn.Module):
    """Bias-free cosine classifier: ``logits[b, c] = cos(x_b, w_c)`` in [-1, 1].

    ``weight`` is stored [C, D] (nn.Linear convention, like text embeddings); LPT's checkpoint stores
    [D, C] (transposed on import). Rows are unit-norm at init (random normal, or ``init_weight`` [C, D]
    normalised) and the weight is normalised again in every forward. The logit is the raw cosine: the scale
    belongs to the loss or the caller. ``dropout`` is applied to the input feature (LPT: 0.1 during training).
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0,
                 init_weight: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if init_weight is None:
            nn.init.normal_(self.weight)
            with torch.no_grad():
                self.weight.copy_(F.normalize(self.weight, dim=1))
        else:
            self.load_weight(init_weight)

    @torch.no_grad()
    def load_weight(self, weight: torch.Tensor) -> None:
        """Copy a [C, D] weight (e.g. class-name text embeddings), rows normalised to unit length."""
        if tuple(weight.shape) != tuple(self.weight.shape):
            raise ValueError(f"init weight has shape {tuple(weight.shape)}, expected [C, D] = "
                             f"{tuple(self.weight.shape)}")
        self.weight.copy_(F.normalize(weight.to(self.weight), dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.dropout(x), dim=-1)
        return F.linear(x, F.normalize(self.weight, dim=1).to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


__all__ = [
    "ADAPTER_INPUTS",
    "PROMPT_INIT_STD",
    "Adapter",
    "CosineClassifier",
    "PromptedBackbone",
    "adapters_disabled",
    "add_adapters",
    "bitfit_parameters",
]

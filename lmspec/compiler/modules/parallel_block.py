"""A transformer layer whose attention and MLP run side by side: both read the layer's input
and their outputs are added to it together, x + attn(norm(x)) + mlp(norm'(x)) (GPT-J, GPT-NeoX,
Phi-2, Falcon). One norm may feed both branches (GPT-J, Phi-2) or each have its own (GPT-NeoX).
Pre-norm only, and no cross-attention: neither has a parallel form."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .kv_cache import LayerCache
from .masks import AttentionContext
from .mlp import FeedForward
from .moe import MixtureOfExperts

__all__ = ["ParallelBlock"]


class ParallelBlock(nn.Module):
    cross_attn = None  # as Block: the layer has no cross-attention

    def __init__(
        self,
        *,
        attn_norm: nn.Module,
        attn: Attention,
        mlp: FeedForward | MixtureOfExperts,
        mlp_norm: nn.Module | None = None,  # None: attn_norm's output feeds the MLP too
        dropout: float = 0.0,
    ):
        super().__init__()
        self.attn_norm, self.attn = attn_norm, attn
        self.mlp_norm, self.mlp = mlp_norm, mlp
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # on each branch

    def forward(
        self,
        x: torch.Tensor,
        ctx: AttentionContext,
        cache: LayerCache | None = None,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.attn_norm(x)  # (B, T, d)
        attended = self.drop(self.attn(h, ctx, cache))
        fed = self.drop(self.mlp(h if self.mlp_norm is None else self.mlp_norm(x)))
        return x + attended + fed

    def prepare(self, ctx: AttentionContext) -> None:
        """See Block.prepare."""
        self.attn.prepare(ctx)

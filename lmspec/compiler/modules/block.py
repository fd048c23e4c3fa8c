"""One transformer layer: self-attention, optional cross-attention, feed-forward, each a
residual branch with its norm in front (pre-norm, GPT-2 onwards), after the add (post-norm,
the original Transformer and BERT), or both in front and on the branch's output before the add
(sandwich: x + post(sublayer(pre(x))), Gemma 2 and 3)."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention, CrossAttention
from .kv_cache import LayerCache
from .masks import AttentionContext
from .mlp import FeedForward
from .moe import MixtureOfExperts

__all__ = ["Block"]


class Block(nn.Module):
    def __init__(
        self,
        *,
        attn_norm: nn.Module,
        attn: Attention,
        mlp_norm: nn.Module,
        mlp: FeedForward | MixtureOfExperts,
        cross_norm: nn.Module | None = None,
        cross_attn: CrossAttention | None = None,
        post_norm: bool = False,  # the norms above apply after each residual add instead
        # sandwich: a norm on each branch's output, before the add (None: the branch is added as it is)
        attn_post_norm: nn.Module | None = None,
        cross_post_norm: nn.Module | None = None,
        mlp_post_norm: nn.Module | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        if post_norm and (attn_post_norm or cross_post_norm or mlp_post_norm):
            raise ValueError("a post-norm block has no norms on its branches' outputs: those are sandwich's")
        self.attn_norm, self.attn = attn_norm, attn
        self.cross_norm, self.cross_attn = cross_norm, cross_attn
        self.mlp_norm, self.mlp = mlp_norm, mlp
        self.attn_post_norm, self.cross_post_norm, self.mlp_post_norm = attn_post_norm, cross_post_norm, mlp_post_norm
        self.post_norm = post_norm
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # on each residual branch

    def forward(
        self,
        x: torch.Tensor,
        ctx: AttentionContext,
        cache: LayerCache | None = None,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self._residual(x, self.attn_norm, lambda h: self.attn(h, ctx, cache), self.attn_post_norm)
        if self.cross_attn is not None:
            memory_kv = self._memory_kv(memory, cache)
            x = self._residual(x, self.cross_norm, lambda h: self.cross_attn(h, memory_kv, ctx.cross_mask),
                               self.cross_post_norm)
        return self._residual(x, self.mlp_norm, self.mlp, self.mlp_post_norm)

    def prepare(self, ctx: AttentionContext) -> None:
        """Build the rope tables and the mask this layer's attention will ask `ctx` for.

        With activation checkpointing a block's forward runs twice, and the second run finds
        them memoised: built inside the first run, their ops (T5's masked_fill of a trained
        bias) would keep tensors for backward that the second run never recomputes. Built
        here, before the checkpointed blocks, they are computed once and shared as usual."""
        self.attn.prepare(ctx)

    def _residual(self, x: torch.Tensor, norm: nn.Module, branch, after: nn.Module | None) -> torch.Tensor:
        if self.post_norm:
            return norm(x + self.drop(branch(x)))
        out = branch(norm(x))  # (B, T, d)
        if after is not None:  # sandwich
            out = after(out)
        return x + self.drop(out)

    def _memory_kv(self, memory: torch.Tensor | None, cache: LayerCache | None):
        if cache is not None and cache.cross_kv is not None:
            return cache.cross_kv  # the encoder output does not change while decoding
        if memory is None:
            raise ValueError("a cross-attention layer needs the encoder output (or a cache that holds it)")
        memory_kv = self.cross_attn.memory_kv(memory)
        if cache is not None:
            cache.cross_kv = memory_kv
        return memory_kv

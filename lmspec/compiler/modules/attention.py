"""Self-attention (fused q/k/v projection) and cross-attention (decoder over encoder output).

Both end in `F.scaled_dot_product_attention`; what differs between causal, sliding, prefix,
ALiBi and T5 attention is only the mask the `AttentionContext` hands over. Where that would be
a dense mask and the stack runs FlexAttention (on CUDA by default), the context hands over a
block mask instead and the layer calls `flex_attention` (flex.py). A soft-capped layer
(Gemma 2) takes an explicit path instead, since SDPA cannot cap its scores: the (T x S) score
matrix is materialised, as SDPA's math kernel would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .flex import MIN_HEAD_DIM, TORCH_VERSION, flex_attend
from .kv_cache import LayerCache
from .masks import AttentionContext, AttentionMask
from .positions import Rotary, apply_rope

__all__ = ["Attention", "CrossAttention", "attend"]

# SDPA learnt grouped-query attention (kv heads shared by groups of query heads) in torch 2.5
_SDPA_GQA = TORCH_VERSION >= (2, 5)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: AttentionMask,
    *,
    dropout: float,
    scale: float | None,
    softcap: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for q (B, nh, T, hd) and k, v (B, nkv, S, hd); scale
    None: 1/sqrt(hd). With `softcap`, the scores become softcap * tanh(scores / softcap)
    before the mask."""
    if softcap is not None:
        return _softcapped(q, k, v, mask, dropout=dropout, scale=scale, softcap=softcap)
    if mask.flex is not None:
        if dropout > 0:
            raise ValueError("FlexAttention has no attention dropout: a layer with dropout asks for an SDPA mask")
        return flex_attend(q, k, v, mask.flex, scale=scale)
    extra = {}
    if k.shape[1] != q.shape[1]:
        if _SDPA_GQA:
            extra["enable_gqa"] = True
        else:  # query head i reads kv head i // (nh / nkv)
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask.mask, is_causal=mask.is_causal, dropout_p=dropout, scale=scale, **extra
    )  # (B, nh, T, hd)


def _softcapped(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, *, dropout: float, scale: float | None,
    softcap: float,
) -> torch.Tensor:
    """`attend` with capped scores, written out: what SDPA's math kernel does, plus the cap."""
    T, S = q.shape[-2], k.shape[-2]
    if k.shape[1] != q.shape[1]:  # query head i reads kv head i // (nh / nkv)
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)  # (B, nh, T, S)
    scores = softcap * torch.tanh(scores / softcap)
    bias = mask.mask  # added, as SDPA adds it: autograd keeps nothing of it
    if mask.is_causal:  # slots: query i is slot S - T + i
        bias = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    if bias is not None and bias.dtype == torch.bool:
        bias = torch.zeros(bias.shape, dtype=scores.dtype, device=q.device).masked_fill(~bias, float("-inf"))
    if bias is not None:  # ALiBi's and T5's float biases carry -inf where hidden already; in q's dtype, as SDPA
        scores = scores + bias.to(scores.dtype)
    # the softmax in fp32, back to q's dtype for the product with v: transformers' Gemma 2 (eager)
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    probs = F.dropout(probs, p=dropout) if dropout > 0 else probs
    return probs @ v  # (B, nh, T, hd)


class Attention(nn.Module):
    """Multi-head self-attention with grouped-query support.

    kind: "causal" | "bidirectional" | "sliding" | "prefix"; position: "rope", "alibi" and
    "relative" act here, anything else is ignored (added to the embeddings, or absent); rotary:
    what RoPE rotates and how (required with position "rope"). scale: None for 1/sqrt(head_dim),
    or a number (T5: 1.0). softcap: scores become softcap * tanh(scores / softcap) before the
    mask (Gemma 2), or None. qkv_bias: biases on the fused q/k/v projection; out_bias: on the
    output projection. q_norm, k_norm: norms over each query and key head (width head_dim),
    applied before RoPE (Qwen3's QK-norm).
    """

    def __init__(
        self,
        *,
        d_model: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        kind: str = "causal",
        window: int | None = None,
        position: str = "none",
        rotary: Rotary | None = None,
        scale: float | None = None,
        softcap: float | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.kind, self.window = kind, window
        if (position == "rope") != (rotary is not None):
            raise ValueError("position 'rope' needs a rotary, and only it takes one")
        self.position, self.rotary = position, rotary
        self.scale, self.softcap, self.dropout = scale, softcap, dropout
        # one matmul for all three: rows are q (heads*hd), then k (kv*hd), then v (kv*hd)
        self.qkv_proj = nn.Linear(d_model, (heads + 2 * kv_heads) * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(heads * head_dim, d_model, bias=out_bias)
        self.q_norm, self.k_norm = q_norm, k_norm

    def forward(self, x: torch.Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split((q_size, kv_size, kv_size), dim=-1)
        # per-head work happens in (B, T, heads, hd), the projection's own layout
        q, k = q.view(B, T, self.heads, self.head_dim), k.view(B, T, self.kv_heads, self.head_dim)
        if self.q_norm is not None:  # over head_dim: each head is normalised on its own
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            cos, sin = ctx.rope(self.rotary)
            q, k = apply_rope(q, cos, sin, self.rotary), apply_rope(k, cos, sin, self.rotary)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, nh, T, hd), (B, nkv, T, hd)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        if cache is not None:  # keys are cached rotated: a key's position never changes
            k, v = cache.update(k, v, ctx.start)  # (B, nkv, S, hd)
        ring = None if cache is None else cache.ring  # a ring buffer's keys are not in slot order
        y = attend(q, k, v, self._mask(ctx, ring), dropout=self.dropout if self.training else 0.0, scale=self.scale,
                   softcap=self.softcap)
        y = y.transpose(1, 2).reshape(B, T, q_size)  # (B, T, nh*hd): heads side by side
        return self.o_proj(y)

    def _mask(self, ctx: AttentionContext, ring: int | None = None):
        # FlexAttention has no dropout, no soft cap and no heads under 16 (such layers keep SDPA / their own path)
        flex = self.softcap is None and self.head_dim >= MIN_HEAD_DIM and (self.dropout == 0 or not self.training)
        return ctx.mask(self.kind, self.window, alibi_heads=self.heads if self.position == "alibi" else None,
                        relative=self.position == "relative", ring=ring, flex=flex)

    def prepare(self, ctx: AttentionContext) -> None:
        """Ask `ctx` now for the rope tables and the mask `forward` will ask for (see Block.prepare)."""
        if self.rotary is not None:
            ctx.rope(self.rotary)
        self._mask(ctx)


class CrossAttention(nn.Module):
    """Decoder queries over the encoder output ("memory"). The memory's keys and values do
    not change while decoding, so `memory_kv` is computed once and cached by the caller."""

    def __init__(
        self,
        *,
        d_model: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        scale: float | None = None,
        softcap: float | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.scale, self.softcap, self.dropout = scale, softcap, dropout
        self.q_proj = nn.Linear(d_model, heads * head_dim, bias=qkv_bias)
        self.kv_proj = nn.Linear(d_model, 2 * kv_heads * head_dim, bias=qkv_bias)  # k rows, then v rows
        self.o_proj = nn.Linear(heads * head_dim, d_model, bias=out_bias)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, _ = memory.shape
        k, v = self.kv_proj(memory).split(self.kv_heads * self.head_dim, dim=-1)
        k = k.view(B, S, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, S, hd)
        v = v.view(B, S, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, S, hd)
        return k, v

    def forward(
        self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], mask: AttentionMask
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k, v = memory_kv
        y = attend(q, k, v, mask, dropout=self.dropout if self.training else 0.0, scale=self.scale,
                   softcap=self.softcap)
        y = y.transpose(1, 2).reshape(B, T, self.heads * self.head_dim)  # (B, T, nh*hd)
        return self.o_proj(y)

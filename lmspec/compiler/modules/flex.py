"""FlexAttention (`torch.nn.attention.flex_attention`) for the masks SDPA can only take dense.

SDPA's fast kernels know two masks: none, and causal (`is_causal`). A sliding window shorter
than the sequence, a prefix, or ALiBi's biases reach it as a (T x S) tensor, which on CUDA
rules out the flash kernel and, with grouped-query heads, the memory-efficient one too (it
falls back to math, keeping the probabilities). FlexAttention takes the same structure as a
`BlockMask` (which 128 x 128 tiles hold any visible key: tiles outside a window are skipped, not
computed and masked) and ALiBi as a `score_mod`, in one fused kernel that keeps only q, k, v,
the output and a log-sum-exp per query, as flash attention does.

Which layers use it is `use_flex`'s answer for the stack (`Stack.attention_kernel`): on CUDA by
default, never on the CPU, whose FlexAttention has no backward pass (torch 2.13 refuses it).
Masks are built on slots 0 .. T-1 of a forward pass without a KV cache; decoding keeps SDPA
and its small dense masks (masks.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

try:
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # torch < 2.5
    BlockMask = create_block_mask = flex_attention = None  # type: ignore[assignment,misc]

__all__ = ["AVAILABLE", "BLOCK", "KERNELS", "FlexMask", "build_flex_mask", "flex_attend", "use_flex"]

AVAILABLE = flex_attention is not None
BLOCK = 128  # the tile of a BlockMask (torch's _DEFAULT_SPARSE_BLOCK_SIZE)
KERNELS = ("auto", "sdpa", "flex")


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton()


def use_flex(kernel: str, device: torch.device) -> bool:
    """Whether a stack running on `device` gives its sliding, prefix and ALiBi layers to
    FlexAttention. kernel "sdpa": never; "flex": always (on the CPU only without gradients);
    "auto": on CUDA, when torch has FlexAttention and triton builds its kernels."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}: expected one of {', '.join(KERNELS)}")
    if kernel == "sdpa":
        return False
    if kernel == "flex":
        if not AVAILABLE:
            raise RuntimeError(f"attention kernel 'flex' needs torch 2.5 or later (torch.nn.attention.flex_attention); "
                               f"this is torch {torch.__version__}")
        return True
    return AVAILABLE and device.type == "cuda" and _has_triton()


@dataclass
class FlexMask:
    """What `flex_attention` takes in place of a dense mask."""

    block_mask: "BlockMask"
    score_mod: Callable | None = None  # ALiBi: score - slope[h] * |q_pos - k_pos|


def build_flex_mask(
    kind: str,
    window: int | None,
    *,
    T: int,
    key_mask: torch.Tensor | None,
    prefix_lengths: torch.Tensor | None,
    positions: torch.Tensor,
    slopes: torch.Tensor | None,
    device: torch.device,
) -> FlexMask:
    """The mask of `AttentionContext._structure` and its padding rule, for T queries over the
    same T keys (no cache): kind "causal" | "bidirectional" | "sliding" | "prefix"; key_mask
    (B, T) False at padding keys, which stay visible to themselves so no row is empty;
    positions (B|1, T) the position ids ALiBi reads; slopes (nh,) ALiBi's, or None."""
    if kind == "prefix" and prefix_lengths is None:
        raise ValueError("prefix attention needs prefix_lengths (B,): pass prefix_lengths= to forward()")
    prefix = None if prefix_lengths is None else prefix_lengths.to(device)

    def structure(b, h, q, k):
        if kind == "bidirectional":
            return q >= 0  # every key: an all-true predicate of the right shape
        causal = k <= q
        if kind == "causal":
            return causal
        if kind == "sliding":
            return causal & (k > q - window)
        if kind == "prefix":
            return causal | ((q < prefix[b]) & (k < prefix[b]))
        raise ValueError(f"unknown attention kind {kind!r}")

    def padded(b, h, q, k):  # the structure, less padding keys (each visible to itself)
        return structure(b, h, q, k) & (key_mask[b, k] | (q == k))

    per_row = key_mask is not None or kind == "prefix"
    rows = (key_mask.shape[0] if key_mask is not None else prefix.shape[0]) if per_row else None
    mask_mod = structure if key_mask is None else padded
    block_mask = create_block_mask(mask_mod, rows, None, T, T, device=device, BLOCK_SIZE=BLOCK)
    if slopes is None:
        return FlexMask(block_mask)
    slopes = slopes.to(device=device, dtype=torch.float32)
    pos = positions[0]  # (T,) the position ids of every row, or of row b under left padding

    def alibi(score, b, h, q, k):  # alibi_bias: -slope * |query - key|
        return score - (slopes[h] * (pos[q] - pos[k]).abs()).to(score.dtype)

    def alibi_per_row(score, b, h, q, k):
        return score - (slopes[h] * (positions[b, q] - positions[b, k]).abs()).to(score.dtype)

    return FlexMask(block_mask, alibi if positions.shape[0] == 1 else alibi_per_row)


@functools.cache
def _compiled() -> Callable:
    # FlexAttention is fused only under torch.compile; called eagerly it runs an unfused reference
    return torch.compile(flex_attention)


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: FlexMask, *, scale: float | None) -> torch.Tensor:
    """softmax(score_mod(q k^T * scale)) v over the keys `mask.block_mask` lets each query see:
    q (B, nh, T, hd), k and v (B, nkv, T, hd). The output is laid out as q is (torch matches
    its strides), so the caller's transpose back to (B, T, nh*hd) is a view."""
    fn = flex_attention if q.device.type == "cpu" or torch.compiler.is_compiling() else _compiled()
    return fn(q, k, v, score_mod=mask.score_mod, block_mask=mask.block_mask, scale=scale,
              enable_gqa=k.shape[1] != q.shape[1])  # (B, nh, T, hd)

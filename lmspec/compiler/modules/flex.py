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
and its small dense masks (masks.py). Triton's kernels need a head_dim of 16 or more
(`MIN_HEAD_DIM`): smaller heads keep SDPA.

torch.compile compiles `flex_attention` once per distinct mask and score function, and falls
back to the unfused kernel (the whole score matrix) past its recompile limit, silently but for
a log line. So the mask functions take what differs between layers (kind, window, prefix
lengths, padding) as tensors, not as Python values baked into the code: one compiled kernel per
(row-wise or not, ALiBi or not, gradients or not, static or dynamic shapes), and the call raises
the limit for itself (`RECOMPILE_LIMIT`) rather than ever reaching the unfused kernel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["AVAILABLE", "BLOCK", "KERNELS", "MIN_HEAD_DIM", "FlexMask", "build_flex_mask", "flex_attend", "use_flex"]

# imported when first used: torch.nn.attention.flex_attention imports torch._dynamo (seconds),
# which building a model, or `lmspec check`'s meta pass, never needs
TORCH_VERSION = tuple(int(p) for p in torch.__version__.split(".")[:2])  # (major, minor)
AVAILABLE = TORCH_VERSION >= (2, 5)  # torch.nn.attention.flex_attention
BLOCK = 128  # the tile of a BlockMask (torch's _DEFAULT_SPARSE_BLOCK_SIZE)
KERNELS = ("auto", "sdpa", "flex")
MIN_HEAD_DIM = 16  # triton's tl.dot: torch's CUDA FlexAttention refuses smaller heads
RECOMPILE_LIMIT = 64  # torch.compile's versions of flex_attention, at most (torch's default: 8)


def _has_triton() -> bool:
    """Whether triton can build FlexAttention's kernels here. Inside torch.compile the answer is
    yes (it compiles CUDA kernels with triton; `compile: true` checks for it before the run), and
    a constant, so a stack asking it breaks no graph."""
    return torch.compiler.is_compiling() or _triton_here()


@functools.cache
def _triton_here() -> bool:
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

    block_mask: object  # torch.nn.attention.flex_attention.BlockMask
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
    from torch.nn.attention.flex_attention import create_block_mask

    if kind == "prefix" and prefix_lengths is None:
        raise ValueError("prefix attention needs prefix_lengths (B,): pass prefix_lengths= to forward()")
    if kind not in ("causal", "bidirectional", "sliding", "prefix"):
        raise ValueError(f"unknown attention kind {kind!r}")
    # the kind and window as tensors: every layer's mask is one function (module docstring).
    # A key is visible when every key is (bidirectional), or when it is at most `reach` - 1 before
    # the query (causal: T, any key before it; sliding: the window), or both are in the prefix.
    every = torch.tensor(kind == "bidirectional", device=device)
    reach = torch.tensor(window if kind == "sliding" else T, device=device)

    def structure(b, h, q, k):
        return every | ((k <= q) & (k > q - reach))

    per_row = key_mask is not None or kind == "prefix"
    rows = None
    if per_row:
        rows = key_mask.shape[0] if key_mask is not None else prefix_lengths.shape[0]
        prefix = (prefix_lengths.to(device) if kind == "prefix" and prefix_lengths is not None
                  else torch.zeros(rows, dtype=torch.long, device=device))
        keys = key_mask if key_mask is not None else torch.ones(rows, T, dtype=torch.bool, device=device)

        def row_wise(b, h, q, k):  # the prefix sees itself; padding keys are hidden but from themselves
            inside = (q < prefix[b]) & (k < prefix[b])
            return (structure(b, h, q, k) | inside) & (keys[b, k] | (q == k))

    block_mask = create_block_mask(row_wise if per_row else structure, rows, None, T, T, device=device,
                                   BLOCK_SIZE=BLOCK)
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
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: FlexMask, *, scale: float | None) -> torch.Tensor:
    """softmax(score_mod(q k^T * scale)) v over the keys `mask.block_mask` lets each query see:
    q (B, nh, T, hd), k and v (B, nkv, T, hd). The output is laid out as q is (torch matches
    its strides), so the caller's transpose back to (B, T, nh*hd) is a view."""
    from torch.nn.attention.flex_attention import flex_attention

    extra = dict(score_mod=mask.score_mod, block_mask=mask.block_mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    if q.device.type == "cpu" or torch.compiler.is_compiling():  # the reference; or traced by the model's compile
        return flex_attention(q, k, v, **extra)  # (B, nh, T, hd)
    import torch._dynamo

    limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    with torch._dynamo.config.patch(recompile_limit=limit):
        return _compiled()(q, k, v, **extra)  # (B, nh, T, hd)

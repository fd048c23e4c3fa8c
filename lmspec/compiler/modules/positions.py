"""Position information: sinusoidal tables, rotary embeddings (RoPE), ALiBi slopes and
T5's bucketed relative-position bias.

Everything here is a function of *position ids*, tensors of shape (B, T) or (1, T) when
every row of the batch shares them. Computing from ids rather than slicing a precomputed
table lets the KV cache, left padding and chunked decoding all use one code path, and keeps
the modules free of buffers (nothing to allocate when a model is built on "meta").
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "sinusoidal_positions",
    "rope_cos_sin",
    "apply_rope",
    "alibi_slopes",
    "alibi_bias",
    "relative_position_bucket",
    "RelativePositionBias",
]


def sinusoidal_positions(positions: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same)."""
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) * (-math.log(10_000.0) / dim)
    )
    angles = positions[..., None].float() * inv_freq  # (B, T, ceil(d/2))
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # sin, cos interleaved
    return table[..., :dim].to(dtype)  # (B, T, d)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for rotary embeddings, Hugging Face Llama layout: the angle for frequency i
    sits at both i and i + head_dim/2 (rotate_half pairs the first half with the second)."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)  # (hd/2,)
    freqs = positions[..., None].float() * inv_freq  # (B, T, hd/2), in fp32 for long contexts
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, hd): broadcast over heads
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys (B, nh, T, hd) by their positions."""
    return x * cos + _rotate_half(x) * sin


def alibi_slopes(heads: int) -> torch.Tensor:
    """The ALiBi paper's geometric slopes; for a head count that is not a power of two, the
    slopes of the nearest lower power of two plus every other slope of the next one (BLOOM)."""
    closest = 2 ** math.floor(math.log2(heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base**p for p in range(1, closest + 1)]
    if closest != heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra_base**p for p in range(1, 2 * (heads - closest), 2)]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """-slope * |query - key| for every head: (B, nh, T, S). Under a causal mask this equals
    BLOOM's slope * key_position up to a per-row constant, which softmax ignores; the
    absolute value makes the same bias meaningful for bidirectional attention."""
    distance = (q_pos[:, :, None] - k_pos[:, None, :]).abs().float()  # (B, T, S)
    return -slopes.to(distance.device)[None, :, None, None] * distance[:, None]


def relative_position_bucket(
    relative_position: torch.Tensor, *, bidirectional: bool, buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucketing of (key - query) distances, as in Hugging Face T5: half the buckets
    are exact small distances, the rest grow logarithmically up to `max_distance`. A
    bidirectional (encoder) table splits the buckets between keys before and after the query;
    a causal (decoder) table spends all of them on keys before it."""
    result = torch.zeros_like(relative_position)
    if bidirectional:
        buckets //= 2
        result += (relative_position > 0).long() * buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)
    max_exact = buckets // 2
    is_small = distance < max_exact
    large = max_exact + (
        torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (buckets - max_exact)
    ).long()
    large = torch.clamp(large, max=buckets - 1)
    return result + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """T5's learned bias per (distance bucket, head), computed once per forward pass of a
    stack and added to the attention scores of every layer in it."""

    def __init__(self, embed: nn.Embedding, *, max_distance: int, bidirectional: bool):
        super().__init__()
        self.embed = embed  # (buckets, heads)
        self.buckets = embed.num_embeddings
        self.max_distance = max_distance
        self.bidirectional = bidirectional

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        relative = k_pos[:, None, :] - q_pos[:, :, None]  # (B, T, S): key minus query
        bucket = relative_position_bucket(
            relative, bidirectional=self.bidirectional, buckets=self.buckets, max_distance=self.max_distance
        )
        return self.embed(bucket).permute(0, 3, 1, 2)  # (B, nh, T, S)

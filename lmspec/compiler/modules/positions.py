"""Position information: sinusoidal tables, rotary embeddings (RoPE), ALiBi slopes and
T5's bucketed relative-position bias.

Everything here is a function of *position ids*, tensors of shape (B, T) or (1, T) when
every row of the batch shares them. Computing from ids rather than slicing a precomputed
table lets the KV cache, left padding and chunked decoding all use one code path, and keeps
the modules free of buffers (nothing to allocate when a model is built on "meta").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "sinusoidal_positions",
    "LinearScaling",
    "Llama3Scaling",
    "YarnScaling",
    "LongropeScaling",
    "Rotary",
    "rope_inv_freq",
    "rope_attention_factor",
    "rope_switch_length",
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


# RoPE's frequency scalings, one record per kind. `kind` is a field, so that scalings of two kinds
# never compare equal (a Rotary is a memo key); an attention_factor or mscale of None is derived
# as transformers derives it.


class LinearScaling(NamedTuple):
    """Every frequency divided by `factor` (position interpolation)."""

    factor: float
    kind: str = "linear"


class Llama3Scaling(NamedTuple):
    """Llama 3.1: wavelengths past original_context / low_freq slowed by `factor`, those below
    original_context / high_freq kept, the band between interpolated."""

    factor: float
    low_freq: float
    high_freq: float
    original_context: int
    kind: str = "llama3"


class YarnScaling(NamedTuple):
    """YaRN: frequencies blended between kept and divided by `factor` along a ramp set by
    beta_fast and beta_slow (rounded outwards when `truncate`); cos and sin scaled."""

    factor: float
    original_context: int
    beta_fast: float
    beta_slow: float
    attention_factor: float | None
    mscale: float | None
    mscale_all_dim: float | None
    truncate: bool
    kind: str = "yarn"


class LongropeScaling(NamedTuple):
    """Phi-3's longrope: per-frequency divisors, the short ones while a pass stays within
    original_context and the long ones past it; cos and sin scaled."""

    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_context: int
    factor: float
    attention_factor: float | None
    kind: str = "longrope"


RotaryScaling = LinearScaling | Llama3Scaling | YarnScaling | LongropeScaling
_SCALINGS = {"linear": LinearScaling, "llama3": Llama3Scaling, "yarn": YarnScaling, "longrope": LongropeScaling}


@dataclass(frozen=True)
class Rotary:
    """One rotary embedding: the first `dims` dimensions of each head rotate (the rest pass
    through: GPT-NeoX, Phi-2), at frequencies theta^(-2i/dims), optionally scaled (None:
    unscaled). A scaling may also be given as a plain tuple led by its kind, its fields in order:
    ("llama3", 8.0, 1.0, 4.0, 8192). interleaved: dimension 2i pairs with 2i + 1 (GPT-J);
    otherwise i with i + dims/2 (Llama)."""

    dims: int
    theta: float = 10_000.0
    interleaved: bool = False
    scaling: RotaryScaling | None = None

    def __post_init__(self) -> None:
        s = self.scaling
        if s is not None and type(s) not in _SCALINGS.values():
            if s and s[0] not in _SCALINGS:
                raise ValueError(f"unknown rope scaling {s[0]!r}")
            object.__setattr__(self, "scaling", _SCALINGS[s[0]](*s[1:]) if s else None)


def rope_inv_freq(rotary: Rotary, device: torch.device | None = None, *, long: bool = False) -> torch.Tensor:
    """The (dims/2,) angular frequencies, in fp32, computed as Hugging Face computes them.
    long: longrope's long factors (else its short ones); the other kinds ignore it."""
    exponents = torch.arange(0, rotary.dims, 2, device=device, dtype=torch.int64).float() / rotary.dims
    inv_freq = 1.0 / (rotary.theta**exponents)
    s = rotary.scaling
    if s is None:
        return inv_freq
    if s.kind == "linear":
        return inv_freq / s.factor
    if s.kind == "llama3":
        return _llama3_inv_freq(inv_freq, s)
    if s.kind == "yarn":
        return _yarn_inv_freq(rotary, exponents)
    factors = torch.tensor(s.long_factor if long else s.short_factor, dtype=torch.float32, device=device)
    return 1.0 / (factors * rotary.theta**exponents)  # longrope


def _llama3_inv_freq(inv_freq: torch.Tensor, s: Llama3Scaling) -> torch.Tensor:
    # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
    # interpolated by where the wavelength falls relative to the original context
    factor, low_freq, high_freq, original = s.factor, s.low_freq, s.high_freq, s.original_context
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low_freq, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low_freq) / (high_freq - low_freq)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < original / high_freq) * ~(wavelen > original / low_freq)
    return torch.where(medium, smoothed, scaled)


def _yarn_inv_freq(rotary: Rotary, exponents: torch.Tensor) -> torch.Tensor:
    """YaRN (Peng et al. 2023): frequency i is interpolated (divided by factor) when it turns
    fewer than beta_slow times over the original context, kept (extrapolated) when it turns more
    than beta_fast times, and blended along a linear ramp between the two dimensions."""
    s = rotary.scaling
    factor, original, beta_fast, beta_slow = s.factor, s.original_context, s.beta_fast, s.beta_slow
    dim, base = rotary.dims, rotary.theta

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: no division by zero
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolated = 1 - ramp.to(exponents.device)  # 1: keep the frequency, 0: divide it by factor
    pos_freqs = base**exponents
    return (1.0 / (factor * pos_freqs)) * (1 - extrapolated) + (1.0 / pos_freqs) * extrapolated


def rope_attention_factor(rotary: Rotary) -> float:
    """What cos and sin are multiplied by (so q.k by its square): YaRN's 0.1 ln(factor) + 1, or
    mscale's ratio (DeepSeek), and longrope's sqrt(1 + ln(factor) / ln(original_context)),
    unless the scaling gives its own; 1 for the other kinds."""
    s = rotary.scaling
    if s is None or s.kind not in ("yarn", "longrope"):
        return 1.0
    if s.attention_factor is not None:
        return s.attention_factor
    if s.kind == "longrope":
        return 1.0 if s.factor <= 1.0 else math.sqrt(1 + math.log(s.factor) / math.log(s.original_context))

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if s.mscale and s.mscale_all_dim:
        return float(get_mscale(s.factor, s.mscale) / get_mscale(s.factor, s.mscale_all_dim))
    return get_mscale(s.factor)


def rope_switch_length(rotary: Rotary) -> int | None:
    """longrope's original context: a forward pass whose largest position id is at or past it
    uses the long factors; None for every other kind."""
    s = rotary.scaling
    return s.original_context if s is not None and s.kind == "longrope" else None


def rope_cos_sin(positions: torch.Tensor, rotary: Rotary, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (B|1, T, 1, dims) for queries or keys laid out (B, T, heads, head_dim). The
    angle of frequency i sits at i and i + dims/2 (half layout), or at 2i and 2i + 1.

    longrope picks its factors per call, as transformers does: long for every position of the
    batch when the largest position id + 1 exceeds the original context, short otherwise."""
    switch = rope_switch_length(rotary)
    long = switch is not None and positions.numel() > 0 and int(positions.max()) + 1 > switch
    freqs = positions[..., None].float() * rope_inv_freq(rotary, positions.device, long=long)  # (B, T, dims/2), fp32
    if rotary.interleaved:
        angles = freqs.repeat_interleave(2, dim=-1)
    else:
        angles = torch.cat((freqs, freqs), dim=-1)
    angles = angles[:, :, None]  # (B, T, 1, dims): broadcast over heads
    scale = rope_attention_factor(rotary)
    if scale == 1.0:
        return angles.cos().to(dtype), angles.sin().to(dtype)
    return (angles.cos() * scale).to(dtype), (angles.sin() * scale).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    # (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    """Rotate queries or keys (B, T, heads, head_dim) by their positions: the first
    `rotary.dims` dimensions of each head; the others pass through."""
    rotate = _rotate_pairs if rotary.interleaved else _rotate_half
    if rotary.dims == x.shape[-1]:
        return x * cos + rotate(x) * sin
    x_rot, x_pass = x[..., : rotary.dims], x[..., rotary.dims :]
    return torch.cat((x_rot * cos + rotate(x_rot) * sin, x_pass), dim=-1)


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

"""Normalisation layers: LayerNorm (weight + bias, or weight only) and RMSNorm (weight only).

Both are torch's own modules (fused kernels where the backend has them); this file
only maps the spec's names onto them so the builders never spell a class name.
"""

from __future__ import annotations

from torch import nn

__all__ = ["make_norm"]


def make_norm(kind: str, dim: int, eps: float, *, bias: bool = True) -> nn.Module:
    """A norm over the last dimension: "layernorm" (weight, and a bias unless bias=False: OLMo,
    MPT) or "rmsnorm" (weight)."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        # x * rsqrt(mean(x^2) + eps) * weight, as in T5 and Llama
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}: expected 'layernorm' or 'rmsnorm'")

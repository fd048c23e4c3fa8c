"""Normalisation layers: LayerNorm (weight + bias, or weight only) and RMSNorm (weight only).

With no offset both are torch's own modules (fused kernels where the backend has them). With
`offset` (Gemma's RMSNorm: offset 1) the norm multiplies by (offset + weight) and its weight
starts at 1 - offset: the same function at initialisation, but the stored weight is the
checkpoint's own (training never decays it: runtime.engine.param_groups decays matrices only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["make_norm", "OffsetLayerNorm", "OffsetRMSNorm", "norm_init"]


def make_norm(kind: str, dim: int, eps: float, *, bias: bool = True, offset: float = 0.0) -> nn.Module:
    """A norm over the last dimension: "layernorm" (weight, and a bias unless bias=False: OLMo,
    MPT) or "rmsnorm" (weight); with `offset`, one that scales by (offset + weight)."""
    if kind == "layernorm":
        return OffsetLayerNorm(dim, eps, bias, offset) if offset else nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        # x * rsqrt(mean(x^2) + eps) * weight, as in T5 and Llama
        return OffsetRMSNorm(dim, eps, offset) if offset else nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}: expected 'layernorm' or 'rmsnorm'")


def norm_init(module: nn.Module) -> float:
    """The value a norm's weight starts at: 1 - its offset, so that it first scales by one."""
    return 1.0 - getattr(module, "offset", 0.0)


class OffsetLayerNorm(nn.LayerNorm):
    """(x - mean) / std * (offset + weight) + bias."""

    def __init__(self, dim: int, eps: float, bias: bool, offset: float):
        self.offset = offset  # reset_parameters, called by nn.LayerNorm's __init__, reads it
        super().__init__(dim, eps=eps, bias=bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.weight.fill_(norm_init(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight + self.offset, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, offset={self.offset:g}"


class OffsetRMSNorm(nn.RMSNorm):
    """x * rsqrt(mean(x^2) + eps) * (offset + weight): Gemma's RMSNorm with offset 1. The sum
    offset + weight is rounded once to the weight's dtype, as a checkpoint folded into it would be."""

    def __init__(self, dim: int, eps: float, offset: float):
        self.offset = offset
        super().__init__(dim, eps=eps)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.weight.fill_(norm_init(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight + self.offset, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, offset={self.offset:g}"

"""The position-wise feed-forward network, plain or gated."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FeedForward", "make_activation"]

# a gated activation is its gate's nonlinearity applied to one projection, times another
_GATE = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_tanh", "reglu": "relu"}


def make_activation(name: str) -> nn.Module:
    """The nonlinearity for an activation name; for gated names (swiglu...), the gate's."""
    name = _GATE.get(name, name)
    if name == "gelu":
        return nn.GELU()  # exact (erf), as in BERT
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
    if name == "relu":
        return nn.ReLU()
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r}")


class FeedForward(nn.Module):
    """down(act(up(x))), or with a gate projection down(act(gate(x)) * up(x))."""

    def __init__(
        self, *, up_proj: nn.Linear, down_proj: nn.Linear, activation: nn.Module, gate_proj: nn.Linear | None = None
    ):
        super().__init__()
        self.up_proj = up_proj
        self.gate_proj = gate_proj
        self.down_proj = down_proj
        self.act = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is None:
            return self.down_proj(self.act(self.up_proj(x)))  # (B, T, d)
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))  # (B, T, d)

"""Output heads that are more than one Linear: the lm head (a Linear whose logits may be
soft-capped), BERT's pooler and masked-LM head, and the pooling that feeds sequence-level heads
(classifier, scalar)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LMHead", "Pooler", "MLMHead", "pool", "softcap"]


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(x / cap): x unchanged near zero, bounded by +-cap (Gemma 2); None: x itself."""
    return x if cap is None else cap * torch.tanh(x / cap)


class LMHead(nn.Linear):
    """Vocabulary logits (B, T, V) from hidden states: a Linear (its `weight` may be the token
    embedding), with Gemma 2's final soft cap when `softcap` is set. A subclass of nn.Linear so
    that its tensors keep the names lm_head.weight and lm_head.bias."""

    def __init__(self, d_model: int, vocab: int, *, bias: bool = False, softcap: float | None = None):
        super().__init__(d_model, vocab, bias=bias)
        self.softcap = softcap

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return softcap(super().forward(hidden), self.softcap)  # (B, T, V)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.softcap is None else f", softcap={self.softcap:g}")


class Pooler(nn.Module):
    """BERT: tanh(dense(hidden of the first token))."""

    def __init__(self, d_model: int):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, d)


class MLMHead(nn.Module):
    """Vocabulary logits for masked tokens; given an activation (and norm), BERT's transform
    dense + act + norm comes first.
    The decoder keeps its own bias even when its weight is the token embedding."""

    def __init__(
        self, d_model: int, vocab: int, *, activation: nn.Module | None = None, norm: nn.Module | None = None
    ):
        super().__init__()
        transform = activation is not None
        self.dense = nn.Linear(d_model, d_model) if transform else None
        self.act = activation
        self.norm = norm if transform else None
        self.decoder = nn.Linear(d_model, vocab)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            hidden = self.norm(self.act(self.dense(hidden)))
        return self.decoder(hidden)  # (B, T, V)


def pool(hidden: torch.Tensor, how: str, mask: torch.Tensor | None, pooled: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per sequence (B, d) from hidden states (B, T, d).

    "first": the pooler output when the model has one, else the first token; "last": the last
    real token (padding may be on either side); "mean": the mean over real tokens.
    """
    if how == "first":
        return pooled if pooled is not None else hidden[:, 0]
    if how == "last":
        if mask is None:
            return hidden[:, -1]
        slots = torch.arange(hidden.shape[1], device=hidden.device)
        last = torch.where(mask.bool(), slots, -1).amax(dim=1).clamp(min=0)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if how == "mean":
        if mask is None:
            return hidden.mean(dim=1)
        weights = mask.to(hidden.dtype)[..., None]  # (B, T, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    raise ValueError(f"unknown pooling {how!r}: expected 'first', 'last' or 'mean'")

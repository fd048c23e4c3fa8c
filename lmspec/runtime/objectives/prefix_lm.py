"""Prefix language modelling: a prefix read both ways, the rest predicted left to right."""

from __future__ import annotations

import torch

from .base import IGNORE, Objective, Reads, token_loss_sum

__all__ = ["PrefixLM"]


class PrefixLM(Objective):
    """A window of seq_len + 1 tokens, inputs its first T = seq_len, targets its last T, as clm.
    Each row draws a prefix length p: positions < p see each other bidirectionally (the
    model's prefix attention), the rest causally.

    p = clamp(round(lo + u * (hi - lo)), 1, T - 1), u ~ U(0, 1) from `gen`, with
    [lo, hi] = [max(0, 2f - 1), min(1, 2f)] * T for f = `prefix`: the widest interval inside
    [0, T] centred on f * T, so the mean fraction is f (up to the clamp and the rounding);
    f = 0.5 draws p uniformly from 1 .. T - 1, as T5's random_prefix_noise_mask.

    Position i predicts token i + 1, which it sees when i + 1 < p: inside the prefix that would
    be copying, so labels are kept from position p - 1 on (the last prefix token predicts the
    first token after the prefix) and IGNORE before."""

    kind = "prefix_lm"

    @property
    def reads(self) -> Reads:
        return Reads("windows", length=self.ctx.seq_len + 1)

    def build(self, examples, gen):
        windows = torch.stack([e["tokens"] for e in examples])  # (B, T + 1)
        B, T = windows.shape[0], windows.shape[1] - 1
        f = self.spec.prefix
        lo, hi = max(0.0, 2 * f - 1) * T, min(1.0, 2 * f) * T
        u = torch.rand(B, generator=gen, dtype=torch.float64)
        prefix = (lo + u * (hi - lo)).round().long().clamp(min=1, max=max(T - 1, 1))  # (B,)
        labels = windows[:, 1:].clone()  # (B, T)
        labels[torch.arange(T)[None] < prefix[:, None] - 1] = IGNORE
        return {"input_ids": windows[:, :-1], "prefix_lengths": prefix, "labels": labels}

    def count(self, batch):
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, out, batch):
        return token_loss_sum(out.logits, batch["labels"])

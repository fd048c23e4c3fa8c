"""Causal language modelling: predict every next token of a window of the packed stream."""

from __future__ import annotations

import torch

from .base import IGNORE, Objective, Reads, token_loss_sum

__all__ = ["CausalLM"]


class CausalLM(Objective):
    """A window of seq_len + 1 tokens: inputs are its first seq_len, targets its last seq_len.
    Documents are joined with EOS, so the model also learns where a story ends; no position is
    masked."""

    kind = "clm"

    @property
    def reads(self) -> Reads:
        return Reads("windows", length=self.ctx.seq_len + 1)

    def build(self, examples, gen):
        windows = torch.stack([e["tokens"] for e in examples])  # (B, T + 1)
        return {"input_ids": windows[:, :-1], "labels": windows[:, 1:].clone()}

    def count(self, batch):
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, out, batch):
        return token_loss_sum(out.logits, batch["labels"])

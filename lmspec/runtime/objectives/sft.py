"""Supervised fine-tuning: learn the response to a prompt, not the prompt itself."""

from __future__ import annotations

import numpy as np
import torch

from .base import IGNORE, Objective, Reads, right_pad, token_loss_sum

__all__ = ["SFT"]


class SFT(Objective):
    """The sequence prompt + response + EOS; inputs are all but its last token, targets all but
    its first, and a target that is a prompt token carries no loss. The loss covers the
    response and the EOS that ends it (the model learns to stop). Rows are padded on the right
    to the longest of the batch (pad id, IGNORE label, attention_mask False)."""

    kind = "sft"

    def __init__(self, spec, ctx):
        super().__init__(spec, ctx)
        self.eos_id = ctx.special("eos")

    @property
    def reads(self) -> Reads:
        return Reads("records", fields=("prompt", "response"))

    def needed_length(self, lengths):
        return np.asarray(lengths["prompt"]) + np.asarray(lengths["response"])  # (N,) prompt + response + EOS - 1

    def build(self, examples, gen):
        inputs, targets = [], []
        for e in examples:
            prompt, response = e["prompt"].long(), e["response"].long()
            seq = torch.cat([prompt, response, prompt.new_tensor([self.eos_id])])
            if len(seq) > self.ctx.seq_len + 1:
                raise ValueError(f"an sft example of {len(seq)} tokens (prompt {len(prompt)} + response "
                                 f"{len(response)} + EOS) does not fit seq_len {self.ctx.seq_len}: it needs "
                                 f"seq_len {len(seq) - 1}")
            labels = seq[1:].clone()
            labels[:max(len(prompt) - 1, 0)] = IGNORE  # targets 0 .. P - 2 are prompt tokens
            inputs.append(seq[:-1])
            targets.append(labels)
        input_ids, attention_mask = right_pad(inputs, self.ctx.pad_id)  # (B, T)
        labels, _ = right_pad(targets, IGNORE)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def count(self, batch):
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, out, batch):
        return token_loss_sum(out.logits, batch["labels"])

"""Sequence classification: one label per text, from the model's pooled hidden state."""

from __future__ import annotations

import numpy as np
import torch

from .base import Objective, Reads, right_pad

__all__ = ["Classify"]


class Classify(Objective):
    """The text's tokens, padded on the right to the longest of the batch; the classifier head
    pools them (first, last real token or mean, as the model's head says) into class logits.
    The loss is the cross-entropy of each sequence's label, summed over sequences."""

    kind = "classify"
    unit = "sequences"
    token_level = False

    @property
    def reads(self) -> Reads:
        return Reads("records", fields=("text",), label=self.spec.label)

    def needed_length(self, lengths):
        return np.asarray(lengths["text"])

    def build(self, examples, gen):
        rows = []
        for e in examples:
            text = e["text"].long()
            if len(text) > self.ctx.seq_len:
                raise ValueError(f"a classify example of {len(text)} tokens does not fit seq_len {self.ctx.seq_len}")
            if len(text) == 0:
                raise ValueError("a classify example has no tokens: there is nothing to pool")
            rows.append(text)
        input_ids, attention_mask = right_pad(rows, self.ctx.pad_id)  # (B, T)
        labels = torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)  # (B,)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "class_labels": labels}

    def count(self, batch):
        return int(batch["class_labels"].numel())

    def loss(self, out, batch):
        return torch.nn.functional.cross_entropy(out.class_logits.float(), batch["class_labels"], reduction="sum")

    def metrics(self, out, batch):
        return {"accuracy": float((out.class_logits.argmax(-1) == batch["class_labels"]).sum())}

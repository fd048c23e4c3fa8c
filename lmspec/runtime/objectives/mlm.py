"""Masked language modelling (BERT): hide some tokens of the input and predict them."""

from __future__ import annotations

import torch

from .base import IGNORE, Objective, Reads, token_loss_sum

__all__ = ["MaskedLM"]


class MaskedLM(Objective):
    """Alone, a window of seq_len tokens of the packed stream; with nsp, the sentence pairs nsp
    built. Each position that is neither a special token nor padding is selected with
    probability `mask`; a selected token becomes the mask token, a random ordinary token or
    stays itself, in the proportions of `replace`. Only selected positions carry a label."""

    kind = "mlm"
    augments = ("nsp",)

    def __init__(self, spec, ctx):
        super().__init__(spec, ctx)
        if len(spec.replace) != 3 or abs(sum(spec.replace) - 1.0) > 1e-6:
            raise ValueError(f"mlm's replace must be three fractions [mask, random, unchanged] summing to 100%, "
                             f"got {list(spec.replace)}")
        self.mask_id = ctx.special("mask")
        special = set(ctx.specials.values()) | set(ctx.sentinels)
        self.special_ids = torch.tensor(sorted(special), dtype=torch.long)
        # random replacements are drawn among ordinary tokens only: a random [SEP] or [CLS]
        # inside a sentence teaches the model nothing it will meet again
        ordinary = torch.ones(ctx.vocab_size, dtype=torch.bool)
        ordinary[self.special_ids[self.special_ids < ctx.vocab_size]] = False
        self.ordinary_ids = ordinary.nonzero().squeeze(1)  # (V_ordinary,)
        if len(self.ordinary_ids) == 0:
            raise ValueError(f"mlm needs ordinary tokens to draw random replacements from, but all "
                             f"{ctx.vocab_size} ids are special")

    @property
    def reads(self) -> Reads:
        return Reads("windows", length=self.ctx.seq_len)

    def build(self, examples, gen):
        windows = torch.stack([e["tokens"] for e in examples])  # (B, T)
        return self.augment({"input_ids": windows}, gen)

    def augment(self, batch, gen):
        ids = batch["input_ids"]  # (B, T)
        candidates = ~torch.isin(ids, self.special_ids)
        if "attention_mask" in batch:
            candidates &= batch["attention_mask"].bool()
        # every draw has the batch's shape whatever the outcome, so the stream of `gen` (and a
        # resumed run) depends only on the shapes
        selected = (torch.rand(ids.shape, generator=gen) < self.spec.mask) & candidates
        how = torch.rand(ids.shape, generator=gen)  # (B, T) which replacement, by the bands of `replace`
        random_ids = self.ordinary_ids[torch.randint(len(self.ordinary_ids), ids.shape, generator=gen)]
        if not selected.any() and candidates.any():
            # a short batch could select nothing and give a 0/0 loss: select one candidate
            flat = candidates.flatten().nonzero().squeeze(1)
            pick = flat[torch.randint(len(flat), (1,), generator=gen)]
            selected.view(-1)[pick] = True

        p_mask, p_random, _ = self.spec.replace
        to_mask = selected & (how < p_mask)
        to_random = selected & (how >= p_mask) & (how < p_mask + p_random)
        inputs = torch.where(to_mask, self.mask_id, ids)
        inputs = torch.where(to_random, random_ids, inputs)
        labels = torch.where(selected, ids, IGNORE)
        return {**batch, "input_ids": inputs, "labels": labels}

    def count(self, batch):
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, out, batch):
        return token_loss_sum(out.logits, batch["labels"])

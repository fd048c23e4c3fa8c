"""A reward model from preference pairs: the Bradley-Terry loss with the judge's soft labels.

Each pair (prompt, a, b, p) gives two sequences, prompt + a and prompt + b, scored in one
batch by the model's scalar head (pooled at the last real token of a right-padded row):
    L = -[p log sigma(r_a - r_b - m) + (1 - p) log sigma(r_b - r_a - m)]
(m = `bradley_terry(margin: m)`, default 0) summed over pairs (lmspec.runtime.rl.reward.bradley_terry_loss; docs/rl/reward-models.md).
`accuracy` is the share of pairs whose reward order agrees with the label (p > 0.5: a wins);
a pair with p = 0.5 has no order to get right and counts half.
"""

from __future__ import annotations

import torch

from .base import Objective, Reads, right_pad

__all__ = ["BradleyTerry"]


class BradleyTerry(Objective):
    kind = "bradley_terry"
    unit = "pairs"
    token_level = False

    @property
    def reads(self) -> Reads:
        return Reads("pairs")

    def pair_rows(self, examples) -> list[torch.Tensor]:
        rows = [torch.cat([e["prompt"], e[side]]) for side in ("a", "b") for e in examples]
        longest = max(len(r) for r in rows)
        if longest > self.ctx.seq_len:
            raise ValueError(f"a preference pair of {longest} tokens does not fit seq_len {self.ctx.seq_len}")
        return [r if len(r) else torch.tensor([self.ctx.pad_id]) for r in rows]

    def build(self, examples, gen):
        input_ids, attention_mask = right_pad(self.pair_rows(examples), self.ctx.pad_id)  # (2B, T): a rows, then b
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "pair_p": torch.tensor([float(e["p"]) for e in examples], dtype=torch.float32)}  # (B,)

    def count(self, batch):
        return int(batch["pair_p"].numel())

    def loss(self, out, batch):
        from lmspec.runtime.rl.reward import bradley_terry_loss

        B = batch["pair_p"].numel()
        mean, _ = bradley_terry_loss(out.scores[:B], out.scores[B:], batch["pair_p"].to(out.scores.dtype),
                                     margin=self.spec.margin or None)
        return mean * B

    def metrics(self, out, batch):
        B = batch["pair_p"].numel()
        d, p = (out.scores[:B] - out.scores[B:]).float(), batch["pair_p"]
        right = torch.where(p > 0.5, (d > 0).float(), torch.where(p < 0.5, (d < 0).float(), torch.full_like(d, 0.5)))
        return {"accuracy": float(right.sum())}

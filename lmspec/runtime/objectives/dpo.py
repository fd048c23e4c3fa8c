"""DPO and IPO on a preference set, against a frozen reference (the model as the stage starts).

Each pair (prompt, a, b, p) gives two rows, prompt + a and prompt + b; only response tokens
count. With r_y = sum_t [log pi(y_t | ...) - log pi_ref(y_t | ...)] over the response tokens:
    dpo(loss: sigmoid)  L = -[p log sigma(beta (r_a - r_b)) + (1 - p) log sigma(-beta (r_a - r_b))]
                        the judge's soft label p as in cDPO (label smoothing 1 - p); p = 1 is DPO
    dpo(loss: ipo)      L = (h - 1 / (2 beta))^2, h = mean_t log-ratio of the preferred response
                        minus that of the other (log-probs averaged over tokens, as TRL); the
                        preferred one is a when p >= 0.5
summed over pairs. `accuracy` counts pairs whose implicit reward order agrees with the label.
The stage computes the reference's log-probs of each batch (`ref_logprobs`) with gradients off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Objective, Reads, right_pad

__all__ = ["DPO"]


class DPO(Objective):
    kind = "dpo"
    unit = "pairs"
    token_level = False
    needs_reference = True

    @property
    def reads(self) -> Reads:
        return Reads("pairs")

    def build(self, examples, gen):
        rows, responses = [], []
        for side in ("a", "b"):
            for e in examples:
                rows.append(torch.cat([e["prompt"], e[side]]))
                responses.append((len(e["prompt"]), len(e[side])))
        longest = max(len(r) for r in rows)
        if longest > self.ctx.seq_len:
            raise ValueError(f"a preference pair of {longest} tokens does not fit seq_len {self.ctx.seq_len}")
        input_ids, attention_mask = right_pad(rows, self.ctx.pad_id)  # (2B, T): a rows, then b
        T = input_ids.shape[1]
        target = torch.zeros((len(rows), max(T - 1, 0)), dtype=torch.bool)  # (2B, T-1): logit t predicts token t+1
        for i, (start, n) in enumerate(responses):
            target[i, max(start - 1, 0):start - 1 + n] = True
        return {"input_ids": input_ids, "attention_mask": attention_mask, "response_targets": target,
                "pair_p": torch.tensor([float(e["p"]) for e in examples], dtype=torch.float32)}

    @staticmethod
    def token_logprobs(logits: torch.Tensor, batch) -> torch.Tensor:
        """(2B, T-1) log-prob of each next token, 0 off the response."""
        lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        taken = lp.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return taken * batch["response_targets"]

    def _h(self, out, batch):
        B = batch["pair_p"].numel()
        ratio = self.token_logprobs(out.logits, batch) - batch["ref_logprobs"]  # (2B, T-1)
        mask = batch["response_targets"]
        if self.spec.loss == "ipo":
            per_row = ratio.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        else:
            per_row = ratio.sum(dim=1)
        return per_row[:B] - per_row[B:]  # (B,)

    def count(self, batch):
        return int(batch["pair_p"].numel())

    def loss(self, out, batch):
        h, p, beta = self._h(out, batch), batch["pair_p"].to(out.logits.device), self.spec.beta
        if self.spec.loss == "ipo":
            signed = torch.where(p >= 0.5, h, -h)
            return ((signed - 1 / (2 * beta)) ** 2).sum()
        return -(p * F.logsigmoid(beta * h) + (1 - p) * F.logsigmoid(-beta * h)).sum()

    def metrics(self, out, batch):
        h, p = self._h(out, batch), batch["pair_p"].to(out.logits.device)
        right = torch.where(p > 0.5, (h > 0).float(), torch.where(p < 0.5, (h < 0).float(), torch.full_like(h, 0.5)))
        return {"accuracy": float(right.sum())}

"""Next-sentence prediction (BERT): does the second segment of a pair continue the first?"""

from __future__ import annotations

import numpy as np
import torch

from .base import Objective, Reads, right_pad

__all__ = ["NextSentence"]

IS_NEXT, IS_RANDOM = 0, 1  # transformers' next_sentence_label: 0 = B continues A


class NextSentence(Objective):
    """Each document is cut at a random point into A and B; half the time B is replaced by a
    segment of as many tokens from another document. The input is [CLS] A [SEP] B [SEP]
    (segment 0 up to the first [SEP], 1 after); the pooled [CLS] predicts the label."""

    kind = "nsp"
    unit = "pairs"
    token_level = False

    def __init__(self, spec, ctx):
        super().__init__(spec, ctx)
        self.cls_id, self.sep_id = ctx.special("cls"), ctx.special("sep")
        self.budget = ctx.seq_len - 3  # tokens of A and B together: [CLS], [SEP], [SEP] take 3
        if self.budget < 2:
            raise ValueError(f"nsp needs seq_len >= 5 for a pair of one token each, got {ctx.seq_len}")

    @property
    def reads(self) -> Reads:
        return Reads("documents")

    def needed_length(self, lengths):
        # pairs are truncated to seq_len, so every document fits
        return np.minimum(np.asarray(next(iter(lengths.values()))) + 3, self.ctx.seq_len)

    def build(self, examples, gen):
        rows, segments, labels = [], [], []
        for e in examples:
            a, b, label = self._pair(e["tokens"], gen)
            la, lb = truncate_pair(len(a), len(b), self.budget)
            a, b = a[len(a) - la:], b[:lb]  # trim A at its start, B at its end: the A|B seam stays
            rows.append(torch.cat([a.new_tensor([self.cls_id]), a, a.new_tensor([self.sep_id]), b,
                                   a.new_tensor([self.sep_id])]))
            segments.append(torch.cat([torch.zeros(la + 2, dtype=torch.long), torch.ones(lb + 1, dtype=torch.long)]))
            labels.append(label)
        input_ids, attention_mask = right_pad(rows, self.ctx.pad_id)  # (B, T), T <= seq_len
        segment_ids, _ = right_pad(segments, 0)  # padding in segment 0, as transformers pads token types
        return {"input_ids": input_ids, "segment_ids": segment_ids, "attention_mask": attention_mask,
                "nsp_labels": torch.tensor(labels, dtype=torch.long)}

    def _pair(self, doc: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(A, B, label) from one document (T,)."""
        doc = doc.long()
        random_b = bool(torch.rand((), generator=gen) < 0.5)
        if len(doc) < 2:  # nothing to cut: the pair can only be "random"
            return doc, self._random_segment(doc, max(1, self.budget - len(doc)), gen), IS_RANDOM
        cut = int(torch.randint(1, len(doc), (), generator=gen))
        a, b = doc[:cut], doc[cut:]
        if random_b:
            # as many tokens as the true continuation: B's length must not give the label away
            return a, self._random_segment(doc, len(b), gen), IS_RANDOM
        return a, b, IS_NEXT

    def _random_segment(self, doc: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
        if self.ctx.random_document is None:
            raise ValueError("nsp needs ctx.random_document to draw random second segments")
        for _ in range(10):  # BERT's retries: a "random" B from the same document would be next
            other = self.ctx.random_document(gen).long()
            if not torch.equal(other, doc):
                break
        if len(other) > length:
            start = int(torch.randint(0, len(other) - length + 1, (), generator=gen))
            other = other[start:start + length]
        return other

    def count(self, batch):
        return int(batch["nsp_labels"].numel())

    def loss(self, out, batch):
        return torch.nn.functional.cross_entropy(out.nsp_logits.float(), batch["nsp_labels"], reduction="sum")

    def metrics(self, out, batch):
        return {"nsp_accuracy": float((out.nsp_logits.argmax(-1) == batch["nsp_labels"]).sum())}


def truncate_pair(la: int, lb: int, budget: int) -> tuple[int, int]:
    """The lengths of A and B after BERT's `truncate_seq_pair`: drop one token at a time from
    the longer of the two (from B on a tie) until both fit `budget`, in closed form."""
    if la + lb <= budget:
        return la, lb
    if 2 * min(la, lb) <= budget:  # only the longer one is trimmed
        return (budget - lb, lb) if la > lb else (la, budget - la)
    return (budget + 1) // 2, budget // 2  # both trimmed to halves; B gives the odd token

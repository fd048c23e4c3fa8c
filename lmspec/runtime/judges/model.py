"""A judge that is a model trained in the same spec: `model: critic from judge_fit`.

It reads `prompt + response` with its own tokenizer (the one its stage trained with), right-
padded, and answers with the head its `score` names:

    probability(class: c)   logit(P(c)) = log P(c) - log(1 - P(c))   (a classifier head)
    logit(class: c)         the raw logit of class c                  (a classifier head)
    scalar                  the scalar head's output                  (a reward model)

so that, through base.pointwise_compare, P(a > b) = sigmoid(score(a) - score(b)): two texts the
critic calls positive with probabilities 0.9 and 0.5 give P = 0.9, the odds ratio 9.
A text longer than the model's context keeps its last `context` tokens (the end of a story
decides its sentiment); `check` sees to it that prompts plus new tokens fit the policy, not
every judge's tokenizer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch

from .base import Judge, JudgeError, logit

__all__ = ["ModelJudge"]


class ModelJudge(Judge):
    def __init__(self, name: str, model: torch.nn.Module, tokenizer, *, score: str, cls: int | None = None,
                 context: int, weights: Path | None = None, batch: int = 64, device: torch.device | None = None):
        self.name, self.model, self.tokenizer = name, model.eval(), tokenizer
        self.how, self.cls, self.context, self.batch = score, cls, context, batch
        self.device = device or torch.device("cpu")
        if score in ("probability", "logit") and getattr(model, "classifier", None) is None:
            raise JudgeError(f"judge '{name}': score {score}(class: {cls}) needs a classifier head",
                             help="give the judge's model `head: classifier(classes: N)`, or use `score: scalar`")
        if score == "scalar" and getattr(model, "score", None) is None:
            raise JudgeError(f"judge '{name}': score scalar needs a scalar head", help="use `head: scalar`")
        digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16] if weights else "untrained"
        self.fingerprint = f"model:{digest}:{tokenizer.identity[:16]}:{score}:{cls}"

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        texts = [p + r for p, r in zip(prompts, responses)]
        out = []
        for start in range(0, len(texts), self.batch):
            rows = [ids[-self.context:] or [self.tokenizer.pad_id or 0]
                    for ids in self.tokenizer.encode_batch(texts[start:start + self.batch])]
            T = max(len(r) for r in rows)
            ids = torch.full((len(rows), T), self.tokenizer.pad_id or 0, dtype=torch.long)
            mask = torch.zeros((len(rows), T), dtype=torch.bool)
            for i, r in enumerate(rows):
                ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), True
            res = self.model(ids.to(self.device), attention_mask=mask.to(self.device))
            if self.how == "scalar":
                out.append(res.scores.double().cpu())
            elif self.how == "logit":
                out.append(res.class_logits[:, self.cls].double().cpu())
            else:
                out.append(logit(torch.softmax(res.class_logits.double(), dim=-1)[:, self.cls]).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def probability(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """P(class) of each text (what the demo's before/after table reports)."""
        return torch.sigmoid(self.score(prompts, responses)) if self.how == "probability" else \
            torch.full((len(prompts),), float("nan"), dtype=torch.float64)

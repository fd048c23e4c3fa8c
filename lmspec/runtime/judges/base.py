"""The judge protocol: the AI (or rule) that gives feedback on a policy's samples.

A judge sees text, never token ids: each judge reads the text with its own tokenizer, so a
judge, a reward model and a policy need not share one. Two questions can be asked:

    score(prompts, responses) -> (N,) float64   how good each response is, on a scale where a
                                                 difference of scores is a log-odds of preference
                                                 (a class probability p is read as logit(p))
    compare(prompts, a, b)    -> (N,) float64   P(a is preferred to b), in [0, 1]

A pointwise judge (a classifier, a reward model, a rule) answers `compare` from `score` through
the Bradley-Terry link: P(a > b) = sigmoid(score(a) - score(b)). A pairwise judge (an LM asked
"which response is better, 1 or 2?") answers `compare` itself and may not `score`.

`fingerprint` names everything that changes a judge's answers (its weights' checksum, its
template, its principles, ...): the judgment cache is keyed by (fingerprint, prompt, response),
so a changed judge never reads a stale answer.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["Judge", "JudgeError", "pointwise_compare", "logit", "swap_debiased"]


class JudgeError(RuntimeError):
    """A judge that cannot answer: a server that is down, an output that is not a label, ..."""

    def __init__(self, message: str, help: str | None = None):
        super().__init__(message)
        self.help = help


class Judge:
    name: str = ""
    fingerprint: str = ""
    pairwise: bool = False  # answers compare() directly (an LM labeller); else compare() comes from score()

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError(f"judge '{self.name}' compares pairs; it does not score single responses")

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        return pointwise_compare(self, prompts, a, b)


def pointwise_compare(judge: Judge, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
    """P(a > b) = sigmoid(score(a) - score(b)), scoring a and b in one call."""
    n = len(prompts)
    s = judge.score(list(prompts) + list(prompts), list(a) + list(b)).double()
    return torch.sigmoid(s[:n] - s[n:])


def logit(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A probability on the log-odds scale, clamped so that 0 and 1 stay finite."""
    p = p.double().clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)




def swap_debiased(judge: Judge, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]):
    """Position bias removed by asking in both orders (`debias: swap`): returns
    (p, p_ab, p_ba) with p = (p_ab + 1 - p_ba) / 2, where p_ab = P(a > b) asked with a first
    and p_ba = P(b > a) asked with b first. For a pointwise judge p_ab = 1 - p_ba exactly."""
    n = len(prompts)
    both = judge.compare(list(prompts) + list(prompts), list(a) + list(b), list(b) + list(a)).double()
    p_ab, p_ba = both[:n], both[n:]
    return (p_ab + 1 - p_ba) / 2, p_ab, p_ba

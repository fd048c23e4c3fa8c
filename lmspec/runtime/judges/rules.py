"""Rule judges, for tests and shaping terms: `length`, `contains("word")`, `regex("...")`, and
weighted sums of judges (`sentiment + 0.1 * contains("happy")`).

They read the response only, not the prompt:
    length             the number of characters of the response
    contains("w")      1.0 if the response contains w (case-sensitive), else 0.0
    regex("p")         1.0 if Python's re.search finds p in the response, else 0.0
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

from .base import Judge

__all__ = ["Length", "Contains", "Regex", "WeightedSum"]


class Length(Judge):
    def __init__(self, name: str = "length"):
        self.name, self.fingerprint = name, "length"

    def score(self, prompts, responses) -> torch.Tensor:
        return torch.tensor([float(len(r)) for r in responses], dtype=torch.float64)


class Contains(Judge):
    def __init__(self, word: str, name: str = "contains"):
        self.name, self.word, self.fingerprint = name, word, f"contains:{word!r}"

    def score(self, prompts, responses) -> torch.Tensor:
        return torch.tensor([float(self.word in r) for r in responses], dtype=torch.float64)


class Regex(Judge):
    def __init__(self, pattern: str, name: str = "regex"):
        self.name, self.pattern, self.fingerprint = name, re.compile(pattern), f"regex:{pattern!r}"

    def score(self, prompts, responses) -> torch.Tensor:
        return torch.tensor([float(self.pattern.search(r) is not None) for r in responses], dtype=torch.float64)


class WeightedSum(Judge):
    """sum_i w_i * score_i: every term must score single responses (no pairwise LM labeller)."""

    def __init__(self, name: str, terms: Sequence[tuple[float, Judge]]):
        self.name, self.terms = name, list(terms)
        self.fingerprint = "sum:" + "+".join(f"{w!r}*{j.fingerprint}" for w, j in self.terms)

    def score(self, prompts, responses) -> torch.Tensor:
        total = torch.zeros(len(responses), dtype=torch.float64)
        for w, judge in self.terms:
            total += w * judge.score(prompts, responses).double()
        return total

"""Every judgment is written to the run directory before it is used, so that a crash or a
resume never pays twice for the same judgment (an HTTP judge may cost money; a big local
judge, minutes).

RUN/judgments/NAME.jsonl holds one line per judgment: {"key", "score"} for a pointwise judge,
{"key", "p"} for a pairwise one, where key = sha256(fingerprint, prompt, response[, other]).
A changed judge has another fingerprint and so never reads a stale answer. Lines are appended
and flushed batch by batch; a last line cut short by a crash is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch

from .base import Judge

__all__ = ["CachedJudge"]


def _key(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


class CachedJudge(Judge):
    def __init__(self, judge: Judge, path: Path):
        self.inner, self.path = judge, Path(path)
        self.name, self.fingerprint, self.pairwise = judge.name, judge.fingerprint, judge.pairwise
        self.known: dict[str, float] = {}
        self.hits = self.misses = 0
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.known[rec["key"]] = float(rec["score"] if "score" in rec else rec["p"])
                except (ValueError, KeyError, TypeError):
                    continue  # the last line of a crashed write

    def _ask(self, keys: list[str], field: str, compute) -> torch.Tensor:
        first: dict[str, int] = {}  # each unknown judgment asked once, however often it repeats
        for i, k in enumerate(keys):
            if k not in self.known:
                first.setdefault(k, i)
        todo = list(first.values())
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            values = compute(todo).double().tolist()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                for i, v in zip(todo, values):
                    self.known[keys[i]] = v
                    f.write(json.dumps({"key": keys[i], field: v}) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return torch.tensor([self.known[k] for k in keys], dtype=torch.float64)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        keys = [_key(self.fingerprint, "score", p, r) for p, r in zip(prompts, responses)]
        return self._ask(keys, "score", lambda todo: self.inner.score([prompts[i] for i in todo],
                                                                      [responses[i] for i in todo]))

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        if not self.pairwise:  # pointwise: cache the scores, each text once
            return super().compare(prompts, a, b)
        keys = [_key(self.fingerprint, "compare", p, x, y) for p, x, y in zip(prompts, a, b)]
        return self._ask(keys, "p", lambda todo: self.inner.compare([prompts[i] for i in todo], [a[i] for i in todo],
                                                                    [b[i] for i in todo]))

    def __getattr__(self, item):  # probability() and the like of the judge inside
        return getattr(self.inner, item)

"""The LM labeller: a causal language model asked a question whose answer is its next token
(Lee et al. 2023, RLAIF; Bai et al. 2022, Constitutional AI).

    compare  "which response is better, 1 or 2?"  P(a > b) = P("1") / (P("1") + P("2"))
    rate     "rate it from 1 to 10"                score = sum_k k P(k) / sum_k P(k)

The label is soft: the two answer tokens' probabilities, renormalised, not a sampled answer.
Where the probabilities come from is a `NextTokenModel` (a local checkpoint in `local.py`, an
OpenAI-compatible server in `openai.py`); everything here is the same for both, so the two
give the same labels for the same weights.

Answer tokens are matched by their text. A byte-level BPE writes the answer after "Answer:" as
" 1" (one token with a leading space), a word-level or SentencePiece tokenizer as "1": both
spellings count, their probabilities summed (a token has one text, so nothing counts twice).

Rating "10" can be one token or two ("1" then "0"); both are counted exactly, with a second
query after each spelling of "1" the model gives mass to:

    P(10) = P("10") + sum_v P(v) P("0" | v),   P(1) = sum_v P(v) (1 - P("0" | v)),   v in {"1", " 1"}

and P(2..9) = P(k) + P(" k"). A "1" followed by another digit (11-19, off the scale) is read as
1. The ten probabilities are renormalised before the expectation.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

import torch

from .base import Judge, JudgeError, pointwise_compare
from .templates import COMPARE, DEFAULT_PRINCIPLE, PLACEHOLDERS, RATE, REQUIRED, placeholders, render

__all__ = ["NextTokens", "NextTokenModel", "LMJudge", "surface", "answer_spellings", "LABELLER_OPTIONS",
           "labeller_options", "check_options"]

Task = Literal["compare", "rate"]
PrinciplesMode = Literal["sample", "ensemble"]

FORMAT = 1  # bump when a change here changes the labels the same judge gives
SCORES = tuple(str(k) for k in range(1, 11))


def surface(token: str) -> str:
    """The text of a token as a server or a vocabulary spells it: the byte-level BPE (Ġ) and
    SentencePiece (▁) space markers read as a space, so "Ġ1", "▁1" and " 1" are one spelling."""
    return " " + token[1:] if token[:1] in ("Ġ", "▁") else token


def answer_spellings(answer: str) -> tuple[str, str]:
    """The two next-token texts that write `answer` right after the template: "1" and " 1"."""
    return answer, " " + answer


@dataclass
class NextTokens:
    """What a `NextTokenModel` saw after each query."""

    probs: torch.Tensor  # (N, C) float64: P(the next token's text is candidates[c]); 0 where it is not visible
    top: list[list[tuple[str, float]]]  # per query, its likeliest next tokens (text, p), for error messages


class NextTokenModel(Protocol):
    """Where the next-token distribution comes from. A query is (prompt, answer_prefix): the
    rendered template and text the answer starts with ("" for the first token; "1" to ask
    whether "0" follows). A completions model reads prompt + answer_prefix; a chat model reads
    the prompt as the user's message and continues an assistant message answer_prefix."""

    fingerprint: str  # names the weights (or the served model) and anything else that changes probabilities
    where: str  # the model, for messages: hf("dir") or the URL
    visibility: str  # what the model can not see, for messages ("" when it sees every token)

    def next_tokens(self, queries: Sequence[tuple[str, str]], candidates: Sequence[str]) -> NextTokens: ...


# ----------------------------------------------------------------------------- the judge


class LMJudge(Judge):
    """An LM labeller over any `NextTokenModel`.

    task: `compare` (pairwise: a soft P(a > b) from the answer tokens "1" and "2") or `rate`
    (pointwise: the expected 1-10 rating is the score; compare() is sigmoid(score(a) - score(b))).
    template: the prompt, with the placeholders of templates.PLACEHOLDERS[task]; default
    templates.COMPARE / templates.RATE. principles: the constitution; one is placed in
    {principle}. principles_mode: `sample` asks each pair (each prompt, for `rate`) under one
    principle, chosen by a hash so that a resumed run asks the same question; `ensemble` asks
    under every principle and averages the labels (or ratings).
    min_answer_mass: below this P("1") + P("2") (or P(1..10)), the output is not read as a label.
    """

    def __init__(self, model: NextTokenModel, *, name: str = "judge", task: Task = "compare",
                 template: str | None = None, principles: Sequence[str] = (),
                 principles_mode: PrinciplesMode = "sample", min_answer_mass: float = 1e-6):
        self.name, self.model, self.task = name, model, task
        where = f"judge '{name}'"
        if task not in PLACEHOLDERS:
            raise JudgeError(f"{where}: task {task!r} is not one of compare, rate",
                             help="compare asks which of two responses is better; rate asks for a 1-10 rating")
        if principles_mode not in ("sample", "ensemble"):
            raise JudgeError(f"{where}: principles_mode {principles_mode!r} is not one of sample, ensemble",
                             help="sample: one principle per pair, chosen by a hash; ensemble: all, averaged")
        self.template = template if template is not None else (COMPARE if task == "compare" else RATE)
        self.principles = list(principles) or [DEFAULT_PRINCIPLE]
        self.principles_mode = principles_mode
        self.min_answer_mass = min_answer_mass
        _check_template(self.template, task, bool(principles), where)
        self.pairwise = task == "compare"
        self.fingerprint = _sha256({"judge": "lm", "format": FORMAT, "model": model.fingerprint, "task": task,
                                    "template": self.template, "principles": self.principles,
                                    "principles_mode": principles_mode})

    def __repr__(self) -> str:
        return (f"LMJudge(name={self.name!r}, task={self.task!r}, model={self.model.where}, "
                f"principles={len(self.principles)} ({self.principles_mode}))")

    # ---- which principle ------------------------------------------------------------------

    def principles_for(self, prompt: str, a: str, b: str | None = None) -> list[str]:
        """The principle(s) a pair (or, for `rate`, a prompt) is judged under. `sample` hashes the
        prompt and the unordered pair, so both orders of a swap see the same principle; a rating
        hashes the prompt alone, so every response to one prompt is rated under one principle and
        the ratings stay comparable."""
        if self.principles_mode == "ensemble" or len(self.principles) == 1:
            return self.principles
        key = [self.fingerprint, prompt] + (sorted([a, b]) if self.task == "compare" and b is not None else [])
        index = int(hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16], 16) % len(self.principles)
        return [self.principles[index]]

    # ---- the two questions ------------------------------------------------------------------

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        _same_length(self.name, prompts=prompts, a=a, b=b)
        if self.task == "rate":
            return pointwise_compare(self, prompts, a, b)
        rows, texts = [], []  # rows[j] = the pair query j belongs to
        for i, (p, x, y) in enumerate(zip(prompts, a, b)):
            for principle in self.principles_for(p, x, y):
                rows.append(i)
                texts.append(render(self.template, {"principle": principle, "prompt": p, "a": x, "b": y}))
        if not texts:
            return torch.zeros(0, dtype=torch.float64)
        one, two = answer_spellings("1"), answer_spellings("2")
        seen = self.model.next_tokens([(t, "") for t in texts], one + two)
        p1, p2 = seen.probs[:, :2].sum(-1), seen.probs[:, 2:].sum(-1)  # (Q,)
        self._check_mass(p1 + p2, texts, seen, 'P("1") + P("2")', "answer 1 or 2")
        return _mean_by_row(p1 / (p1 + p2), rows, len(prompts))

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        _same_length(self.name, prompts=prompts, responses=responses)
        if self.task == "compare":
            raise JudgeError(f"judge '{self.name}' compares pairs (task: compare); it does not score single responses",
                             help="use `task: rate` for a judge that scores one response at a time")
        rows, texts = [], []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            for principle in self.principles_for(p, r):
                rows.append(i)
                texts.append(render(self.template, {"principle": principle, "prompt": p, "response": r}))
        if not texts:
            return torch.zeros(0, dtype=torch.float64)
        dist = self._ratings(texts)  # (Q, 10)
        ratings = (dist * torch.arange(1, 11, dtype=torch.float64)).sum(-1) / dist.sum(-1)
        return _mean_by_row(ratings, rows, len(prompts))

    def _ratings(self, texts: list[str]) -> torch.Tensor:
        """P(rating = 1..10) after each text, unnormalised: (Q, 10) float64 (see the module docstring)."""
        candidates = [s for k in SCORES for s in answer_spellings(k)]  # "1", " 1", "2", " 2", ...
        seen = self.model.next_tokens([(t, "") for t in texts], candidates)
        by_score = seen.probs.view(len(texts), 10, 2)  # (Q, score, spelling)
        dist = by_score.sum(-1).clone()  # (Q, 10)
        # the second query: after each spelling of "1" that has mass, does "0" follow?
        follow = [(q, s) for q in range(len(texts)) for s in range(2) if by_score[q, 0, s] > 0]
        if follow:
            ones = answer_spellings("1")
            zero = self.model.next_tokens([(texts[q], ones[s]) for q, s in follow], ["0"]).probs[:, 0]
            for (q, s), p0 in zip(follow, zero.tolist()):
                p = float(by_score[q, 0, s])
                dist[q, 0] -= p * p0  # "1" then "0" is a 10, not a 1
                dist[q, 9] += p * p0
        self._check_mass(dist.sum(-1), texts, seen, "P(1) + ... + P(10)", "answer with a number from 1 to 10")
        return dist

    def _check_mass(self, mass: torch.Tensor, texts: list[str], seen: NextTokens, what: str, ask: str) -> None:
        low = (mass < self.min_answer_mass) | ~torch.isfinite(mass)
        if not bool(low.any()):
            return
        q = int(low.nonzero()[0])
        tail = texts[q][-160:]
        likeliest = ", ".join(f"{t!r} {p:.3g}" for t, p in seen.top[q][:5]) or "none"
        note = f"; {self.model.visibility}" if self.model.visibility else ""
        raise JudgeError(
            f"judge '{self.name}' ({self.model.where}): the judge's output cannot be read as a label: "
            f"{what} = {float(mass[q]):.3g} after the prompt (at least {self.min_answer_mass:g} is needed), "
            f"whose end is {'...' if len(texts[q]) > 160 else ''}{tail!r}; "
            f"its likeliest next tokens: {likeliest}; {int(low.sum())} of {len(texts)} queries have no readable "
            f"label{note}",
            help=f"end the template where the answer goes (e.g. 'Answer:') and ask the model to {ask}; "
                 "or use a model that follows instructions")


# ----------------------------------------------------------------------------- options


# the options every LM labeller takes, whatever its backend; each backend adds its own
LABELLER_OPTIONS = ("task", "template", "principles", "principles_mode", "min_answer_mass")


def check_options(options: dict, known: Sequence[str], where: str) -> None:
    """Refuse an option nobody reads, with the nearest known name."""
    unknown = [k for k in options if k not in known]
    if unknown:
        key = unknown[0]
        near = difflib.get_close_matches(key, known, n=1)
        raise JudgeError(f"{where}: unknown option {key!r}" + (f"; did you mean {near[0]!r}?" if near else ""),
                         help=f"the options are: {', '.join(known)}")


def labeller_options(options: dict) -> dict:
    """The `LMJudge` keyword arguments among `options` (a list of principles may be one string)."""
    out = {k: options[k] for k in LABELLER_OPTIONS if k in options}
    if isinstance(out.get("principles"), str):
        out["principles"] = [out["principles"]]
    return out


# ----------------------------------------------------------------------------- helpers


def _check_template(template: str, task: str, has_principles: bool, where: str) -> None:
    names = placeholders(template)
    known = PLACEHOLDERS[task]
    for name in sorted(names - set(known)):
        near = difflib.get_close_matches(name, known, n=1)
        raise JudgeError(f"{where}: the {task} template has a placeholder {{{name}}} that nothing fills"
                         + (f"; did you mean {{{near[0]}}}?" if near else ""),
                         help=f"a {task} template may use {', '.join('{' + k + '}' for k in known)}")
    missing = [k for k in REQUIRED[task] if k not in names]
    if missing:
        raise JudgeError(f"{where}: the {task} template has no {', '.join('{' + k + '}' for k in missing)}, "
                         "so the judge would never see what it judges",
                         help=f"place {' and '.join('{' + k + '}' for k in missing)} in the template")
    if has_principles and "principle" not in names:
        raise JudgeError(f"{where}: principles are given, and the template has no {{principle}} to put them in",
                         help="add {principle} to the template, or drop the principles")


def _mean_by_row(values: torch.Tensor, rows: list[int], n: int) -> torch.Tensor:
    """The mean of `values` (Q,) over the queries of each of the n rows: the principles' ensemble."""
    index = torch.tensor(rows, dtype=torch.long)
    total = torch.zeros(n, dtype=torch.float64).index_add_(0, index, values.double())
    count = torch.zeros(n, dtype=torch.float64).index_add_(0, index, torch.ones(len(rows), dtype=torch.float64))
    return total / count


def _same_length(name: str, **columns: Sequence[str]) -> None:
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"judge '{name}': the inputs differ in length: "
                         + ", ".join(f"{k} {n}" for k, n in lengths.items()))


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()

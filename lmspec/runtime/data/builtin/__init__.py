"""The built-in corpora, generated here from a small grammar: nothing is downloaded.

    tiny-stories        20,000 short stories, half ending happily     {"text", "ending"}
    tiny-reviews        10,000 short reviews, exactly half positive   {"text", "sentiment"}
    tiny-instructions    6,000 instructions with one right answer     {"prompt", "response"}

All three share one world (the same names, places, things) and one sentiment lexicon, so a
classifier trained on the reviews can judge how a story ends. A corpus is a pure function of
its name and seed: the same seed gives the same records, in the same order, on every run and
machine (one `random.Random(seed)` per corpus; no sets are iterated, no hash() consulted).
docs/builtin-data.md shows examples and the rule every label follows.
"""

from __future__ import annotations

from random import Random

from . import _instructions, _reviews, _stories

__all__ = ["VERSION", "NAMES", "generate", "fields"]

# Bump whenever any generated text changes (a template, a word list, the order of rng calls):
# it is part of the data cache keys, so a stale tokenised cache is never read back.
VERSION = 1

NAMES = ("tiny-stories", "tiny-reviews", "tiny-instructions")

_CORPORA = {  # name -> (generator, record fields)
    "tiny-stories": (_stories.generate, ("text", "ending")),
    "tiny-reviews": (_reviews.generate, ("text", "sentiment")),
    "tiny-instructions": (_instructions.generate, ("prompt", "response")),
}


def generate(name: str, *, seed: int = 0) -> list[dict]:
    """The corpus as records. tiny-stories: {"text": str, "ending": "happy"|"sad"};
    tiny-reviews: {"text": str, "sentiment": 0|1}  (1 = positive);
    tiny-instructions: {"prompt": str, "response": str}."""
    make, _ = _corpus(name)
    if not isinstance(seed, int):  # Random(3.5) or Random("x") would work, but differently per type
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    return make(Random(seed))


def fields(name: str) -> tuple[str, ...]:
    """The record keys of that corpus, e.g. ("text", "ending")."""
    return _corpus(name)[1]


def _corpus(name: str):
    if name not in _CORPORA:
        raise ValueError(f"unknown built-in corpus {name!r}; the names are: {', '.join(NAMES)}")
    return _CORPORA[name]

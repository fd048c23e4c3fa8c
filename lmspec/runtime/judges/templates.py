"""The default prompts of the LM labeller (`lm.LMJudge`), after Lee et al. 2023 (RLAIF) and
Bai et al. 2022 (Constitutional AI): a principle, the prompt, the response(s), and a last line
that leaves the model to write the answer as its very next token.

A template is plain text with the placeholders {principle}, {prompt}, {a}, {b} (task `compare`)
or {principle}, {prompt}, {response} (task `rate`). Only these names are replaced, so any other
brace in a template (a JSON example, say) stays as written and needs no escaping.

Both defaults end with a colon and no space: a byte-level BPE model then writes its answer as
" 1" (one token, leading space) and a word-level one as "1"; the labeller counts both
spellings (docs/judges.md#answer-tokens). A template that ends in a space invites the model to
write a token that a BPE would rarely have produced after one, which reads worse.
"""

from __future__ import annotations

import re

__all__ = ["COMPARE", "RATE", "DEFAULT_PRINCIPLE", "PLACEHOLDERS", "REQUIRED", "placeholders", "render"]

DEFAULT_PRINCIPLE = "The better response is more helpful, more honest and less harmful."

COMPARE = """\
You are comparing two responses to the same prompt.
Principle: {principle}

Prompt: {prompt}

Response 1: {a}

Response 2: {b}

Which response is better according to the principle? Answer with the number of the response, 1 or 2.
Answer:"""

RATE = """\
You are rating a response to a prompt.
Principle: {principle}

Prompt: {prompt}

Response: {response}

How well does the response follow the principle? Answer with a whole number from 1 (worst) to 10 (best).
Rating:"""

PLACEHOLDERS = {"compare": ("principle", "prompt", "a", "b"), "rate": ("principle", "prompt", "response")}
REQUIRED = {"compare": ("a", "b"), "rate": ("response",)}

_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(template: str) -> set[str]:
    """Every {name} in `template`, whether or not the task knows it."""
    return set(_NAME.findall(template))


def render(template: str, values: dict[str, str]) -> str:
    """`template` with each {name} of `values` replaced; other braces are left alone, and a
    value is inserted as it is (a response that contains "{a}" is not expanded again)."""
    return _NAME.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)

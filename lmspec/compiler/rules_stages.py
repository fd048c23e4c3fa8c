"""Design rules about what a stage will meet at run time: files that must exist, objectives that
must share a batch, batches and sequences that must fit. Each is a located diagnostic before
anything runs, never an error an hour into a run.

    LMS087  a data or tokenizer path that does not exist (or a glob that matches nothing)
    LMS088  objectives of one stage that cannot share a batch
    LMS089  a batch that grad_accum does not divide, or sequences longer than the model's context
            (a train stage's seq_len; rollout and feedback prompts plus the tokens generated)
    LMS093  an objective weight that is zero or negative
"""

from __future__ import annotations

import glob
from typing import Iterator

from lmspec.compiler.compile import spec_relative
from lmspec.compiler.rules_tokens import hf_tokenizer_file
from lmspec.diagnostics import CODES, Diagnostic, Label

__all__ = ["STAGE_RULES", "BUILDS_FIRST", "AUGMENTS", "combinable"]

CODES.setdefault("LMS087", "a data or tokenizer path that does not exist")
CODES.setdefault("LMS088", "objectives of one stage that cannot share a batch")
CODES.setdefault("LMS089", "a batch that grad_accum does not divide, or sequences longer than the context")
CODES.setdefault("LMS093", "an objective weight that is zero or negative")

# In a weighted sum of objectives, the first kind of this list that is present shapes the
# batch; every other term must augment that kind's batch (mlm masks the pairs nsp builds).
# The runtime composes objectives by the same table (lmspec.runtime.objectives.compose).
BUILDS_FIRST = ("nsp", "span_corruption", "sft", "classify", "prefix_lm", "clm", "mlm", "bradley_terry", "dpo")
AUGMENTS = {"mlm": ("nsp",)}


def combinable(kinds: list[str]) -> str | None:
    """None when objectives of these kinds can share one batch; otherwise why not."""
    present = [k for k in BUILDS_FIRST if k in kinds]
    if not present:
        return None
    builder = present[0]
    for kind in kinds:
        if kind != builder and builder not in AUGMENTS.get(kind, ()):
            return f"'{kind}' cannot share a batch with '{builder}'"
    return None


def _err(code: str, message: str, span, help: str | None = None, labels: list[Label] | None = None) -> Diagnostic:
    return Diagnostic("error", code, message, span, labels or [], help)


def path_rule(x) -> Iterator[Diagnostic]:
    """LMS087: `text("glob")`, `jsonl("path")` and tokenizer `hf("dir")` name files that exist."""
    for name, spec in x.validated.of_kind("data").items():
        block = x.block(name)
        src = spec.source
        if src.kind == "builtin":
            continue
        target = spec_relative(src.path, block.span.file)
        where = block.span_of(("source",))
        if glob.has_magic(str(target)):
            if not glob.glob(str(target), recursive=True):
                yield _err("LMS087", f"{src.kind}(\"{src.path}\") matches no file", where,
                           help=f"paths are relative to the spec's folder; looked for {target}")
        elif not target.is_file():
            what = "is a directory" if target.is_dir() else "does not exist"
            yield _err("LMS087", f"{src.kind}(\"{src.path}\") {what}", where,
                       help=f"paths are relative to the spec's folder; looked for {target}")
    for name, spec in x.validated.of_kind("tokenizer").items():
        if spec.kind.kind != "hf":
            continue
        block = x.block(name)
        target = spec_relative(spec.kind.path, block.span.file)
        if not hf_tokenizer_file(spec.kind.path, block.span.file).is_file():
            what = "does not exist" if not target.exists() else "has no tokenizer.json"
            yield _err("LMS087", f"hf(\"{spec.kind.path}\") {what}", block.span_of(("kind",)),
                       help=f"give a local directory with tokenizer.json; looked in {target}")


def batch_rule(x) -> Iterator[Diagnostic]:
    """LMS093, LMS088 and LMS089 for every train stage."""
    for name, spec in x.validated.of_kind("train").items():
        block = x.block(name)
        kinds = [t.objective.kind for t in spec.objective]
        for term in spec.objective:
            kind, weight = term.objective.kind, term.weight
            if weight < 0:
                yield _err("LMS093", f"objective '{kind}' of '{name}' has weight {weight:g}: a negative weight "
                           "maximises its loss", block.span_of(("objective",)),
                           help=f"give it a positive weight, e.g. `{-weight:g} * {kind}`")
            elif weight == 0:
                yield _err("LMS093", f"objective '{kind}' of '{name}' has weight 0: it trains nothing, yet its "
                           "batches are built and its head runs", block.span_of(("objective",)),
                           help="remove the term, or give it a positive weight")
        why = combinable(kinds)
        if why:
            yield _err("LMS088", f"objectives {' + '.join(kinds)} of '{name}' cannot be trained on one batch: {why}",
                       block.span_of(("objective",)),
                       help="train them in separate stages (the second with `init: FIRST`), or combine mlm with nsp")
        if spec.batch % spec.grad_accum:
            yield _err("LMS089", f"batch ({spec.batch}) does not split into grad_accum ({spec.grad_accum}) equal "
                       "micro-batches", block.span_of(("grad_accum",)),
                       help=f"use a batch that is a multiple of {spec.grad_accum}, e.g. "
                            f"{max(spec.grad_accum, spec.batch - spec.batch % spec.grad_accum)}")
        arch = x.models.get(spec.model.model)
        if arch is not None and spec.seq_len is not None and spec.seq_len > arch.context:
            yield _err("LMS089", f"seq_len ({spec.seq_len}) is longer than the context of '{spec.model.model}' "
                       f"({arch.context}); the runtime would cut every sequence", block.span_of(("seq_len",)),
                       help=f"use seq_len: {arch.context} or less, or a longer context")


def rollout_rule(x) -> Iterator[Diagnostic]:
    """LMS089 for the samples of feedback and rl blocks: the policy reads its prompt and writes
    max_new_tokens after it, all within its context."""
    for kind, where in (("feedback", ()), ("rl", ("rollouts",))):
        for name, spec in x.validated.of_kind(kind).items():
            arch = x.models.get(spec.policy.model)
            sampling = spec.rollouts if kind == "rl" else spec
            prompt, new = sampling.prompts.tokens, sampling.max_new_tokens
            if arch is None or prompt + new <= arch.context:
                continue
            block = x.block(name)
            inner = block.nested.get("rollouts") if kind == "rl" else block
            written = inner is not None and "max_new_tokens" in inner.fields
            prompt_span = block.span_of(where + ("prompts", "tokens"))
            message = (f"the samples of {kind} '{name}' are {prompt} prompt tokens + {new} new tokens"
                       f"{'' if written else ' (the default max_new_tokens)'} = {prompt + new}, longer than the "
                       f"context of '{spec.policy.model}' ({arch.context})")
            if prompt >= arch.context:
                fix = f"use prompts of fewer than {arch.context} tokens"
            else:
                fix = f"{'use' if written else 'set'} max_new_tokens: {arch.context - prompt} or less, or shorter prompts"
            if written:
                yield _err("LMS089", message, block.span_of(where + ("max_new_tokens",)), help=fix,
                           labels=[Label(prompt_span, f"{prompt}-token prompts")])
            else:
                yield _err("LMS089", message, prompt_span, help=fix)


STAGE_RULES = [path_rule, batch_rule, rollout_rule]

"""Design rules about what a stage will meet at run time: files that must exist, objectives that
must share a batch, batches and sequences that must fit. Each is a located diagnostic before
anything runs, never an error an hour into a run.

    LMS087  a data or tokenizer path that does not exist (or a glob that matches nothing)
    LMS088  objectives of one stage that cannot share a batch
    LMS089  a batch that grad_accum does not divide, or sequences longer than the model's context
            (a train stage's seq_len; rollout and feedback prompts plus the tokens generated), or
            too short for the objective (nsp needs 5 tokens, span_corruption one corrupted window)
    LMS093  an objective weight that is zero or negative
    LMS043  mlm's replace fractions that do not sum to 100% (the schema counts them)
    LMS102  a stage given its starting weights twice (`M from A` and `init: B`)
    LMS103  greedy feedback samples: every sample of a prompt is the same (warning)
    LMS104  texts longer than the context of the judge or reward model that scores them (warning)

and, for feedback and rl blocks, LMS089 rollouts that do not split into groups and minibatches,
LMS078 a policy that is not a decoder, LMS075 a KL reference without the policy's lm head, and
LMS072 fields the data does not have (built-in corpora, text files, a jsonl's first record).

Token counts are compared across stages only when both tokenize with the same tokenizer: the
stages exchange text (a judge re-reads the policy's decoded samples with its own tokenizer), so
in another tokenizer a length is a property of the text, not of the spec.
"""

from __future__ import annotations

import glob
import json
from typing import Iterator

from lmspec.compiler import schema as S
from lmspec.compiler.compile import spec_relative
from lmspec.compiler.rules_tokens import hf_tokenizer_file, span_counts
from lmspec.diagnostics import CODES, Diagnostic, Label

__all__ = ["STAGE_RULES", "BUILDS_FIRST", "AUGMENTS", "combinable"]

CODES.setdefault("LMS087", "a data or tokenizer path that does not exist")
CODES.setdefault("LMS088", "objectives of one stage that cannot share a batch")
CODES.setdefault("LMS089", "a batch that grad_accum does not divide, or sequences longer than the context")
CODES.setdefault("LMS093", "an objective weight that is zero or negative")
CODES.setdefault("LMS102", "a stage given its starting weights twice")
CODES.setdefault("LMS103", "greedy sampling that makes every sample of a prompt the same (warning)")
CODES.setdefault("LMS104", "texts longer than the context of the model that scores them (warning)")

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


def _warn(code: str, message: str, span, help: str | None = None, labels: list[Label] | None = None) -> Diagnostic:
    return Diagnostic("warning", code, message, span, labels or [], help)


def _objective_span(block, i: int, key: str):
    """The span of argument `key` of the i-th objective term (`mlm(replace: [...])`)."""
    for path in (("objective", i, "objective", key), ("objective", key)):
        if path in block.value_spans:
            return block.value_spans[path]
    return block.span_of(("objective",))


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
        for i, term in enumerate(spec.objective):
            replace = getattr(term.objective, "replace", None)
            if term.objective.kind == "mlm" and abs(sum(replace) - 1.0) > 1e-6:
                shown = ", ".join(f"{r:.0%}" for r in replace)
                yield _err("LMS043", f"mlm's replace must be [mask, random, unchanged] summing to 100%, found "
                           f"[{shown}] = {sum(replace):.0%}", _objective_span(block, i, "replace"),
                           help="for example BERT's `replace: [0.8, 0.1, 0.1]`")
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
        elif arch is not None:
            yield from _too_short(x, name, spec, arch)


def _shortest(kind: str, obj, arch) -> tuple[int, str] | None:
    """(the shortest seq_len objective `kind` builds a batch in, what fills it), for the
    objectives that need more than one token: nsp writes [CLS] A [SEP] B [SEP]; span_corruption
    needs one corrupted window (runtime.objectives: below these they raise at setup)."""
    if kind == "nsp":
        return 5, "a pair of one token each, with [CLS] and two [SEP]"
    if kind == "span_corruption":
        prefix = arch.arch == "decoder"
        shortest = next(n for n in range(1, 64) if span_counts(n, obj.noise, obj.mean_span, prefix) is not None)
        return shortest, ("one corrupted token, two sentinels and EOS, read as one sequence" if prefix
                          else "one corrupted token: its sentinel and EOS")
    return None


def _too_short(x, name: str, spec, arch) -> Iterator[Diagnostic]:
    """LMS089: a sequence shorter than the objective builds its batches in."""
    block = x.block(name)
    seq_len = spec.seq_len or arch.context
    for term in spec.objective:
        found = _shortest(term.objective.kind, term.objective, arch)
        if found is None or seq_len >= found[0]:
            continue
        shortest, what = found
        kind = term.objective.kind
        if spec.seq_len is not None:
            yield _err("LMS089", f"objective '{kind}' needs seq_len {shortest} or more ({what}), found {seq_len}",
                       block.span_of(("seq_len",)), help=f"use seq_len: {shortest} or more"
                       + (f" (and a context of {shortest})" if arch.context < shortest else ""))
        else:
            context = x.model_spans(spec.model.model).model("context")
            yield _err("LMS089", f"objective '{kind}' needs sequences of {shortest} tokens or more ({what}), but "
                       f"train '{name}' reads the context of '{spec.model.model}', {seq_len}",
                       block.span_of(("objective",)), help=f"give '{spec.model.model}' a context of {shortest} or more",
                       labels=[Label(context, f"context of '{spec.model.model}'")])


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


# ------------------------------------------------------------------------------- rl and feedback


def _group(spec) -> tuple[str, int] | None:
    """GRPO's group and RLOO's k: the samples of one prompt, consecutive rows of a step."""
    a = spec.algorithm
    return {"grpo": ("group", getattr(a, "group", 0)), "rloo": ("k", getattr(a, "k", 0))}.get(a.kind)


def _multiples(n: int, of: int) -> str:
    """The multiples of `of` nearest n: "56 or 64"."""
    low, high = n - n % of, n - n % of + of
    return f"{low} or {high}" if low >= of else str(high)


def rl_batch_rule(x) -> Iterator[Diagnostic]:
    """LMS089: a step's rollouts split into whole groups (GRPO, RLOO) and whole minibatches.
    The runtime samples per_step // group prompts, each `group` times, and drops the rest; it
    cuts a step's rollouts into minibatches of `minibatch`, the last one smaller."""
    for name, spec in x.of_kind("rl").items():
        block = x.block(name)
        inner = block.nested.get("rollouts")
        per_step = spec.rollouts.per_step
        written = inner is not None and "per_step" in inner.fields
        per_step_span = block.span_of(("rollouts", "per_step") if written else ("rollouts",))
        shown = f"per_step ({per_step})" if written else f"per_step ({per_step}, the default)"
        grouping = _group(spec)
        if grouping is not None:
            key, size = grouping
            algo = f"{spec.algorithm.kind}'s {key} ({size})"
            label = [Label(block.span_of(("algorithm", key)), f"{key}: {size}")]
            if per_step < size:
                yield _err("LMS089", f"{shown} is smaller than {algo}: a step samples {size} responses to each of "
                           f"per_step // {size} = 0 prompts, so no rollout at all", per_step_span,
                           help=f"use per_step: {size} or a multiple of it", labels=label)
                continue
            if per_step % size:
                kept = per_step - per_step % size
                yield _err("LMS089", f"{shown} is not a multiple of {algo}: each step samples {per_step // size} "
                           f"prompts {size} times, {kept} rollouts, and drops the other {per_step % size}",
                           per_step_span, help=f"use per_step: {_multiples(per_step, size)}", labels=label)
                continue
        mb = spec.minibatch
        if mb is None:
            continue
        mb_span = block.span_of(("minibatch",))
        label = [Label(per_step_span, f"{per_step} rollouts per step")]
        if mb > per_step:
            yield _err("LMS089", f"minibatch ({mb}) is larger than the {per_step} rollouts of a step: every update "
                       f"takes all {per_step}", mb_span,
                       help=f"use minibatch: {per_step} or less (or leave it out: one update per epoch)",
                       labels=label)
        elif per_step % mb:
            sizes = ", ".join([str(mb)] * (per_step // mb) + [str(per_step % mb)])
            yield _err("LMS089", f"a step's {per_step} rollouts do not split into minibatches of {mb}: the updates "
                       f"take {sizes} rollouts", mb_span,
                       help=f"use a minibatch that divides {per_step}, e.g. {_divisor_near(per_step, mb)}",
                       labels=label)


def _divisor_near(n: int, d: int) -> int:
    return min((k for k in range(1, n + 1) if n % k == 0), key=lambda k: (abs(k - d), -k))


def greedy_feedback_rule(x) -> Iterator[Diagnostic]:
    """LMS103: `temperature: 0` makes the samples of a prompt identical, so every pair the judge
    compares is one text against itself (a tie, p = 0.5): a preference set that teaches nothing."""
    for name, spec in x.of_kind("feedback").items():
        if spec.temperature == 0:
            block = x.block(name)
            yield _warn("LMS103", f"feedback '{name}' samples {spec.samples} responses per prompt greedily "
                        "(temperature: 0): they are identical, and the judge labels every pair a tie",
                        block.span_of(("temperature",)),
                        help="sample with a temperature such as 0.7 (1 is the default)")


def policy_decoder_rule(x) -> Iterator[Diagnostic]:
    """LMS078 for an encoder-decoder policy: feedback and rl stages read a prompt and its
    continuation as one sequence of a decoder (an encoder-decoder's generate returns decoder
    tokens only, and its forward pass needs them apart)."""
    for kind in ("feedback", "rl"):
        for name, spec in x.of_kind(kind).items():
            arch = x.arch_of(spec.policy)
            if arch is None or arch.arch != "encoder_decoder":
                continue
            model = spec.policy.model
            yield _err("LMS078", f"the policy of {kind} '{name}' must be a decoder, but '{model}' is an "
                       "encoder-decoder: feedback and rl stages read a prompt and its continuation as one sequence",
                       x.block(name).span_of(("policy",)), help="use a decoder with an lm head as the policy",
                       labels=[Label(x.model_spans(model).model("arch"), f"'{model}' is an encoder-decoder")])


def _head_signature(arch) -> tuple:
    """What a checkpoint's head tensors depend on: each head's kind and shape, and the pooler."""
    return tuple(sorted((h.kind, h.classes if h.kind == "classifier" else 0, h.transform if h.kind == "mlm" else False)
                        for h in arch.heads if h.kind != "none")) + (("pooler",) if arch.pooler else ())


def _heads(arch) -> str:
    names = [h.kind for h in arch.heads if h.kind != "none"]
    return ", ".join(names) or "none"


def reference_rule(x) -> Iterator[Diagnostic]:
    """LMS075, heads: `M from S`, `init: S` without `with head` load S's heads as they are, so S
    must have trained the heads M has (a checkpoint of other heads does not load); an rl stage's
    KL reference (`reference:`, else the stage its policy comes from) must have trained an lm
    head: the KL compares the policy's next-token distribution with the reference's."""
    from lmspec.compiler.rules import _references, shape_difference  # rules imports this module

    for name, source, label, use, path in _references(x):
        produced = x.produced(source)
        target = x.arch_of(use)
        if produced is None or produced[1] is None or target is None:
            continue
        trained, arch = produced
        base = x.models.get(use.model)
        if base is not None and shape_difference(arch, base) is not None:
            continue  # LMS075 names the shape that differs
        src_kind = x.block(source).kind
        src_label = [Label(x.block(source).span_of(("model",) if src_kind == "train" else ("policy",)),
                           f"'{source}' trains '{trained.model}' with heads: {_heads(arch)}")]
        if label == "reference":
            if arch.head("lm") is None:
                yield _err("LMS075", f"reference: {source} is no KL reference: {src_kind} '{source}' trains "
                           f"'{trained.model}' with heads: {_heads(arch)}, and the KL compares the policy's lm head "
                           "with the reference's", x.block(name).span_of(path),
                           help="name a stage that trains the policy's lm head, such as the one it comes from",
                           labels=src_label)
            continue
        if x.block(name).kind in ("feedback", "rl") and (target.head("lm") is None or target.arch == "encoder"):
            continue  # LMS078: the policy cannot generate, whatever it loads
        if use.head is None and _head_signature(arch) != _head_signature(target):
            what = f"'{use.model} from {source}'" if label == "from" else f"init: {source}"
            yield _err("LMS075", f"{what} loads the heads {src_kind} '{source}' trained ({_heads(arch)}), but "
                       f"'{use.model}' has heads: {_heads(target)}", x.block(name).span_of(path),
                       help=f"write `{use.model} with head {_heads(target)} from {source}` to start those heads "
                            "fresh, or name a stage that trains them", labels=src_label)
    for name, spec in x.of_kind("rl").items():
        use = spec.policy
        if spec.reference is not None or use.stage is None or use.head is None:
            continue  # an explicit reference is checked above; without `with head` the policy's heads load
        produced = x.produced(use.stage)
        if produced is not None and produced[1] is not None and produced[1].head("lm") is None:
            yield _err("LMS075", f"the KL reference of rl '{name}' is '{use.stage}', the stage its policy comes from, "
                       f"but '{use.stage}' trains '{produced[0].model}' with heads: {_heads(produced[1])}: the "
                       "reference's lm head would be as fresh as the policy's", x.block(name).span_of(("policy",)),
                       help="add `reference: STAGE`, a stage that trains this model's lm head")


def init_twice_rule(x) -> Iterator[Diagnostic]:
    """LMS102: `M from A` and `init: B` both give a train stage its starting weights; the
    runtime starts from `init` and ignores `from` (yet runs A first)."""
    for name, spec in x.of_kind("train").items():
        if spec.init is None or spec.model.stage is None:
            continue
        block = x.block(name)
        init = spec.init if isinstance(spec.init, str) else f'hf("{spec.init.path}")'
        yield _err("LMS102", f"train '{name}' gives its starting weights twice: '{spec.model.model} from "
                   f"{spec.model.stage}' and 'init: {init}'; the stage would start from {init} and ignore "
                   f"'{spec.model.stage}'", block.span_of(("init",)),
                   help=f"keep one: `model: {spec.model.model}, init: {init}` or `model: {spec.model.model} from "
                        f"{spec.model.stage}`", labels=[Label(block.span_of(("model",)), "the other one")])


# ------------------------------------------------------------------------------- lengths across stages

DEFAULT_TOKENIZER = "bytes"  # what a stage tokenizes with when the spec cannot say (RunContext.tokenizer)


def _tokenizer(x, explicit: str | None) -> str:
    if explicit is not None:
        return explicit
    tokenizers = list(x.of_kind("tokenizer"))
    return tokenizers[0] if len(tokenizers) == 1 else DEFAULT_TOKENIZER


def stage_tokenizer(x, stage: str | None, seen: frozenset = frozenset()) -> str | None:
    """The tokenizer block a stage's texts are read with at run time: a train stage's own; an rl
    stage's is its policy's (the tokenizer of the stage it comes from); None when unknown."""
    if stage is None:
        return _tokenizer(x, None)
    spec = x.validated.blocks.get(stage)
    if spec is None or stage in seen or stage not in x.validated.resolved.blocks:
        return None
    kind = x.block(stage).kind
    if kind == "train":
        return _tokenizer(x, spec.tokenizer)
    if kind in ("rl", "feedback"):
        return stage_tokenizer(x, spec.policy.stage, seen | {stage})
    return None


def _scorer(x, name: str) -> tuple[str, str, int, str | None] | None:
    """(what, model block, context, tokenizer) of a judge or reward-model stage that reads texts;
    None for judges whose context is not known here (hf, openai, rules)."""
    spec = x.validated.blocks.get(name)
    if spec is None:
        return None
    kind = x.block(name).kind
    if kind == "judge":
        use = spec.model
        if not isinstance(use, S.ModelUse) or use.model not in x.models:
            return None
        return f"judge '{name}'", use.model, x.models[use.model].context, stage_tokenizer(x, use.stage)
    produced = x.produced(name)
    if kind != "train" or produced is None or produced[1] is None:
        return None
    return f"reward model '{name}'", produced[0].model, produced[1].context, stage_tokenizer(x, name)


def scorer_context_rule(x) -> Iterator[Diagnostic]:
    """LMS104: a judge or reward model reads prompt + response and keeps its last `context`
    tokens; samples longer than that are judged on their end only."""
    for kind in ("feedback", "rl"):
        for name, spec in x.of_kind(kind).items():
            sampling = spec.rollouts if kind == "rl" else spec
            prompt, new = sampling.prompts.tokens, sampling.max_new_tokens
            policy_tok = stage_tokenizer(x, spec.policy.stage)
            block = x.block(name)
            readers = [(spec.judge, ("judge",))] if kind == "feedback" else \
                [(spec.reward, ("reward",))] + [(j, ("eval_judges", i)) for i, j in enumerate(spec.eval_judges)]
            for reader, path in readers:
                found = _scorer(x, reader)
                if found is None:
                    continue
                what, model, context, tok = found
                if prompt + new <= context or tok is None or tok != policy_tok:
                    continue
                fix = f"give '{model}' a context of {prompt + new}"
                if context > prompt:
                    fix += f", or generate max_new_tokens: {context - prompt} or fewer"
                yield _warn("LMS104", f"the samples of {kind} '{name}' are up to {prompt} prompt tokens + {new} new "
                            f"tokens = {prompt + new}, longer than the context of {what} ({context}): it reads "
                            f"only their last {context} tokens", block.span_of(path), help=fix,
                            labels=[Label(x.model_spans(model).model("context"), f"context of '{model}'")])


def pairs_rule(x) -> Iterator[Diagnostic]:
    """LMS089: the preference pairs a bradley_terry or dpo stage reads are prompt + response,
    up to the feedback stage's prompt tokens + max_new_tokens; a longer pair than the stage's
    seq_len stops it before step 1, after the feedback stage has run."""
    for name, spec in x.of_kind("train").items():
        kinds = {t.objective.kind for t in spec.objective}
        feedback = x.validated.blocks.get(spec.data)
        if not kinds & {"bradley_terry", "dpo"} or x.block(spec.data).kind != "feedback" or feedback is None:
            continue
        arch = x.arch_of(spec.model)
        if arch is None or stage_tokenizer(x, name) != stage_tokenizer(x, feedback.policy.stage):
            continue
        seq_len = min(spec.seq_len or arch.context, arch.context)
        prompt, new = feedback.prompts.tokens, feedback.max_new_tokens
        if prompt + new <= seq_len:
            continue
        block = x.block(name)
        by_seq_len = spec.seq_len is not None and spec.seq_len < arch.context
        limit = "its seq_len" if by_seq_len else f"the context of '{spec.model.model}'"
        where = block.span_of(("seq_len",)) if spec.seq_len is not None else block.span_of(("data",))
        fix = f"raise {'seq_len' if by_seq_len else 'the context'} to {prompt + new}"
        if seq_len > prompt:
            fix += f", or give feedback '{spec.data}' max_new_tokens: {seq_len - prompt}"
        fb = x.block(spec.data)
        yield _err("LMS089", f"the pairs of feedback '{spec.data}' are up to {prompt} prompt tokens + {new} new tokens "
                   f"= {prompt + new}, longer than the {seq_len} tokens train '{name}' reads ({limit})", where,
                   help=fix, labels=[Label(fb.span_of(("max_new_tokens",)), "the responses' length")
                                     if "max_new_tokens" in fb.fields else
                                     Label(fb.span_of(("prompts",)), f"{prompt}-token prompts")])


# ------------------------------------------------------------------------------- data fields

#: the record fields of the built-in corpora and the type of each (runtime.data.builtin: a test
#: keeps the two equal)
BUILTIN_FIELDS: dict[str, dict[str, type]] = {
    "tiny-stories": {"text": str, "ending": str},
    "tiny-reviews": {"text": str, "sentiment": int},
    "tiny-instructions": {"prompt": str, "response": str},
}


def _first_record(spec, spec_file: str) -> dict | None:
    """A jsonl source's first record (its first non-empty line), the fields every record must
    have; None for a glob, a missing or unreadable file, or a line that is not an object."""
    if glob.has_magic(spec.source.path):
        return None
    try:
        with open(spec_relative(spec.source.path, spec_file), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    return record if isinstance(record, dict) else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return None


def _fields_of(x, data: str) -> tuple[str, dict[str, type] | None] | None:
    """(how to name the source, its fields and their types) for data whose fields are known
    statically; the fields are None for a text(...) source (documents only)."""
    spec = x.validated.blocks.get(data)
    if spec is None or x.block(data).kind != "data":
        return None
    src = spec.source
    if src.kind == "builtin":
        return f'builtin("{src.name}") records', BUILTIN_FIELDS[src.name]
    if src.kind == "text":
        return f'text("{src.path}")', None
    record = _first_record(spec, x.block(data).span.file)
    if record is None:
        return None
    return f'the first record of jsonl("{src.path}")', {k: type(v) for k, v in record.items()}


def _reads(term, data_spec) -> tuple[list[str], str | None]:
    """(text fields, label field) one objective reads from a data block's records, as the runtime
    reads them: sft its prompt and response, classify its text and `classify(label:)` (default
    "label"), every other objective its text."""
    o = term.objective
    if o.kind == "sft":
        return [data_spec.prompt, data_spec.response], None
    if o.kind == "classify":
        return [data_spec.text], o.label
    return [data_spec.text], None


def data_fields_rule(x) -> Iterator[Diagnostic]:
    """LMS072: the fields a stage reads exist in its data, when the data's fields are known at
    check time (built-in corpora, text files, a jsonl's first record), and a classify label
    holds class numbers. Also `data.label` with a bare `classify`: the runtime reads
    `classify(label:)`, whose default is "label"."""
    for name, spec in x.of_kind("train").items():
        block = x.block(name)
        data_spec = x.validated.blocks.get(spec.data)
        if data_spec is None or x.block(spec.data).kind != "data":
            continue
        data_label = [Label(block.span_of(("data",)), f"'{spec.data}' is read here")]
        for term in spec.objective:
            o = term.objective
            if o.kind == "classify" and "label" not in o.model_fields_set and data_spec.label not in (None, o.label):
                yield _err("LMS072", f"objective 'classify' reads the field '{o.label}' (its default), but data "
                           f"'{spec.data}' names its label '{data_spec.label}'", block.span_of(("objective",)),
                           help=f"write `classify(label: \"{data_spec.label}\")`", labels=data_label)
                continue
            if o.kind == "classify" and ("label" not in o.model_fields_set or data_spec.label not in (None, o.label)):
                continue  # the label field is not known, or the two disagree: rules.objective_rule says so
            yield from _missing_fields(x, spec.data, f"objective '{o.kind}' reads", *_reads(term, data_spec),
                                       block.span_of(("objective",)), data_label)
    for kind, where in (("feedback", ("prompts",)), ("rl", ("rollouts", "prompts"))):
        for name, spec in x.of_kind(kind).items():
            prompts = (spec.rollouts if kind == "rl" else spec).prompts
            data_spec = x.validated.blocks.get(prompts.data)
            if data_spec is not None:
                yield from _missing_fields(x, prompts.data, f"the prompts of {kind} '{name}' read", [data_spec.text],
                                           None,
                                           x.block(name).span_of(where), [])


_VALUES = {str: "strings", int: "integers", float: "numbers", bool: "booleans", list: "lists", dict: "objects",
           type(None): "nulls"}


def _quoted(fields: list[str]) -> str:
    return f"field{'s' * (len(fields) > 1)} " + ", ".join(f"'{f}'" for f in fields)


def _missing_fields(x, data: str, reader: str, fields: list[str], label: str | None, span,
                    labels: list[Label]) -> Iterator[Diagnostic]:
    """LMS072 for the fields `reader` ("objective 'sft' reads") takes from data block `data`."""
    known = _fields_of(x, data)
    if known is None:
        return
    source, have = known
    text_field = x.validated.blocks[data].text
    if have is None:  # text(...): documents, read as the text whatever the field is called
        wanted = [f for f in fields if f != text_field] + ([label] if label else [])
        if wanted:
            yield _err("LMS072", f"{reader} the {_quoted(wanted)}, but data '{data}' is {source}: documents only",
                       span, help="use a jsonl(...) source with those fields", labels=labels)
        return
    missing = [f for f in dict.fromkeys(fields + ([label] if label else [])) if f not in have]
    if missing:
        yield _err("LMS072", f"{reader} the {_quoted(missing)}, but {source} of data '{data}' have "
                   f"{', '.join(have) or 'no fields'}", span, help=_field_help(x, data, missing, have, label),
                   labels=labels)
        return
    for f in fields:
        if have[f] is not str:
            yield _err("LMS072", f"{reader} text from the field '{f}', but in {source} of data '{data}' it holds "
                       f"{_VALUES.get(have[f], 'other values')}", span, help="name a field that holds text",
                       labels=labels)
    if label is not None and have[label] not in (int, bool):
        yield _err("LMS072", f"{reader} class numbers from the field '{label}', but in {source} of data '{data}' "
                   f"it holds {_VALUES.get(have[label], 'other values')}", span,
                   help=_field_help(x, data, [label], have, label), labels=labels)


def _field_help(x, data: str, missing: list[str], have: dict[str, type], label: str | None) -> str:
    """A fix that names fields the data has: a label field of integers, or the text fields."""
    if label in missing:
        ints = [f for f, t in have.items() if t is int]
        return f"write `classify(label: \"{ints[0]}\")`" if ints else \
            "classify reads class numbers (0, 1, ...): use data with such a field"
    spec = x.validated.blocks[data]
    keys = {spec.text: "text", spec.prompt: "prompt", spec.response: "response"}
    named = [f"`{keys[f]}: \"...\"`" for f in missing if f in keys]
    texts = [f for f, t in have.items() if t is str]
    if named and texts:
        return (f"name the fields in data '{data}' with {' and '.join(named)} (its text fields: {', '.join(texts)}), "
                "or use data with those fields")
    return "use data with those fields"


STAGE_RULES = [path_rule, batch_rule, rollout_rule, rl_batch_rule, greedy_feedback_rule, policy_decoder_rule,
               reference_rule, init_twice_rule, scorer_context_rule, pairs_rule, data_fields_rule]

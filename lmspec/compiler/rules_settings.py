"""Design rules about settings the runtime would ignore, cut or override: a spec that runs, but
not as written. Each is a located diagnostic with the figures the runtime would use.

    LMS105  a warm-up not shorter than its stage: the learning rate never peaks or never decays (warning)
    LMS106  an evaluation or checkpoint setting that has no effect: eval_every or checkpoint_every
            not below steps, eval_every and eval_batches without a validation split, eval_batches
            above the batches the split holds, eval_prompts above a tenth of the prompts (warning)
    LMS107  samples a stage never draws (a model or data it cannot sample from), or cuts
            (sample_tokens beyond the context, samples above the held-out prompts) (warning)
    LMS108  prefixes(count:) above the documents of its data: the prompts repeat (warning)
    LMS109  until(count:) above the documents of its data: the stage stops before step 1
    LMS110  a stage that continues weights with another tokenizer than they were trained with
    LMS111  a model's pad_id or mask_id that is not its tokenizer's (training uses the tokenizer's)
    LMS112  learned or sinusoidal positions in a stack or layer override (they exist only at the
            embeddings, from the model-level `position`; but `position: learned` in a stack block
            of an encoder-decoder is that stack's own table)
    LMS113  a classifier or scalar head that pools the first token of a causal decoder (warning)
    LMS116  attention_softcap: none in a stack block or layer override below a cap (the cap stays)

Only what the spec writes is held against it: a default the runtime adapts (three samples of an
encoder, which samples nothing) is not a setting. Split and prompt counts are compared where
they are known without reading data: any source with `validation: 0`, and the built-in corpora,
whose record counts are constants and whose split is the runtime's hash of (seed, index)
(`compiler.split`, which the runtime splits with).
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from lmspec.compiler import schema as S
from lmspec.compiler.rules_models import override_sites
from lmspec.compiler.rules_stages import BUILDS_FIRST, stage_tokenizer
from lmspec.compiler.rules_tokens import (
    DEFAULT_TOKENIZER_SPEC, hf_tokenizer_file, runtime_tokenizer, special_ids, tokenizer_vocab_size,
)
from lmspec.compiler.split import is_validation
from lmspec.diagnostics import CODES, Diagnostic, Label

__all__ = ["SETTINGS_RULES", "BUILTIN_RECORDS", "held_out", "builtin_split"]

CODES.setdefault("LMS105", "a warm-up not shorter than its stage (warning)")
CODES.setdefault("LMS106", "an evaluation, checkpoint or data setting that has no effect (warning)")
CODES.setdefault("LMS107", "samples a stage never draws, or cuts (warning)")
CODES.setdefault("LMS108", "prompts that repeat: a count above the documents of their data (warning)")
CODES.setdefault("LMS109", "prompts that the data cannot supply: a count above its documents")
CODES.setdefault("LMS110", "a stage that continues weights with another tokenizer than they were trained with")
CODES.setdefault("LMS111", "a model's pad_id or mask_id that is not its tokenizer's")
CODES.setdefault("LMS112", "learned or sinusoidal positions in a stack or layer override")
CODES.setdefault("LMS113", "a head that pools the first token of a causal decoder (warning)")
CODES.setdefault("LMS115", "position: none in an override of a model whose positions are added at the embeddings "
                           "(warning)")
CODES.setdefault("LMS116", "attention_softcap: none in a stack block or layer override, below a cap it cannot remove")


def _err(code: str, message: str, span, help: str | None = None, labels: list[Label] | None = None) -> Diagnostic:
    return Diagnostic("error", code, message, span, labels or [], help)


def _warn(code: str, message: str, span, help: str | None = None, labels: list[Label] | None = None) -> Diagnostic:
    return Diagnostic("warning", code, message, span, labels or [], help)


def _stages(x) -> Iterator[tuple[str, str, object]]:
    """(kind, name, spec) of every train and rl stage: the kinds with steps and a schedule."""
    for kind in ("train", "rl"):
        for name, spec in x.of_kind(kind).items():
            yield kind, name, spec


def _steps(x, name: str, steps: int) -> tuple[str, list[Label]]:
    """How to name a stage's steps in a message ("the default 1000 steps"), and a label on them."""
    block = x.block(name)
    if "steps" in block.fields:
        return f"{steps} steps", [Label(block.span_of(("steps",)), f"steps: {steps}")]
    return f"{steps} steps (the default)", []


# ------------------------------------------------------------------------------- split sizes

#: records of each built-in corpus (runtime.data.builtin generates them; a test keeps the two equal)
BUILTIN_RECORDS = {"tiny-stories": 20_000, "tiny-reviews": 10_000, "tiny-instructions": 6_000}


def held_out(seed: int, n: int, fraction: float) -> int:
    """How many of examples 0 .. n-1 go to validation: the runtime's split (`compiler.split`)."""
    if n <= 0 or fraction <= 0:
        return 0
    return int(is_validation(seed, np.arange(n), fraction).sum())


def builtin_split(spec: S.DataSpec) -> tuple[int, int] | None:
    """(train, validation) examples of a data block reading a built-in corpus, as
    runtime.data.prepare splits them (its two tiny-corpus rules included); None for files."""
    if spec.source.kind != "builtin":
        return None
    n = min(BUILTIN_RECORDS[spec.source.name], spec.max_examples or BUILTIN_RECORDS[spec.source.name])
    validation = held_out(spec.seed, n, spec.validation)
    train = n - validation
    if spec.validation > 0 and validation == 0 and train >= 2:
        train, validation = train - 1, 1
    elif train == 0 and validation > 0:
        train, validation = 1, validation - 1
    return train, validation


def _documents(x, data: str) -> int | None:
    """Documents in the train split of a data block, where known (prompts are cut from it)."""
    spec = x.validated.blocks.get(data)
    split = builtin_split(spec) if isinstance(spec, S.DataSpec) else None
    return split[0] if split else None


def _prompts(x, prompts) -> int | None:
    """How many prompts a feedback or rl stage is given: `count`, else (prefixes) every train
    document of the data; None where the data must be read to know."""
    if prompts.count is not None:
        return prompts.count
    return _documents(x, prompts.data) if prompts.kind == "prefixes" else None


# ------------------------------------------------------------------------------- schedules


def schedule_rule(x) -> Iterator[Diagnostic]:
    """LMS105: the learning rate climbs linearly over `warmup` steps (engine.lr_at), so a warm-up
    as long as the stage reaches its peak only at the last step, and a longer one never; the
    cosine or linear decay after it never starts. The run is silently another schedule."""
    for kind, name, spec in _stages(x):
        warmup, steps = getattr(spec.schedule, "warmup", 0), spec.steps
        if warmup == 0 or warmup < steps:
            continue
        shape = spec.schedule.kind
        if warmup > steps:
            what = f"climbs for the whole stage and ends at {steps / warmup:.0%} of its peak"
        else:
            what = "reaches its peak only at the last step"
        if shape != "constant":
            what += f"; the {shape} decay never starts"
        shown, labels = _steps(x, name, steps)
        yield _warn("LMS105", f"warmup ({warmup}) is not shorter than the {shown} of {kind} '{name}': the learning "
                    f"rate {what}", x.block(name).span_of(("schedule", "warmup")),
                    help=(f"use a warmup below steps, e.g. warmup: {max(1, steps // 10)} (a tenth of the stage)"
                          if steps > 1 else "remove the warm-up (warmup: 0): a stage of one step has no room for one"),
                    labels=labels)


# ------------------------------------------------------------------------------- evaluation


def _builder(spec) -> str:
    """The objective kind that shapes a train stage's batches (rules_stages.BUILDS_FIRST)."""
    kinds = [t.objective.kind for t in spec.objective]
    return next((k for k in BUILDS_FIRST if k in kinds), kinds[0] if kinds else "")


def _validation(x, spec) -> tuple[int | None, str, str]:
    """(validation examples a train stage evaluates on, where known; what they are; why there
    are none) for its data block or feedback block."""
    data = x.validated.blocks.get(spec.data)
    kind = x.block(spec.data).kind
    if data is None:
        return None, "", ""  # the block has errors of its own
    if kind == "feedback":
        pairs = math.comb(data.samples, 2)
        if data.validation == 0:
            return 0, "pairs", f"feedback '{spec.data}' holds out no pairs (validation: 0)"
        prompts = _prompts(x, data.prompts)
        if prompts is None:
            return None, "pairs", ""
        held = round(prompts * data.validation)
        return held * pairs, "pairs", (f"feedback '{spec.data}' holds out no pairs: round({prompts} prompts x "
                                       f"{data.validation:g}) = 0")
    if not isinstance(data, S.DataSpec):
        return None, "", ""
    if data.validation == 0:
        return 0, "examples", f"data '{spec.data}' has no validation split (validation: 0)"
    if _builder(spec) not in ("nsp", "sft", "classify"):  # windows: the split's tokens decide
        return None, "", ""
    split = builtin_split(data)
    return (split[1] if split else None), ("documents" if _builder(spec) == "nsp" else "records"), ""


def evaluation_rule(x) -> Iterator[Diagnostic]:
    """LMS106: settings of evaluation and checkpoints that change nothing the stage does. The
    driver evaluates every eval_every steps and always at the last one, and checkpoints every
    checkpoint_every steps before the last (runtime.loop.drive); a train stage without a
    validation split evaluates nothing, and at most as many batches as the split holds; an rl
    stage holds out at most a tenth of its prompts (runtime.stages)."""
    for kind, name, spec in _stages(x):
        block = x.block(name)
        shown, labels = _steps(x, name, spec.steps)
        if "eval_every" in block.fields and 0 < spec.steps <= spec.eval_every:
            yield _warn("LMS106", f"eval_every ({spec.eval_every}) is not shorter than the {shown} of {kind} "
                        f"'{name}': the stage evaluates only at its end, as it does without eval_every",
                        block.span_of(("eval_every",)), help=(f"use eval_every below steps (e.g. "
                        f"{max(1, spec.steps // 4)}), or remove it" if spec.steps > 1 else "remove it"), labels=labels)
        if "checkpoint_every" in block.fields and 0 < spec.steps <= spec.checkpoint_every:
            yield _warn("LMS106", f"checkpoint_every ({spec.checkpoint_every}) is not shorter than the {shown} of "
                        f"{kind} '{name}': the stage writes no checkpoint before its final weights (only on Ctrl-C)",
                        block.span_of(("checkpoint_every",)), help=(f"use checkpoint_every below steps (e.g. "
                        f"{max(1, spec.steps // 4)}) to resume a stopped run part-way, or remove it"
                        if spec.steps > 1 else "remove it"), labels=labels)
        if kind == "train":
            yield from _split_settings(x, name, spec)
        elif "eval_prompts" in block.fields:
            prompts = _prompts(x, spec.rollouts.prompts)
            if prompts is not None and spec.eval_prompts > max(1, prompts // 10):
                held = max(1, prompts // 10)
                yield _warn("LMS106", f"eval_prompts ({spec.eval_prompts}) is cut to {held}: rl '{name}' holds out at "
                            f"most a tenth of its {prompts} prompts for evaluation", block.span_of(("eval_prompts",)),
                            help=f"use eval_prompts: {held} or less" + (
                                f", or give the rollouts prompts count: {spec.eval_prompts * 10}"
                                if spec.eval_prompts * 10 <= (_documents(x, spec.rollouts.prompts.data) or 0) else
                                ""),
                            labels=[Label(block.span_of(("rollouts", "prompts", "count")), f"{prompts} prompts")])


def _split_settings(x, name: str, spec) -> Iterator[Diagnostic]:
    """LMS106 for eval_every and eval_batches against the validation split of a train stage."""
    block = x.block(name)
    held, what, why = _validation(x, spec)
    if held is None:
        return
    data_label = [Label(block.span_of(("data",)), f"'{spec.data}' is read here")]
    if held == 0:
        if "eval_every" in block.fields and 0 < spec.eval_every < spec.steps:
            generates = _cannot_sample(x, spec) is None and spec.samples > 0
            yield _warn("LMS106", f"eval_every ({spec.eval_every}) evaluates nothing: {why}"
                        + ("; only samples are drawn" if generates else ""), block.span_of(("eval_every",)),
                        help=f"hold out a split (`validation: 2%` in {x.block(spec.data).kind} '{spec.data}'), "
                             "or remove eval_every", labels=data_label)
        if "eval_batches" in block.fields:
            yield _warn("LMS106", f"eval_batches ({spec.eval_batches}) has no effect: {why}",
                        block.span_of(("eval_batches",)), help="remove eval_batches, or hold out a validation split",
                        labels=data_label)
        return
    micro = max(1, spec.batch // spec.grad_accum)  # the evaluation's batches (TrainStage.eval_micro)
    most = max(1, math.ceil(held / micro))
    if "eval_batches" in block.fields and spec.eval_batches > most:
        yield _warn("LMS106", f"eval_batches ({spec.eval_batches}) is more than the validation split holds: its "
                    f"{held} {what} make {most} batch{'es' * (most > 1)} of {micro}, and the stage evaluates on those",
                    block.span_of(("eval_batches",)), help=f"use eval_batches: {most} or less", labels=data_label)


# ------------------------------------------------------------------------------- samples


def _cannot_sample(x, spec) -> str | None:
    """Why a train stage draws no samples at its evaluations (TrainStage.samples continues
    prompts of its data with a decoder's lm head), or None when it can."""
    if x.block(spec.data).kind == "feedback":
        return "it reads preference pairs, and samples continue prompts of a data block"
    arch = x.arch_of(spec.model)
    model = spec.model.model
    if arch is None:
        return None
    if arch.arch == "encoder":
        return f"'{model}' is an encoder, which cannot generate"
    if arch.arch == "encoder_decoder":
        return f"a train stage samples from decoders only, and '{model}' is an encoder-decoder"
    if arch.head("lm") is None:
        return f"'{model}' has no lm head (heads: {', '.join(h.kind for h in arch.heads) or 'none'})"
    return None


def samples_rule(x) -> Iterator[Diagnostic]:
    """LMS107: `samples` and `sample_tokens` that change nothing, or less than written. A train
    stage samples from a decoder with an lm head, each sample cut to the context left after its
    prompt (so sample_tokens >= context is always cut); an rl stage shows at most its held-out
    prompts' samples."""
    for name, spec in x.of_kind("train").items():
        block = x.block(name)
        written = [k for k in ("samples", "sample_tokens") if k in block.fields]
        if not written:
            continue
        reason = _cannot_sample(x, spec)
        if reason is not None or spec.samples == 0:
            idle = [k for k in written if k != "samples" or spec.samples > 0]  # `samples: 0` turns them off
            if not idle:
                continue
            keys = " and ".join(f"{k}: {getattr(spec, k)}" for k in idle)
            has = "have" if len(idle) > 1 else "has"
            why = f", because {reason}" if spec.samples > 0 else " (samples: 0)"
            yield _warn("LMS107", f"{keys} {has} no effect: train '{name}' draws no samples{why}",
                        block.span_of((idle[0],)),
                        help=f"remove {' and '.join(idle)}" + (" (`lmspec sample` samples a finished stage)"
                                                              if reason is not None else ""),
                        labels=[Label(block.span_of((idle[1],)), "this too")] if len(idle) > 1 else [])
        elif "sample_tokens" in written:
            arch = x.arch_of(spec.model)
            if arch is not None and spec.sample_tokens >= arch.context:
                model = spec.model.model
                yield _warn("LMS107", f"sample_tokens ({spec.sample_tokens}) cannot fit the context of '{model}' "
                            f"({arch.context}): each sample is cut to what the context leaves after its prompt, "
                            f"{arch.context - 1} tokens at most", block.span_of(("sample_tokens",)),
                            help=f"use sample_tokens below {arch.context}: the context holds the prompt too",
                            labels=[Label(x.model_spans(model).model("context"), f"context of '{model}'")])
    for name, spec in x.of_kind("rl").items():
        block = x.block(name)
        if "samples" not in block.fields:
            continue
        prompts = _prompts(x, spec.rollouts.prompts)  # the held-out ones are at most eval_prompts
        held = spec.eval_prompts if prompts is None else min(spec.eval_prompts, max(1, prompts // 10))
        if spec.samples > held:
            yield _warn("LMS107", f"samples ({spec.samples}) is more than the {held} held-out prompts of rl '{name}': "
                        f"each evaluation shows {held}", block.span_of(("samples",)),
                        help=f"use samples: {held} or less")


# ------------------------------------------------------------------------------- prompt counts


def prompts_rule(x) -> Iterator[Diagnostic]:
    """LMS108 and LMS109: prompts are cut from the documents of the data's train split, in its
    seeded order. prefixes(count: N) above them takes them again from the first (the same
    prompts twice, in an rl stage also among the held-out ones); until(count: N) reads each
    document once, and with fewer than N holding the marker stops the stage before step 1."""
    for kind, where in (("feedback", ("prompts",)), ("rl", ("rollouts", "prompts"))):
        for name, spec in x.of_kind(kind).items():
            prompts = (spec.rollouts if kind == "rl" else spec).prompts
            docs = _documents(x, prompts.data)
            if prompts.count is None or docs is None or prompts.count <= docs:
                continue
            block = x.block(name)
            span = block.span_of(where + ("count",))
            data = x.validated.blocks[prompts.data]
            label = [Label(x.block(prompts.data).span_of(("source",)),
                           f"builtin(\"{data.source.name}\"): {docs} documents in the train split")]
            if prompts.kind == "prefixes":
                yield _warn("LMS108", f"prefixes(count: {prompts.count}) asks {kind} '{name}' for more prompts than "
                            f"data '{prompts.data}' has documents ({docs}): the prompts repeat, the first "
                            f"{prompts.count - docs} twice", span, help=f"use count: {docs} or less", labels=label)
            else:
                yield _err("LMS109", f"until(count: {prompts.count}) asks {kind} '{name}' for more prompts than data "
                           f"'{prompts.data}' has documents ({docs}), and each is read once: the stage would stop "
                           "before step 1", span, help=f"use count: {docs} or less (only documents that hold the "
                           "marker count)", labels=label)


# ------------------------------------------------------------------------------- tokenizers and weights


def _tokenizer_spec(x, name: str) -> S.TokenizerSpec | None:
    return x.validated.blocks.get(name) if name in x.validated.resolved.blocks else DEFAULT_TOKENIZER_SPEC


def _tokenizer_file(x, name: str) -> str:
    block = x.validated.resolved.blocks.get(name)
    return block.span.file if block is not None else "<string>"


def _name(x, tok: str) -> str:
    return f"'{tok}'" if tok in x.validated.resolved.blocks else "the default bytes tokenizer"


def _token_ids(spec: S.TokenizerSpec) -> dict[str, int]:
    """{token: id} of a bytes tokenizer beyond its 256 bytes: specials, then sentinels."""
    ids = {f"<{s}>": i for s, i in special_ids(spec).items()}
    first = 256 + len(spec.specials)
    ids.update({f"<extra_id_{i}>": first + i for i in range(spec.sentinels)})
    return ids


def id_conflict(x, old: str, new: str) -> str | None:
    """Why ids of tokenizer `old` mean other tokens in tokenizer `new`; None when every id of
    `old` is the same token in `new` (the same tokenizer, or bytes with specials or sentinels
    added after the old ones), or when it cannot be known here."""
    a, b = _tokenizer_spec(x, old), _tokenizer_spec(x, new)
    if old == new or a is None or b is None:
        return None
    ka, kb = a.kind.kind, b.kind.kind
    if ka != kb:
        return f"{_name(x, old)} is a {ka} tokenizer and {_name(x, new)} a {kb} one"
    if ka == "bytes":
        ids_a, ids_b = _token_ids(a), _token_ids(b)
        token_at = {i: t for t, i in reversed(list(ids_b.items()))}
        for token, i in ids_a.items():
            if ids_b.get(token) != i:
                other = f"{token_at[i]} in {_name(x, new)}" if i in token_at else \
                    f"not an id of {_name(x, new)} ({tokenizer_vocab_size(b)} ids)"
                return f"id {i} is {token} in {_name(x, old)} but {other}"
        return None
    if ka == "hf":
        fa, fb = (hf_tokenizer_file(s.kind.path, _tokenizer_file(x, n)).resolve() for s, n in ((a, old), (b, new)))
        return None if fa == fb else f"they read different files ({fa} and {fb})"
    dump = lambda s: s.model_dump(exclude={"allow"})  # noqa: E731
    return None if dump(a) == dump(b) else "each learns its own merges and numbers its tokens its own way"


def _continued(x) -> Iterator[tuple[str, str, tuple, str, str]]:
    """(kind, stage, path, source stage, what) for every stage that reads weights
    trained by another stage and feeds them its own token ids: a train stage's `M from S` and
    `init: S`, an rl stage's `reference: S` (it scores the policy's tokens)."""
    several = len(x.of_kind("tokenizer")) > 1
    for name, spec in x.of_kind("train").items():
        if spec.tokenizer is None and several:
            continue  # LMS074
        if spec.model.stage is not None:
            yield "train", name, ("model",), spec.model.stage, f"'{spec.model.model} from {spec.model.stage}'"
        if isinstance(spec.init, str):
            yield "train", name, ("init",), spec.init, f"init: {spec.init}"
    for name, spec in x.of_kind("rl").items():
        if spec.reference is not None:
            yield "rl", name, ("reference",), spec.reference, f"reference: {spec.reference}"


def tokenizer_continuity_rule(x) -> Iterator[Diagnostic]:
    """LMS110: weights carried from one stage to the next learned what each id meant under the
    first stage's tokenizer. A train stage tokenizes with its own tokenizer whatever its weights'
    stage used, and an rl reference reads the policy's tokens: another tokenizer changes what
    the ids mean, silently. (Feedback and rl policies take their stage's tokenizer.)"""
    for kind, name, path, source, what in _continued(x):
        spec = x.validated.blocks[name]
        src_tok = stage_tokenizer(x, source)
        if kind == "train":
            own = runtime_tokenizer(x, spec.tokenizer)[0]
        else:
            own = stage_tokenizer(x, spec.policy.stage)
        if src_tok is None or own is None:
            continue
        why = id_conflict(x, src_tok, own)
        if why is None:
            continue
        block = x.block(name)
        reads = "tokenizes with" if kind == "train" else "scores the tokens of its policy, which come from"
        span = block.span_of(("tokenizer",)) if kind == "train" and spec.tokenizer is not None else block.span_of(path)
        src_block = x.block(source)
        src_spec = x.validated.blocks.get(source)
        src_key = ("tokenizer",) if src_block.kind == "train" and getattr(src_spec, "tokenizer", None) else \
            ("model",) if src_block.kind == "train" else ("policy",)
        yield _err("LMS110", f"{kind} '{name}' continues the weights of '{source}' ({what}), which learned with "
                   f"{_name(x, src_tok)}, but {reads} {_name(x, own)}: {why}", span,
                   help=f"use tokenizer: {src_tok}" if kind == "train" and src_tok in x.validated.resolved.blocks
                   else f"train '{source}' and '{name}' with one tokenizer",
                   labels=[Label(src_block.span_of(src_key), f"'{source}' learned with {_name(x, src_tok)}")])


def _model_tokenizers(x) -> Iterator[tuple[str, str, S.ModelUse, str]]:
    """(kind, stage, model use, tokenizer) of every stage that gives a model its first token
    ids: train stages, and feedback and rl policies that come from no stage (a policy from a
    stage reads that stage's tokenizer, already paired with the model there)."""
    several = len(x.of_kind("tokenizer")) > 1
    for name, spec in x.of_kind("train").items():
        if spec.tokenizer is not None or not several:
            yield "train", name, spec.model, runtime_tokenizer(x, spec.tokenizer)[0]
    for kind in ("feedback", "rl"):
        for name, spec in x.of_kind(kind).items():
            if spec.policy.stage is None:
                yield kind, name, spec.policy, runtime_tokenizer(x, None)[0]


def special_ids_rule(x) -> Iterator[Diagnostic]:
    """LMS111: a model's pad_id and mask_id are not what training uses: objectives pad with the
    tokenizer's pad (else its eos, else 0) and mlm masks with the tokenizer's mask; the model's
    pad_id only fills generations after eos and starts an encoder-decoder's decoder when it
    generates, and mask_id is never read. A value other than the tokenizer's is ignored, or
    makes generation start from another token than training did."""
    seen = set()
    for kind, name, use, tok in _model_tokenizers(x):
        arch = x.models.get(use.model)
        tok_spec = _tokenizer_spec(x, tok)
        if arch is None or tok_spec is None or (use.model, tok) in seen:
            continue
        seen.add((use.model, tok))
        ids = special_ids(tok_spec, _tokenizer_file(x, tok))
        if ids is None:
            continue  # an hf tokenizer without a listed special: LMS114
        spans = x.model_spans(use.model)
        label = [Label(x.block(name).span_of(("tokenizer",) if kind == "train" and
                                              x.validated.blocks[name].tokenizer else
                                              ("model",) if kind == "train" else ("policy",)),
                       f"{kind} '{name}' tokenizes with {_name(x, tok)}")]
        tokw = f"tokenizer {_name(x, tok)}" if tok in x.validated.resolved.blocks else _name(x, tok)
        if arch.pad_id is not None:
            pad = ids.get("pad", ids.get("eos", 0))  # objectives.base.Context.pad_id
            if arch.pad_id != pad:
                if "pad" in ids:
                    how = f"pads with {pad}"
                else:
                    how = f"has no pad token (training pads with {'eos, ' if 'eos' in ids else 'id '}{pad})"
                keep = "" if arch.arch == "encoder_decoder" else ", or remove pad_id"
                yield _err("LMS111", f"model '{use.model}' says pad_id {arch.pad_id}, but {tokw} {how}: training "
                           "pads with the tokenizer's", spans.model("pad_id"),
                           help=f"write `pad_id: {pad}`{keep}", labels=label)
        if arch.mask_id is not None and arch.mask_id != ids.get("mask"):
            how = f"masks with {ids['mask']}" if "mask" in ids else "has no mask token"
            yield _err("LMS111", f"model '{use.model}' says mask_id {arch.mask_id}, but {tokw} {how}: mlm masks "
                       "with the tokenizer's, and mask_id is never read", spans.model("mask_id"),
                       help=f"write `mask_id: {ids['mask']}`, or remove mask_id" if "mask" in ids
                       else "remove mask_id", labels=label)


# ------------------------------------------------------------------------------- model settings

#: positions added once to the token embeddings (from the model-level `position`), not per layer
_EMBEDDED = ("learned", "sinusoidal")


def _overrides(spec: S.ModelSpec) -> Iterator[tuple[tuple, str, object, str]]:
    """(path, what, position, embedded) of every stack block and layer override; `embedded` is
    the kind added at the embeddings of its layers, when not the model's: "learned" inside a stack
    block that has its own table, "own" for that stack block itself."""
    def own(stack) -> bool:  # an encoder-decoder's stack block with its own learned table (BART)
        return spec.arch == "encoder_decoder" and stack.position is not None and stack.position.kind == "learned"

    for site in override_sites(spec):
        if site.is_stack:
            embedded = "own" if own(site.scope) else spec.position.kind
        else:  # a layer override, of the model's or inside a stack block
            embedded = "learned" if site.parent is not spec and own(site.parent) else spec.position.kind
        yield site.path + ("position",), site.where, site.scope.position, embedded


def position_override_rule(x) -> Iterator[Diagnostic]:
    """LMS112: learned and sinusoidal positions are added at the embeddings, from the model's
    `position`; a layer reads rope, alibi or relative positions itself. So `position: learned`
    in a stack or layer override gives those layers no position of their own, and adds none at
    the embeddings: they keep the model-level kind's embedding (learned or sinusoidal) or have
    no position at all. The exception is a stack block of an encoder-decoder, where `position:
    learned` is the stack's own table (BART), and the layers inside it embed with that."""
    for name, spec in x.validated.of_kind("model").items():
        block = x.block(name)
        for path, where, position, model_kind in _overrides(spec):
            if model_kind == "own":  # BART: the stack's own learned table, added at its embeddings
                continue
            if position is not None and position.kind == "none" and model_kind in _EMBEDDED:
                yield _warn("LMS115", f"position: none in {where} of '{name}' removes nothing: the model's "
                            f"{model_kind} positions are added once, at the embeddings, before any layer",
                            block.span_of(path), help="remove it; to give layers no position, set `position: none` "
                            "on the model (and rope, alibi or relative where layers need one)",
                            labels=[Label(block.span_of(("position",)), f"position: {model_kind}")]
                            if "position" in block.fields else [])
                continue
            if position is None or position.kind not in _EMBEDDED or position.kind == model_kind:
                continue
            result = (f"its layers keep the {model_kind} positions of the embeddings" if model_kind in _EMBEDDED
                      else "its layers would have no position at all")
            yield _err("LMS112", f"{position.kind} positions are added once, at the embeddings, from the model's "
                       f"`position` ({model_kind}); {where} of '{name}' cannot set them: {result}",
                       block.span_of(path), help=f"set `position: {position.kind}` on the model, or use rope, alibi, "
                       "relative or none here",
                       labels=[Label(block.span_of(("position",)), f"position: {model_kind}")]
                       if "position" in block.fields else [])


def _causal_decoder(arch) -> bool:
    """A decoder whose first token attends to itself alone in every layer."""
    return arch.arch == "decoder" and all(l.attention.kind in ("causal", "sliding") for l in arch.decoder.layers)


def pool_rule(x) -> Iterator[Diagnostic]:
    """LMS113: `pool: first` reads the first token's hidden state (or the pooler's, itself of
    the first token). In a causal decoder that token attends to nothing after it, so the head
    learns from one token. It runs, uselessly."""
    places = [(m, None, None) for m in x.models]
    for kind in ("train", "judge", "feedback", "rl"):
        for name, spec in x.of_kind(kind).items():
            use = spec.policy if kind in ("feedback", "rl") else spec.model
            if isinstance(use, S.ModelUse) and use.head is not None:
                places.append((use.model, name, "policy" if kind in ("feedback", "rl") else "model"))
    for model, stage, key in places:
        arch = x.models[model] if stage is None else x.arch_of(getattr(x.validated.blocks[stage], key))
        if arch is None or not _causal_decoder(arch):
            continue
        for head in arch.heads:
            if head.kind in ("classifier", "scalar") and head.pool == "first":
                span = x.model_spans(model).model("head") if stage is None else \
                    x.block(stage).span_of((key, "head"))
                yield _warn("LMS113", f"{head.kind}(pool: first) of decoder '{model}' reads the first token, which "
                            "sees no other (causal attention): the head learns from one token", span,
                            help=f"use {head.kind}(pool: last): the last token sees the whole sequence (or pool: mean)")


#: rules on the whole experiment (they read an `Experiment`, see compiler.rules)
# ------------------------------------------------------------------------------- data fields

#: the record keys of a data block, and what reads each (runtime.data.sources)
_FIELD_READERS = {"text": "texts", "prompt": "prompts (sft)", "response": "responses (sft)",
                  "label": "labels (classify)"}


def _fields_read(x, data: str) -> tuple[set[str], list[str]]:
    """(the record keys of data block `data` some block reads, who reads it: "train 't' (clm)")."""
    read: set[str] = set()
    readers: list[str] = []
    for name, spec in x.of_kind("train").items():
        if spec.data != data:
            continue
        kinds = [t.objective.kind for t in spec.objective]
        readers.append(f"train '{name}' ({' + '.join(kinds)})")
        for kind in kinds:
            read |= {"prompt", "response"} if kind == "sft" else {"text", "label"} if kind == "classify" else \
                set() if kind in ("dpo", "bradley_terry") else {"text"}
    for kind in ("feedback", "rl"):
        for name, spec in x.of_kind(kind).items():
            prompts = (spec.rollouts if kind == "rl" else spec).prompts
            if prompts.data == data:
                read.add("text")
                readers.append(f"the prompts of {kind} '{name}'")
    for name, spec in x.of_kind("tokenizer").items():
        if getattr(spec.kind, "train_on", None) == data:
            read.add("text")
            readers.append(f"tokenizer '{name}' (learns its merges)")
    return read, readers


def unread_fields_rule(x) -> Iterator[Diagnostic]:
    """LMS106: a record key a data block names (`text:`, `prompt:`, `response:`, `label:`) that no
    block reading the data reads: clm reads texts, sft prompts and responses, classify texts
    and labels, rollout and feedback prompts and tokenizers texts. Said only of data some block
    reads (unread data is LMS080)."""
    for data in x.of_kind("data"):
        block = x.block(data)
        written = [k for k in _FIELD_READERS if k in block.fields]
        if not written:
            continue
        read, readers = _fields_read(x, data)
        if not readers:
            continue
        for key in written:
            if key not in read:
                yield _warn("LMS106", f"data '{data}' names its {_FIELD_READERS[key]} ({key}), but nothing reads "
                            f"them: it is read by {', '.join(readers)}", block.span_of((key,)),
                            help=f"remove `{key}:`, or read the data with an objective that uses it")


def _softcap_nones(spec: S.ModelSpec) -> Iterator[tuple[tuple, str, float | None, tuple]]:
    """(path, what, the cap above it, the cap's path) of every stack block and layer override
    that may set attention_softcap: the cap above a stack's layer override is the stack's, when
    it sets one."""
    for site in override_sites(spec):
        above, above_path = (site.parent, site.parent_path) if site.parent.attention_softcap is not None else (spec, ())
        yield site.path + ("attention_softcap",), site.where, above.attention_softcap, \
            above_path + ("attention_softcap",)


def softcap_override_rule(x) -> Iterator[Diagnostic]:
    """LMS116: a stack block or layer override inherits every key it leaves unset, and `none`
    reads as unset; so `attention_softcap: none` below a model (or stack) cap leaves those
    layers capped, silently."""
    for name, spec in x.validated.of_kind("model").items():
        block = x.block(name)
        for path, where, above, above_path in _softcap_nones(spec):
            if above is None or path not in block.value_spans:
                continue
            value = spec
            for p in path:  # the validated value: None where `none` was written
                value = value[p] if isinstance(p, int) else getattr(value, p)
            if value is not None:
                continue
            yield _err("LMS116", f"attention_softcap: none in {where} of '{name}' removes nothing: none leaves the "
                       f"key unset, so those layers keep the cap of {_number(above)} set above",
                       block.span_of(path), help="set `attention_softcap` only on the layers (or stack) that have a "
                       "cap, and leave it unset on the model",
                       labels=[Label(block.span_of(above_path), f"attention_softcap: {_number(above)}")])


def _number(x: float) -> str:
    return f"{x:g}"


SETTINGS_RULES = [unread_fields_rule, schedule_rule, evaluation_rule, samples_rule, prompts_rule, tokenizer_continuity_rule,
                  special_ids_rule, position_override_rule, pool_rule, softcap_override_rule]

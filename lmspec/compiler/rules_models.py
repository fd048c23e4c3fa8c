"""Design rules on one model block: shapes that must divide, stacks that must exist, heads
that must not repeat, keys the architecture would not read.

* `MODEL_RULES` look at the block as written and decide whether it lowers: a model that
  passes them always lowers to an `ArchConfig` and builds;
* `ARCH_RULES` look at the lowered model, every default applied.

docs/validation.md explains every rule with an example.
"""

from __future__ import annotations

from typing import Callable, Iterator

from lmspec.compiler import schema as S
from lmspec.compiler.arch import ArchConfig, StackConfig
from lmspec.compiler.graphs import ModelSpans
from lmspec.compiler.resolve import ResolvedBlock
from lmspec.diagnostics import CODES, Diagnostic, Label, Span

__all__ = ["MODEL_RULES", "ARCH_RULES", "model_rules", "MULTIPLE_OF_64_FROM"]

CODES.update({
    "LMS060": "heads do not divide d_model",
    "LMS061": "kv_heads do not divide heads",
    "LMS062": "RoPE needs an even head_dim",
    "LMS063": "a sliding window longer than the context",
    "LMS064": "an encoder-decoder needs both an encoder and a decoder block",
    "LMS065": "a stack without a layer count",
    "LMS066": "encoder/decoder blocks in a model that is not an encoder-decoder",
    "LMS067": "tie_embeddings without a vocabulary head to tie (warning)",
    "LMS068": "relative-position layers of one stack disagree on heads, buckets or max_distance",
    "LMS069": "a head kind listed twice",
    "LMS086": "a model with both an lm and an mlm head",
    "LMS084": "relative-position buckets or max_distance too small for T5's bucketing",
    "LMS085": "prefix attention in the decoder of an encoder-decoder",
    "LMS081": "a size that is not a multiple of 64 (warning)",
    "LMS094": "a pad_id or mask_id outside the model's vocabulary",
    "LMS095": "a model-level key that the model's architecture does not read",
})


def _err(code: str, message: str, span, help: str | None = None, labels: list[Label] | None = None) -> Diagnostic:
    return Diagnostic("error", code, message, span, labels=labels or [], help=help)


def _warn(code: str, message: str, span, help: str | None = None, labels: list[Label] | None = None) -> Diagnostic:
    return Diagnostic("warning", code, message, span, labels=labels or [], help=help)


def _nearest_multiple(value: int, divisor: int) -> int:
    return max(divisor, round(value / divisor) * divisor)


def _an(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _heads_text(arch: ArchConfig) -> str:
    return ", ".join(h.kind for h in arch.heads) or "none"


def _first_layer(stack: StackConfig, kinds: set[str]) -> int | None:
    return next((i for i, l in enumerate(stack.layers) if l.attention.kind in kinds), None)


def _stacks(arch: ArchConfig) -> list[tuple[str, StackConfig]]:
    return [(n, s) for n, s in (("encoder", arch.encoder), ("decoder", arch.decoder)) if s is not None]


# =============================================================================== model rules


def _stack_rules(spec: S.ModelSpec, stack: S.StackSpec | None, block: ResolvedBlock, prefix: tuple,
                 n_layers: int) -> Iterator[Diagnostic]:
    """Per-layer shape rules, applied to each layer's effective keys."""
    overrides = (stack.layer if stack is not None else []) + (spec.layer if not prefix else [])
    for i, o in enumerate(stack.layer if stack is not None else spec.layer):
        if o.first > o.last:
            yield _err("LMS048", f"layer range {o.first}..{o.last} is empty", block.span_of(prefix + ("layer", i)),
                       help=f"write `layer {o.last}..{o.first}`")
        elif o.last >= n_layers:
            yield _err("LMS048", f"layer {o.last} is outside the stack of {n_layers} layers (0..{n_layers - 1})",
                       block.span_of(prefix + ("layer", i)), help=f"the last layer is {n_layers - 1}")

    def pick(key):
        v = getattr(stack, key, None) if stack is not None else None
        return getattr(spec, key) if v is None else v

    seen = set()
    for layer in range(n_layers):
        eff = {k: pick(k) for k in ("heads", "kv_heads", "head_dim", "attention", "position")}
        where = prefix
        for j, o in enumerate(overrides):
            if o.first <= layer <= o.last:
                for k in eff:
                    if getattr(o, k) is not None:
                        eff[k] = getattr(o, k)
                        where = prefix + ("layer", j)
        heads, kv, head_dim = eff["heads"], eff["kv_heads"] or eff["heads"], eff["head_dim"]
        key = (heads, kv, head_dim, str(eff["attention"]), str(eff["position"]), where)
        if key in seen:
            continue
        seen.add(key)
        if head_dim is None and spec.d_model % heads:
            span = block.span_of(where + ("heads",)) if where != prefix else block.span_of(("d_model",))
            yield _err("LMS060", f"heads ({heads}) must divide d_model ({spec.d_model})", span,
                       help=f"try d_model: {_nearest_multiple(spec.d_model, heads)}, or set head_dim")
        if heads % kv:
            yield _err("LMS061", f"kv_heads ({kv}) must divide heads ({heads})", block.span_of(where + ("kv_heads",)),
                       help=f"try kv_heads: {max(d for d in range(1, heads + 1) if heads % d == 0 and d <= kv)}")
        hd = head_dim or (spec.d_model // heads if heads else 0)
        if eff["position"].kind == "rope" and hd % 2:
            yield _err("LMS062", f"RoPE rotates pairs of dimensions, but head_dim is {hd} (odd)",
                       block.span_of(where + ("position",)), help="choose d_model and heads so that head_dim is even")
        att = eff["attention"]
        if att is not None and att.kind == "sliding" and att.window > spec.context:
            yield _err("LMS063", f"sliding window ({att.window}) is longer than the context ({spec.context})",
                       block.span_of(where + ("attention",)), help=f"use a window of at most {spec.context}, or `causal`")


def _duplicate_heads(heads: list | None, span: Span, whose: str) -> Iterator[Diagnostic]:
    kinds = [h.kind for h in heads or [] if h.kind != "none"]
    for kind in dict.fromkeys(k for k in kinds if kinds.count(k) > 1):
        yield _err("LMS069", f"head '{kind}' is listed twice in {whose}", span,
                   help="each kind of head may appear once; one head serves every objective that reads it")
    if "lm" in kinds and "mlm" in kinds:  # both project to the vocabulary; the model's logits come from one
        yield _err("LMS086", f"{whose} has both an lm and an mlm head", span,
                   help="keep one vocabulary head: lm for causal/prefix/seq2seq objectives, mlm for masked LM")


def model_rules(name: str, spec: S.ModelSpec, block: ResolvedBlock) -> Iterator[Diagnostic]:
    if spec.arch == "encoder_decoder":
        for part in ("encoder", "decoder"):
            if getattr(spec, part) is None:
                yield _err("LMS064", f"encoder-decoder '{name}' has no {part} block", block.name_span,
                           help=f"add `{part} {{ layers: {spec.layers or 'N'} }}`")
        if spec.layer:
            yield _err("LMS048", "in an encoder-decoder, put layer overrides inside `encoder { }` or `decoder { }`",
                       block.span_of(("layer", 0)))
        for part in ("encoder", "decoder"):
            stack = getattr(spec, part)
            if stack is not None:
                yield from _stack_rules(spec, stack, block, (part,), stack.layers)
    else:
        for part in ("encoder", "decoder"):
            if getattr(spec, part) is not None:
                yield _err("LMS066", f"'{part} {{ }}' is only for arch: encoder_decoder", block.span_of((part,), key=True),
                           help="set `arch: encoder_decoder`, or move its keys into the model block")
        if spec.layers is None:
            yield _err("LMS065", f"model '{name}' needs 'layers'", block.name_span, help="add `layers: N`")
        else:
            yield from _stack_rules(spec, None, block, (), spec.layers)
    yield from _duplicate_heads(spec.head, block.span_of(("head",)), f"model '{name}'")


def token_id_rule(name: str, spec: S.ModelSpec, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """LMS094: the ids a model names are rows of its embedding."""
    for key in ("pad_id", "mask_id"):
        token = getattr(spec, key)
        if token is not None and token >= spec.vocab:
            yield _err("LMS094", f"{key} ({token}) is outside the vocabulary of model '{name}' (ids 0..{spec.vocab - 1})",
                       block.span_of((key,)), help=f"use an id below {spec.vocab}, or a larger vocab")


def ignored_key_rule(name: str, spec: S.ModelSpec, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """LMS095: in an encoder-decoder each stack has its own layer count and attention, so the
    model-level `layers` is never read and the model-level `attention` reaches the encoder
    only (the decoder stays causal unless `decoder { }` says otherwise)."""
    if spec.arch != "encoder_decoder":
        return
    if spec.layers is not None:
        yield _err("LMS095", f"encoder-decoder '{name}' does not read a model-level 'layers': each stack has its own",
                   block.span_of(("layers",), key=True),
                   help=f"write `encoder {{ layers: {spec.layers} }}` and `decoder {{ layers: {spec.layers} }}`")
    if spec.attention is not None:
        if spec.encoder is not None and spec.encoder.attention is not None:
            what = "'encoder { }' sets its own attention and the decoder never reads the model's, so it is ignored"
        else:
            what = "it reaches the encoder only; the decoder stays causal"
        yield _err("LMS095", f"a model-level 'attention' in encoder-decoder '{name}': {what}",
                   block.span_of(("attention",), key=True),
                   help="set attention inside `encoder { }` (and `decoder { }` for the decoder)")


#: rules on a model block as written; a model with an error here is not lowered
MODEL_RULES: list[Callable[[str, S.ModelSpec, ResolvedBlock], Iterator[Diagnostic]]] = [
    model_rules, token_id_rule, ignored_key_rule,
]


def relative_bias_rule(arch: ArchConfig, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """LMS068: the layers of a stack share one T5 bias table, so (heads, buckets, max_distance)
    agree. LMS084: T5's bucketing keeps half the buckets (a quarter per direction in an
    encoder) for exact distances and spreads the rest logarithmically up to max_distance, so
    at least one exact bucket must remain and max_distance must lie beyond them."""
    spans = ModelSpans(block)
    for stack_name, stack in _stacks(arch):
        first = None
        for i, layer in enumerate(stack.layers):
            if layer.position.kind != "relative":
                continue
            shape = (layer.heads, layer.position.buckets, layer.position.max_distance)
            if first is None:
                first = (i, shape)
                yield from _bucket_rule(stack_name, *shape[1:], spans.layer(stack_name, i, "position"))
                continue
            if shape != first[1]:
                def show(s):
                    return f"{s[0]} heads, {s[1]} buckets, max_distance {s[2]}"
                yield _err(
                    "LMS068",
                    f"the relative-position layers of the {stack_name} share one bias table, but layer {first[0]} has "
                    f"{show(first[1])} and layer {i} has {show(shape)}",
                    spans.layer(stack_name, i, "position", "heads"),
                    help="give every relative-position layer of a stack the same heads and relative(...) arguments",
                    labels=[Label(spans.layer(stack_name, first[0], "position", "heads"),
                                  f"layer {first[0]} is set here")])
                break


def _bucket_rule(stack_name: str, buckets: int, max_distance: int, span: Span | None) -> Iterator[Diagnostic]:
    encoder = stack_name == "encoder"  # the encoder's table distinguishes keys before and after
    exact = (buckets // 2 if encoder else buckets) // 2
    if exact < 1:
        yield _err("LMS084", f"relative positions in the encoder split {buckets} buckets between keys before and "
                   f"after the query, which leaves no bucket for exact distances", span,
                   help="use at least `relative(buckets: 4)`; T5 uses 32")
    elif max_distance <= exact:
        yield _err("LMS084", f"max_distance ({max_distance}) must be larger than the {exact} distances the "
                   f"{stack_name}'s {buckets} buckets keep exact", span,
                   help=f"use a larger max_distance (T5: 128 for 32 buckets), or fewer buckets")


def decoder_prefix_rule(arch: ArchConfig, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """LMS085: in an encoder-decoder the encoder's input is the prefix; the decoder gets no
    prefix lengths (the model passes them to the encoder), so its layers cannot use prefix attention."""
    if arch.arch != "encoder_decoder":
        return
    i = _first_layer(arch.decoder, {"prefix"})
    if i is not None:
        yield _err("LMS085", f"layer {i} of the decoder of encoder-decoder '{arch.name}' has prefix attention, "
                   "but its prefix is the encoder's input", ModelSpans(block).layer("decoder", i, "attention"),
                   help="use `attention: causal` in the decoder; bidirectional layers belong in the encoder")


def tie_rule(arch: ArchConfig, block: ResolvedBlock) -> Iterator[Diagnostic]:
    if arch.tie_embeddings and arch.head("lm") is None and arch.head("mlm") is None:
        yield _warn("LMS067", f"tie_embeddings has nothing to tie: model '{arch.name}' has no lm or mlm head "
                    f"(heads: {_heads_text(arch)})", block.span_of(("tie_embeddings",)),
                    help="remove `tie_embeddings: true`, or add an lm or mlm head")


#: the smallest size the multiple-of-64 warning looks at: below it the matmuls are too
#: small for the padding to pay
MULTIPLE_OF_64_FROM = 1024


def multiple_of_64_rule(arch: ArchConfig, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """GPU matmuls run fastest on sizes that are multiples of 64 (nanoGPT's 50304 for 50257)."""
    spans = ModelSpans(block)

    def up(n: int) -> int:
        return -(-n // 64) * 64

    if arch.vocab >= MULTIPLE_OF_64_FROM and arch.vocab % 64:
        yield _warn("LMS081", f"vocab {arch.vocab} is not a multiple of 64; {up(arch.vocab)} is faster on GPUs",
                    block.span_of(("vocab",)),
                    help=f"write `vocab: {up(arch.vocab)}`: the extra rows are never produced by the tokenizer")
    seen = set()
    for stack_name, stack in _stacks(arch):
        for i, layer in enumerate(stack.layers):
            span = spans.layer(stack_name, i, "d_ff")
            if layer.d_ff >= MULTIPLE_OF_64_FROM and layer.d_ff % 64 and (layer.d_ff, span) not in seen:
                seen.add((layer.d_ff, span))
                yield _warn("LMS081", f"d_ff {layer.d_ff} is not a multiple of 64; {up(layer.d_ff)} is faster on GPUs",
                            span, help=f"write `d_ff: {up(layer.d_ff)}`")


#: rules on a lowered model (they need every default applied); errors drop the model
ARCH_RULES: list[Callable[[ArchConfig, ResolvedBlock], Iterator[Diagnostic]]] = [
    relative_bias_rule, decoder_prefix_rule, tie_rule, multiple_of_64_rule,
]



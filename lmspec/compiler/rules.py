"""Design rules: what the schema cannot see because it involves several keys or blocks.

Two families, each rule a generator of diagnostics with a stable code, a span and a help
line (docs/validation.md explains every one with an example):

* model rules look at one `model` block -- shapes that must divide, stacks that must
  exist, heads that must not repeat -- and decide whether it lowers to an `ArchConfig`;
  a model that passes them always lowers and builds;
* experiment rules look at the stages and the blocks they read, through the experiment
  graph (`compiler.graphs`): does the objective fit the architecture, does the vocabulary
  cover the tokenizer, does `from STAGE` name a stage that trained this model, ...

`check(validated) -> (diagnostics, models)` runs them all and returns the lowered models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import networkx as nx

from lmspec.compiler.rules_stages import STAGE_RULES
from lmspec.compiler import schema as S
from lmspec.compiler.arch import GATED_ACTIVATIONS, ArchConfig, StackConfig
from lmspec.compiler.graphs import ModelSpans, experiment_graph, stage_cycles
from lmspec.compiler.lower import lower_model
from lmspec.compiler.resolve import ResolvedBlock
from lmspec.compiler.schema_check import ValidatedSpec
from lmspec.diagnostics import CODES, Diagnostic, Label, Span

__all__ = ["check", "MODEL_RULES", "ARCH_RULES", "EXPERIMENT_RULES", "tokenizer_vocab_size", "shape_difference", "Experiment"]

CODES.update({
    # one model block
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
    # stages and the blocks they read
    "LMS070": "the objective does not fit the model's architecture",
    "LMS071": "the objective needs special tokens the tokenizer does not have",
    "LMS072": "the objective needs another kind of data",
    "LMS073": "the model's vocabulary is smaller than its tokenizer's",
    "LMS074": "a stage does not say which of several tokenizers it uses",
    "LMS075": "a stage reference names a stage that trained a model of other shapes",
    "LMS076": "an rl reward is neither a reward model nor a judge",
    "LMS077": "a judge's model has no head its score can read",
    "LMS078": "a policy that cannot generate text",
    # warnings
    "LMS080": "a block no stage uses (warning)",
    "LMS081": "a size that is not a multiple of 64 (warning)",
    "LMS082": "dropout in an rl policy (warning)",
    "LMS083": "a policy or judge without trained weights (warning)",
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
            if getattr(spec, part) is None and spec.layers is None:
                yield _err("LMS064", f"encoder-decoder '{name}' has no {part} block", block.name_span,
                           help=f"add `{part} {{ layers: N }}`")
        if spec.layer:
            yield _err("LMS048", "in an encoder-decoder, put layer overrides inside `encoder { }` or `decoder { }`",
                       block.span_of(("layer", 0)))
        for part in ("encoder", "decoder"):
            stack = getattr(spec, part)
            n = stack.layers if stack is not None else spec.layers
            if n is not None:
                yield from _stack_rules(spec, stack, block, (part,), n)
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


#: rules on a model block as written; a model with an error here is not lowered
MODEL_RULES: list[Callable[[str, S.ModelSpec, ResolvedBlock], Iterator[Diagnostic]]] = [model_rules]


def _stacks(arch: ArchConfig) -> list[tuple[str, StackConfig]]:
    return [(n, s) for n, s in (("encoder", arch.encoder), ("decoder", arch.decoder)) if s is not None]


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


# =============================================================================== experiment


def tokenizer_vocab_size(spec: S.TokenizerSpec) -> int | None:
    """How many ids a tokenizer produces (what `tok.vocab_size` reads); None for hf(...),
    known only once its file is read."""
    if spec.kind.kind == "bytes":
        return 256 + len(spec.specials) + spec.sentinels
    if spec.kind.kind == "bpe":
        return spec.kind.vocab
    return None


@dataclass
class Experiment:
    """What the experiment rules read: the validated spec, its lowered models, its graph."""

    validated: ValidatedSpec
    models: dict[str, ArchConfig]
    graph: nx.DiGraph
    _archs: dict = field(default_factory=dict)

    def block(self, name: str) -> ResolvedBlock:
        return self.validated.resolved.blocks[name]

    def of_kind(self, kind: str) -> dict:
        return self.validated.of_kind(kind)

    def arch_of(self, use: S.ModelUse) -> ArchConfig | None:
        """The model a `model:`/`policy:` value means, `with head` applied; None when the
        model block had errors (already reported)."""
        if use.model not in self.models:
            return None
        if use.head is None:
            return self.models[use.model]
        kinds = [h.kind for h in use.head if h.kind != "none"]
        if len(set(kinds)) != len(kinds):
            return None  # LMS069, reported on the stage
        key = (use.model, repr(use.head))
        if key not in self._archs:
            self._archs[key] = lower_model(use.model, self.validated.blocks[use.model], use.head)
        return self._archs[key]

    def produced(self, stage: str) -> tuple[S.ModelUse, ArchConfig | None] | None:
        """The model a train or rl stage writes weights for."""
        spec = self.validated.blocks.get(stage)
        kind = self.block(stage).kind if stage in self.validated.resolved.blocks else None
        if spec is None or kind not in ("train", "rl"):
            return None
        use = spec.model if kind == "train" else spec.policy
        return use, self.arch_of(use)

    def tokenizer_of(self, stage: S.TrainSpec) -> str | None:
        if stage.tokenizer is not None:
            return stage.tokenizer
        tokenizers = list(self.of_kind("tokenizer"))
        return tokenizers[0] if len(tokenizers) == 1 else None

    def model_spans(self, model: str) -> ModelSpans:
        return ModelSpans(self.validated.resolved.blocks.get(model))


# ------------------------------------------------------------------------------- objective fit


def _first_layer(stack: StackConfig, kinds: set[str]) -> int | None:
    return next((i for i, l in enumerate(stack.layers) if l.attention.kind in kinds), None)


_HEAD_ARTICLE = {"lm": "an", "mlm": "an", "nsp": "an", "classifier": "a", "scalar": "a"}


def _a_head(kind: str) -> str:
    return f"{_HEAD_ARTICLE.get(kind, 'a')} {kind} head"


@dataclass
class _Misfit:
    code: str
    message: str
    label_span: Span | None
    label: str
    help: str


@dataclass
class _TrainView:
    """One train stage as the objective rules see it."""

    arch: ArchConfig
    model: str  # the model block's name
    spans: ModelSpans  # spans inside the model block
    heads_span: Span | None  # where the heads come from: the stage's `with head`, or the model
    heads_label: str
    overridden: bool  # `with head ...` replaced the model's heads
    kinds: set[str]  # every term of the objective
    data_kind: str  # "data" or "feedback"
    data_name: str
    data_spec: object
    tok_name: str | None
    tok_spec: S.TokenizerSpec | None
    tok_block: ResolvedBlock | None
    seq_len: int

    def tok_span(self, key: str) -> Span | None:
        if self.tok_block is None:
            return None
        return self.tok_block.span_of((key,)) if key in self.tok_block.fields else self.tok_block.name_span


def _fit(kind: str, obj, v: _TrainView) -> Iterator[_Misfit]:
    """What is wrong with training `v.arch` on objective `kind` (one term of the objective)."""
    arch, model, spans = v.arch, v.model, v.spans
    what = f"objective '{kind}'"
    arch_label = (spans.model("arch"), f"'{model}' is {_an(arch.arch)}")

    def attention_label(stack_name: str, i: int) -> tuple[Span | None, str]:
        layer = getattr(arch, stack_name).layers[i]
        return spans.layer(stack_name, i, "attention"), f"layer {i} has {layer.attention.kind} attention"

    def needs_head(head: str, example: str) -> Iterator[_Misfit]:
        if arch.head(head) is None:
            whose = f"'{model}' with head {_heads_text(arch)}" if v.overridden else f"model '{model}'"
            fix = (f"write `model: {model} with head {head}`" if v.overridden else
                   f"add {example} to the model's `head:`, or write `model: {model} with head {head}`")
            yield _Misfit("LMS070", f"{what} needs {_a_head(head)}, but {whose} has heads: {_heads_text(arch)}",
                          v.heads_span, v.heads_label, fix)

    def decoder_causal(allow_prefix: bool, objective_help: str) -> Iterator[_Misfit]:
        """A decoder whose layers never see the tokens they predict."""
        if arch.arch != "decoder":
            yield _Misfit("LMS070", f"{what} needs a decoder, but model '{model}' is {_an(arch.arch)}",
                          *arch_label, objective_help)
            return
        bad = {"bidirectional"} | (set() if allow_prefix else {"prefix"})
        i = _first_layer(arch.decoder, bad)
        if i is not None:
            seen = arch.decoder.layers[i].attention.kind
            reason = ("it would see the tokens it predicts" if seen == "bidirectional"
                      else "prefix attention is for prefix_lm")
            yield _Misfit("LMS070", f"{what} needs causal attention, but layer {i} of '{model}' has {seen} "
                          f"attention ({reason})", *attention_label("decoder", i),
                          "use `attention: causal` (or sliding)" + (", or add prefix_lm to the objective"
                                                                    if seen == "prefix" else ""))

    def text_data() -> Iterator[_Misfit]:
        if v.data_kind == "feedback":
            yield _Misfit("LMS072", f"{what} reads text, but '{v.data_name}' is a feedback block (preference pairs)",
                          None, "", "train on a data block, or use bradley_terry or dpo with feedback data")

    def preference_data() -> Iterator[_Misfit]:
        if v.data_kind != "feedback":
            yield _Misfit("LMS072", f"{what} learns from preference pairs, but '{v.data_name}' is a data block",
                          None, "", "set `data:` to a feedback block")

    if kind == "clm":
        yield from decoder_causal("prefix_lm" in v.kinds, "train an encoder with mlm, an encoder-decoder with "
                                  "span_corruption, or use `arch: decoder`")
        yield from needs_head("lm", "lm")
        yield from text_data()
    elif kind == "prefix_lm":
        if arch.arch != "decoder" or _first_layer(arch.decoder, {"prefix"}) is None:
            label = arch_label if arch.arch != "decoder" else (spans.model("attention"),
                                                               f"'{model}' has no prefix layer")
            yield _Misfit("LMS070", f"{what} needs a decoder with prefix attention, but model '{model}' is "
                          + ("a decoder without it" if arch.arch == "decoder" else _an(arch.arch)), *label,
                          "use `arch: decoder` with `attention: prefix`")
        else:
            yield from decoder_causal(True, "")
        yield from needs_head("lm", "lm")
        yield from text_data()
    elif kind == "mlm":
        if arch.arch != "encoder":
            yield _Misfit("LMS070", f"{what} needs bidirectional attention (an encoder), but model '{model}' is "
                          f"{_an(arch.arch)}", *arch_label,
                          "use `arch: encoder`, or train a decoder with clm" if arch.arch == "decoder"
                          else "train an encoder-decoder with span_corruption")
        else:
            i = _first_layer(arch.encoder, {"causal", "sliding", "prefix"})
            if i is not None:
                yield _Misfit("LMS070", f"{what} needs bidirectional attention, but layer {i} of '{model}' has "
                              f"{arch.encoder.layers[i].attention.kind} attention", *attention_label("encoder", i),
                              "use `attention: bidirectional`")
        yield from needs_head("mlm", "mlm")
        if v.tok_spec is not None and "mask" not in v.tok_spec.specials:
            yield _Misfit("LMS071", f"{what} needs a mask token, but tokenizer '{v.tok_name}' has none",
                          v.tok_span("specials"), f"specials of '{v.tok_name}'",
                          f"add mask to `specials:` of tokenizer '{v.tok_name}'")
        yield from text_data()
    elif kind == "nsp":
        if arch.segments < 2:
            yield _Misfit("LMS070", f"{what} needs 2 segments (token types), but model '{model}' has {arch.segments}",
                          spans.model("segments"), f"segments: {arch.segments}" if spans.has("segments")
                          else f"'{model}' sets no segments", "add `segments: 2` to the model")
        if not arch.pooler:
            yield _Misfit("LMS070", f"{what} needs a pooler, but model '{model}' has none", spans.model("pooler"),
                          "pooler: false" if spans.has("pooler") else f"'{model}' has no pooler",
                          "add `pooler: true` to the model")
        yield from needs_head("nsp", "nsp (e.g. `head: [mlm, nsp]`)")
        yield from text_data()
    elif kind == "span_corruption":
        prefix_decoder = arch.arch == "decoder" and _first_layer(arch.decoder, {"prefix"}) is not None
        if arch.arch != "encoder_decoder" and not prefix_decoder:
            yield _Misfit("LMS070", f"{what} needs an encoder-decoder or a decoder with prefix attention, but model "
                          f"'{model}' is {_an(arch.arch)}" + (" without it" if arch.arch == "decoder" else ""),
                          *arch_label, "use `arch: encoder_decoder`, or a decoder with `attention: prefix`")
        elif prefix_decoder:
            yield from decoder_causal(True, "")
        else:  # the decoder of an encoder-decoder predicts the spans left to right
            i = _first_layer(arch.decoder, {"bidirectional"})
            if i is not None:
                yield _Misfit("LMS070", f"{what} needs a causal decoder, but layer {i} of the decoder of '{model}' "
                              "has bidirectional attention (it would see the tokens it predicts)",
                              *attention_label("decoder", i), "use `attention: causal` in `decoder { }`")
        yield from needs_head("lm", "lm")
        if v.tok_spec is not None:
            # T5's arithmetic: round(T * noise) noise tokens in spans of mean_span tokens,
            # each span replaced by its own sentinel
            spans_needed = max(1, round(round(v.seq_len * obj.noise) / obj.mean_span))
            if v.tok_spec.sentinels == 0:
                yield _Misfit("LMS071", f"{what} needs sentinel tokens, but tokenizer '{v.tok_name}' has none",
                              v.tok_span("sentinels"), f"tokenizer '{v.tok_name}'",
                              f"add `sentinels: {max(spans_needed, 100)}` to tokenizer '{v.tok_name}' "
                              "(T5's <extra_id_n>)")
            elif v.tok_spec.sentinels < spans_needed:
                yield _Misfit("LMS071", f"{what} cuts about {spans_needed} spans from {v.seq_len} tokens, but "
                              f"tokenizer '{v.tok_name}' has {v.tok_spec.sentinels} sentinels",
                              v.tok_span("sentinels"), f"sentinels of '{v.tok_name}'",
                              f"use `sentinels: {spans_needed}` or more")
        yield from text_data()
    elif kind == "sft":
        yield from decoder_causal(True, "sft fine-tunes a decoder; use `arch: decoder`")
        yield from needs_head("lm", "lm")
        yield from text_data()
    elif kind == "classify":
        yield from needs_head("classifier", "classifier(classes: N)")
        if v.data_kind == "feedback":
            yield from text_data()
        elif v.data_spec is not None:
            explicit = "label" in obj.model_fields_set
            label = v.data_spec.label
            if label is None and not explicit:
                yield _Misfit("LMS072", f"{what} needs to know which field holds the label, but data "
                              f"'{v.data_name}' names none", None, "",
                              f"add `label: \"field\"` to data '{v.data_name}', or write `classify(label: \"field\")`")
            elif explicit and label is not None and label != obj.label:
                yield _Misfit("LMS072", f"{what} reads label field '{obj.label}', but data '{v.data_name}' names "
                              f"its label '{label}'", None, "", "make them agree, or drop one of them")
    elif kind == "bradley_terry":
        yield from needs_head("scalar", "scalar")
        yield from preference_data()
    elif kind == "dpo":
        if arch.arch != "decoder":
            yield _Misfit("LMS070", f"{what} needs a decoder, but model '{model}' is {_an(arch.arch)}", *arch_label,
                          "dpo fine-tunes a decoder's lm head; use `arch: decoder`")
        yield from needs_head("lm", "lm")
        yield from preference_data()


def objective_rule(x: Experiment) -> Iterator[Diagnostic]:
    """LMS070-LMS072: each term of a train stage's objective fits its model, tokenizer, data."""
    for name, stage in x.of_kind("train").items():
        arch = x.arch_of(stage.model)
        if arch is None:
            continue
        block = x.block(name)
        model = stage.model.model
        spans = x.model_spans(model)
        overridden = stage.model.head is not None
        if overridden:
            heads_span, heads_label = block.span_of(("model", "head")), "the stage replaces the heads here"
        elif spans.has("head"):
            heads_span, heads_label = spans.model("head"), f"heads of '{model}'"
        else:
            heads_span, heads_label = spans.model(), f"'{model}' has the default head ({_heads_text(arch)})"
        tok_name = x.tokenizer_of(stage)
        tok_spec = x.validated.blocks.get(tok_name) if tok_name else None
        view = _TrainView(
            arch=arch, model=model, spans=spans, heads_span=heads_span, heads_label=heads_label,
            overridden=overridden, kinds={t.objective.kind for t in stage.objective},
            data_kind=x.block(stage.data).kind, data_name=stage.data, data_spec=x.validated.blocks.get(stage.data),
            tok_name=tok_name, tok_spec=tok_spec, tok_block=x.block(tok_name) if tok_spec is not None else None,
            seq_len=min(stage.seq_len or arch.context, arch.context))
        for term in stage.objective:
            for m in _fit(term.objective.kind, term.objective, view):
                labels = [Label(m.label_span, m.label)] if m.label_span is not None else []
                if m.code == "LMS072":
                    labels = [Label(block.span_of(("data",)), f"'{stage.data}' is read here")]
                yield _err(m.code, m.message, block.span_of(("objective",)), help=m.help, labels=labels)


# ------------------------------------------------------------------------------- vocabulary


def vocab_rule(x: Experiment) -> Iterator[Diagnostic]:
    """LMS073: the model's embedding has a row for every id its tokenizer produces.
    LMS074: with several tokenizers, a train stage must name one."""
    tokenizers = list(x.of_kind("tokenizer"))
    seen = set()
    for name, stage in x.of_kind("train").items():
        block = x.block(name)
        if stage.tokenizer is None and len(tokenizers) > 1:
            yield _err("LMS074", f"train '{name}' does not say which tokenizer it uses; the spec has "
                       f"{len(tokenizers)}: {', '.join(tokenizers)}", block.name_span,
                       help=f"add `tokenizer: {tokenizers[0]}` (or another) to '{name}'")
            continue
        arch = x.arch_of(stage.model)
        tok = x.tokenizer_of(stage)
        tok_spec = x.validated.blocks.get(tok) if tok else None
        if arch is None or tok_spec is None:
            continue
        size = tokenizer_vocab_size(tok_spec)
        if size is None or arch.vocab >= size or (stage.model.model, tok) in seen:
            continue
        seen.add((stage.model.model, tok))
        model_block = x.block(stage.model.model)
        span = block.span_of(("tokenizer",)) if stage.tokenizer is not None else block.span_of(("model",))
        yield _err("LMS073", f"model '{stage.model.model}' has vocab {arch.vocab}, but tokenizer '{tok}' produces "
                   f"{size} ids", model_block.span_of(("vocab",)),
                   help=f"write `vocab: {tok}.vocab_size` (or any number >= {size})",
                   labels=[Label(span, f"train '{name}' pairs them here")])


# ------------------------------------------------------------------------------- stage references

#: ArchConfig fields that decide the shapes of the body's weights (heads are replaceable)
_BODY_FIELDS = ("arch", "vocab", "d_model", "segments", "embed_norm")
_LAYER_FIELDS = ("heads", "kv_heads", "head_dim", "d_ff", "bias", "norm", "cross_attention")


def _shapes(arch: ArchConfig) -> dict[str, object]:
    """Everything a checkpoint's tensor shapes depend on, flattened: "d_model", "decoder layers",
    "decoder layer 3 d_ff", ... Heads (and the pooler) are left out: `with head` replaces them."""
    out: dict[str, object] = {f: getattr(arch, f) for f in _BODY_FIELDS}
    out["position"] = arch.position.kind
    if arch.position.kind == "learned":
        out["context (learned positions)"] = arch.context
    for stack_name, stack in _stacks(arch):
        out[f"{stack_name} layers"] = stack.n_layers
        out[f"{stack_name} final_norm"] = stack.final_norm
        for i, layer in enumerate(stack.layers):
            for f in _LAYER_FIELDS:
                out[f"{stack_name} layer {i} {f}"] = getattr(layer, f)
            out[f"{stack_name} layer {i} gated"] = layer.activation in GATED_ACTIVATIONS
            if layer.position.kind == "relative":
                out[f"{stack_name} layer {i} relative"] = (layer.position.buckets, layer.position.max_distance)
    return out


def shape_difference(a: ArchConfig, b: ArchConfig) -> str | None:
    """The first shape-deciding difference between two models, as "d_model 128 vs 256"; None if
    weights trained for one load into the other."""
    sa, sb = _shapes(a), _shapes(b)
    for key in list(sa) + [k for k in sb if k not in sa]:
        va, vb = sa.get(key, "none"), sb.get(key, "none")
        if va != vb:
            return f"{key}: {_show(va)} vs {_show(vb)}"
    return None


def _show(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _model_uses(x: Experiment) -> Iterator[tuple[str, str, S.ModelUse]]:
    """Every (block, key, model use) of the spec: `model:` of train stages and judges,
    `policy:` of feedback and rl blocks."""
    for name, spec in x.validated.blocks.items():
        kind = x.block(name).kind
        if kind in ("train", "judge") and isinstance(spec.model, S.ModelUse):
            yield name, "model", spec.model
        elif kind in ("feedback", "rl"):
            yield name, "policy", spec.policy


def _references(x: Experiment) -> Iterator[tuple[str, str, str, S.ModelUse, tuple]]:
    """Every (block, source stage, label, model it must fit, value path) of the spec."""
    for name, key, use in _model_uses(x):
        if use.stage is not None:
            yield name, use.stage, "from", use, (key,)
    for name, spec in x.of_kind("train").items():
        if isinstance(spec.init, str):
            yield name, spec.init, "init", spec.model, ("init",)
    for name, spec in x.of_kind("rl").items():
        if spec.reference is not None:
            yield name, spec.reference, "reference", spec.policy, ("reference",)


def stage_heads_rule(x: Experiment) -> Iterator[Diagnostic]:
    """LMS069 for `with head [...]` on a stage, a judge or a policy."""
    for name, key, use in _model_uses(x):
        if use.head is not None:
            kind = x.block(name).kind
            yield from _duplicate_heads(use.head, x.block(name).span_of((key, "head")), f"{kind} '{name}'")


def stage_reference_rule(x: Experiment) -> Iterator[Diagnostic]:
    """LMS075: `M from S`, `init: S` and `reference: S` name a stage that trained M (or a model
    with M's shapes), so its weights load."""
    for name, source, label, use, path in _references(x):
        produced = x.produced(source)
        target = x.models.get(use.model)  # the body: heads do not matter
        if produced is None or produced[1] is None or target is None:
            continue
        trained, arch = produced
        if trained.model == use.model:
            continue
        diff = shape_difference(arch, target)
        if diff is None:
            continue
        what = {"from": f"'{use.model} from {source}'", "init": f"init: {source}",
                "reference": f"reference: {source}"}[label]
        src_kind = x.block(source).kind
        src_key = ("model",) if src_kind == "train" else ("policy",)
        yield _err("LMS075", f"{what} needs weights for '{use.model}', but {src_kind} '{source}' trains "
                   f"'{trained.model}', whose shapes differ ({diff})", x.block(name).span_of(path),
                   help=f"name a stage that trains '{use.model}' (or a model with the same shapes)",
                   labels=[Label(x.block(source).span_of(src_key), f"'{source}' trains '{trained.model}' here")])


def reward_rule(x: Experiment) -> Iterator[Diagnostic]:
    """LMS076: an rl reward is a judge, or a train stage whose model has a scalar head."""
    for name, rl in x.of_kind("rl").items():
        produced = x.produced(rl.reward)  # None for a judge: it scores directly
        if produced is None or produced[1] is None:
            continue
        use, arch = produced
        if arch.head("scalar") is None:
            yield _err("LMS076", f"reward '{rl.reward}' is not a reward model: it trains '{use.model}' with heads: "
                       f"{_heads_text(arch)}", x.block(name).span_of(("reward",)),
                       help="a reward stage trains a scalar head (e.g. `model: gpt with head scalar, "
                       "objective: bradley_terry`); or name a judge for direct RLAIF",
                       labels=[Label(x.block(rl.reward).span_of(("model",)), f"'{rl.reward}' trains this model")])


def judge_rule(x: Experiment) -> Iterator[Diagnostic]:
    """LMS077: a judge's score reads a head its model has, trained by the stage it comes from.
    LMS083: a judge without trained weights (warning)."""
    for name, judge in x.of_kind("judge").items():
        if not isinstance(judge.model, S.ModelUse):
            continue  # hf("dir"): known only when loaded
        block = x.block(name)
        arch = x.arch_of(judge.model)
        if arch is None:
            continue
        score = judge.score
        need = "scalar" if score.kind == "scalar" else "classifier"
        model = judge.model.model
        span = block.span_of(("score",))
        head = arch.head(need)
        if head is None:
            other = "use `score: scalar` with a scalar head" if need == "classifier" else \
                "use `score: probability(class: 1)` with a classifier head"
            yield _err("LMS077", f"judge '{name}' scores with {score.kind}, which reads {_a_head(need)}, but model "
                       f"'{model}' has heads: {_heads_text(arch)}", span,
                       help=f"give '{model}' a {need} head, or {other}",
                       labels=[Label(block.span_of(("model",)), "the judge's model")])
            continue
        if need == "classifier" and score.cls >= head.classes:
            yield _err("LMS077", f"judge '{name}' reads class {score.cls}, but the classifier of '{model}' has "
                       f"{head.classes} classes (0..{head.classes - 1})", span,
                       help=f"choose a class below {head.classes}")
            continue
        stage = judge.model.stage
        if stage is None:
            yield _warn("LMS083", f"judge '{name}' uses model '{model}' without trained weights: its scores are noise",
                        block.span_of(("model",)), help=f"write `model: {model} from STAGE`, naming the stage that "
                        f"trains its {need} head")
            continue
        produced = x.produced(stage)
        if produced is not None and produced[1] is not None and produced[1].head(need) is None:
            yield _err("LMS077", f"judge '{name}' reads a {need} head, but '{stage}' trains '{produced[0].model}' "
                       f"with heads: {_heads_text(produced[1])}, so that head would be untrained",
                       block.span_of(("model",)), help=f"take the model from a stage that trains a {need} head "
                       "(objective classify or bradley_terry)")


def policy_rule(x: Experiment) -> Iterator[Diagnostic]:
    """LMS078: feedback and rl policies generate text: a decoder (or encoder-decoder) with an lm
    head. LMS082: dropout in an rl policy (warning). LMS083: a policy without trained weights."""
    for kind in ("feedback", "rl"):
        for name, spec in x.of_kind(kind).items():
            use = spec.policy
            arch = x.arch_of(use)
            if arch is None:
                continue
            block = x.block(name)
            span = block.span_of(("policy",))
            spans = x.model_spans(use.model)
            if arch.arch == "encoder":
                yield _err("LMS078", f"the policy of {kind} '{name}' must generate text, but '{use.model}' is an "
                           "encoder", span, help="use a decoder (or an encoder-decoder) with an lm head",
                           labels=[Label(spans.model("arch"), f"'{use.model}' is an encoder")])
                continue
            if arch.head("lm") is None:
                yield _err("LMS078", f"the policy of {kind} '{name}' must generate text, but '{use.model}' has no lm "
                           f"head (heads: {_heads_text(arch)})", span, help="give the policy's model an lm head",
                           labels=[Label(spans.model("head"), f"heads of '{use.model}'")] if spans.has("head") else [])
                continue
            if use.stage is None:
                yield _warn("LMS083", f"the policy of {kind} '{name}' has no trained weights: '{use.model}' samples "
                            "random tokens", span, help=f"write `{use.model} from STAGE`, naming the stage that "
                            f"pretrains it")
            if kind == "rl":
                dropped = [(l.dropout, spans.layer(s, i, "dropout")) for s, stack in _stacks(arch)
                           for i, l in enumerate(stack.layers) if l.dropout > 0]
                if arch.dropout > 0:  # the embeddings' dropout
                    dropped.insert(0, (arch.dropout, spans.model("dropout")))
                if dropped:
                    rate, where = max(dropped, key=lambda d: d[0])
                    yield _warn("LMS082", f"the policy of rl '{name}' has dropout {rate:g}: the log-probabilities "
                                "of a rollout and of its update then disagree, which biases the policy ratio and the KL",
                                span, help=f"use a copy without dropout: `model {use.model}_rl extends {use.model} "
                                "{ dropout: 0 }`", labels=[Label(where, "dropout is set here")])


# ------------------------------------------------------------------------------- unused blocks



def _extended(x: Experiment) -> set[str]:
    """Blocks some other block extends (a base model is used even if no stage names it)."""
    return {b.extends for b in x.validated.resolved.blocks.values() if b.extends}


def unused_rule(x: Experiment) -> Iterator[Diagnostic]:
    """LMS080: a data, tokenizer, model or judge block that no stage reads (only in specs that
    have stages: a file of model definitions is a library, not an experiment)."""
    g = x.graph
    if not x.validated.ok or not any(g.nodes[n]["kind"] in ("train", "feedback", "rl") for n in g):
        return
    extended = _extended(x)
    tokenizers = [n for n in g if g.nodes[n]["kind"] == "tokenizer"]
    if len(tokenizers) == 1:
        extended.update(tokenizers)  # the only tokenizer: feedback and rl stages tokenize with it too
    elif any(t.tokenizer is None for t in x.of_kind("train").values()):
        extended.update(tokenizers)  # LMS074 asks which one; "unused" would be a guess
    for n, data in g.nodes(data=True):
        kind = data["kind"]
        if kind in ("data", "tokenizer", "model", "judge") and g.out_degree(n) == 0 and n not in extended:
            yield _warn("LMS080", f"{kind} '{n}' is not used by any stage", data["span"],
                        help=f"remove it, or use it in a stage")


#: rules on the whole experiment
EXPERIMENT_RULES: list[Callable[[Experiment], Iterator[Diagnostic]]] = [
    stage_heads_rule, objective_rule, vocab_rule, stage_reference_rule, reward_rule, judge_rule, policy_rule,
    unused_rule, *STAGE_RULES,
]


# =============================================================================== check


def check(validated: ValidatedSpec) -> tuple[list[Diagnostic], dict[str, ArchConfig]]:
    """Every design rule over a validated spec; the lowered models that passed the model rules."""
    diagnostics: list[Diagnostic] = []
    models: dict[str, ArchConfig] = {}
    for name, spec in validated.of_kind("model").items():
        block = validated.resolved.blocks[name]
        found = [d for rule in MODEL_RULES for d in rule(name, spec, block)]
        if not any(d.is_error for d in found):
            arch = lower_model(name, spec)
            found += [d for rule in ARCH_RULES for d in rule(arch, block)]
            if not any(d.is_error for d in found):
                models[name] = arch
        diagnostics += found
    graph = experiment_graph(validated)
    diagnostics += stage_cycles(graph)
    x = Experiment(validated, models, graph)
    for rule in EXPERIMENT_RULES:
        diagnostics += rule(x)
    return diagnostics, models

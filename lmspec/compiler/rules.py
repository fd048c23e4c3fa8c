"""Design rules: what the schema cannot see because it involves several keys or blocks.

Two families, each rule a generator of diagnostics with a stable code, a span and a help
line (docs/validation.md explains every one with an example):

* model rules (`compiler.rules_models`) look at one `model` block -- shapes that must
  divide, stacks that must exist, heads that must not repeat -- and decide whether it lowers
  to an `ArchConfig`; a model that passes them always lowers and builds;
* experiment rules look at the stages and the blocks they read, through the experiment
  graph (`compiler.graphs`): does the objective fit the architecture, does the vocabulary
  cover the tokenizer, does `from STAGE` name a stage that trained this model, ...
  (`compiler.rules_stages`: what a stage meets at run time; `compiler.rules_tokens`:
  tokenizer sizes and token ids; `compiler.rules_settings`: settings the runtime would
  ignore, cut or override; `compiler.rules_parallel`: memory per device and batches split
  over devices).

`check(validated) -> (diagnostics, models)` runs them all and returns the lowered models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from lmspec.compiler import schema as S
from lmspec.compiler.arch import GATED_ACTIVATIONS, ArchConfig
from lmspec.compiler.graphs import FlowGraph, ModelSpans, flow_graph, stage_cycles
from lmspec.compiler.lower import lower_model
from lmspec.compiler.resolve import ResolvedBlock, collapse_inherited
from lmspec.compiler.rules_models import (
    ARCH_RULES, MODEL_RULES, _an, _duplicate_heads, _err, _first_layer, _heads_text, _stacks, _warn,
)
from lmspec.compiler.rules_judges import JUDGE_RULES
from lmspec.compiler.rules_parallel import PARALLEL_RULES
from lmspec.compiler.rules_settings import SETTINGS_RULES
from lmspec.compiler.rules_stages import STAGE_RULES
from lmspec.compiler.rules_tokens import TOKEN_RULES, tokenizer_vocab_size, unknown_value_rule  # noqa: F401 - re-exported
from lmspec.compiler.rules_tokens import span_counts
from lmspec.compiler.schema_check import ValidatedSpec
from lmspec.diagnostics import CODES, Diagnostic, Label, Span

__all__ = ["check", "MODEL_RULES", "ARCH_RULES", "EXPERIMENT_RULES", "tokenizer_vocab_size", "shape_difference", "Experiment"]

CODES.update({
    # stages and the blocks they read
    "LMS070": "the objective does not fit the model's architecture",
    "LMS071": "the objective needs special tokens the tokenizer does not have",
    "LMS072": "the objective needs another kind of data",
    "LMS075": "a stage reference names a stage that trained a model of other shapes",
    "LMS076": "an rl reward is neither a reward model nor a judge",
    "LMS077": "a judge's model has no head its score can read",
    "LMS078": "a policy that cannot generate text",
    # warnings
    "LMS080": "a block no stage uses (warning)",
    "LMS082": "dropout in an rl policy (warning)",
    "LMS083": "a policy or judge without trained weights (warning)",
})


# =============================================================================== experiment


@dataclass
class Experiment:
    """What the experiment rules read: the validated spec, its lowered models, its graph."""

    validated: ValidatedSpec
    models: dict[str, ArchConfig]
    graph: FlowGraph
    hardware: object = None  # rules_parallel.Hardware: `lmspec check --devices N --device-memory SIZE`
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
    vocab_follows: bool  # the model's vocab is written from the tokenizer's (`tok.vocab_size`)

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
            rival = {"lm": "mlm", "mlm": "lm"}.get(head)  # a model has one vocabulary head (LMS086)
            if v.overridden:
                fix = f"write `model: {model} with head {head}`"
            elif rival is not None and arch.head(rival) is not None:
                where = (f"replace {rival} with {head} in the model's `head:`" if spans.has("head") else
                         f"set `head: {head}` in the model (its default is {rival})")
                fix = f"{where}, or write `model: {model} with head {head}`"
            else:
                fix = f"add {example} to the model's `head:`, or write `model: {model} with head {head}`"
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
                          f"add mask to `specials:` of tokenizer '{v.tok_name}'" + _and_vocab(v, 1))
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
        prefix = arch.arch == "decoder"  # the runtime's batch layout, whatever LMS070 said of the model
        # the runtime's arithmetic (T5's): round(W * noise) noise tokens in spans of mean_span, each
        # replaced by its own sentinel, in the longest window W whose corrupted input (in a prefix-LM
        # decoder, with its target) fits seq_len; None when none fits (LMS089)
        counts = span_counts(v.seq_len, obj.noise, obj.mean_span, prefix)
        if v.tok_spec is not None and counts is not None:
            window, _, spans_needed = counts
            have = v.tok_spec.sentinels
            if spans_needed > MAX_SENTINELS:  # more than a tokenizer may have: cut fewer spans
                fix = (f"a tokenizer has at most {MAX_SENTINELS} sentinels: use a shorter seq_len, less noise or "
                       "a longer mean_span")
            elif have == 0:
                want = min(max(spans_needed, 100), MAX_SENTINELS)
                fix = (f"add `sentinels: {want}` to tokenizer '{v.tok_name}' (T5's <extra_id_n>)"
                       + _and_vocab(v, want))
            else:
                fix = f"use `sentinels: {spans_needed}` or more" + _and_vocab(v, spans_needed - have)
            if have == 0:
                yield _Misfit("LMS071", f"{what} needs sentinel tokens, but tokenizer '{v.tok_name}' has none",
                              v.tok_span("sentinels"), f"tokenizer '{v.tok_name}'", fix)
            elif have < spans_needed:
                fits = (f" (the longest window whose input{' and target' if prefix else ''} fit seq_len "
                        f"{v.seq_len})" if window < v.seq_len else "")
                yield _Misfit("LMS071", f"{what} cuts about {spans_needed} spans from {window} tokens{fits}, but "
                              f"tokenizer '{v.tok_name}' has {have} sentinels",
                              v.tok_span("sentinels"), f"sentinels of '{v.tok_name}'", fix)
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


def _written(x: Experiment, span: Span) -> str:
    return x.validated.resolved.sources.get(span.file, "")[span.start:span.end]


#: the most sentinels a tokenizer may have (the schema's bound)
MAX_SENTINELS = next(m.le for m in S.TokenizerSpec.model_fields["sentinels"].metadata if hasattr(m, "le"))


def _and_vocab(v: _TrainView, added: int) -> str:
    """`added` more ids in a bytes tokenizer need as many more rows in a model whose vocab is a
    number: the help says so, or following it would meet LMS073 next."""
    if v.vocab_follows or v.tok_spec is None or v.tok_spec.kind.kind != "bytes":
        return ""
    size = tokenizer_vocab_size(v.tok_spec) + added
    return f", and a vocab of at least {size} in model '{v.model}'" if v.arch.vocab < size else ""


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
            seq_len=min(stage.seq_len or arch.context, arch.context),
            vocab_follows=".vocab_size" in _written(x, x.block(model).span_of(("vocab",))))
        for term in stage.objective:
            for m in _fit(term.objective.kind, term.objective, view):
                labels = [Label(m.label_span, m.label)] if m.label_span is not None else []
                if m.code == "LMS072":
                    labels = [Label(block.span_of(("data",)), f"'{stage.data}' is read here")]
                yield _err(m.code, m.message, block.span_of(("objective",)), help=m.help, labels=labels)


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
        out["position_offset"] = arch.position_offset
    for stack_name, stack in _stacks(arch):
        out[f"{stack_name} layers"] = stack.n_layers
        out[f"{stack_name} final_norm"] = stack.final_norm
        out[f"{stack_name} own position table"] = stack.own_positions
        out[f"{stack_name} own embed_norm"] = stack.own_embed_norm
        for i, layer in enumerate(stack.layers):
            for f in _LAYER_FIELDS:
                out[f"{stack_name} layer {i} {f}"] = getattr(layer, f)
            out[f"{stack_name} layer {i} gated"] = layer.activation in GATED_ACTIVATIONS
            out[f"{stack_name} layer {i} sandwich norms"] = layer.placement == "sandwich"
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
    stage_heads_rule, objective_rule, *TOKEN_RULES, stage_reference_rule, reward_rule, judge_rule, policy_rule,
    unused_rule, *STAGE_RULES, *JUDGE_RULES, *SETTINGS_RULES, *PARALLEL_RULES,
]


# =============================================================================== check


def check(validated: ValidatedSpec, hardware=None) -> tuple[list[Diagnostic], dict[str, ArchConfig]]:
    """Every design rule over a validated spec; the lowered models that passed the model rules.
    `hardware` (rules_parallel.Hardware): the devices `lmspec check` was told of, for every stage."""
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
    diagnostics += unknown_value_rule(validated)
    graph = flow_graph(validated)
    diagnostics += stage_cycles(graph)
    x = Experiment(validated, models, graph, hardware)
    for rule in EXPERIMENT_RULES:
        diagnostics += rule(x)
    return collapse_inherited(diagnostics, validated.resolved.blocks), models

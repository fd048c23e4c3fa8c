"""Design rules on one model block: shapes that must divide, stacks that must exist, heads
that must not repeat, keys the architecture would not read.

* `MODEL_RULES` look at the block as written and decide whether it lowers: a model that
  passes them always lowers to an `ArchConfig` and builds;
* `ARCH_RULES` look at the lowered model, every default applied.

docs/validation.md explains every rule with an example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

from lmspec.compiler import schema as S
from lmspec.compiler.arch import ROTARY_TOLERANCE, ArchConfig, StackConfig
from lmspec.compiler.graphs import ModelSpans
from lmspec.compiler.resolve import ResolvedBlock
from lmspec.compiler.values import percent
from lmspec.diagnostics import CODES, Diagnostic, Label, Span
from lmspec.grammar.ast import layer_selector

__all__ = ["MODEL_RULES", "ARCH_RULES", "model_rules", "MULTIPLE_OF_64_FROM", "OverrideSite", "override_sites"]

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
    "LMS094": "a pad_id, mask_id or decoder_start_id outside the model's vocabulary",
    "LMS095": "a model-level key that the model's architecture does not read",
    "LMS130": "llama3 rope scaling whose high_freq is not above its low_freq",
    "LMS131": "a parallel residual with post-norm or cross-attention",
    "LMS132": "norm_bias: false in a model with no LayerNorm",
    "LMS133": "embed_norm: false in a stack block of a model whose embed_norm is true",
    "LMS134": "a model-level position or embed_norm that both stacks replace with their own",
    "LMS118": "a parallel residual with placement: sandwich",
    "LMS124": "yarn rope scaling whose beta_fast is not above its beta_slow",
    "LMS125": "longrope factor lists that do not hold one divisor per rotated frequency",
    "LMS135": "longrope rope scaling in the decoder of an encoder-decoder",
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
#
# The attention shape of a layer is read from four places, the nearest winning: the model, its
# stack (`encoder { }`), and the layer overrides that cover the layer, in order. Layers covered
# by the same overrides share a shape, so the rules look at one "group" of layers at a time. A
# help line that suggests a value is a fix that was tried: the shapes are recomputed with it, and
# it is offered only if it clears the problem and breaks no other layer (a d_model that one
# layer's heads divide may not be one that another's do).

_SHAPE_KEYS = ("heads", "kv_heads", "head_dim", "attention", "position")


@dataclass
class _Shape:
    """The attention keys of one group of layers, and the scope each was read from: () for the
    model, ("encoder",) for a stack, stack + ("layer", j) for its j-th override."""

    stack: tuple
    values: dict
    origin: dict


@dataclass
class _Shapes:
    """Every group of layers of a model, and the shapes a change of some keys would give them."""

    spec: S.ModelSpec
    groups: list[tuple[tuple, S.StackSpec | None, tuple[int, ...]]]  # (stack, its spec, covering overrides)

    @classmethod
    def of(cls, spec: S.ModelSpec) -> "_Shapes":
        groups = []
        for prefix, stack, n_layers in _stack_specs(spec):
            overrides = stack.layer if stack is not None else spec.layer
            covers = {tuple(j for j, o in enumerate(overrides) if o.covers(layer)): None
                      for layer in range(n_layers)}
            groups += [(prefix, stack, cover) for cover in covers]
        return cls(spec, groups)

    def d_model(self, changes: dict) -> int:
        return changes.get(((), "d_model"), self.spec.d_model)

    def shapes(self, changes: dict | None = None) -> list[_Shape]:
        """Each group's shape, with `changes` ({(scope, key): value}) applied over what is written."""
        changes = changes or {}
        out = []
        for prefix, stack, cover in self.groups:
            overrides = stack.layer if stack is not None else self.spec.layer
            scopes = [((), self.spec)] + ([(prefix, stack)] if stack is not None else []) + [
                (prefix + ("layer", j), overrides[j]) for j in cover]
            values, origin = {}, {}
            for key in _SHAPE_KEYS:
                for scope, written in scopes:
                    value = changes.get((scope, key), getattr(written, key))
                    if value is not None:
                        values[key], origin[key] = value, scope
                values.setdefault(key, None)
                origin.setdefault(key, ())
            out.append(_Shape(prefix, values, origin))
        return out

    def faults(self, changes: dict | None = None) -> dict[tuple, tuple]:
        """(code, group) -> the values its message shows, for every shape rule a group breaks:
        LMS060-LMS062, and LMS068's heads (the relative-position layers of a stack share one bias
        table, so one number of heads). A fault whose values change is another message, so a
        fix may leave a fault only as it was."""
        d_model, out, relative = self.d_model(changes or {}), {}, {}
        for i, s in enumerate(self.shapes(changes)):
            heads, head_dim = s.values["heads"], s.values["head_dim"]
            kv = s.values["kv_heads"] or heads
            if head_dim is None and d_model % heads:
                out[("LMS060", i)] = (heads, d_model)
            if heads % kv:
                out[("LMS061", i)] = (kv, heads)
            position = s.values["position"]
            if position.kind == "rope" and _rotated(position.fraction, head_dim or d_model // heads) is None:
                out[("LMS062", i)] = (head_dim or d_model // heads, position.fraction)
            if s.values["position"].kind == "relative":
                relative.setdefault(s.stack, set()).add(heads)
        out.update({("LMS068", stack): () for stack, heads in relative.items() if len(heads) > 1})
        return out

    def fixes(self, fault: tuple, before: dict[tuple, tuple], scope: tuple, key: str, candidates,
              strict: bool = True) -> Iterator[int]:
        """The candidate values of `key` in `scope` that clear `fault` and break nothing else.
        LMS068 is reported only once a model lowers, so a strict fix must clear it too: a
        problem that surfaces only after the fix is applied is a help line that goes round in
        circles. (Not strict: an LMS068 already there may stay, and the help says so.)"""
        allowed = {f: v for f, v in before.items() if (f[0] != "LMS068" or not strict) and f != fault}.items()
        for value in candidates:
            if value >= 1 and self.faults({(scope, key): value}).items() <= allowed:
                yield value


def _rotated(fraction: float, head_dim: int) -> int | None:
    """The dimensions RoPE rotates in a head: `fraction` of `head_dim`, when that is a whole,
    even, positive number (RoPE turns pairs of them); else None."""
    dims = fraction * head_dim
    whole = round(dims)
    # a fraction written with 6 digits (0.291667 of 96 = 28.00003) means the whole number
    return whole if abs(dims - whole) < ROTARY_TOLERANCE and whole >= 2 and whole % 2 == 0 else None


def _stack_specs(spec: S.ModelSpec) -> list[tuple[tuple, S.StackSpec | None, int]]:
    if spec.arch == "encoder_decoder":
        return [((part,), getattr(spec, part), getattr(spec, part).layers) for part in ("encoder", "decoder")
                if getattr(spec, part) is not None]
    return [((), None, spec.layers)] if spec.layers is not None else []


def _precedence(scope: tuple) -> int:
    """How near a scope is to the layer: model < stack < its overrides, in order."""
    return 2 + scope[-1] if "layer" in scope else len(scope)


#: how far from the written value a suggestion is looked for (values are not bounded above)
_NEAR = 256


def _divisors_near(n: int, target: int) -> list[int]:
    """The divisors of n within _NEAR of target, nearest first."""
    return _nearest([d for d in range(max(1, target - _NEAR), target + _NEAR + 1) if n % d == 0], target)


def _nearest(values, target: int) -> list[int]:
    return sorted(values, key=lambda v: (abs(v - target), v))


def _either(found: list[int], current: int) -> list[int]:
    """The nearest fix below the current value and the nearest above (the nearer first)."""
    below = [v for v in found if v < current][:1]
    above = [v for v in found if v > current][:1]
    return _nearest(below + above, current)


def _or(key: str, values: list[int]) -> str:
    return f"{key}: {' or '.join(str(v) for v in values)}"


def _d_model_fix(shapes: _Shapes, fault: tuple, before: dict, strict: bool = True) -> int | None:
    """The d_model nearest the written one that the heads of every layer without a head_dim
    divide (twice over with RoPE, whose head_dim must be even)."""
    d_model, step = shapes.spec.d_model, 1
    for s in shapes.shapes():
        if s.values["head_dim"] is None:
            step = math.lcm(step, s.values["heads"] * (2 if s.values["position"].kind == "rope" else 1))
    if step > 64 * d_model:  # no width near the written one: the help says what else to change
        return None
    first = _nearest_multiple(d_model, step)
    candidates = [first] + [c for c in (d_model // step * step, (d_model // step + 1) * step) if c != first]
    return next(shapes.fixes(fault, before, (), "d_model", candidates, strict), None)


def _divide_help(shapes: _Shapes, fault: tuple, s: _Shape, before: dict, strict: bool) -> str | None:
    """The fixes of an LMS060 or LMS061 fault that pass every layer (see `_Shapes.fixes`), as a
    help line; None when there are none."""
    spec = shapes.spec
    heads, kv, origin = s.values["heads"], s.values["kv_heads"] or s.values["heads"], s.origin

    def fixes(scope, key, candidates) -> list[int]:
        return list(shapes.fixes(fault, before, scope, key, candidates, strict))

    if fault[0] == "LMS060":
        d_model = _d_model_fix(shapes, fault, before, strict)
        if "layer" not in origin["heads"]:  # the model's (or a stack's) heads: the model's width
            return f"try d_model: {d_model}, or set head_dim" if d_model is not None else None
        here = origin["heads"]  # an override's heads: fix them there, or the model's width
        head_fixes = _either(fixes(here, "heads", _divisors_near(spec.d_model, heads)), heads)
        base_dim = [spec.d_model // spec.heads] if spec.d_model % spec.heads == 0 else []  # as the other layers
        dims = base_dim + _nearest(range(max(1, spec.d_model // heads - 2), spec.d_model // heads + 3),
                                   round(spec.d_model / heads))
        dim_fix = fixes(here, "head_dim", dims)[:1]
        local = ([f"try {_or('heads', head_fixes)} here"] if head_fixes else []) + (
            [f"add head_dim: {dim_fix[0]} here"] if dim_fix else [])
        help = ", or ".join(local) + (f"; or try d_model: {d_model}" if d_model is not None else "")
        return help.removeprefix("; or ") or None
    if _precedence(origin["heads"]) > _precedence(origin["kv_heads"]):
        here = origin["heads"]  # an override's heads meet a kv_heads set for more layers: fix them there
        multiples = range(max(1, heads // kv - _NEAR // 4) * kv, (heads // kv + _NEAR // 4 + 1) * kv, kv)
        head_fixes = _either(fixes(here, "heads", _nearest(multiples, heads)), heads)
        kv_fix = fixes(here, "kv_heads", _kv_candidates(heads, kv))[:1]
        return ", or ".join(([f"try {_or('heads', head_fixes)} here"] if head_fixes else []) +
                            ([f"add kv_heads: {kv_fix[0]} here"] if kv_fix else [])) or None
    kv_fix = fixes(origin["kv_heads"], "kv_heads", _kv_candidates(heads, kv))[:1]
    return f"try kv_heads: {kv_fix[0]}" if kv_fix else None


def _shape_rules(spec: S.ModelSpec, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """LMS060-LMS063 on every group of layers, each with a help line that suggests only fixes
    that pass every layer's shape rules."""
    shapes = _Shapes.of(spec)
    before = shapes.faults()
    mismatched = [f[1] for f in before if f[0] == "LMS068"]
    for i, s in enumerate(shapes.shapes()):
        heads, head_dim = s.values["heads"], s.values["head_dim"]
        kv = s.values["kv_heads"] or heads
        origin = s.origin
        for code in ("LMS060", "LMS061"):
            fault = (code, i)
            if fault not in before:
                continue
            help, notes = _divide_help(shapes, fault, s, before, strict=True), []
            if help is None and mismatched:  # nothing fixes this layer alone: the heads of the
                # relative-position layers disagree as well, and are their own problem
                help = _divide_help(shapes, fault, s, before, strict=False)
                notes = [f"the relative-position layers of the {stack[0] if stack else 'model'} also differ in heads, "
                         "but share one bias table (LMS068): give them the same heads too" for stack in mismatched]
            if code == "LMS060":
                here = origin["heads"] + ("heads",) if "layer" in origin["heads"] else ("d_model",)
                d = _err(code, f"heads ({heads}) must divide d_model ({spec.d_model})", block.span_of(here),
                         help=help or ("set head_dim here" if "layer" in origin["heads"] else "set head_dim"))
            else:
                local = _precedence(origin["heads"]) > _precedence(origin["kv_heads"])
                here = origin["heads"] + ("heads",) if local else origin["kv_heads"] + ("kv_heads",)
                d = _err(code, f"kv_heads ({kv}) must divide heads ({heads})", block.span_of(here),
                         help=help or "give every layer a kv_heads that divides its heads")
            d.notes += notes
            yield d
        hd = head_dim or (spec.d_model // heads if heads else 0)
        fraction = s.values["position"].fraction if s.values["position"].kind == "rope" else 1.0
        if ("LMS062", i) in before and fraction == 1:
            yield _err("LMS062", f"RoPE rotates pairs of dimensions, but head_dim is {hd} (odd)",
                       block.span_of(origin["position"] + ("position",)),
                       help="choose d_model and heads so that head_dim is even")
        elif ("LMS062", i) in before:
            # the even numbers of dimensions nearest to what was asked for, as fractions of the head
            near = sorted(range(2, hd + 1, 2), key=lambda n: (abs(n - fraction * hd), n))[:1]
            yield _err("LMS062", f"RoPE rotates pairs of dimensions, but {percent(fraction, digits=6)} of head_dim "
                       f"{hd} is {fraction * hd:.6g}, not an even number",
                       block.span_of(origin["position"] + ("position", "fraction")),
                       help=f"try `fraction: {percent(near[0] / hd, digits=6)}` ({near[0]} dimensions)" if near else
                       "give the heads at least two dimensions to rotate")
        att = s.values["attention"]
        if att is not None and att.kind == "sliding" and att.window > spec.context:
            yield _err("LMS063", f"sliding window ({att.window}) is longer than the context ({spec.context})",
                       block.span_of(origin["attention"] + ("attention",)),
                       help=f"use a window of at most {spec.context}, or `causal`")


def _kv_candidates(heads: int, kv: int) -> list[int]:
    """Divisors of heads: the largest below kv first (fewer key/value heads keep the saving)."""
    divisors = sorted(_divisors_near(heads, kv) + [1])
    return [d for d in reversed(divisors) if d <= kv] + [d for d in divisors if d > kv]


def _range_rules(stack: S.StackSpec | None, spec: S.ModelSpec, block: ResolvedBlock, prefix: tuple,
                 n_layers: int) -> Iterator[Diagnostic]:
    """LMS048: a layer override names layers of its stack (an override that names none would
    be silently ignored)."""
    for i, o in enumerate(stack.layer if stack is not None else spec.layer):
        if o.every < 1:
            yield _err("LMS048", f"`{o.selector()}` names no layer: the step after `every` must be at least 1",
                       block.span_of(prefix + ("layer", i)),
                       help="`layer every 2 { }` applies to layers 0, 2, 4, ...; `layer every 1 { }` to all of them")
        elif o.last is None:
            if o.first >= n_layers:
                yield _err("LMS048", f"`{o.selector()}` starts at layer {o.first}, outside the stack of {n_layers} "
                           f"layers (0..{n_layers - 1})", block.span_of(prefix + ("layer", i)),
                           help=f"the last layer is {n_layers - 1}: start `from` a layer at most {n_layers - 1}")
        elif o.first > o.last:
            yield _err("LMS048", f"layer range {o.first}..{o.last} is empty", block.span_of(prefix + ("layer", i)),
                       help=f"write `{layer_selector(o.last, o.first, o.every)}`")
        elif o.last >= n_layers:
            yield _err("LMS048", f"layer {o.last} is outside the stack of {n_layers} layers (0..{n_layers - 1})",
                       block.span_of(prefix + ("layer", i)), help=f"the last layer is {n_layers - 1}")


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
                       block.span_of(("layer", 0)),
                       help="move each `layer a..b { }` into the stack whose layers it sets")
        for part in ("encoder", "decoder"):
            stack = getattr(spec, part)
            if stack is not None:
                yield from _range_rules(stack, spec, block, (part,), stack.layers)
    else:
        for part in ("encoder", "decoder"):
            if getattr(spec, part) is not None:
                yield _err("LMS066", f"'{part} {{ }}' is only for arch: encoder_decoder", block.span_of((part,), key=True),
                           help="set `arch: encoder_decoder`, or move its keys into the model block")
        if spec.layers is None:
            yield _err("LMS065", f"model '{name}' needs 'layers'", block.name_span, help="add `layers: N`")
        else:
            yield from _range_rules(None, spec, block, (), spec.layers)
    seen = set()  # groups of layers with the same shape problem at the same place say it once
    for d in _shape_rules(spec, block):
        if (d.code, d.span, d.message) not in seen:
            seen.add((d.code, d.span, d.message))
            yield d
    yield from _duplicate_heads(spec.head, block.span_of(("head",)), f"model '{name}'")


def token_id_rule(name: str, spec: S.ModelSpec, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """LMS094: the ids a model names are rows of its embedding."""
    for key in ("pad_id", "mask_id", "decoder_start_id"):
        token = getattr(spec, key)
        if token is not None and token >= spec.vocab:
            yield _err("LMS094", f"{key} ({token}) is outside the vocabulary of model '{name}' (ids 0..{spec.vocab - 1})",
                       block.span_of((key,)), help=f"use an id below {spec.vocab}, or a larger vocab")


def ignored_key_rule(name: str, spec: S.ModelSpec, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """LMS095: in an encoder-decoder each stack has its own layer count and attention, so the
    model-level `layers` is never read and the model-level `attention` reaches the encoder
    only (the decoder stays causal unless `decoder { }` says otherwise). `position_offset` is
    read by a learned position table only, `decoder_start_id` by an encoder-decoder only."""
    if spec.decoder_start_id is not None and spec.arch != "encoder_decoder":
        yield _err("LMS095", f"model '{name}' does not read 'decoder_start_id': only an encoder-decoder's decoder "
                   f"starts from a token of its own, and this model is {_an(spec.arch)}",
                   block.span_of(("decoder_start_id",), key=True),
                   help="remove `decoder_start_id`, or use `arch: encoder_decoder`")
    own_tables = [s for s in (spec.encoder, spec.decoder) if s is not None and _own_positions(s)]
    if spec.position_offset and spec.position.kind != "learned" and not own_tables:
        yield _err("LMS095", f"model '{name}' does not read 'position_offset': it offsets a learned position table, "
                   f"and its positions are {spec.position.kind}",
                   block.span_of(("position_offset",), key=True),
                   help="remove `position_offset`, or set `position: learned`")
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


def _own_positions(stack: S.StackSpec) -> bool:
    """Whether a stack block gives its stack a learned position table of its own."""
    return stack.position is not None and stack.position.kind == "learned"


def stack_embedding_rule(name: str, spec: S.ModelSpec, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """LMS133: a stack block's `embed_norm: true` gives that stack its own embedding norm; a
    stack cannot drop the model's shared one, so `embed_norm: false` there under a model-level
    `embed_norm: true` would be ignored. LMS134: when both stacks embed with their own learned
    table (or norm), the model-level `position: learned` (or `embed_norm: true`) is read by
    neither."""
    stacks = [(part, getattr(spec, part)) for part in ("encoder", "decoder") if getattr(spec, part) is not None]
    if spec.arch != "encoder_decoder" or len(stacks) < 2:
        return  # LMS064, LMS066
    for part, stack in stacks:
        if stack.embed_norm is False and spec.embed_norm:
            yield _err("LMS133", f"`{part} {{ embed_norm: false }}` cannot remove the embedding norm of '{name}': "
                       "the model's `embed_norm: true` is one norm, shared by both stacks",
                       block.span_of((part, "embed_norm")), help="remove `embed_norm` from the model and write "
                       "`embed_norm: true` in the stack block that has one",
                       labels=[Label(block.span_of(("embed_norm",)), "embed_norm: true")])
    if spec.embed_norm and all(stack.embed_norm for _, stack in stacks):
        yield _err("LMS134", f"no stack of '{name}' reads the model's embedding norm: `encoder {{ }}` and "
                   "`decoder { }` both set `embed_norm: true`, so each has its own",
                   block.span_of(("embed_norm",), key=True), help="remove `embed_norm` from the model")
    if "position" in block.fields and all(_own_positions(stack) for _, stack in stacks):
        yield _err("LMS134", f"no stack of '{name}' reads the model's `position`: `encoder {{ }}` and `decoder {{ }}` "
                   "both set `position: learned`, so each has its own table",
                   block.span_of(("position",), key=True), help="remove `position` from the model")


@dataclass(frozen=True)
class OverrideSite:
    """A stack block or layer override of a model block: where it is, and what it inherits from."""

    path: tuple  # in the block: ("decoder", "layer", 0); a key it sets is at path + (key,)
    where: str  # as a message names it: "`layer 0 { }` of the decoder"
    scope: object  # its validated value: an S.StackSpec or an S.LayerOverride
    parent: object  # what it inherits from directly: the model's spec, or its stack block's
    parent_path: tuple  # the path of `parent`: () or ("decoder",)

    @property
    def is_stack(self) -> bool:
        """A stack block itself, not a layer override."""
        return len(self.path) == 1


def override_sites(spec: S.ModelSpec) -> Iterator[OverrideSite]:
    """Every stack block and layer override of a model: the model's own layer overrides, then
    each stack block followed by its layer overrides."""
    for j, o in enumerate(spec.layer):
        yield OverrideSite(("layer", j), f"`{o.selector()} {{ }}`", o, spec, ())
    for stack_name in ("encoder", "decoder"):
        stack = getattr(spec, stack_name)
        if stack is None:
            continue
        yield OverrideSite((stack_name,), f"`{stack_name} {{ }}`", stack, spec, ())
        for j, o in enumerate(stack.layer):
            yield OverrideSite((stack_name, "layer", j), f"`{o.selector()} {{ }}` of the {stack_name}", o, stack,
                               (stack_name,))


def _positions(spec: S.ModelSpec) -> Iterator[tuple[tuple, object]]:
    """Every `position` written in the model block, with its path: the model's, each stack's and
    each layer override's."""
    scopes = [((), spec)] + [(site.path, site.scope) for site in override_sites(spec)]
    for path, scope in scopes:
        if scope.position is not None:
            yield path + ("position",), scope.position


def rope_scaling_rule(name: str, spec: S.ModelSpec, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """LMS130: llama3 scaling interpolates between its two wavelength bounds, dividing by
    high_freq - low_freq, so high_freq must lie above low_freq."""
    for path, position in _positions(spec):
        scaling = getattr(position, "scaling", None)
        if scaling is not None and scaling.kind == "llama3" and scaling.high_freq <= scaling.low_freq:
            yield _err("LMS130", f"llama3 rope scaling needs high_freq above low_freq, got high_freq "
                       f"{scaling.high_freq:g} and low_freq {scaling.low_freq:g}",
                       block.span_of(path + ("scaling", "high_freq")),
                       help="Llama 3.1 uses `llama3(factor: 8, low_freq: 1, high_freq: 4, original_context: 8192)`")


def yarn_rule(name: str, spec: S.ModelSpec, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """LMS124: YaRN keeps the frequencies turning more than beta_fast times over the original
    context and divides those turning fewer than beta_slow times, so beta_fast must lie above
    beta_slow (transformers would build a ramp running backwards)."""
    for path, position in _positions(spec):
        scaling = getattr(position, "scaling", None)
        if scaling is not None and scaling.kind == "yarn" and scaling.beta_fast <= scaling.beta_slow:
            yield _err("LMS124", f"yarn rope scaling needs beta_fast above beta_slow, got beta_fast "
                       f"{scaling.beta_fast:g} and beta_slow {scaling.beta_slow:g}",
                       block.span_of(path + ("scaling", "beta_fast")),
                       help="transformers' defaults are `beta_fast: 32, beta_slow: 1` (Qwen, DeepSeek)")


def parallel_rule(name: str, spec: S.ModelSpec, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """LMS131: a parallel layer adds attention and MLP to the same input, so each branch takes a
    normalised copy of it (pre-norm: post-norm has no place for the norm), and a decoder's
    cross-attention, which must read the self-attention's output, has no parallel form."""
    if spec.residual.kind != "parallel":
        return
    span = block.span_of(("residual",))
    if spec.placement == "post":
        yield _err("LMS131", f"model '{name}' has a parallel residual with placement: post; the branches of a "
                   "parallel layer read a normalised copy of its input", span,
                   labels=[Label(block.span_of(("placement",)), "post-norm set here")],
                   help="use `placement: pre` (GPT-J, GPT-NeoX), or `residual: sequential`")
    if spec.arch == "encoder_decoder":
        yield _err("LMS131", f"encoder-decoder '{name}' has a parallel residual, but its decoder's cross-attention "
                   "must read the self-attention's output", span,
                   help="use `residual: sequential` in an encoder-decoder")


def sandwich_rule(name: str, spec: S.ModelSpec, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """LMS118: sandwich normalises each sublayer's output before its residual add, one branch
    after the other; a parallel layer adds both branches at once, and no model defines where its
    post-branch norms would go (one over the sum, or one per branch)."""
    if spec.residual.kind == "parallel" and spec.placement == "sandwich":
        yield _err("LMS118", f"model '{name}' has a parallel residual with placement: sandwich; sandwich norms "
                   "are defined for sequential layers only", block.span_of(("placement",)),
                   labels=[Label(block.span_of(("residual",)), "parallel residual set here")],
                   help="use `placement: pre` with `residual: parallel(...)`, or `residual: sequential` "
                        "with sandwich (Gemma 2)")


#: rules on a model block as written; a model with an error here is not lowered
MODEL_RULES: list[Callable[[str, S.ModelSpec, ResolvedBlock], Iterator[Diagnostic]]] = [
    model_rules, token_id_rule, ignored_key_rule, rope_scaling_rule, parallel_rule, sandwich_rule,
    stack_embedding_rule, yarn_rule,
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
                   help="use a larger max_distance (T5: 128 for 32 buckets), or fewer buckets")


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


def norm_bias_rule(arch: ArchConfig, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """LMS132: only a LayerNorm has a bias to drop; in a model whose norms are all RMSNorms
    (the layers', and the embedding's or heads' when it has them) `norm_bias: false` changes nothing."""
    if arch.norm_bias:
        return
    kinds = {L.norm for s in arch.stacks for L in s.layers} | {arch.norm}
    if "layernorm" not in kinds:
        yield _err("LMS132", f"norm_bias: false has no effect in model '{arch.name}': its norms are RMSNorms, "
                   "which have no bias", block.span_of(("norm_bias",)),
                   help="remove `norm_bias: false`, or use `norm: layernorm` (OLMo, MPT: LayerNorm without bias)")


def longrope_rule(arch: ArchConfig, block: ResolvedBlock) -> Iterator[Diagnostic]:
    """LMS125: longrope divides frequency i by short_factor[i] (long_factor[i] past the original
    context), so each list holds one divisor per rotated frequency: rotated dimensions / 2.
    LMS135: once generation reaches the original context every cached key must be rotated again
    with the long factors; `generate` re-reads the sequence there for a decoder-only model only
    (Phi-3's way), so an encoder-decoder's decoder would go on with stale keys. An encoder caches
    nothing: longrope there is each forward's own choice, as in transformers."""
    for stack_name, stack in _stacks(arch):
        for i, layer in enumerate(stack.layers):
            s, dims = layer.position.scaling, layer.position.rotary_dims(layer.head_dim)
            if layer.position.kind != "rope" or s is None or s.kind != "longrope" or dims is None:
                continue
            if arch.arch == "encoder_decoder" and stack_name == "decoder":
                span = ModelSpans(block).layer(stack_name, i, "position")
                yield _err("LMS135", f"longrope scaling in layer {i} of the decoder of encoder-decoder "
                           f"'{arch.name}': lmspec generates with longrope in decoder-only models only, where "
                           "generation re-reads the sequence when the long factors take over",
                           _inner_span(block, span, ("scaling",)),
                           help="use `arch: decoder` (Phi-3 is one), or another scaling: "
                                "`scaling: yarn(factor: ..., original_context: ...)`")
                return
            wrong = [(key, len(getattr(s, key))) for key in ("short_factor", "long_factor")
                     if len(getattr(s, key)) != dims // 2]
            if not wrong:
                continue
            key, n = wrong[0]
            span = ModelSpans(block).layer(stack_name, i, "position")
            yield _err("LMS125", f"longrope {key} of layer {i} of {stack_name} has {n} values, but the layer rotates "
                       f"{dims} dimensions of each head: one divisor per frequency is {dims // 2}",
                       _inner_span(block, span, ("scaling", key)),
                       help=f"give {key} {dims // 2} values (head_dim {layer.head_dim}, "
                            f"fraction {layer.position.fraction:g})")
            break  # one error per stack: the layers share their position spec


def _inner_span(block: ResolvedBlock, outer: Span | None, tail: tuple) -> Span | None:
    """The span of the value at a path ending in `tail` inside `outer` (a key nested in the value
    `outer` covers), or `outer` itself when there is none."""
    if outer is None:
        return None
    for path, span in block.value_spans.items():
        if tuple(path[-len(tail):]) == tail and outer.start <= span.start and span.end <= outer.end:
            return span
    return outer


#: rules on a lowered model (they need every default applied); errors drop the model
ARCH_RULES: list[Callable[[ArchConfig, ResolvedBlock], Iterator[Diagnostic]]] = [
    relative_bias_rule, decoder_prefix_rule, tie_rule, multiple_of_64_rule, norm_bias_rule, longrope_rule,
]



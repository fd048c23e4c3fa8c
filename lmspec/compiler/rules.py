"""Design rules: what the schema cannot see because it involves several keys.

Each rule is a function of one validated block that yields diagnostics with a
stable code, a span and a help line. `check` runs every rule and lowers each
model that passed into an `ArchConfig`: a model that passes these rules always
lowers and builds.
"""

from __future__ import annotations

from typing import Callable, Iterator

from lmspec.compiler import schema as S
from lmspec.compiler.arch import ArchConfig
from lmspec.compiler.lower import lower_model
from lmspec.compiler.resolve import ResolvedBlock
from lmspec.compiler.schema_check import ValidatedSpec
from lmspec.diagnostics import CODES, Diagnostic

__all__ = ["check", "MODEL_RULES"]

CODES.update({
    "LMS060": "heads do not divide d_model",
    "LMS061": "kv_heads do not divide heads",
    "LMS062": "RoPE needs an even head_dim",
    "LMS063": "a sliding window longer than the context",
    "LMS064": "an encoder-decoder needs both an encoder and a decoder block",
    "LMS065": "a stack without a layer count",
    "LMS066": "encoder/decoder blocks in a model that is not an encoder-decoder",
})


def _err(code: str, message: str, span, help: str | None = None) -> Diagnostic:
    return Diagnostic("error", code, message, span, help=help)


def _nearest_multiple(value: int, divisor: int) -> int:
    return max(divisor, round(value / divisor) * divisor)


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


MODEL_RULES: list[Callable[[str, S.ModelSpec, ResolvedBlock], Iterator[Diagnostic]]] = [model_rules]


def check(validated: ValidatedSpec) -> tuple[list[Diagnostic], dict[str, ArchConfig]]:
    diagnostics: list[Diagnostic] = []
    models: dict[str, ArchConfig] = {}
    for name, spec in validated.of_kind("model").items():
        block = validated.resolved.blocks[name]
        found = [d for rule in MODEL_RULES for d in rule(name, spec, block)]
        diagnostics += found
        if not any(d.is_error for d in found):
            models[name] = lower_model(name, spec)
    return diagnostics, models

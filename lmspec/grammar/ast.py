"""The typed syntax tree of a `.lmspec` file. Every node keeps its source span.

The tree mirrors the text: it is what the parser saw, before imports,
`extends`, references or arithmetic are resolved (that is `compiler.resolve`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from lmspec.diagnostics import Span

__all__ = [
    "Ident", "Number", "String", "Bool", "Name", "Attr", "Call", "ListExpr", "BinOp", "Neg",
    "FromStage", "WithField", "Invalid", "Expr", "Field", "Nested", "LayerOverride", "layer_covers",
    "layer_selector", "Entry", "Block", "Import", "Header", "SpecFile",
]


@dataclass(frozen=True, slots=True)
class Ident:
    name: str
    span: Span


# ----------------------------------------------------------------------------- expressions


@dataclass(frozen=True, slots=True)
class Number:
    value: int | float
    raw: str  # as written: "50_257", "2k", "15%"
    span: Span


@dataclass(frozen=True, slots=True)
class String:
    value: str
    span: Span


@dataclass(frozen=True, slots=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True, slots=True)
class Name:
    """A bare identifier: a sibling field, a block, or a symbol such as `causal`."""

    id: str
    span: Span


@dataclass(frozen=True, slots=True)
class Attr:
    """`obj.name`, e.g. `tok.vocab_size`."""

    obj: "Expr"
    name: Ident
    span: Span


@dataclass(frozen=True, slots=True)
class Call:
    """`func(arg, key: value)`, e.g. `rope(theta: 10_000)` or `stories.prefixes(tokens: 8)`."""

    func: "Expr"
    args: tuple["Expr", ...]
    kwargs: tuple[tuple[Ident, "Expr"], ...]
    span: Span


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True, slots=True)
class BinOp:
    op: str  # + - * / **
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class Neg:
    operand: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class FromStage:
    """`critic from judge_fit`: the model as trained by a stage."""

    value: "Expr"
    stage: Ident
    span: Span


@dataclass(frozen=True, slots=True)
class WithField:
    """`gpt with head scalar`: a model with one key replaced."""

    value: "Expr"
    key: Ident
    field_value: "Expr"
    span: Span


@dataclass(frozen=True, slots=True)
class Invalid:
    """A value the parser refused and already reported (a number out of range, an expression
    nested too deeply). It resolves to no value, so later stages add no errors of their own."""

    span: Span


Expr = Union[Number, String, Bool, Name, Attr, Call, ListExpr, BinOp, Neg, FromStage, WithField, Invalid]


# ----------------------------------------------------------------------------- structure


@dataclass(frozen=True, slots=True)
class Field:
    key: Ident
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Nested:
    """A named block inside a block: `encoder { layers: 6 }`, `rollouts { ... }`."""

    name: Ident
    entries: tuple["Entry", ...]
    span: Span


@dataclass(frozen=True, slots=True)
class LayerOverride:
    """`layer 0..3 { ... }`: fields for layers first..last, both inclusive. `layer 0..7 every 2`
    takes every second of them (0, 2, 4, 6); `layer every 6 from 5` runs to the stack's last
    layer (5, 11, 17, ...), which the parser does not know: `last` is None."""

    first: int
    last: int | None
    range_span: Span  # the selector: `0..3`, `every 6 from 5`
    entries: tuple["Entry", ...]
    span: Span
    every: int = 1


def layer_covers(first: int, last: int | None, every: int, layer: int) -> bool:
    """Whether `layer first..last every N` applies to `layer`. A step below 1 covers nothing
    (the rules report it)."""
    return every >= 1 and first <= layer and (last is None or layer <= last) and (layer - first) % every == 0


def layer_selector(first: int, last: int | None, every: int) -> str:
    """The selector as written: `layer 3`, `layer 0..3`, `layer 0..7 every 2`, `layer every 6 from 5`."""
    if last is None:
        return f"layer every {every}" + (f" from {first}" if first else "")
    span = str(first) if first == last else f"{first}..{last}"
    return f"layer {span}" + (f" every {every}" if every != 1 else "")


Entry = Union[Field, Nested, LayerOverride]


@dataclass(frozen=True, slots=True)
class Block:
    kind: Ident
    name: Ident
    extends: Ident | None
    entries: tuple[Entry, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Import:
    path: str
    span: Span


@dataclass(frozen=True, slots=True)
class Header:
    version: int  # -1 when the text is not a whole number
    span: Span
    raw: str = ""  # as written, for messages: "1.5"


@dataclass(frozen=True, slots=True)
class SpecFile:
    path: str
    header: Header | None
    imports: tuple[Import, ...]
    blocks: tuple[Block, ...]
    # names of blocks that did not parse (their syntax errors are reported): references to
    # them are not also "not defined"
    broken: tuple[str, ...] = ()

"""The values a resolved spec holds besides numbers, strings, booleans and lists.

Resolution turns expressions into these plain, hashable values; the schema
(`compiler.schema`) then reads them into typed models. `describe` writes a value for an error
message, `percent` a fraction for spec text (what `lmspec import-hf` and help lines print).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Symbol", "Ref", "CallValue", "Combination", "FromStage", "WithValue", "describe", "percent"]


@dataclass(frozen=True, slots=True)
class Symbol:
    """A bare name that is neither a field nor a block: an enum value such as `causal`."""

    name: str


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference to a top-level block: `model: gpt` -> Ref("model", "gpt")."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class CallValue:
    """`rope(theta: 10_000)`; `stories.prefixes(tokens: 8)` has target Ref("data", "stories")."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    target: Any = None

    @property
    def kw(self) -> dict[str, Any]:
        return dict(self.kwargs)


@dataclass(frozen=True, slots=True)
class Combination:
    """A weighted sum of non-numeric terms: `mlm + 0.5 * nsp`."""

    terms: tuple[tuple[float, Any], ...]


@dataclass(frozen=True, slots=True)
class FromStage:
    """`critic from judge_fit`: a model as trained by a stage."""

    value: Any
    stage: Ref


@dataclass(frozen=True, slots=True)
class WithValue:
    """`gpt with head scalar`: a model with one key replaced."""

    value: Any
    key: str
    field_value: Any


def describe(value: Any) -> str:
    """How a value reads in an error message."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value:g}"
    if isinstance(value, str):
        return f'the string "{value[:40]}"'
    if isinstance(value, Symbol):
        return f"the name '{value.name}'"
    if isinstance(value, Ref):
        return f"the {value.kind} block '{value.name}'"
    if isinstance(value, CallValue):
        return f"the call '{value.name}(...)'"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Combination):
        return "a sum of terms"
    if isinstance(value, FromStage):
        return f"a model from stage '{value.stage.name}'"
    if isinstance(value, WithValue):
        return f"a model with {value.key} replaced"
    if isinstance(value, dict):
        return "a block"
    return type(value).__name__


def percent(fraction: float, digits: int | None = None) -> str:
    """A fraction as spec text: a percentage where that reads back as the same float (0.25 ->
    25%, 0.07 -> 7%), else the number, exactly (repr: 28/96 -> 0.2916666666666667) or, with
    `digits`, to that many significant digits (0.291667: for a message or a help line, where the
    rule reading it back allows for the rounding)."""
    if not math.isfinite(fraction):
        raise ValueError(f"{fraction} cannot be written in a spec")
    text = f"{fraction * 100:.10g}"
    if float(text) / 100 == fraction:
        return f"{text}%"
    return repr(float(fraction)) if digits is None else f"{fraction:.{digits}g}"

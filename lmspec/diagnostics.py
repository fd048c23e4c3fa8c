"""Diagnostics: one record for every problem lmspec reports, and its renderers.

A `Diagnostic` has a severity, a stable code (`LMS014`), a message, a primary
span, labelled secondary spans, notes and a help line. Every stage of the
pipeline returns them instead of raising, so that all the problems of a file
are reported at once. Two renderers: `render_text` (rustc/ruff style, colour
only on a terminal, NO_COLOR honoured) and `render_json`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

__all__ = [
    "Span",
    "Label",
    "Diagnostic",
    "Severity",
    "LmspecError",
    "CODES",
    "render_text",
    "render_json",
    "did_you_mean",
    "closest",
    "use_colour",
]

Severity = Literal["error", "warning", "note"]


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source file. Lines and columns are 1-based; `end_col` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    start: int = 0  # character offsets into the source
    end: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "end_line": self.end_line,
            "end_col": self.end_col,
        }


@dataclass(frozen=True, slots=True)
class Label:
    span: Span
    message: str


@dataclass(slots=True)
class Diagnostic:
    severity: Severity
    code: str
    message: str
    span: Span | None = None
    labels: list[Label] = field(default_factory=list)
    help: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_json(self) -> dict:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "span": self.span.to_json() if self.span else None,
            "labels": [{"span": l.span.to_json(), "message": l.message} for l in self.labels],
            "help": self.help,
            "notes": list(self.notes),
        }


class LmspecError(Exception):
    """Raised by the Python API when a spec has errors; carries every diagnostic."""

    def __init__(self, diagnostics: Sequence[Diagnostic], sources: dict[str, str] | None = None):
        self.diagnostics = list(diagnostics)
        self.sources = sources or {}
        super().__init__(render_text(self.diagnostics, self.sources, colour=False))


# The catalogue of stable codes. docs/diagnostics.md is generated from it;
# a test checks that every code used in the package is listed here.
CODES: dict[str, str] = {
    # syntax
    "LMS001": "syntax error: a token the grammar does not expect here",
    "LMS002": "a character that cannot start any token",
    "LMS003": "the file ends inside a block, list or call (an unclosed bracket)",
    "LMS004": "a field is missing the ':' between key and value",
    "LMS005": "'=' used where lmspec writes ':'",
    "LMS006": "a trailing comma where no further item follows",
    "LMS007": "an unterminated string",
    "LMS008": "a malformed number",
    "LMS009": "the file is not valid UTF-8 text",
    "LMS010": "the version header is missing or names an unsupported version",
    "LMS011": "the spec is too large or too deeply nested to process",
    "LMS012": "a value is missing after ':'",
    "LMS013": "a closing bracket that matches nothing",
    # resolution
    "LMS020": "an imported file cannot be read",
    "LMS021": "files import each other in a cycle",
    "LMS022": "two blocks have the same name",
    "LMS023": "a name that is not defined",
    "LMS024": "`extends` names a block that does not exist or is of another kind",
    "LMS025": "blocks extend each other in a cycle",
    "LMS026": "fields refer to each other in a cycle",
    "LMS027": "arithmetic on values of the wrong type",
    "LMS028": "division by zero",
    "LMS029": "a block has no such attribute",
    "LMS030": "a key is given twice in one block",
    "LMS031": "an input file cannot be read",
    "LMS032": "a number too large to represent (a literal or the result of arithmetic)",
    "LMS033": "a `--set` override that is malformed or names no block",
    "LMS034": "a file that defines no blocks (warning)",
    # schema
    "LMS040": "an unknown block kind",
    "LMS041": "an unknown key",
    "LMS042": "a value of the wrong type",
    "LMS043": "a value out of its allowed range",
    "LMS044": "an unknown choice (enum value or variant)",
    "LMS045": "a required key is missing",
    "LMS046": "an unknown or missing argument of a variant",
    "LMS047": "a reference to a block of the wrong kind",
    "LMS048": "a per-layer override outside the stack",
    "LMS049": "a nested block this kind does not have",
}


# --------------------------------------------------------------------------- did you mean


def _edit_distance(a: str, b: str, limit: int) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) from a to b; limit+1 if more."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    before, prev = None, list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            d = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if before is not None and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                d = min(d, before[j - 2] + 1)  # `bais` -> `bias` is one slip, not two
            cur.append(d)
        before, prev = prev, cur
    return prev[-1]


def closest(word: str, candidates: Iterable[str], max_distance: int = 3) -> str | None:
    """The candidate nearest to `word` by edit distance, if it is near enough to be a typo.

    As in CPython's suggestions, the allowance grows with the lengths of both words, about
    one edit per three letters of each, capped at `max_distance` (3): `bais` finds `bias`, but
    `zz` does not find `a`, nor `rope` find `none`."""
    best, best_d = None, max_distance + 1
    low = word.lower()
    for cand in sorted(set(candidates)):
        limit = min(max_distance, (len(word) + len(cand) + 3) // 6)
        if limit == 0:
            continue
        d = _edit_distance(low, cand.lower(), limit)
        if d <= limit and d < best_d:
            best, best_d = cand, d
    return best


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """`did you mean 'x'?` or None."""
    match = closest(word, candidates)
    return f"did you mean '{match}'?" if match else None


# --------------------------------------------------------------------------- rendering


def use_colour(stream=None) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


_STYLE = {"error": "\x1b[1;31m", "warning": "\x1b[1;33m", "note": "\x1b[1;36m"}
_BLUE, _BOLD, _RESET = "\x1b[1;34m", "\x1b[1m", "\x1b[0m"
_MAX_SHOWN_LINE = 200  # long lines are cut around the span so a 1 MB line stays readable


def _excerpt(text: str, col: int, end_col: int) -> tuple[str, int, int]:
    """Cut a long line to a window around [col, end_col); return text and new columns."""
    text = text.expandtabs(1)
    if len(text) <= _MAX_SHOWN_LINE:
        return text, col, end_col
    start = max(0, col - 1 - 60)
    cut = text[start : start + _MAX_SHOWN_LINE]
    prefix = "..." if start > 0 else ""
    suffix = "..." if start + _MAX_SHOWN_LINE < len(text) else ""
    shift = start - len(prefix)
    return prefix + cut + suffix, col - shift, max(col - shift + 1, min(end_col - shift, len(prefix + cut) + 1))


def _snippet(span: Span, lines: list[str] | None, label: str | None, c, style: str = _STYLE["error"]) -> list[str]:
    if lines is None or not 1 <= span.line <= len(lines):
        return []
    text = lines[span.line - 1].rstrip("\r")
    end_col = span.end_col if span.end_line == span.line else len(text) + 1
    end_col = max(end_col, span.col + 1)
    shown, col, end = _excerpt(text, span.col, end_col)
    gutter = " " * len(str(span.line))
    carets = " " * (col - 1) + "^" * max(1, end - col)
    if label:
        carets += " " + label
    return [
        f"{c(_BLUE)}{gutter} |{c(_RESET)}",
        f"{c(_BLUE)}{span.line} |{c(_RESET)} {shown}",
        f"{c(_BLUE)}{gutter} |{c(_RESET)} {c(style if label is None else _BLUE)}{carets}{c(_RESET)}",
    ]


def render_one(d: Diagnostic, sources: dict[str, str], colour: bool = False,
               split: dict[str, list[str] | None] | None = None) -> str:
    """One diagnostic. `split` keeps the lines of each source between calls, so that rendering
    many diagnostics of a long file splits it once, not once per snippet."""
    split = {} if split is None else split

    def lines(file: str) -> list[str] | None:
        if file not in split:
            source = sources.get(file)
            split[file] = None if source is None else source.split("\n")
        return split[file]

    def c(code: str) -> str:
        return code if colour else ""

    where = f"{d.span}: " if d.span else ""
    out = [f"{c(_BOLD)}{where}{c(_RESET)}{c(_STYLE[d.severity])}{d.severity}[{d.code}]{c(_RESET)}{c(_BOLD)}: {d.message}{c(_RESET)}"]
    if d.span:
        out += _snippet(d.span, lines(d.span.file), None, c, _STYLE[d.severity])
    for label in d.labels:
        out.append(f"{c(_BLUE)}  -->{c(_RESET)} {label.span}")
        out += _snippet(label.span, lines(label.span.file), label.message, c)
    for note in d.notes:
        out.append(f"  = note: {note}")
    if d.help:
        out.append(f"  = {c(_BOLD)}help{c(_RESET)}: {d.help}")
    return "\n".join(out)


def render_text(diagnostics: Sequence[Diagnostic], sources: dict[str, str], colour: bool | None = None) -> str:
    """Every diagnostic, sorted by file and position, then a one-line tally."""
    if colour is None:
        colour = use_colour()
    ordered = sorted(diagnostics, key=_sort_key)
    split: dict[str, list[str] | None] = {}
    parts = [render_one(d, sources, colour, split) for d in ordered]
    errors = sum(d.is_error for d in ordered)
    warnings = sum(d.severity == "warning" for d in ordered)
    if errors or warnings:
        tally = []
        if errors:
            tally.append(f"{errors} error{'s' * (errors != 1)}")
        if warnings:
            tally.append(f"{warnings} warning{'s' * (warnings != 1)}")
        parts.append(", ".join(tally) + " found")
    return "\n\n".join(parts)


def render_json(diagnostics: Sequence[Diagnostic]) -> str:
    return json.dumps([d.to_json() for d in sorted(diagnostics, key=_sort_key)], indent=2)


def _sort_key(d: Diagnostic):
    if d.span is None:
        return ("", 0, 0, d.code)
    return (d.span.file, d.span.line, d.span.col, d.code)

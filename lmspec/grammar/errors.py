"""The catalogue of syntax errors: lark exceptions -> helpful, located diagnostics.

Common mistakes are recognised by the parser state they leave the LALR parser
in (`UnexpectedInput.match_examples`, the lark idiom) or by the character the
lexer stopped at. Each entry has malformed examples; tests/test_syntax_errors.py
checks every one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from lmspec.diagnostics import Diagnostic, Label, Span

__all__ = ["CATALOGUE", "SyntaxMistake", "syntax_diagnostic", "span_at"]


@dataclass(frozen=True)
class SyntaxMistake:
    code: str
    message: str
    help: str
    examples: tuple[str, ...]


# Matched against the parser state of an UnexpectedToken. Order matters: the first match wins.
CATALOGUE: dict[str, SyntaxMistake] = {
    "missing_colon": SyntaxMistake(
        "LMS004",
        "expected ':' between the key and its value",
        "write `key: value`",
        ("model m { arch decoder }", "model m { layers 6 }", "model m { d_model 4 * 8 }",
         'data d { source "x" }', "model m { tie true }", "model m { a: 1\n b [1] }"),
    ),
    "trailing_comma_list": SyntaxMistake(
        "LMS006",
        "a trailing comma in a list",
        "remove the comma before ']'",
        ("model m { a: [1, ] }", "model m { a: [x, y, ] }"),
    ),
    "missing_value": SyntaxMistake(
        "LMS012",
        "expected a value after ':'",
        "give the key a value, e.g. `layers: 6`, or remove the key",
        ("model m { arch: }", "model m { arch: , layers: 2 }", "model m { a: 1 + }",
         "model m { a: f(x: ) }"),
    ),
    "trailing_comma_call": SyntaxMistake(
        "LMS006",
        "a trailing comma in an argument list",
        "remove the comma before ')'",
        ("model m { a: f(1, ) }", "model m { a: f(x: 1,) }", "model m { a: rope(theta: 10,) }"),
    ),
    "block_without_name": SyntaxMistake(
        "LMS001",
        "a block needs a kind and a name",
        "write `KIND NAME { ... }`, e.g. `model gpt { ... }`",
        ("model { layers: 2 }", "train { steps: 1 }"),
    ),
    "field_at_top_level": SyntaxMistake(
        "LMS001",
        "a field outside any block",
        "put fields inside a block: `model NAME { key: value }`",
        ("layers: 2", "model m { } steps: 3"),
    ),
    "two_values": SyntaxMistake(
        "LMS001",
        "two values in a row",
        "separate fields with a newline or a comma, or join the values with an operator (+ - * /)",
        ("model m { a: 1 2 }", "model m { a: x 2 }", 'model m { a: "x" "y" }', "model m { a: [1 2] }",
         "model m { a: f(1 2) }", "model m { a: [x y] }", "model m { a: f(x y) }"),
    ),
    "bad_layer_range": SyntaxMistake(
        "LMS001",
        "a layer override needs a layer number or a range",
        "write `layer 3 { ... }` or `layer 0..5 { ... }` (both ends inclusive)",
        ("model m { layer { a: 1 } }", "model m { layer x { a: 1 } }", "model m { layer 0.. { a: 1 } }"),
    ),
    "stray_closing": SyntaxMistake(
        "LMS013",
        "a closing bracket that matches nothing",
        "remove it, or add the opening bracket it belongs to",
        ("model m { } }", "model m { a: 1) }", "model m { a: [1]] }", "model m { a: f(1)) }"),
    ),
}


_TOKEN_TEXT = {
    "COLON": "':'", "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['",
    "RSQB": "']'", "_SEP": "','", "COMMA": "','", "DOT": "'.'", "PLUS": "'+'", "MINUS": "'-'",
    "STAR": "'*'", "SLASH": "'/'", "NAME": "a name", "NUMBER": "a number", "STRING": "a string",
    "$END": "the end of the file",
}

_NUMBERISH = re.compile(r"(?<![A-Za-z0-9_.])\d[A-Za-z0-9_.%]*")
_NUMBER = re.compile(r"\d[\d_]*(\.\d[\d_]*)?([eE][+-]?\d+)?([kMBT%])?")
_LAYER_RANGE = re.compile(r"\d[\d_]*\.\.\d[\d_]*")


def _describe(expected: set[str]) -> str:
    names = []
    for name in sorted(expected):
        text = _TOKEN_TEXT.get(name)
        if text is None:
            text = f"'{name.lower()}'" if name.isupper() and not name.startswith("_") else None
        if text and text not in names:
            names.append(text)
    if not names:
        return ""
    if len(names) > 6:
        names = names[:6] + ["..."]
    return "expected " + ", ".join(names)


def _token_text(tok) -> str:
    if tok.type == "$END":
        return "the end of the file"
    value = str(tok)
    return f"'{value[:40]}{'...' if len(value) > 40 else ''}'"


def span_at(text: str, pos: int, length: int, offsets) -> Span:
    """The span of `length` characters of `text` from offset `pos`, all on one line."""
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return offsets.span(line, col, line, col + length, pos, pos + length)


def _malformed_number(text: str, at: int, offsets) -> Diagnostic | None:
    """`10kb`, `1.2.3`, `3e`: digits run into letters the lexer splits apart, and the parser
    stumbles at or just after them. Only the line of the error (or of the last word before it)
    is searched: a number elsewhere in the file is not the problem, nor is a layer range."""
    last = len(text[:at].rstrip())  # the end of the last word before the error
    line_start = text.rfind("\n", 0, max(0, last - 1)) + 1
    for m in _NUMBERISH.finditer(text, line_start, min(len(text), at + 1)):
        word = m.group(0).rstrip(".")
        if word and not _NUMBER.fullmatch(word) and not _LAYER_RANGE.fullmatch(word):
            return Diagnostic("error", "LMS008", f"malformed number '{word[:40]}'",
                              span_at(text, m.start(), len(word), offsets),
                              help="numbers look like 512, 50_257, 10k, 2M, 1.5B, 3e-4, 0.1 or 15%")
    return None


_HEADER_START = re.compile(r"\s*lmspec\b\s*")
_OPENERS = {"{": "}", "[": "]", "(": ")"}  # each opening bracket and the one that closes it
_CLOSERS = {closer: opener for opener, closer in _OPENERS.items()}


def _open_brackets(text: str, end: int) -> list[int]:
    """Positions of the brackets still open at `end`, innermost last; comments and strings skipped."""
    stack, i = [], 0
    while i < end:
        ch = text[i]
        if ch == "#":
            j = text.find("\n", i)
            i = end if j < 0 else j
            continue
        if ch == '"':
            j = i + 1
            while j < end and text[j] not in '"\n':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if ch in "{[(":
            stack.append(i)
        elif ch in _CLOSERS and stack and text[stack[-1]] == _CLOSERS[ch]:
            stack.pop()
        i += 1
    return stack


def _never_closed(text: str, pos: int, offsets) -> Label:
    return Label(span_at(text, pos, 1, offsets), f"this '{text[pos]}' is never closed")


def _mismatched(text: str, pos: int, closer: str, offsets) -> tuple[Label, str] | None:
    """`[1, 2 }`: the closer at `pos` belongs to an outer bracket, so an inner one was never
    closed. Returns a label at the inner opening bracket and the closer it needs. A closer that
    matches no open bracket at all is a stray (the catalogue's LMS013), not this."""
    stack = _open_brackets(text, pos)
    if not stack or text[stack[-1]] == _CLOSERS[closer] or not any(text[j] == _CLOSERS[closer] for j in stack):
        return None
    inner = stack[-1]
    return _never_closed(text, inner, offsets), f"'{_OPENERS[text[inner]]}'"


def syntax_diagnostic(err: UnexpectedInput, text: str, offsets) -> Diagnostic:
    """Turn a lark exception into one diagnostic with the most helpful message we know."""
    line = getattr(err, "line", 1) or 1
    col = getattr(err, "column", 1) or 1
    pos = getattr(err, "pos_in_stream", None) or 0

    def at(length: int = 1):
        return offsets.span(line, col, line, col + max(1, length), pos, pos + max(1, length))

    bad_number = _malformed_number(text, pos, offsets)
    if bad_number is not None:
        return bad_number

    if isinstance(err, UnexpectedCharacters):
        ch = text[pos] if pos < len(text) else ""
        if ch == "=":
            return Diagnostic("error", "LMS005", "'=' is not how lmspec assigns", at(), help="write `key: value`")
        if ch == '"':
            end = text.find("\n", pos)
            end = len(text) if end < 0 else end
            return Diagnostic("error", "LMS007", "unterminated string", at(end - pos),
                              help='close the string with `"` on the same line')
        if ch == ";":
            return Diagnostic("error", "LMS002", "unexpected ';'", at(),
                              help="separate fields with a newline or a comma")
        if ch == ".":
            return Diagnostic("error", "LMS002", "unexpected '.'", at(),
                              help="a reference is `block.field`; a range is `layer 0..5`")
        shown = repr(ch)[1:-1] if ch else "end of file"
        return Diagnostic("error", "LMS002", f"unexpected character '{shown}'", at(),
                          help="lmspec text uses names, numbers, strings, brackets, ':' ',' '.' and + - * /")

    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken) and err.token.type == "$END"):
        still_open = _open_brackets(text, len(text))
        end_line = text.count("\n") + 1
        end_col = len(text) - (text.rfind("\n") + 1) + 1
        span = offsets.span(end_line, end_col, end_line, end_col + 1, len(text), len(text))
        if still_open:  # the innermost bracket is the one to close first
            inner = still_open[-1]
            return Diagnostic("error", "LMS003", "the file ends before a bracket is closed", span,
                              [_never_closed(text, inner, offsets)], help=f"add the missing '{_OPENERS[text[inner]]}'")
        header = _HEADER_START.fullmatch(text)
        if header is not None:  # `lmspec` and nothing after it
            return Diagnostic("error", "LMS010", "the version header needs a version number",
                              span_at(text, text.index("lmspec"), len("lmspec"), offsets),
                              help="the first line of a spec is `lmspec 1`")
        return Diagnostic("error", "LMS001", "the file ends too early", span,
                          help=_describe(set(getattr(err, "expected", ()) or ())) or None)

    if isinstance(err, UnexpectedToken):
        from lmspec.grammar.parser import lark_parser

        tok = err.token
        length = max(1, len(str(tok)))
        if _HEADER_START.fullmatch(text, 0, pos):  # `lmspec x`, `lmspec` alone
            return Diagnostic("error", "LMS010", f"the version header needs a version number, found {_token_text(tok)}",
                              at(length), help="the first line of a spec is `lmspec 1`")
        if tok.type == "DOT" and text[pos + 1:pos + 2].isdigit():  # `.5`
            end = _NUMBER.match(text, pos + 1).end()
            return Diagnostic("error", "LMS008", f"malformed number '{text[pos:end][:40]}'", at(end - pos),
                              help="write a digit before the point: 0.5")
        if str(tok) in _CLOSERS:
            mismatch = _mismatched(text, pos, str(tok), offsets)
            if mismatch is not None:
                return Diagnostic("error", "LMS003", f"expected {mismatch[1]} before {_token_text(tok)}", at(length),
                                  [mismatch[0]], help=f"add the missing {mismatch[1]}")
        try:
            kind = err.match_examples(lark_parser().parse, {k: v.examples for k, v in CATALOGUE.items()},
                                      use_accepts=True)
        except Exception:  # a failure inside the matcher must never hide the real error
            kind = None
        if kind is not None:
            mistake = CATALOGUE[kind]
            return Diagnostic("error", mistake.code, f"{mistake.message}, found {_token_text(tok)}", at(length),
                              help=mistake.help)
        expected = _describe(set(err.expected or ()))
        return Diagnostic("error", "LMS001", f"unexpected {_token_text(tok)}", at(length), help=expected or None)

    return Diagnostic("error", "LMS001", str(err).splitlines()[0], at())

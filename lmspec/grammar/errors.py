"""The catalogue of syntax errors: lark exceptions -> helpful, located diagnostics.

Common mistakes are recognised by the parser state they leave the LALR parser
in (the rule of lark's `UnexpectedInput.match_examples`, less the stack depth),
by the text around the token the parser stopped at (`layers:` then the next key
on a new line), or by the character the lexer stopped at. Each catalogue entry
has malformed examples, which are also moved to every other place the mistake
can sit (`placements`: a later field, a nested block, a layer override, a block
with `extends`); tests/test_syntax_errors.py checks every example in every place.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from lmspec.diagnostics import Diagnostic, Label, Span

__all__ = ["CATALOGUE", "SyntaxMistake", "placements", "syntax_diagnostic", "span_at"]


@dataclass(frozen=True)
class SyntaxMistake:
    code: str
    message: str
    help: str
    examples: tuple[str, ...]
    # the tokens this mistake can be found at (lark's token types); empty: any token in its state
    tokens: frozenset[str] = frozenset()


_VALUE_START = frozenset({"NAME", "NUMBER", "STRING", "TRUE", "FALSE", "LSQB"})
_CLOSING = frozenset({"RBRACE", "RSQB", "RPAR"})

# Matched against the parser state of an UnexpectedToken. An example that stops at the very
# token of the error wins; otherwise the first entry whose example stops in the same state.
CATALOGUE: dict[str, SyntaxMistake] = {
    "missing_colon": SyntaxMistake(
        "LMS004",
        "expected ':' between the key and its value",
        "write `key: value`",
        ("model m { arch decoder }", "model m { layers 6 }", "model m { d_model 4 * 8 }",
         'data d { source "x" }', "model m { tie true }", "model m { a: 1\n b [1] }", "model m { a - 1 }"),
        _VALUE_START | {"MINUS", "RBRACE", "_SEP"},
    ),
    "dotted_key": SyntaxMistake(
        "LMS001",
        "a key is a single name",
        "write the field inside its nested block: `a { b: 1 }`",
        ("model m { a.b: 1 }",),
        frozenset({"DOT"}),
    ),
    "colon_before_block": SyntaxMistake(
        "LMS001",
        "a nested block takes no ':'",
        "write `NAME { ... }`, without the ':'",
        ("model m { n: { a: 1 } }",),
        frozenset({"LBRACE"}),
    ),
    "trailing_comma_list": SyntaxMistake(
        "LMS006",
        "a trailing comma in a list",
        "remove the comma before ']'",
        ("model m { a: [1, ] }", "model m { a: [x, y, ] }"),
        frozenset({"RSQB"}),
    ),
    "extra_comma": SyntaxMistake(
        "LMS001",
        "a comma with nothing before it",
        "remove the extra comma",
        ("model m { a: 1,, b: 2 }", "model m { a: [1,, 2] }", "model m { a: [, 1] }",
         "model m { a: f(, 1) }", "model m { a: f(1,, 2) }"),
        frozenset({"_SEP"}),
    ),
    "missing_value": SyntaxMistake(
        "LMS012",
        "expected a value after ':'",
        "give the key a value, e.g. `layers: 6`, or remove the key",
        ("model m { arch: }", "model m { arch: , layers: 2 }", "model m { a: f(x: ) }"),
    ),
    "missing_operand": SyntaxMistake(
        "LMS001",
        "an operator without a value after it",
        "give the operator a value on each side, or remove it",
        ("model m { a: 1 + }", "model m { a: 1 - }", "model m { a: 2 * }", "model m { a: 2 / }",
         "model m { a: 2 ** }", "model m { a: - }", "model m { a: [1 + ] }", "model m { a: f(2 * ) }"),
    ),
    "trailing_comma_call": SyntaxMistake(
        "LMS006",
        "a trailing comma in an argument list",
        "remove the comma before ')'",
        ("model m { a: f(1, ) }", "model m { a: f(x: 1,) }", "model m { a: rope(theta: 10,) }"),
        frozenset({"RPAR"}),
    ),
    "tuple": SyntaxMistake(
        "LMS001",
        "a list is written in square brackets",
        "write `[1, 2]`; parentheses only group an expression: `(a + b) * 2`",
        ("model m { a: (1, 2) }",),
        frozenset({"_SEP"}),
    ),
    "block_without_name": SyntaxMistake(
        "LMS001",
        "a block needs a kind and a name",
        "write `KIND NAME { ... }`, e.g. `model gpt { ... }`",
        ("model { layers: 2 }", "train { steps: 1 }", 'model "m" { }'),
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
        "separate fields with a newline or a comma, or join the values with an operator (+ - * / **)",
        ("model m { a: 1 2 }", "model m { a: x 2 }", 'model m { a: "x" "y" }', "model m { a: [1 2] }",
         "model m { a: f(1 2) }", "model m { a: [x y] }", "model m { a: f(x y) }", "model m { a: 1 [2] }"),
        _VALUE_START,
    ),
    "bad_layer_range": SyntaxMistake(
        "LMS001",
        "a layer override needs a layer number or a range",
        "write `layer 3 { ... }`, `layer 0..5 { ... }` (both ends inclusive) or `layer every 2 { ... }`",
        ("model m { layer { a: 1 } }", "model m { layer x { a: 1 } }", "model m { layer 0.. { a: 1 } }"),
    ),
    "bad_layer_every": SyntaxMistake(
        "LMS001",
        "`every` and `from` each take a layer number",
        "write `layer every 2 { ... }` (layers 0, 2, 4, ...), `layer every 6 from 5 { ... }` (5, 11, 17, ...) "
        "or `layer 0..7 every 2 { ... }`",
        ("model m { layer every { a: 1 } }", "model m { layer every x { a: 1 } }",
         "model m { layer every 2 from { a: 1 } }", "model m { layer 0..3 every { a: 1 } }"),
    ),
    "stray_closing": SyntaxMistake(
        "LMS013",
        "a closing bracket that matches nothing",
        "remove it, or add the opening bracket it belongs to",
        ("model m { a: 1 }\n}", "model m { a: 1) }", "model m { a: [1]] }", "model m { a: f(1)) }", "}", ")"),
        _CLOSING,
    ),
}


# Where else the mistake of an example can sit: (prefix, suffix) around the body of its block.
# The LALR state of an error also holds what came before it (the `{` of a block, of a nested
# block or of a layer override; a field; a comma), so each place can be a state of its own.
_PLACES_IN_A_BLOCK = {
    "after a field and a newline": ("{head} {{\n  ok: 1\n  ", " }}"),
    "after a field and a comma": ("{head} {{ ok: 1, ", " }}"),
    "after two fields": ("{head} {{\n  ok: [1, 2]\n  more: f(x: 1),\n  ", " }}"),
    "after a nested block": ("{head} {{ n {{ x: 1 }}\n  ", " }}"),
    "in a nested block": ("{head} {{ n {{ ", " }} }}"),
    "after a field in a nested block": ("{head} {{ n {{ x: 1, ", " }} }}"),
    "in a block nested twice": ("{head} {{ n {{ o {{\n  x: 1\n  ", " }} }} }}"),
    "in a layer override": ("{head} {{ layer 0 {{ ", " }} }}"),
    "after a field in a layer range": ("{head} {{ layer 0..3 {{ x: 1\n  ", " }} }}"),
    "with extends": ("{head} extends base {{ ", " }}"),
    "with extends, after a field": ("{head} extends base {{ x: 1, ", " }}"),
    "after the header and another block": ("lmspec 1\nmodel a {{ }}\n{head} {{\n  x: 1\n  ", " }}"),
}
_PLACES_AT_TOP = {
    "after the header": ("lmspec 1\n", ""),
    "after a comment and a block": ("# spec\nmodel a {{ x: 1 }}\n", ""),
}
_BLOCK_EXAMPLE = re.compile(r"(\w+ \w+) \{ (.*) \}", re.S)


def placements(example: str) -> dict[str, tuple[str, int]]:
    """The example moved to each other place its mistake can sit: place -> (text, how far
    the mistake moved). A mistake inside a block (`model m { BODY }`) moves after other
    fields, into nested blocks and layer overrides; the closing brace stays on the mistake's
    line. Any other example moves after a header and after another block."""
    m = _BLOCK_EXAMPLE.fullmatch(example)
    if m is None:
        places, head, body, body_at = _PLACES_AT_TOP, "", example, 0
    else:
        places, (head, body), body_at = _PLACES_IN_A_BLOCK, m.groups(), m.start(2)
    moved = {}
    for place, (prefix, suffix) in places.items():
        prefix = prefix.format(head=head)
        moved[place] = (prefix + body + suffix.format(), len(prefix) - body_at)
    return moved


def _state_key(err: UnexpectedInput) -> tuple[int, frozenset[str]] | None:
    """The LALR state an error left the parser in, and the tokens it would have accepted.

    lark's `match_examples` also compares the depth of the parser's stack, so an example
    written on a block's first field would not match the same mistake on a later field, in
    a nested block, or after a header. What the parser expects next depends only on its
    state and the tokens it accepts, so the depth is left out."""
    state = getattr(err, "state", None)
    if not isinstance(err, UnexpectedToken) or state is None or not hasattr(state, "position"):
        return None
    return state.position, frozenset(_accepts(err))


def _accepts(err: UnexpectedToken) -> set[str]:
    """The tokens the parser would have taken where it stopped (lark tries each one)."""
    try:
        return set(err.accepts or err.expected or ())
    except Exception:  # the trial parse failing must never hide the real error
        return set(err.expected or ())


def _stop(text: str) -> tuple[tuple[int, frozenset[str]] | None, int, str] | None:
    """Where the parser stops in `text`: (state key, offset, token), or None if it parses."""
    from lmspec.grammar.parser import lark_parser

    try:
        lark_parser().parse(text)
    except UnexpectedToken as err:
        return _state_key(err), err.pos_in_stream or 0, str(err.token)
    except UnexpectedInput:
        return None
    return None


_Index = dict[tuple[int, frozenset[str]], list[tuple[str, str]]]


@functools.lru_cache(maxsize=1)
def _catalogue_index() -> tuple[_Index, _Index]:
    """(state, accepted tokens) -> [(entry, the token its example stopped at)], in catalogue
    order: one index for the examples as written, one for the examples moved to every other
    place (`placements`) where they stop at the same token. The first is asked first: a
    move can change what the text means (in `ok: 1\n  1: 2` the `1` is a second value)."""
    written: _Index = {}
    moved: _Index = {}

    def add(index: _Index, key, entry) -> None:
        if entry not in index.setdefault(key, []):
            index[key].append(entry)

    for name, mistake in CATALOGUE.items():
        for example in mistake.examples:
            original = _stop(example)
            if original is None or original[0] is None:
                continue
            key, at, token = original
            add(written, key, (name, token))
            for text, shift in placements(example).values():
                stop = _stop(text)
                if stop is not None and stop[0] is not None and stop[1:] == (at + shift, token):
                    add(moved, stop[0], (name, token))
    return written, moved


def _catalogue_match(err: UnexpectedToken) -> str | None:
    """The entry whose example stopped in the same state, preferring one that stopped at the
    same token: `match_examples`' rule, without the stack depth, and computed once."""
    try:
        key = _state_key(err)
        indexes = _catalogue_index()
    except Exception:  # a failure inside the matcher must never hide the real error
        return None
    for index in indexes:
        found = [(name, token) for name, token in index.get(key, [])
                 if not CATALOGUE[name].tokens or err.token.type in CATALOGUE[name].tokens]
        exact = [name for name, token in found if token == str(err.token)]
        if exact or found:
            return (exact or [name for name, _ in found])[0]
    return None


_TOKEN_TEXT = {
    "COLON": "':'", "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['",
    "RSQB": "']'", "_SEP": "','", "COMMA": "','", "DOT": "'.'", "PLUS": "'+'", "MINUS": "'-'",
    "STAR": "'*'", "DOUBLESTAR": "'**'", "SLASH": "'/'", "NAME": "a name", "NUMBER": "a number", "STRING": "a string",
    "$END": "the end of the file",
}

# a word that starts with a digit; the sign of an exponent (`3e-4`, `1E+5`) is part of it
_NUMBERISH = re.compile(r"(?<![A-Za-z0-9_.])\d(?:[A-Za-z0-9_.%]|(?<=\d[eE])[+-])*")
_NUMBER = re.compile(r"\d[\d_]*(\.\d[\d_]*)?([eE][+-]?\d+)?([kMBT%])?")
_LAYER_RANGE = re.compile(r"\d[\d_]*\.\.\d[\d_]*")


# listed after the other tokens: after a value every operator is possible, and five of them
# would fill the list before the closing bracket or the separator the reader is after
_OPERATORS = frozenset({"PLUS", "MINUS", "STAR", "SLASH", "DOUBLESTAR"})


def _describe(expected: set[str]) -> str:
    names = []
    for name in sorted(expected, key=lambda n: (n in _OPERATORS, n)):
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
    is searched, up to the word the error is at (read to its end: in `a: 1 10kb` the parser
    stops at `10`): a number elsewhere in the file is not the problem, nor is a layer range."""
    last = len(text[:at].rstrip())  # the end of the last word before the error
    line_start = text.rfind("\n", 0, max(0, last - 1)) + 1
    line_end = text.find("\n", at)
    for m in _NUMBERISH.finditer(text, line_start, len(text) if line_end < 0 else line_end):
        if m.start() > at:
            break
        word = m.group(0).rstrip(".")
        if word and not _NUMBER.fullmatch(word) and not _LAYER_RANGE.fullmatch(word):
            return Diagnostic("error", "LMS008", f"malformed number '{word[:40]}'",
                              span_at(text, m.start(), len(word), offsets),
                              help="numbers look like 512, 50_257, 10k, 2M, 1.5B, 3e-4, 0.1 or 15%")
    return None


_STRING_OR_HASH = re.compile(r'"(?:[^"\\\n]|\\[^\n])*"?|#')
_NAME_AT_END = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z_][A-Za-z0-9_]*\Z")
_COLON_NEXT = re.compile(r"[ \t]*:")
_BLOCK_BODY_NEXT = re.compile(r"[ \t]*(\{|extends\b)")  # after `KIND NAME`
_VALUE_END = re.compile(r'[A-Za-z0-9_"\])%]')  # the last character of a value


def _last_code(text: str, pos: int) -> int | None:
    """The position of the last character before `pos` that is neither space nor comment."""
    end = pos
    while end > 0:
        start = text.rfind("\n", 0, end) + 1
        code_end = end
        for m in _STRING_OR_HASH.finditer(text, start, end):
            if m.group() == "#":
                code_end = m.start()
                break
        code = text[start:code_end].rstrip()
        if code:
            return start + len(code) - 1
        end = start - 1
    return None


def _word_before(text: str, pos: int) -> tuple[int, int] | None:
    """(start, end) of the name just before `pos`, past space and comments."""
    last = _last_code(text, pos)
    if last is None:
        return None
    m = _NAME_AT_END.search(text, text.rfind("\n", 0, last) + 1, last + 1)
    return None if m is None else (m.start(), m.end())


def _colon_on_an_earlier_line(text: str, pos: int) -> int | None:
    """`layers:` and, on a later line, `pos`: where that ':' is."""
    colon = _last_code(text, pos)
    if colon is None or text[colon] != ":" or "\n" not in text[colon:pos]:
        return None
    return colon


def _next_key_read_as_value(text: str, pos: int, tok) -> tuple[int, tuple[int, int]] | None:
    """`layers:\n  heads: 4`: newlines are space, so the parser reads `heads` as the value of
    `layers` and stops at the second ':' (or at the `{` of `n {`, the `0` of `layer 0 {`). A
    value never continues as `NAME :`, `NAME {` or `layer 0`, so the key before the newline is
    missing its value. Returns where its ':' is and the span of the next key."""
    word = _word_before(text, pos)
    if word is None:
        return None
    if not (tok.type in ("COLON", "LBRACE") or tok.type == "NUMBER" and text[word[0]:word[1]] == "layer"):
        return None
    colon = _colon_on_an_earlier_line(text, word[0])
    return None if colon is None else (colon, word)


def _value_then_name(text: str, pos: int) -> tuple[int, int] | None:
    """`lr: 3e-4 x }`: the parser takes `x` for the next key and stops for want of its ':'.
    On the line of a value with no comma between, `x` is a second value; returns its span."""
    word = _word_before(text, pos)
    if word is None:
        return None
    before = _last_code(text, word[0])
    if before is None or "\n" in text[before:word[0]] or not _VALUE_END.match(text, before):
        return None
    return word


def _after_a_value(accepts: set[str]) -> bool:
    """Whether the parser has just read a whole value: it would take an operator next, or,
    in a list or call (where LALR reduces the value to an item before it sees the error),
    only the end of the item."""
    return bool(accepts & {"PLUS", "FROM", "WITH"}) or bool(accepts) and accepts <= {"RPAR", "RSQB", "_SEP"}


def _ascii_spelling(word: str) -> str | None:
    """`modèle` -> `modele`: the name with its accents dropped, if that leaves a valid name."""
    spelled = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))
    return spelled if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", spelled) else None


def _non_ascii_name(text: str, pos: int, at) -> Diagnostic | None:
    """A letter outside ASCII inside a word: `model modèle { }`."""
    ch = text[pos] if pos < len(text) else ""
    if not ch.isalpha() or ch.isascii():
        return None
    start, end = pos, pos + 1
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
        start -= 1
    while end < len(text) and (text[end].isalnum() or text[end] == "_"):
        end += 1
    if end - start < 2 or text[start].isdigit():  # a lone letter, or a number's unit (`5µs`), is no name
        return None
    word = text[start:end]
    spelled = _ascii_spelling(word)
    return Diagnostic("error", "LMS002", f"names use ASCII letters, digits and '_'; found '{ch}' in '{word[:40]}'",
                      at(), help=f"write it in ASCII: `{spelled}`" if spelled else
                      "spell the name with ASCII letters (a-z, A-Z), digits and '_'")


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


def _unexpected_token(err: UnexpectedToken, text: str, pos: int, offsets, at) -> Diagnostic:
    """A token the parser cannot take: first the mistakes told by the text around it, then the
    catalogue, then what the parser would have accepted."""
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
    if tok.type == "SLASH" and text[pos - 1:pos] == "/":  # `a: 1  // note`
        return Diagnostic("error", "LMS001", "'//' does not start a comment", span_at(text, pos - 1, 2, offsets),
                          help="comments start with '#'")
    missing = CATALOGUE["missing_value"]
    read_as_value = _next_key_read_as_value(text, pos, tok)
    if read_as_value is not None:
        colon, (key_start, key_end) = read_as_value
        key = text[key_start:key_end]
        what = "key" if tok.type == "COLON" else "block"
        return Diagnostic("error", missing.code, f"{missing.message}, found the next {what} '{key[:40]}'",
                          span_at(text, colon, 1, offsets),
                          [Label(span_at(text, key_start, key_end - key_start, offsets),
                                 "read as the value, since newlines are space")], help=missing.help)
    accepts = _accepts(err)
    if tok.type in ("NUMBER", "STRING") and "NAME" in accepts and _COLON_NEXT.match(text, tok.end_pos):
        return Diagnostic("error", "LMS001", f"a key must be a name, found {_token_text(tok)}", at(length),
                          help="start a key with a letter or '_', and write it without quotes: `d_model: 64`")
    kind = _catalogue_match(err)
    if kind is None and tok.type in _VALUE_START and _after_a_value(accepts):
        # a whole value, then the start of another: what `two_values` names, after any kind
        # of value (`f(1) 2`, `x.y 2`, `(1) 2`) and in any list or call
        kind = "two_values"
    if kind == "missing_colon" and tok.type == "NAME" and _BLOCK_BODY_NEXT.match(text, tok.end_pos):
        still_open = _open_brackets(text, pos)
        kind_start = (_word_before(text, pos) or (pos, pos))[0]
        return Diagnostic("error", "LMS001", "a block header inside a block",
                          span_at(text, kind_start, pos + length - kind_start, offsets),
                          [_never_closed(text, still_open[-1], offsets)] if still_open else [],
                          help="close the block before it with '}'; a nested block is `NAME { ... }`")
    if kind == "missing_colon":
        second = _value_then_name(text, pos)
        if second is not None:
            two = CATALOGUE["two_values"]
            return Diagnostic("error", two.code, f"{two.message}, found '{text[second[0]:second[1]][:40]}'",
                              span_at(text, second[0], second[1] - second[0], offsets), help=two.help)
    if kind is not None:
        mistake = CATALOGUE[kind]
        span = at(length)
        colon = _colon_on_an_earlier_line(text, pos) if mistake is missing else None
        if colon is not None:  # `layers:` then `}` on the next line: the key is what lacks a value
            span = span_at(text, colon, 1, offsets)
        return Diagnostic("error", mistake.code, f"{mistake.message}, found {_token_text(tok)}", span,
                          help=mistake.help)
    # what the parser accepts here, not its state's lookahead, which LALR shares between
    # contexts (a `}` is no use inside a call)
    expected = _describe(accepts)
    return Diagnostic("error", "LMS001", f"unexpected {_token_text(tok)}", at(length), help=expected or None)


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
        if ch == "'":
            return Diagnostic("error", "LMS002", "a string in single quotes", at(),
                              help='write strings in double quotes: "text"')
        non_ascii = _non_ascii_name(text, pos, at)
        if non_ascii is not None:
            return non_ascii
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
        return _unexpected_token(err, text, pos, offsets, at)

    return Diagnostic("error", "LMS001", str(err).splitlines()[0], at())

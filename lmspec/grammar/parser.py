"""Text -> `ast.SpecFile`, with located diagnostics instead of exceptions.

`parse(text, path)` never raises for bad input: it returns the tree it could
build (possibly partial) and a list of diagnostics. When the file as a whole
does not parse, each top-level block is parsed on its own so that one typo
does not hide the errors of the blocks after it.
"""

from __future__ import annotations

import functools
import gc
import re
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

from lark import Lark, Token, Transformer_NonRecursive, Tree
from lark import __version__ as lark_version
from lark.exceptions import UnexpectedInput, VisitError

from lmspec.diagnostics import Diagnostic, Span
from lmspec.grammar import ast
from lmspec.grammar.errors import span_at, syntax_diagnostic

__all__ = ["parse", "parse_file", "lark_parser", "number_value", "MAX_NESTING", "MAX_EXPRESSION_DEPTH",
           "MAX_EXPRESSION_NODES", "MAX_NUMBER", "LANGUAGE_VERSION", "gc_paused"]

LANGUAGE_VERSION = 1
MAX_NESTING = 64  # brackets and braces; deeper specs are refused with LMS011
MAX_EXPRESSION_NODES = 2_000  # operators/operands in one value
# Resolution evaluates expressions recursively (one Python frame per level), so `1 + 1 + ...`
# with thousands of terms would exhaust the interpreter's stack; no real value is this deep.
MAX_EXPRESSION_DEPTH = 100
# Numbers beyond a float's range cannot be compared, converted or printed safely (CPython
# refuses to print ints of more than 4300 digits); a spec has no use for them.
MAX_NUMBER = 1.7976931348623157e308

_SUFFIX = {"k": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_BAD_UNDERSCORE = re.compile(r"_(?![0-9])")  # `1_`, `1__0`, `1_.5`, `1_k`


@functools.lru_cache(maxsize=1)
def lark_parser() -> Lark:
    """The LALR parser of `lmspec.lark`: loaded from the shipped tables (`grammar.tables`) when
    they were built from this grammar by this lark version, else built from the grammar."""
    from lmspec.grammar import tables

    try:
        shipped = tables.read_tables()
    except (OSError, ValueError):  # no tables (a source tree without them): build
        shipped = {}
    if shipped.get("grammar_sha256") == tables.grammar_sha256() and shipped.get("lark_version") == lark_version:
        return Lark._load_from_dict(shipped["data"], shipped["memo"])
    return tables.build_parser()


def number_value(raw: str) -> int | float:
    """`50_257` -> 50257, `2k` -> 2000, `1.5M` -> 1500000, `15%` -> 0.15, `3e-4` -> 0.0003.

    Raises OverflowError for a number beyond MAX_NUMBER (`1e999`, a thousand digits)."""
    text = raw.replace("_", "")
    scale: int | None = None
    percent = False
    if text.endswith("%"):
        percent, text = True, text[:-1]
    elif text[-1] in _SUFFIX:
        scale, text = _SUFFIX[text[-1]], text[:-1]
    if len(text) > 400:  # int() refuses more than 4300 digits; anything this long is out of range
        raise OverflowError(raw)
    is_int = all(ch.isdigit() for ch in text)
    value: int | float
    if percent:
        value = float(Decimal(text) / 100)
    elif scale is not None:
        # exact decimal scaling: `0.1k` is 100, not 100.00000000000001
        exact = Decimal(text) * scale
        value = int(exact) if exact == exact.to_integral_value() else float(exact)
    else:
        value = int(text) if is_int else float(text)
    if abs(value) > MAX_NUMBER:
        raise OverflowError(raw)
    return value


class _Offsets:
    """Where a parsed fragment sits in its file, so spans point at the real file."""

    def __init__(self, path: str, line: int = 0, char: int = 0):
        self.path, self.line, self.char = path, line, char

    def span(self, line: int, col: int, end_line: int, end_col: int, start: int, end: int) -> Span:
        return Span(self.path, line + self.line, col, end_line + self.line, end_col, start + self.char, end + self.char)

    def of_token(self, tok: Token) -> Span:
        return self.span(tok.line, tok.column, tok.end_line, tok.end_column, tok.start_pos, tok.end_pos)

    def of_meta(self, meta) -> Span:
        return self.span(meta.line, meta.column, meta.end_line, meta.end_column, meta.start_pos, meta.end_pos)


def _unescape(raw: str) -> str:
    body, out, i = raw[1:-1], [], 0
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            out.append(escapes.get(body[i + 1], "\\" + body[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class _ToAst(Transformer_NonRecursive):
    """Parse tree -> AST. Syntax only: no checks of meaning here."""

    def __init__(self, offsets: _Offsets):
        super().__init__()
        self.o = offsets
        self.problems: list[Diagnostic] = []  # the few lexical checks the grammar is too loose for

    def _ident(self, tok: Token) -> ast.Ident:
        return ast.Ident(str(tok), self.o.of_token(tok))

    def __default__(self, data, children, meta):  # pragma: no cover - every rule is handled
        raise NotImplementedError(data)

    def _call_userfunc(self, tree: Tree, new_children=None):
        children = new_children if new_children is not None else tree.children
        return getattr(self, tree.data)(children, tree.meta)

    # structure
    def start(self, c, meta):
        header = c[0] if c and isinstance(c[0], ast.Header) else None
        if header is not None:
            c = c[1:]
        elif c and c[0] is None:
            c = c[1:]
        imports = tuple(x for x in c if isinstance(x, ast.Import))
        blocks = tuple(x for x in c if isinstance(x, ast.Block))
        return ast.SpecFile(self.o.path, header, imports, blocks)

    def header(self, c, meta):
        raw = str(c[0])
        return ast.Header(int(raw) if raw.isdigit() and len(raw) < 10 else -1, self.o.of_meta(meta), raw[:40])

    def import_stmt(self, c, meta):
        return ast.Import(_unescape(str(c[0])), self.o.of_meta(meta))

    def block(self, c, meta):
        kind, name, extends, *entries = c
        return ast.Block(self._ident(kind), self._ident(name), extends, tuple(entries), self.o.of_meta(meta))

    def extends(self, c, meta):
        return self._ident(c[0])

    def field(self, c, meta):
        key, value = self._ident(c[0]), self._expr(c[1])
        depth, size = _expression_shape(value)
        if depth > MAX_EXPRESSION_DEPTH or size > MAX_EXPRESSION_NODES:
            what = (f"is nested more than {MAX_EXPRESSION_DEPTH} levels deep" if depth > MAX_EXPRESSION_DEPTH
                    else f"has more than {MAX_EXPRESSION_NODES} terms")
            self.problems.append(Diagnostic("error", "LMS011", f"the value of '{key.name}' {what}", key.span,
                                            help="split it into several fields"))
            value = ast.Invalid(value.span)
        return ast.Field(key, value, self.o.of_meta(meta))

    def nested(self, c, meta):
        return ast.Nested(self._ident(c[0]), tuple(c[1:]), self.o.of_meta(meta))

    def layer_block(self, c, meta):
        (first, last, every, range_span), *entries = c
        return ast.LayerOverride(first, last, range_span, tuple(entries), self.o.of_meta(meta), every)

    def layer_range(self, c, meta):
        first = self._layer_number(c[0])
        last = self._layer_number(c[1]) if c[1] is not None else first
        return first, last, 1, self.o.of_meta(meta)

    def layer_range_every(self, c, meta):
        first, last, every = (self._layer_number(t) for t in c)
        return first, last, every, self.o.of_meta(meta)

    def layer_every(self, c, meta):
        every = self._layer_number(c[0])
        first = self._layer_number(c[1]) if c[1] is not None else 0
        return first, None, every, self.o.of_meta(meta)

    def _layer_number(self, tok: Token) -> int:
        # NUMBER also matches `0.1` or `50%`; a layer index must be whole. Reported here because
        # the grammar reads `layer 0.1` (a typo for `0..1`) as one number.
        try:
            value = number_value(str(tok))
        except OverflowError:
            value = 0.5  # not a usable layer either; reported below
        if isinstance(value, int):
            return value
        self.problems.append(Diagnostic(
            "error", "LMS001", f"a layer number must be a whole number, found '{tok}'", self.o.of_token(tok),
            help="write `layer 3 { ... }`, `layer 0..5 { ... }` (both ends inclusive) or `layer every 2 { ... }`"))
        return int(value)

    # expressions

    def _expr(self, x):
        """An expression child: an AST node already, or a NUMBER, STRING or NAME token."""
        if type(x) is not Token:
            return x
        if x.type == "NAME":
            return ast.Name(str(x), self.o.of_token(x))
        if x.type == "NUMBER":
            return self._number(x)
        return ast.String(_unescape(str(x)), self.o.of_token(x))

    def _number(self, tok: Token):
        raw, span = str(tok), self.o.of_token(tok)
        if _BAD_UNDERSCORE.search(raw):  # the token's pattern lets `1_` and `1__0` through
            self.problems.append(Diagnostic("error", "LMS008", f"malformed number '{raw[:40]}'", span,
                                            help="an underscore goes between two digits: 50_257"))
            return ast.Invalid(span)
        try:
            return ast.Number(number_value(raw), raw, span)
        except OverflowError:
            shown = raw if len(raw) <= 40 else raw[:20] + "..." + raw[-10:]
            self.problems.append(Diagnostic("error", "LMS032", f"the number '{shown}' is too large", span,
                                            help=f"numbers in a spec are at most {MAX_NUMBER:.3g}"))
            return ast.Invalid(span)

    def true(self, c, meta):
        return ast.Bool(True, self.o.of_meta(meta))

    def false(self, c, meta):
        return ast.Bool(False, self.o.of_meta(meta))

    def list(self, c, meta):
        return ast.ListExpr(tuple(self._expr(x) for x in c if x is not None), self.o.of_meta(meta))

    def attr(self, c, meta):
        return ast.Attr(self._expr(c[0]), self._ident(c[1]), self.o.of_meta(meta))

    def call(self, c, meta):
        func, *args = c
        positional = tuple(a[1] for a in args if a is not None and a[0] is None)
        keywords = tuple(a for a in args if a is not None and a[0] is not None)
        return ast.Call(self._expr(func), positional, keywords, self.o.of_meta(meta))

    def pos_arg(self, c, meta):
        return (None, self._expr(c[0]))

    def kw_arg(self, c, meta):
        return (self._ident(c[0]), self._expr(c[1]))

    def _binop(op):  # noqa: N805 - a small factory for the five operators
        def method(self, c, meta):
            return ast.BinOp(op, self._expr(c[0]), self._expr(c[1]), self.o.of_meta(meta))

        return method

    add, sub, mul, div, pow = _binop("+"), _binop("-"), _binop("*"), _binop("/"), _binop("**")

    def neg(self, c, meta):
        return ast.Neg(self._expr(c[0]), self.o.of_meta(meta))

    def from_stage(self, c, meta):
        return ast.FromStage(self._expr(c[0]), self._ident(c[1]), self.o.of_meta(meta))

    def with_field(self, c, meta):
        return ast.WithField(self._expr(c[0]), self._ident(c[1]), self._expr(c[2]), self.o.of_meta(meta))


# ----------------------------------------------------------------------------- scanning


_SCAN = re.compile(r'[{}\[\]()]|"(?:[^"\\\n]|\\[^\n])*"?|#[^\n]*')  # brackets, strings, comments
_NON_SPACE = re.compile(r"\S")
_OPENING = {"}": "{", "]": "[", ")": "("}
# `KIND NAME [extends BASE] {` at the start of a line: a block header, which cannot occur inside
# a block (a nested block is `NAME {`, a layer override `layer 0..3 {`)
_BLOCK_HEAD = re.compile(r"(?!layer\b)[A-Za-z_]\w*[ \t]+[A-Za-z_]\w*(?:[ \t]+extends[ \t]+[A-Za-z_]\w*)?[ \t]*")
_BLOCK_NAMES = re.compile(r"^(?!layer\b)[A-Za-z_]\w*[ \t]+([A-Za-z_]\w*)(?:[ \t]+extends[ \t]+[A-Za-z_]\w*)?[ \t]*\{",
                          re.M)


def _scan(text: str, path: str) -> tuple[list[tuple[int, int]], list[Diagnostic]]:
    """One linear pass over the text: nesting depth (refuse absurd depth before lark
    or the transformer can recurse), and the top-level segments (header, imports, and
    each block up to its closing brace) used to recover after a syntax error.

    A segment starts at the line of its first character outside any bracket (so columns
    stay right) and ends where its block closes, or where a block header begins a line:
    the header and import lines are one segment, each block another, and a block left
    open (a forgotten `}`) ends where the next one begins, so the blocks after it are
    still checked."""
    def line_of_first_char(end: int) -> int | None:
        """Where the line begins of the first character of text[free_from:end] that is not space."""
        first = _NON_SPACE.search(text, free_from, end)
        return None if first is None else text.rfind("\n", 0, first.start()) + 1

    segments: list[tuple[int, int]] = []
    open_brackets: list[str] = []  # innermost last
    seg_start, free_from = None, 0  # free_from: where text outside any segment begins
    for m in _SCAN.finditer(text):
        i, ch = m.start(), text[m.start()]
        if seg_start is None and not open_brackets:
            seg_start = line_of_first_char(i + 1)
        if ch in '"#':
            continue
        if ch in "{[(":
            if ch == "{" and seg_start is not None:
                line_start = text.rfind("\n", 0, i) + 1
                if line_start > seg_start and _BLOCK_HEAD.fullmatch(text, line_start, i):
                    # a block header begins a new segment: the header and import lines before the
                    # first block are a segment of their own, and an unclosed block ends here
                    segments.append((seg_start, line_start))
                    seg_start, open_brackets = line_start, []
            open_brackets.append(ch)
            if len(open_brackets) > MAX_NESTING:
                span = span_at(text, i, 1, _Offsets(path))
                return [], [Diagnostic("error", "LMS011", f"brackets nested deeper than {MAX_NESTING} levels", span,
                                       help="flatten the expression or split it into fields")]
        else:
            # only the closer of the innermost bracket closes it: one of another kind is a
            # mistake the parser reports, and a `)` too many inside a nested block must not
            # end the block (the rest of it would be taken for another block)
            if open_brackets and open_brackets[-1] != _OPENING[ch]:
                continue
            if open_brackets:
                open_brackets.pop()
            if not open_brackets and ch == "}" and seg_start is not None:
                segments.append((seg_start, i + 1))
                seg_start, free_from = None, i + 1
    if seg_start is None and not open_brackets:
        seg_start = line_of_first_char(len(text))
    if seg_start is not None:
        segments.append((seg_start, len(text)))
    return segments, []


def _parse_fragment(text: str, offsets: _Offsets) -> tuple[ast.SpecFile | None, list[Diagnostic]]:
    """The tree of `text` and its diagnostics; no tree when it does not parse (one diagnostic)."""
    try:
        tree = lark_parser().parse(text)
    except UnexpectedInput as err:
        return None, [syntax_diagnostic(err, text, offsets)]
    to_ast = _ToAst(offsets)
    try:
        return to_ast.transform(tree), to_ast.problems
    except (VisitError, RecursionError) as err:
        span = offsets.span(1, 1, 1, 2, 0, 1)
        return None, [Diagnostic("error", "LMS011", f"the spec is too complex to process ({type(err).__name__})", span)]


def _expression_shape(root) -> tuple[int, int]:
    """(depth, number of nodes) of an expression, without recursion."""
    depth, size, todo = 0, 0, [(root, 1)]
    while todo:
        node, d = todo.pop()
        size += 1
        depth = max(depth, d)
        if size > MAX_EXPRESSION_NODES:
            break
        for name in node.__slots__:
            child = getattr(node, name)
            if isinstance(child, tuple):  # list items, call arguments, (Ident, Expr) keyword pairs
                for item in child:
                    item = item[1] if isinstance(item, tuple) else item
                    todo.append((item, d + 1))
            elif not isinstance(child, (ast.Ident, Span, str, int, float, bool)) and child is not None:
                todo.append((child, d + 1))
    return depth, size


@contextmanager
def gc_paused():
    """Pause the cyclic garbage collector. Parsing builds a parse tree and an AST of about a
    hundred objects per line and no reference cycles; on a 10,000-line spec the collector
    would walk the growing heap again and again, a quarter of the parse time for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse(text: str, path: str = "<string>") -> tuple[ast.SpecFile | None, list[Diagnostic]]:
    """Parse `.lmspec` text. Returns the tree (None if nothing could be parsed) and diagnostics."""
    with gc_paused():
        return _parse(text, path)


def _parse(text: str, path: str) -> tuple[ast.SpecFile | None, list[Diagnostic]]:
    segments, diagnostics = _scan(text, path)
    if diagnostics:
        return None, diagnostics
    spec, first_errors = _parse_fragment(text, _Offsets(path))
    if spec is not None:
        diagnostics += first_errors
        diagnostics += _check_header(spec, path)
        return spec, diagnostics
    # Recovery: parse each top-level segment alone and keep every error.
    header, imports, blocks, errors, broken = None, [], [], [], []
    for start, end in segments:
        line = text.count("\n", 0, start)
        part, errs = _parse_fragment(text[start:end], _Offsets(path, line, start))
        if end < len(text):  # the segment was cut where the next block begins, not at the file's end
            for d in errs:
                if d.code == "LMS003" and d.message.startswith("the file ends"):
                    d.message = "the block is not closed before the next one begins"
                elif d.message == "the file ends too early":  # `import` with no path, then a block
                    d.message = "incomplete before the next block begins"
        errors += errs
        if part is None:
            broken += _BLOCK_NAMES.findall(text, start, end)
            continue
        header = header or part.header
        imports += part.imports
        blocks += part.blocks
    if not any(d.is_error for d in errors):  # the segments parse alone but not together: keep the first error
        errors += first_errors
    spec = ast.SpecFile(path, header, tuple(imports), tuple(blocks), tuple(broken))
    # a missing header is not worth a warning beside syntax errors: it may be the header
    # line that failed to parse; a wrong version is still an error
    errors += [d for d in _check_header(spec, path) if d.is_error]
    return spec, errors


def _check_header(spec: ast.SpecFile, path: str) -> list[Diagnostic]:
    if spec.header is None:  # point at what comes first; in a file of nothing (or comments), at 1:1
        first = [item.span for item in (*spec.imports, *spec.blocks)]
        span = min(first, key=lambda s: s.start) if first else Span(path, 1, 1, 1, 1)
        return [Diagnostic("warning", "LMS010", "the file does not start with a version header", span,
                           help=f"add `lmspec {LANGUAGE_VERSION}` as the first line")]
    if spec.header.version != LANGUAGE_VERSION:
        return [Diagnostic("error", "LMS010", f"unsupported language version {spec.header.raw or spec.header.version}",
                           spec.header.span, help=f"this lmspec reads version {LANGUAGE_VERSION}: write `lmspec {LANGUAGE_VERSION}`")]
    return []


def parse_file(path: str | Path) -> tuple[ast.SpecFile | None, str | None, list[Diagnostic]]:
    """Read and parse a file. Returns (tree, source text, diagnostics); never raises for bad input."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        return None, None, [Diagnostic("error", "LMS031", f"cannot read '{p}': {err.strerror or err}", None,
                                       help="check the path")]
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some Windows editors write
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        # spans count characters of the text shown (bad bytes replaced by U+FFFD), not bytes
        line = data.count(b"\n", 0, err.start) + 1
        line_start = data.rfind(b"\n", 0, err.start) + 1
        col = len(data[line_start:err.start].decode("utf-8", errors="replace")) + 1
        start = len(data[:err.start].decode("utf-8", errors="replace"))
        span = Span(str(path), line, col, line, col + 1, start, start + 1)
        text = data.decode("utf-8", errors="replace")
        return None, text, [Diagnostic("error", "LMS009", f"byte 0x{data[err.start]:02x} is not valid UTF-8", span,
                                       help="save the file as UTF-8")]
    tree, diagnostics = parse(text, str(path))
    return tree, text, diagnostics

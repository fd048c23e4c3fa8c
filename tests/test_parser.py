"""The parser: every lexical form and shape of the language, read into the typed AST with spans.

Expressions are shown as s-expressions so that structure (precedence, associativity) reads at
a glance: `1 + 2 * 3` is `(+ 1 (* 2 3))`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmspec.grammar import ast, parse
from lmspec.grammar.parser import number_value


def sexpr(node) -> str:
    if isinstance(node, ast.Number):
        return repr(node.value)
    if isinstance(node, ast.String):
        return repr(node.value)
    if isinstance(node, ast.Bool):
        return str(node.value).lower()
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attr):
        return f"{sexpr(node.obj)}.{node.name.name}"
    if isinstance(node, ast.ListExpr):
        return "[" + " ".join(sexpr(x) for x in node.items) + "]"
    if isinstance(node, ast.Call):
        args = [sexpr(a) for a in node.args] + [f"{k.name}={sexpr(v)}" for k, v in node.kwargs]
        return f"{sexpr(node.func)}(" + " ".join(args) + ")"
    if isinstance(node, ast.BinOp):
        return f"({node.op} {sexpr(node.left)} {sexpr(node.right)})"
    if isinstance(node, ast.Neg):
        return f"(- {sexpr(node.operand)})"
    if isinstance(node, ast.FromStage):
        return f"(from {sexpr(node.value)} {node.stage.name})"
    if isinstance(node, ast.WithField):
        return f"(with {sexpr(node.value)} {node.key.name} {sexpr(node.field_value)})"
    raise TypeError(node)


def parsed(text: str) -> ast.SpecFile:
    tree, diagnostics = parse(text, "t.lmspec")
    assert [d for d in diagnostics if d.is_error] == [], diagnostics
    return tree


def value(expr: str):
    """The AST of one value, written as `a: EXPR` in a block."""
    (block,) = parsed(f"lmspec 1\nmodel m {{ a: {expr} }}").blocks
    (field,) = block.entries
    return field.value


def show(expr: str) -> str:
    return sexpr(value(expr))


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("written, meant", [
    ("512", 512),
    ("50_257", 50257),
    ("1_000_000", 1000000),
    ("10k", 10_000),
    ("2M", 2_000_000),
    ("1.5B", 1_500_000_000),
    ("3T", 3_000_000_000_000),
    ("0.1k", 100),             # exact: not 100.00000000000001
    ("2.5k", 2500),
    ("0.0001k", 0.1),
    ("0.1", 0.1),
    ("3e-4", 3e-4),
    ("1E-5", 1e-5),
    ("1e3", 1000.0),           # an exponent makes a float, as in Python
    ("15%", 0.15),
    ("2.5%", 0.025),
    ("100%", 1.0),
])
def test_numbers(written, meant):
    node = value(written)
    assert isinstance(node, ast.Number)
    assert node.value == meant and type(node.value) is type(meant)
    assert node.raw == written  # kept as written, for messages


def test_suffixed_whole_numbers_are_ints_and_the_rest_floats():
    assert number_value("1.5M") == 1_500_000 and isinstance(number_value("1.5M"), int)
    assert isinstance(number_value("1.25k"), int)
    assert isinstance(number_value("15%"), float)


# ----------------------------------------------------------------------------- other atoms


def test_strings_with_escapes():
    assert value(r'"plain"').value == "plain"
    assert value(r'"say \"hi\""').value == 'say "hi"'
    assert value(r'"back\\slash"').value == "back\\slash"
    assert value(r'"tab\tnew\nline"').value == "tab\tnew\nline"
    assert value(r'"\q stays"').value == "\\q stays"  # an unknown escape is kept as written
    assert value('"# not a comment"').value == "# not a comment"
    assert value('""').value == ""
    assert value('"日本語"').value == "日本語"


def test_booleans_and_names():
    assert show("true") == "true" and show("false") == "false"
    assert show("causal") == "causal"
    assert show("truest") == "truest"  # a keyword is a whole word
    assert show("_private9") == "_private9"


def test_lists():
    assert show("[]") == "[]"
    assert show("[1]") == "[1]"
    assert show('[0.9, 0.95, x, "s", [1, 2]]') == "[0.9 0.95 x 's' [1 2]]"
    assert show("[mlm(transform: true), nsp]") == "[mlm(transform=true) nsp]"


def test_calls_with_positional_and_keyword_arguments():
    assert show("rope()") == "rope()"
    assert show("rope(theta: 10_000)") == "rope(theta=10000)"
    assert show('builtin("tiny-stories")') == "builtin('tiny-stories')"
    assert show("f(1, 2, x: 3, y: a.b)") == "f(1 2 x=3 y=a.b)"
    assert show("adamw(lr: 1e-3, betas: [0.9, 0.95])") == "adamw(lr=0.001 betas=[0.9 0.95])"


def test_dotted_references_and_method_calls():
    assert show("tok.vocab_size") == "tok.vocab_size"
    assert show("a.b.c") == "a.b.c"
    node = value("stories.prefixes(tokens: 8, count: 2k)")
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Attr)
    assert sexpr(node) == "stories.prefixes(tokens=8 count=2000)"


def test_from_stage_and_with_head():
    assert show("critic from judge_fit") == "(from critic judge_fit)"
    assert show("gpt with head scalar") == "(with gpt head scalar)"
    assert show("gpt with head classifier(classes: 3)") == "(with gpt head classifier(classes=3))"
    assert show("gpt from pretrain with head scalar") == "(with (from gpt pretrain) head scalar)"


# ----------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("written, tree", [
    ("1 + 2 * 3", "(+ 1 (* 2 3))"),
    ("1 * 2 + 3", "(+ (* 1 2) 3)"),
    ("(1 + 2) * 3", "(* (+ 1 2) 3)"),
    ("1 - 2 - 3", "(- (- 1 2) 3)"),          # left-associative
    ("8 / 2 / 2", "(/ (/ 8 2) 2)"),
    ("4 * d_model", "(* 4 d_model)"),
    ("-1", "(- 1)"),
    ("-2 * 3", "(* (- 2) 3)"),               # unary minus binds tighter than *
    ("- -x", "(- (- x))"),
    ("2 * -x.y", "(* 2 (- x.y))"),           # ... and looser than `.`
    ("mlm + 0.5 * nsp", "(+ mlm (* 0.5 nsp))"),
    ("((((1))))", "1"),
    ("a + b from s", "(from (+ a b) s)"),    # `from` applies to the whole sum
])
def test_arithmetic_precedence(written, tree):
    assert show(written) == tree


# ----------------------------------------------------------------------------- file shape

FULL = """\
lmspec 1   # the version header
import "base.lmspec"
import "more/other.lmspec"

# a comment line
model gpt extends base {
  layers: 6, heads: 8          # commas and newlines both separate fields
  d_ff: 4 * d_model
  encoder { layers: 2, inner { deep: true } }
  layer 0..5 { attention: sliding(window: 64) }
  layer 3 { heads: heads / 2 }
}
train t { steps: 2k, }
"""


def test_a_whole_file():
    spec = parsed(FULL)
    assert spec.path == "t.lmspec"
    assert spec.header.version == 1
    assert [i.path for i in spec.imports] == ["base.lmspec", "more/other.lmspec"]
    gpt, train = spec.blocks
    assert (gpt.kind.name, gpt.name.name, gpt.extends.name) == ("model", "gpt", "base")
    assert (train.kind.name, train.name.name, train.extends) == ("train", "t", None)
    layers, heads, d_ff, encoder, wide, one = gpt.entries
    assert [(f.key.name, sexpr(f.value)) for f in (layers, heads, d_ff)] == [
        ("layers", "6"), ("heads", "8"), ("d_ff", "(* 4 d_model)")]
    assert isinstance(encoder, ast.Nested) and encoder.name.name == "encoder"
    assert encoder.entries[0].key.name == "layers"
    inner = encoder.entries[1]
    assert isinstance(inner, ast.Nested) and sexpr(inner.entries[0].value) == "true"
    assert isinstance(wide, ast.LayerOverride) and (wide.first, wide.last) == (0, 5)
    assert sexpr(wide.entries[0].value) == "sliding(window=64)"
    assert isinstance(one, ast.LayerOverride) and (one.first, one.last) == (3, 3)  # `layer 3`: one layer
    assert sexpr(one.entries[0].value) == "(/ heads 2)"
    assert [sexpr(f.value) for f in train.entries] == ["2000"]  # a trailing comma is fine


def test_empty_blocks_and_empty_files():
    assert parsed("lmspec 1\nmodel m { }").blocks[0].entries == ()
    tree, diagnostics = parse("", "e.lmspec")
    assert tree.blocks == () and [d.code for d in diagnostics] == ["LMS010"]  # a warning only
    assert not diagnostics[0].is_error


def test_a_file_without_a_header_is_a_warning_at_the_first_block():
    tree, (d,) = parse("\nmodel m { }", "w.lmspec")
    assert tree.blocks[0].name.name == "m"
    assert (d.severity, d.code, str(d.span)) == ("warning", "LMS010", "w.lmspec:2:1")
    assert d.help == "add `lmspec 1` as the first line"


def test_crlf_line_endings_and_tabs():
    spec = parsed("lmspec 1\r\nmodel m {\r\n\tlayers:\t2\r\n}\r\n")
    field = spec.blocks[0].entries[0]
    assert sexpr(field.value) == "2"
    assert (field.key.span.line, field.key.span.col) == (3, 2)  # a tab is one column


# ----------------------------------------------------------------------------- spans

SPANNED = """\
lmspec 1
model gpt {
  d_ff: 4 * d_model
  vocab: tok.vocab_size
  layer 0..1 { attention: sliding(window: 64) }
}
"""


def _nodes(node):
    """Every AST node under `node` (fields, expressions, identifiers)."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        for name in n.__slots__:
            child = getattr(n, name)
            children = child if isinstance(child, tuple) else (child,)
            for c in children:
                for item in c if isinstance(c, tuple) else (c,):
                    if hasattr(item, "__slots__") and hasattr(item, "span"):
                        todo.append(item)


def test_spans_of_nodes():
    spec = parsed(SPANNED)
    block = spec.blocks[0]
    d_ff, vocab, layer = block.entries
    s = d_ff.span
    assert (s.line, s.col, s.end_line, s.end_col) == (3, 3, 3, 20)           # `d_ff: 4 * d_model`
    assert (d_ff.key.span.col, d_ff.key.span.end_col) == (3, 7)             # `d_ff`
    assert (d_ff.value.span.col, d_ff.value.span.end_col) == (9, 20)         # `4 * d_model`
    assert (d_ff.value.right.span.col, d_ff.value.right.span.end_col) == (13, 20)  # `d_model`
    assert (vocab.value.name.span.line, vocab.value.name.span.col) == (4, 14)  # `vocab_size`
    assert (layer.range_span.line, layer.range_span.col, layer.range_span.end_col) == (5, 9, 13)  # `0..1`
    assert (block.span.line, block.span.col, block.span.end_line, block.span.end_col) == (2, 1, 6, 2)
    assert (block.name.span.col, block.name.span.end_col) == (7, 10)
    assert str(block.name.span) == "t.lmspec:2:7"


def test_every_span_covers_exactly_its_source_text():
    """For every node, the text between its start and end offsets is the node as written."""
    spec = parsed(SPANNED)
    lines = SPANNED.split("\n")
    for node in _nodes(spec.blocks[0]):
        s = node.span
        text = SPANNED[s.start:s.end]
        if s.line == s.end_line:  # offsets and line/col agree
            assert lines[s.line - 1][s.col - 1:s.end_col - 1] == text
        if isinstance(node, ast.Ident):
            assert text == node.name
        elif isinstance(node, ast.Number):
            assert text == node.raw
        elif isinstance(node, ast.Name):
            assert text == node.id


def test_spans_stay_right_in_blocks_parsed_after_a_syntax_error():
    text = "lmspec 1\nmodel a { x = 1 }\n\nmodel b {\n  heads: 4 * h\n}\n"
    tree, diagnostics = parse(text, "r.lmspec")
    assert [d.code for d in diagnostics] == ["LMS005"]
    (b,) = tree.blocks  # `a` is lost, `b` is recovered with its true position
    field = b.entries[0]
    assert (field.span.line, field.span.col) == (5, 3)
    assert text[field.value.span.start:field.value.span.end] == "4 * h"


# ----------------------------------------------------------------------------- regressions


def test_a_single_layer_override_parses():
    # `layer 3 { }` used to raise IndexError inside the transformer
    (block,) = parsed("model m { layer 3 { heads: 1 } }").blocks
    assert (block.entries[0].first, block.entries[0].last) == (3, 3)


def test_a_layer_number_must_be_whole():
    # `layer 0.1` (a typo for 0..1) used to become the float 0.1
    tree, diagnostics = parse("lmspec 1\nmodel m { layer 0.1 { heads: 1 } }", "l.lmspec")
    (d,) = diagnostics
    assert (d.code, d.message, str(d.span)) == ("LMS001", "a layer number must be a whole number, found '0.1'",
                                                "l.lmspec:2:17")
    assert tree is not None


def test_parsing_restores_the_garbage_collector_as_it_found_it():
    import gc

    assert gc.isenabled()
    parse("model m { a: 1 }")
    assert gc.isenabled()
    gc.disable()
    try:
        parse("model m { a: 1 }")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_grammar_does_not_import_torch():
    code = "import sys, lmspec.grammar; lmspec.grammar.parse('model m { a: 1 }'); print('torch' in sys.modules)"
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- shipped LALR tables


def _outcome(parser, text: str):
    """What a parser makes of `text`: its tree, or where and why it stops."""
    from lark.exceptions import UnexpectedInput

    try:
        return parser.parse(text)
    except UnexpectedInput as err:
        return (type(err).__name__, err.pos_in_stream, sorted(getattr(err, "expected", None) or ()),
                str(getattr(err, "token", "")))


def test_shipped_tables_are_built_from_this_grammar():
    from lmspec.grammar import tables

    assert tables.read_tables()["grammar_sha256"] == tables.grammar_sha256(), \
        "lmspec.lark changed since lalr_tables.json was built: run `python -m lmspec.grammar.tables`"


def test_shipped_tables_parse_as_the_grammar_does():
    """The parser loaded from the tables and one built from the grammar agree on every shipped
    spec and on every prefix of one of them (each a syntax error somewhere)."""
    from lark import Lark

    from lmspec.grammar import tables

    shipped = tables.read_tables()
    loaded = Lark._load_from_dict(shipped["data"], shipped["memo"])
    built = tables.build_parser()
    texts = [p.read_text() for p in sorted(Path(__file__).parents[1].glob("specs/**/*.lmspec"))]
    assert len(texts) > 10
    sample = texts[0]
    texts += [sample[:n] for n in range(0, len(sample), 7)]
    for text in texts:
        assert _outcome(loaded, text) == _outcome(built, text)


def test_parser_loads_the_shipped_tables(monkeypatch):
    """With the lark that built them, the tables are loaded and nothing is built; with another
    lark (or an edited grammar) the parser is built from the grammar."""
    from lmspec.grammar import parser, tables

    def no_build():
        raise AssertionError("built from the grammar")

    monkeypatch.setattr(tables, "build_parser", no_build)
    monkeypatch.setattr(parser, "lark_version", tables.read_tables()["lark_version"])
    parser.lark_parser.cache_clear()
    try:
        assert parser.lark_parser().parse("lmspec 1\n")
        monkeypatch.setattr(parser, "lark_version", "0.0.0")
        parser.lark_parser.cache_clear()
        with pytest.raises(AssertionError, match="built from the grammar"):
            parser.lark_parser()
    finally:
        parser.lark_parser.cache_clear()

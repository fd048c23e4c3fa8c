"""`**` in spec expressions: Python's precedence (tighter than a unary minus on its left, a
signed exponent on its right, right-associative), int ** non-negative int an int and anything
else a float, and its errors reported at the expression with a help line."""

from __future__ import annotations

import pytest

from conftest import at, only, where
from lmspec.compiler.api import load_arch, resolve
from lmspec.grammar import ast
from lmspec.grammar.parser import parse

HEADER = "lmspec 1\n"
MODEL = "vocab: 101, context: 32, layers: 2, d_model: 32, heads: 4, position: none"


def value_of(expr: str):
    """The resolved value of `a: expr` in a model block (resolution keeps any key; the schema
    checks it later)."""
    spec = resolve("p.lmspec", text=f"{HEADER}model m {{ a: {expr} }}\n")
    assert [d for d in spec.diagnostics if d.is_error] == [], [f"{d.span}: {d.message}" for d in spec.diagnostics]
    return spec.blocks["m"].fields["a"]


def tree_of(expr: str):
    spec, diagnostics = parse(f"{HEADER}model m {{ a: {expr} }}\n", "p.lmspec")
    assert diagnostics == []
    return spec.blocks[0].entries[0].value


def shape(node) -> str:
    """The tree as nested parentheses: `(-(2 ** 2))`."""
    if isinstance(node, ast.BinOp):
        return f"({shape(node.left)} {node.op} {shape(node.right)})"
    if isinstance(node, ast.Neg):
        return f"(-{shape(node.operand)})"
    if isinstance(node, ast.Number):
        return node.raw
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attr):
        return f"{shape(node.obj)}.{node.name.name}"
    raise AssertionError(node)


@pytest.mark.parametrize("expr, tree", [
    ("2 ** 3", "(2 ** 3)"),
    ("-2 ** 2", "(-(2 ** 2))"),
    ("2 ** 3 ** 2", "(2 ** (3 ** 2))"),
    ("d_model ** -0.5", "(d_model ** (-0.5))"),
    ("2 ** -x ** 2", "(2 ** (-(x ** 2)))"),
    ("3 * 2 ** 2", "(3 * (2 ** 2))"),
    ("2 ** 2 * 3", "((2 ** 2) * 3)"),
    ("1 + 2 ** 2 / 4", "(1 + ((2 ** 2) / 4))"),
    ("(-2) ** 2", "((-2) ** 2)"),
    ("m.d_model ** 2", "(m.d_model ** 2)"),
    ("2**3", "(2 ** 3)"),
])
def test_precedence_and_associativity(expr, tree):
    assert shape(tree_of(expr)) == tree


def test_the_node_spans_the_whole_power():
    node = tree_of("144 ** -0.5")
    assert (node.op, node.span.col, node.span.end_col) == ("**", 14, 25)


@pytest.mark.parametrize("expr, value", [
    ("2 ** 3", 8),
    ("-2 ** 2", -4),
    ("(-2) ** 2", 4),
    ("(-2) ** 3", -8),
    ("2 ** 3 ** 2", 512),
    ("2 ** 0", 1),
    ("0 ** 0", 1),
    ("0 ** 2", 0),
    ("10 ** 300", 10 ** 300),
    ("2 ** -1", 0.5),
    ("4 ** 0.5", 2.0),
    ("2.0 ** 2", 4.0),
    ("144 ** -0.5", 144 ** -0.5),
    ("(-1.5) ** 2", 2.25),
    ("3 * 2 ** 2", 12),
    ("10 ** -400", 0.0),
])
def test_values(expr, value):
    got = value_of(expr)
    assert got == value and type(got) is type(value)


def test_an_int_to_a_non_negative_int_stays_exact():
    assert value_of("3 ** 40") == 12157665459056928801  # past a float's 53 bits


def test_a_power_of_another_field():
    spec = resolve("p.lmspec", text=f"{HEADER}model m {{ {MODEL}, head_scale: d_model ** -0.5, a: heads ** 2 }}\n")
    assert not [d for d in spec.diagnostics if d.is_error]
    assert spec.blocks["m"].fields["head_scale"] == 32 ** -0.5
    assert spec.blocks["m"].fields["a"] == 16


def test_attention_scale_as_a_power_lowers_to_the_same_arch_as_its_value():
    by_power = load_arch(f"{HEADER}model m {{ {MODEL}, attention_scale: 144 ** -0.5 }}\n", "m")
    by_value = load_arch(f"{HEADER}model m {{ {MODEL}, attention_scale: {144 ** -0.5!r} }}\n", "m")
    assert by_power == by_value
    assert {layer.attention.scale for stack in by_power.stacks for layer in stack.layers} == {1 / 12}


def test_head_scale_of_d_model_lowers_to_its_value():
    by_power = load_arch(f"{HEADER}model m {{ {MODEL}, tie_embeddings: true, head_scale: d_model ** -0.5 }}\n", "m")
    by_value = load_arch(f"{HEADER}model m {{ {MODEL}, tie_embeddings: true, head_scale: {32 ** -0.5!r} }}\n", "m")
    assert by_power == by_value and by_power.tied_head_scale == 32 ** -0.5


@pytest.mark.parametrize("expr, code, message, help", [
    ("0 ** -1", "LMS028", "0 ** -1 divides by zero",
     "raise 0 only to a power of 0 or more, or raise a number other than 0"),
    ("0.0 ** -0.5", "LMS028", "0 ** -0.5 divides by zero",
     "raise 0 only to a power of 0 or more, or raise a number other than 0"),
    ("(-8) ** 0.5", "LMS027", "(-8) ** 0.5 is not a real number", "raise a negative number only to a whole power"),
    ("10 ** 10000", "LMS032", "the result of this arithmetic is too large", "numbers in a spec are at most 1.8e+308"),
    ("10 ** 309", "LMS032", "the result of this arithmetic is too large", "numbers in a spec are at most 1.8e+308"),
    ("1.5 ** 5000", "LMS032", "the result of this arithmetic is too large", "numbers in a spec are at most 1.8e+308"),
    ("0.5 ** -2000", "LMS032", "the result of this arithmetic is too large", "numbers in a spec are at most 1.8e+308"),
])
def test_errors_point_at_the_power(expr, code, message, help):
    text = f"model m {{ {MODEL}, a: {expr} }}"
    d = only(text, code)
    assert (where(d), d.message, d.help) == (at(text, expr), message, help)


def test_an_error_through_a_field_points_at_the_power():
    text = f"model m {{ {MODEL}, n: 0, a: n ** -2 }}"
    d = only(text, "LMS028")
    assert (where(d), d.message) == (at(text, "n ** -2"), "0 ** -2 divides by zero")


def test_a_power_of_a_string_is_a_type_error():
    text = f'model m {{ {MODEL}, a: "x" ** 2 }}'
    d = only(text, "LMS027")
    assert (where(d), d.message) == (at(text, '"x" ** 2'), 'cannot compute the string "x" ** the integer 2')


def test_a_power_without_an_exponent_is_a_syntax_error():
    spec, diagnostics = parse(f"{HEADER}model m {{ a: 2 ** }}\n", "p.lmspec")
    assert [(d.code, d.message) for d in diagnostics] == [("LMS001", "an operator without a value after it, found '}'")]


def test_a_misspelt_field_in_a_power_is_undefined_with_a_suggestion():
    text = f"model m {{ {MODEL}, head_scale: d_modle ** -0.5 }}"
    d = only(text, "LMS023")
    assert (where(d), d.message, d.help) == (at(text, "d_modle"), "'d_modle' is not defined", "did you mean 'd_model'?")

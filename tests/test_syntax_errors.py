"""Syntax errors: each mistake gives its own code, message, help and exact `file:line:col`.

The catalogue (lmspec/grammar/errors.py) recognises common mistakes by the parser state
they leave behind; every example it lists is checked here, first as written and then moved
wherever else the mistake can sit (a later field, a nested block, a layer override, ...).
The lexer-level mistakes follow, then recovery: all the broken blocks of a file are reported
at once.
"""

from __future__ import annotations

import pytest

from lmspec.diagnostics import render_text
from lmspec.grammar import parse
from lmspec.grammar.errors import CATALOGUE, placements
from lmspec.grammar.parser import MAX_NESTING, parse_file


def syntax_errors(text: str, path: str = "s.lmspec"):
    tree, diagnostics = parse(text, path)
    return [d for d in diagnostics if d.is_error]


def one_error(text: str, path: str = "s.lmspec"):
    found = syntax_errors(text, path)
    assert len(found) == 1, [(str(d.span), d.code, d.message) for d in found]
    return found[0]


CASES = [(name, example) for name, mistake in CATALOGUE.items() for example in mistake.examples]


@pytest.mark.parametrize("name, example", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_every_catalogue_example_gives_its_entry(name, example):
    mistake = CATALOGUE[name]
    d = one_error(example)
    assert d.code == mistake.code
    assert d.message.startswith(mistake.message + ", found ")
    assert d.help == mistake.help


@pytest.mark.parametrize("name, example", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_every_catalogue_example_gives_its_entry_wherever_it_sits(name, example):
    # after other fields, in nested blocks and layer overrides, with `extends`, after a header:
    # each place is another parser state, and the same mistake must still be named and located
    expected = one_error(example)
    for place, (text, moved) in placements(example).items():
        d = one_error(text)
        assert (d.code, d.message, d.help, d.span.start) == (
            expected.code, expected.message, expected.help, expected.span.start + moved), (place, text)


@pytest.mark.parametrize("text, where, message", [
    ("model m {\n  arch: decoder\n  vocab: 256 256\n}", "3:14", "two values in a row, found '256'"),
    ("model m {\n  arch: decoder,\n  vocab: [1, 2, ]\n}", "3:17", "a trailing comma in a list, found ']'"),
    ("model m { arch: decoder, vocab: }", "1:33", "expected a value after ':', found '}'"),
    ("model m {\n  arch: decoder\n  vocab 256\n}", "3:9", "expected ':' between the key and its value, found '256'"),
    ("model m {\n  attention { kind: mha\n    heads: f(1, ) }\n}", "3:17",
     "a trailing comma in an argument list, found ')'"),
])
def test_a_mistake_on_a_later_field_is_located_and_named(text, where, message):
    d = one_error(text)
    assert (str(d.span), d.message) == (f"s.lmspec:{where}", message)


@pytest.mark.parametrize("text, where, word", [
    ("model m { a: f(1) 2 }", "1:19", "2"),
    ("model m { a: x.y 2 }", "1:18", "2"),
    ("model m { a: (1) 2 }", "1:18", "2"),
    ("model m { a: true 2 }", "1:19", "2"),
    ("model m { a: [f(1) 2] }", "1:20", "2"),
    ("model m { a: g(x: [1] y) }", "1:23", "y"),
    ("model m { a: 1 from s 2 }", "1:23", "2"),
    ("model m { a: true false }", "1:19", "false"),  # `false` first read as the next key
])
def test_two_values_after_any_kind_of_value(text, where, word):
    d = one_error(text)
    assert (str(d.span), d.code, d.message) == (f"s.lmspec:{where}", "LMS001", f"two values in a row, found '{word}'")
    assert d.help == CATALOGUE["two_values"].help


@pytest.mark.parametrize("text, where, key", [
    ("model m { 1: 2 }", "1:11", "'1'"),
    ('model m { "heads": 2 }', "1:11", "'\"heads\"'"),
    ("model m {\n  ok: 1\n  2: 3\n}", "3:3", "'2'"),  # not a second value of `ok`
])
def test_a_key_must_be_a_name(text, where, key):
    d = one_error(text)
    assert (str(d.span), d.code, d.message) == (f"s.lmspec:{where}", "LMS001", f"a key must be a name, found {key}")


def test_a_block_header_inside_a_block():
    d = one_error("model a { x: 1 model b { } }")
    assert (str(d.span), d.code, d.message) == ("s.lmspec:1:16", "LMS001", "a block header inside a block")
    assert (d.span.end_col, [str(l.span) for l in d.labels]) == (23, ["s.lmspec:1:9"])  # `model b`; the open `{`


def test_the_generic_help_lists_what_is_accepted_where_the_parser_stopped():
    d = one_error("model m { a: f(1: 2) }")
    assert (d.code, d.message) == ("LMS001", "unexpected ':'")
    assert "')'" in d.help and "'}'" not in d.help  # LALR's lookahead would offer '}' inside a call


@pytest.mark.parametrize("text, where, message, help", [
    ("model m { a: 'x' }", "1:14", "a string in single quotes", 'write strings in double quotes: "text"'),
    ("model m { a: 1  // note\n}", "1:17", "'//' does not start a comment", "comments start with '#'"),
])
def test_habits_from_other_languages(text, where, message, help):
    d = one_error(text)
    assert (str(d.span), d.message, d.help) == (f"s.lmspec:{where}", message, help)


def test_the_catalogue_points_at_the_offending_token():
    d = one_error("model m {\n  arch decoder\n}")
    assert (str(d.span), d.message) == ("s.lmspec:2:8", "expected ':' between the key and its value, found 'decoder'")
    assert (d.span.col, d.span.end_col) == (8, 15)  # the whole token
    d = one_error("model m { a: [1, 2, ] }")
    assert (str(d.span), d.message) == ("s.lmspec:1:21", "a trailing comma in a list, found ']'")


def test_a_missing_value_before_a_newline_points_at_its_key():
    # newlines are space, so `heads` is first read as the value of `layers`
    d = one_error("model m {\n  d_model: 64\n  layers:\n  heads: 4\n}")
    assert (str(d.span), d.code, d.message) == (
        "s.lmspec:3:9", "LMS012", "expected a value after ':', found the next key 'heads'")
    assert d.help == CATALOGUE["missing_value"].help
    assert [(str(l.span), l.span.end_col) for l in d.labels] == [("s.lmspec:4:3", 8)]


@pytest.mark.parametrize("text, where", [
    ("model m {\n  layers:   # to do\n\n  heads: 4\n}", "2:9"),  # past a comment and a blank line
    ("model m {\n  layers:\n  attention { heads: 4 }\n}", "2:9"),  # the next entry is a nested block
    ("model m {\n  n { a: f(x:\n  y: 1) }\n}", "2:13"),  # a keyword argument
    ("model m {\n  layers:\n}", "2:9"),  # the block ends: the catalogue's entry, at the key
    ("model m { a: 1, layers:\n  layer 0 { heads: 1 } }", "1:23"),
])
def test_a_missing_value_before_a_newline_elsewhere(text, where):
    d = one_error(text)
    assert (str(d.span), d.code) == (f"s.lmspec:{where}", "LMS012")


@pytest.mark.parametrize("text", [
    "model m {\n  a:\n    1 + 2\n  b: 3\n}",
    "model m {\n  a:\n    other\n  b: 3\n}",
    "model m {\n  a:\n    f(x:\n      1)\n}",
    "model m {\n  a: # a comment\n    [1,\n     2]\n}",
])
def test_a_value_on_the_next_line_is_still_a_value(text):
    assert syntax_errors(text) == []


# ----------------------------------------------------------------------------- lexer level


def test_equals_for_colon():
    d = one_error("lmspec 1\nmodel m {\n  layers = 6\n}")
    assert (str(d.span), d.code, d.message, d.help) == (
        "s.lmspec:3:10", "LMS005", "'=' is not how lmspec assigns", "write `key: value`")
    assert str(one_error("model m { a: f(x = 1) }").span) == "s.lmspec:1:18"  # in a call too


def test_unterminated_string_is_underlined_to_the_end_of_its_line():
    d = one_error('lmspec 1\ndata d { source: text("a.txt) }\n')
    assert (str(d.span), d.code, d.message) == ("s.lmspec:2:23", "LMS007", "unterminated string")
    assert (d.span.col, d.span.end_col) == (23, 32)  # `"a.txt) }`
    assert d.help == 'close the string with `"` on the same line'


@pytest.mark.parametrize("text, word, col", [
    ("model m { a: 10kb }", "10kb", 14),
    ("model m { a: 1.2.3 }", "1.2.3", 14),
    ("model m { a: 3e }", "3e", 14),
    ("model m { a: 2kk }", "2kk", 14),
    ("model m { a: 0x10 }", "0x10", 14),
    ("model m { a: 1_ }", "1_", 14),
    ("model m { a: 1__000 }", "1__000", 14),
    ("model m { a: .5 }", ".5", 14),
])
def test_malformed_numbers(text, word, col):
    d = one_error(text)
    assert (d.code, d.message, d.span.col, d.span.end_col) == ("LMS008", f"malformed number '{word}'", col,
                                                               col + len(word))


@pytest.mark.parametrize("text, where, word", [
    ("model m { lr: 3e-4 x }", "1:20", "x"),
    ("model m { a: 1E+5 x }", "1:19", "x"),
    ("model m { a: 2e10 x }", "1:19", "x"),
    ("model m { a: 1.5e-3 2 }", "1:21", "2"),
    ("model m {\n  lr: 3e-4 x\n}", "2:12", "x"),
])
def test_a_valid_exponent_is_not_called_malformed(text, where, word):
    d = one_error(text)
    assert (str(d.span), d.code, d.message) == (f"s.lmspec:{where}", "LMS001", f"two values in a row, found '{word}'")


@pytest.mark.parametrize("text, word, col", [
    ("model m { a: 3e- }", "3e-", 14),
    ("model m { a: 3e-x }", "3e-x", 14),
    ("model m { a: 1 10kb }", "10kb", 16),  # the parser stops at `10`: the word is read to its end
    ("model m { a: 3e-4 1.2.3 }", "1.2.3", 19),
])
def test_malformed_numbers_beside_valid_ones(text, word, col):
    d = one_error(text)
    assert (d.code, d.message, d.span.col) == ("LMS008", f"malformed number '{word}'", col)


def test_a_layer_range_elsewhere_is_not_taken_for_a_malformed_number():
    # any `0..3` before a syntax error used to be reported as "malformed number '0..3'"
    d = one_error("model m {\n  layer 0..3 { heads: 1 }\n  a = 1\n}")
    assert (d.code, str(d.span)) == ("LMS005", "s.lmspec:3:5")
    assert one_error("model m { layer 0..3 }").code == "LMS001"
    d = one_error("model m {\n  a: 10kb\n}")  # the parser stumbles on the next line
    assert (d.code, str(d.span)) == ("LMS008", "s.lmspec:2:6")


def test_malformed_number_help():
    assert one_error("model m { a: 10kb }").help == "numbers look like 512, 50_257, 10k, 2M, 1.5B, 3e-4, 0.1 or 15%"
    assert one_error("model m { a: 1_ }").help == "an underscore goes between two digits: 50_257"
    assert one_error("model m { a: .5 }").help == "write a digit before the point: 0.5"


def test_unclosed_brace_points_at_the_end_and_labels_the_opening_brace():
    d = one_error("lmspec 1\nmodel gpt {\n  layers: 2\n")
    assert (str(d.span), d.code, d.message) == ("s.lmspec:4:1", "LMS003", "the file ends before a bracket is closed")
    (label,) = d.labels
    assert (str(label.span), label.message) == ("s.lmspec:2:11", "this '{' is never closed")
    assert d.help == "add the missing '}'"


@pytest.mark.parametrize("text, opening, closer", [
    ("model m { a: f(1, 2", "1:15", ")"),
    ("model m { a: [1, 2", "1:14", "]"),
    ('model m { a: ["{", "(" ', "1:14", "]"),  # brackets inside strings do not count
])
def test_unclosed_call_and_list(text, opening, closer):
    d = one_error(text)
    assert d.code == "LMS003" and d.help == f"add the missing '{closer}'"
    assert str(d.labels[0].span) == f"s.lmspec:{opening}"


def test_a_bracket_closed_by_the_wrong_kind():
    d = one_error("model m {\n  a: [1, 2\n}")
    assert (str(d.span), d.code, d.message) == ("s.lmspec:3:1", "LMS003", "expected ']' before '}'")
    assert [(str(l.span), l.message) for l in d.labels] == [("s.lmspec:2:6", "this '[' is never closed")]


@pytest.mark.parametrize("char, col, message, help", [
    ("@", 16, "unexpected character '@'",
     "lmspec text uses names, numbers, strings, brackets, ':' ',' '.' and + - * /"),
    ("$", 16, "unexpected character '$'",
     "lmspec text uses names, numbers, strings, brackets, ':' ',' '.' and + - * /"),
    (";", 15, "unexpected ';'", "separate fields with a newline or a comma"),
    ("\u00e9", 16, "unexpected character '\u00e9'",
     "lmspec text uses names, numbers, strings, brackets, ':' ',' '.' and + - * /"),
])
def test_unexpected_characters(char, col, message, help):
    text = f"model m {{ a: 1{' ' if char != ';' else ''}{char} }}"
    d = one_error(text)
    assert (d.code, d.span.col, d.message, d.help) == ("LMS002", col, message, help)


SPELL_IN_ASCII = "spell the name with ASCII letters (a-z, A-Z), digits and '_'"


@pytest.mark.parametrize("text, where, char, word, help", [
    ("model modèle { }", "1:10", "è", "modèle", "write it in ASCII: `modele`"),
    ("model m {\n  tête: 2\n}", "2:4", "ê", "tête", "write it in ASCII: `tete`"),
    ("model m { éta: 1 }", "1:11", "é", "éta", "write it in ASCII: `eta`"),
    ("model m { a: ﬁlter }", "1:14", "ﬁ", "ﬁlter", "write it in ASCII: `filter`"),  # NFKD: ﬁ -> fi
    ("model модель { }", "1:7", "м", "модель", SPELL_IN_ASCII),  # nothing to drop: no suggestion
    ("model m { straße: 1 }", "1:15", "ß", "straße", SPELL_IN_ASCII),
])
def test_names_are_ascii(text, where, char, word, help):
    d = one_error(text)
    assert (str(d.span), d.code, d.message, d.help) == (
        f"s.lmspec:{where}", "LMS002", f"names use ASCII letters, digits and '_'; found '{char}' in '{word}'", help)
    assert (d.span.end_col - d.span.col) == 1


def test_a_unit_after_a_number_is_not_taken_for_a_name():
    d = one_error("model m { a: 5µs }")
    assert (d.code, d.message, d.span.col) == ("LMS002", "unexpected character 'µ'", 15)


def test_non_ascii_in_strings_and_comments_is_fine():
    text = 'lmspec 1\n# modèle à deux têtes\ndata d { source: text("données/café.txt") }  # ünïcödé\n'
    assert syntax_errors(text) == []


def test_a_null_byte_and_a_line_separator_are_unexpected_characters():
    assert one_error("model m { a: 1 \x00 }").message == "unexpected character '\\x00'"
    assert one_error("model m { a: 1 \u2028 }").message == "unexpected character '\\u2028'"


@pytest.mark.parametrize("header, where, message", [
    ("lmspec 2", "1:1", "unsupported language version 2"),
    ("lmspec 1.5", "1:1", "unsupported language version 1.5"),
    ("lmspec 0", "1:1", "unsupported language version 0"),
    ("lmspec x", "1:8", "the version header needs a version number, found 'x'"),
    ("lmspec", "1:1", "the version header needs a version number"),
])
def test_bad_header_version(header, where, message):
    d = one_error(f"{header}\nmodel m {{ }}")
    assert (d.code, str(d.span), d.message) == ("LMS010", f"s.lmspec:{where}", message)


def test_a_file_that_is_not_utf8(write):
    path = write("latin1.lmspec", 'lmspec 1\ndata d { source: text("caf\xe9") }\n'.encode("latin-1"))
    tree, text, (d,) = parse_file(path)
    assert tree is None
    assert (d.code, d.message, d.help) == ("LMS009", "byte 0xe9 is not valid UTF-8", "save the file as UTF-8")
    assert str(d.span) == f"{path}:2:27"
    assert text.splitlines()[1][26] == "\ufffd"  # the source shown has the bad byte replaced


def test_the_column_of_a_bad_byte_counts_characters_not_bytes(write):
    path = write("mixed.lmspec", 'lmspec 1\ndata d { label: "éé'.encode() + b"\xff" + b'" }\n')
    (d,) = parse_file(path)[2]
    assert str(d.span) == f"{path}:2:20"


def test_a_byte_order_mark_is_not_an_error(write):
    path = write("bom.lmspec", b"\xef\xbb\xbflmspec 1\nmodel m { }\n")
    tree, text, diagnostics = parse_file(path)
    assert diagnostics == [] and tree.header.version == 1 and tree.blocks[0].name.name == "m"


def test_a_missing_file_is_one_diagnostic(tmp_path):
    tree, text, (d,) = parse_file(tmp_path / "nope.lmspec")
    assert (tree, text, d.code, d.span) == (None, None, "LMS031", None)
    assert d.message.startswith("cannot read '") and d.message.endswith("No such file or directory")


@pytest.mark.parametrize("opening", ["(", "["])
def test_brackets_nested_too_deep(opening):
    closing = {"(": ")", "[": "]"}[opening]
    depth = MAX_NESTING  # the block's brace is one level
    text = "model m { a: " + opening * depth + "1" + closing * depth + " }"
    d = one_error(text)
    assert (d.code, d.message) == ("LMS011", f"brackets nested deeper than {MAX_NESTING} levels")
    assert str(d.span) == f"s.lmspec:1:{14 + depth - 1}"  # at the first bracket too many
    assert syntax_errors("model m { a: " + opening * (depth - 1) + "1" + closing * (depth - 1) + " }") == []


def test_blocks_nested_too_deep():
    text = "model m {\n" + "  x {\n" * 100 + "  }\n" * 100 + "}"
    d = one_error(text)
    assert (d.code, str(d.span)) == ("LMS011", f"s.lmspec:{MAX_NESTING + 1}:5")


# ----------------------------------------------------------------------------- recovery

BROKEN = """\
lmspec 1
model a { layers 2 }
tokenizer tok { kind: bytes }
model b { x = 1 }
data d { source: builtin("tiny-stories"), validation: 2%% }
train t { steps: [1, ] }
model c { vocab: 10k }
"""


def test_every_broken_block_is_reported_and_the_good_ones_are_kept():
    tree, diagnostics = parse(BROKEN, "b.lmspec")
    assert [(str(d.span), d.code) for d in diagnostics] == [
        ("b.lmspec:2:18", "LMS004"),
        ("b.lmspec:4:13", "LMS005"),
        ("b.lmspec:5:55", "LMS008"),
        ("b.lmspec:6:22", "LMS006"),
    ]
    assert [b.name.name for b in tree.blocks] == ["tok", "c"]


def test_a_forgotten_closing_brace_does_not_hide_the_blocks_after_it():
    text = "lmspec 1\nmodel a {\n  x: 1\nmodel b { y = 2 }\nmodel c { z: 3 }\n"
    tree, (unclosed, equals) = parse(text, "f.lmspec")
    assert (str(unclosed.span), unclosed.code, unclosed.message) == (
        "f.lmspec:4:1", "LMS003", "the block is not closed before the next one begins")
    assert [str(l.span) for l in unclosed.labels] == ["f.lmspec:2:9"]
    assert (str(equals.span), equals.code) == ("f.lmspec:4:13", "LMS005")
    assert [b.name.name for b in tree.blocks] == ["c"]


def test_a_stray_closer_inside_a_block_does_not_end_the_block():
    # the recovery scan once took the `)` for the end of `n`, and the rest for a second block
    text = "lmspec 1\nmodel a {\n  n { o {\n    x: f(1))\n    y: 2 } }\n}\nmodel b { z = 1 }\n"
    tree, diagnostics = parse(text, "f.lmspec")
    assert [(str(d.span), d.code) for d in diagnostics] == [("f.lmspec:4:12", "LMS013"), ("f.lmspec:7:13", "LMS005")]


def test_recovery_renders_every_error_with_its_own_source_line():
    tree, diagnostics = parse(BROKEN, "b.lmspec")
    out = render_text(diagnostics, {"b.lmspec": BROKEN}, colour=False)
    assert "4 | model b { x = 1 }\n  |             ^" in out
    assert "6 | train t { steps: [1, ] }\n  |                      ^" in out
    assert out.endswith("4 errors found")

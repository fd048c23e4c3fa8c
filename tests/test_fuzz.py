"""Fuzzing the front end: whatever the input, `check_text` / `check_file` return a report.

The property, for every input: no exception; every diagnostic has a code from CODES and a
span inside a file the report can show (or no span); the report renders as text and JSON.
Inputs: random text (printable and any unicode), soups of the language's own tokens,
mutations of the example specs (delete, duplicate, swap tokens, truncate, insert characters),
random bytes through `parse_file`, and the extremes: a 1 MB line, deep nesting of brackets
and blocks, very long arithmetic chains and reference chains.

Every failure found here was fixed and is kept below as a regression example.
"""

from __future__ import annotations

import json
import re
import string

from hypothesis import HealthCheck, example, given, settings, strategies as st

from conftest import EXAMPLE_SPECS, ROOT
from lmspec.compiler.api import CheckReport, check_file, check_text
from lmspec.diagnostics import CODES, render_json, render_text
from lmspec.grammar.parser import parse_file

import lmspec.compiler.rules  # noqa: F401  (registers the design-rule codes in CODES)

FUZZ = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

SPECS = [p.read_text(encoding="utf-8") for p in EXAMPLE_SPECS]
_TOKEN = re.compile(r"\s+|[A-Za-z_]\w*|\d[\w.%]*|\"[^\"\n]*\"?|#[^\n]*|.", re.S)


def well_formed(report: CheckReport) -> CheckReport:
    """The property every report must have."""
    assert isinstance(report, CheckReport)
    for d in report.diagnostics:
        assert d.code in CODES, d.code
        assert d.severity in ("error", "warning", "note")
        assert isinstance(d.message, str) and d.message
        for span in [d.span] + [label.span for label in d.labels]:
            if span is None:
                continue
            source = report.sources.get(span.file)
            assert source is not None, f"{d.code} points into {span.file!r}, which the report cannot show"
            lines = source.split("\n")
            assert 1 <= span.line <= len(lines), (d.code, d.message, span)
            assert 1 <= span.col <= len(lines[span.line - 1]) + 1, (d.code, d.message, span)
            assert (span.end_line, span.end_col) >= (span.line, span.col), span
            assert 0 <= span.start <= span.end <= len(source), span
    render_text(report.diagnostics, report.sources, colour=True)
    json.loads(render_json(report.diagnostics))
    return report


def checked(text: str) -> CheckReport:
    return well_formed(check_text(text, "fuzz.lmspec"))


# ----------------------------------------------------------------------------- random text


@FUZZ
@given(st.text(alphabet=string.printable, max_size=400))
@example("lmspec 1\nmodel m { layer 0.1 { heads: 1 } }")  # IndexError in the transformer
@example("model m { layer 3 { } }")
@example("lmspec 1.5")
@example("model m { a: 9999999999" + "9" * 5000 + " }")  # int() refused > 4300 digits
@example("model m { a: " + "9" * 400 + " / 7 }")  # OverflowError in int / int
@example("\ufefflmspec 1\n")
def test_random_printable_text(text):
    checked(text)


@FUZZ
@given(st.text(max_size=300))
def test_random_unicode_text(text):
    checked(text)


_SOUP = st.sampled_from([
    "lmspec", "1", "import", '"x.lmspec"', "model", "tokenizer", "data", "train", "judge", "feedback", "rl",
    "m", "n", "tok", "gpt", "extends", "from", "with", "head", "layer", "0..2", "3", "{", "}", "(", ")", "[", "]",
    ":", ",", ".", "+", "-", "*", "/", "=", "..", "0", "2", "64", "0.5", "3e-4", "15%", "2k", "1_024", "1e999",
    "1_", ".5", "true", "false", '"s"', '"unterminated', "#", "\n", " ", "vocab", "context", "layers", "d_model",
    "heads", "kv_heads", "d_ff", "attention", "sliding", "window", "rope", "theta", "encoder", "decoder",
    "objective", "mlm", "nsp", "clm", "steps", "optimizer", "adamw", "lr", "policy", "prefixes", "vocab_size",
    "@", ";", "\t", "é",
])


@FUZZ
@given(st.lists(_SOUP, max_size=80))
@example(["model", "a", "{", "x", ":", "1", "\n", "model", "b", "{", "y", "=", "2", "}"])
@example(["model", "m", "{", "layer", "0..2", "{", "layer", "3", "{", "}", "}", "}"])
def test_soups_of_the_languages_tokens(tokens):
    checked(" ".join(tokens))


# ----------------------------------------------------------------------------- mutated specs


@st.composite
def mutated_specs(draw):
    tokens = _TOKEN.findall(draw(st.sampled_from(SPECS)))
    for _ in range(draw(st.integers(1, 4))):
        if not tokens:
            break
        i = draw(st.integers(0, len(tokens) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "truncate", "insert", "replace"]))
        if op == "delete":
            del tokens[i]
        elif op == "duplicate":
            tokens.insert(i, tokens[i])
        elif op == "swap":
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif op == "truncate":
            tokens = tokens[:i]
        elif op == "insert":
            tokens.insert(i, draw(st.text(alphabet=string.printable + "é\u2028\x00", min_size=1, max_size=3)
                                  | _SOUP))
        else:
            tokens[i] = draw(st.sampled_from(tokens))
    return "".join(tokens)


RLAIF = next(text for text in SPECS if "judge_fit" in text)


@FUZZ
@given(mutated_specs())
@example(RLAIF.replace('data: reviews, steps: 300', 'data: "sentiment", steps: 300'))  # a quoted block name
def test_mutations_of_the_example_specs(text):
    checked(text)


@FUZZ
@given(st.sampled_from(SPECS), st.integers(0, 2000))
def test_every_prefix_of_an_example_spec(text, cut):
    checked(text[:cut])


# ----------------------------------------------------------------------------- files


@settings(deadline=None, max_examples=100, derandomize=True)
@given(st.binary(max_size=300))
@example(b"lmspec 1\nmodel m { a: \"\xff\" }")
@example(b"\xef\xbb\xbf\xff")
def test_random_bytes_through_parse_file_and_check_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "bytes.lmspec"
    path.write_bytes(data)
    tree, text, diagnostics = parse_file(path)
    assert text is not None and all(d.code in CODES for d in diagnostics)
    well_formed(check_file(path))


LIBRARY = "lmspec 1\ntokenizer tok { kind: bytes }\nmodel base { vocab: tok.vocab_size, context: 64, layers: 2,\n" \
          "  d_model: 64, heads: 4, d_ff: 4 * d_model }\n"
MAIN = 'lmspec 1\nimport "lib/base.lmspec"\nmodel big extends base { d_model: 128, layer 0 { heads: heads / 2 } }\n'


@settings(deadline=None, max_examples=60, derandomize=True)
@given(st.sampled_from(["main", "library"]), st.data())
def test_mutated_files_that_import_each_other(tmp_path_factory, which, data):
    """Diagnostics in an imported file point into that file, which the report can show."""
    folder = tmp_path_factory.mktemp("imports")
    (folder / "lib").mkdir()
    main, library = MAIN, LIBRARY
    tokens = _TOKEN.findall(main if which == "main" else library)
    i = data.draw(st.integers(0, len(tokens) - 1))
    tokens[i:i + data.draw(st.integers(0, 2))] = [data.draw(_SOUP)]
    if which == "main":
        main = "".join(tokens)
    else:
        library = "".join(tokens)
    (folder / "lib" / "base.lmspec").write_text(library, encoding="utf-8")
    (folder / "main.lmspec").write_text(main, encoding="utf-8")
    well_formed(check_file(folder / "main.lmspec"))


def test_a_non_utf8_file_is_one_error_at_the_bad_byte(tmp_path):
    path = tmp_path / "x.lmspec"
    path.write_bytes(b"lmspec 1\nmodel m { a: 1 }\n\x80\x81")
    (d,) = well_formed(check_file(path)).diagnostics
    assert (d.code, d.span.line, d.span.col) == ("LMS009", 3, 1)


# ----------------------------------------------------------------------------- extremes


def test_a_one_megabyte_line():
    well_formed(checked('lmspec 1\nmodel m { a: "' + "x" * 1_000_000 + '" }'))
    report = checked("lmspec 1\nmodel m { a: " + "x " * 500_000 + "}")
    assert not report.ok


@settings(deadline=None, max_examples=25, derandomize=True)
@given(st.integers(1, 200), st.lists(st.sampled_from("([{"), min_size=1, max_size=3))
def test_deep_nesting_of_brackets(depth, kinds):
    opening = "".join(kinds[i % len(kinds)] for i in range(depth))
    closing = "".join({"(": ")", "[": "]", "{": "}"}[c] for c in reversed(opening))
    checked(f"lmspec 1\nmodel m {{ a: {opening}1{closing} }}")
    checked(f"lmspec 1\nmodel m {{ a: {opening}1 }}")  # never closed


@settings(deadline=None, max_examples=15, derandomize=True)
@given(st.integers(1, 300))
def test_deep_nesting_of_blocks(depth):
    report = checked("lmspec 1\nmodel m {\n" + "  x {\n" * depth + "  }\n" * depth + "}\n")
    assert not report.ok


@settings(deadline=None, max_examples=15, derandomize=True)
@given(st.integers(1, 5000), st.sampled_from(["+", "-", "*", "/"]), st.sampled_from(["1", "x", "-1", "(2)"]))
def test_very_long_arithmetic_chains(terms, op, operand):
    checked("lmspec 1\nmodel m { a: " + f" {op} ".join([operand] * terms) + " }")


def test_long_chains_of_unary_minus_references_from_and_with():
    checked("lmspec 1\nmodel m { a: " + "-" * 5000 + "1 }")
    checked("lmspec 1\nmodel m { a: x" + ".y" * 3000 + " }")
    checked("lmspec 1\nmodel m { a: x" + " from h" * 3000 + " }")
    checked("lmspec 1\nmodel m { a: x" + " with h 1" * 3000 + " }")
    checked("lmspec 1\nmodel m { a: f" + "()" * 3000 + " }")
    checked("lmspec 1\nmodel m {\n" + "\n".join(f"a{i}: a{i + 1}" for i in range(2000)) + "\na2000: 1 }")
    checked("lmspec 1\n" + "".join(f"model m{i} extends m{i + 1} {{ }}\n" for i in range(1000)) + "model m1000 { }")
    checked("lmspec 1\n" + "".join(f"model m{i} {{ vocab: m{i + 1}.vocab }}\n" for i in range(1000))
            + "model m1000 { vocab: 3 }")


# ----------------------------------------------------------------------------- safety


def test_a_spec_can_never_execute_code():
    """No evaluation of text, no import of a name, no unpickling anywhere in the package."""
    forbidden = re.compile(r"(?<![\w.])(eval|exec|compile)\(|__import__|importlib|import_module|runpy"
                           r"|pickle\.loads?\(|marshal\.loads?\(|torch\.load\(")
    found = []
    for path in sorted((ROOT / "lmspec").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if forbidden.search(code) and not re.match(r"\s*def (eval|compile)\(", code):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []

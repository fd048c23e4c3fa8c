"""Diagnostics and the command line: how problems are shown, as text and as JSON.

The text renderer follows rustc/ruff: `file:line:col: error[CODE]: message`, the source line
with a `|` gutter, carets under the whole span, labelled secondary spans, `= note:` and
`= help:` lines, and a tally. Colour only when asked (or on a terminal); NO_COLOR wins.
"""

from __future__ import annotations

import importlib
import json
import re

import pytest

from conftest import EXAMPLE_SPECS, ROOT
from lmspec.cli import main
from lmspec.diagnostics import CODES, Diagnostic, Label, LmspecError, Span, render_json, render_text, use_colour
from lmspec.compiler.api import check_text

SOURCE = "lmspec 1\nmodel gpt {\n  heads: 12\n  d_model: 1000\n}\n"
FILE = "specs/x.lmspec"
SOURCES = {FILE: SOURCE}


def heads_do_not_divide() -> Diagnostic:
    return Diagnostic("error", "LMS060", "heads (12) must divide d_model (1000)", Span(FILE, 4, 12, 4, 16),
                      [Label(Span(FILE, 3, 10, 3, 12), "heads set here")], help="try d_model: 1008",
                      notes=["head_dim would be 83.33"])


# ----------------------------------------------------------------------------- text


def test_text_rendering():
    assert render_text([heads_do_not_divide()], SOURCES, colour=False) == """\
specs/x.lmspec:4:12: error[LMS060]: heads (12) must divide d_model (1000)
  |
4 |   d_model: 1000
  |            ^^^^
  --> specs/x.lmspec:3:10
  |
3 |   heads: 12
  |          ^^ heads set here
  = note: head_dim would be 83.33
  = help: try d_model: 1008

1 error found"""


def test_diagnostics_are_sorted_by_position_and_tallied():
    late = Diagnostic("warning", "LMS081", "late", Span(FILE, 4, 3, 4, 10))
    early = Diagnostic("error", "LMS041", "early", Span(FILE, 3, 3, 3, 8))
    text = render_text([late, early, heads_do_not_divide()], SOURCES, colour=False)
    assert [line.split(": ")[1] for line in text.splitlines() if line.startswith(FILE)] == [
        "error[LMS041]", "warning[LMS081]", "error[LMS060]"]
    assert text.endswith("\n\n2 errors, 1 warning found")


def test_a_diagnostic_without_a_span_or_source():
    d = Diagnostic("error", "LMS031", "cannot read 'a.lmspec'", None, help="check the path")
    assert render_text([d], {}, colour=False) == "error[LMS031]: cannot read 'a.lmspec'\n  = help: check the path\n\n" \
                                                 "1 error found"
    d = Diagnostic("error", "LMS041", "unknown key", Span("elsewhere.lmspec", 1, 1, 1, 2))
    assert render_text([d], {}, colour=False).splitlines()[0] == "elsewhere.lmspec:1:1: error[LMS041]: unknown key"


def test_a_span_over_several_lines_is_underlined_to_the_end_of_its_first_line():
    d = Diagnostic("error", "LMS045", "m", Span(FILE, 2, 7, 5, 2))
    assert render_text([d], SOURCES, colour=False).splitlines()[2:4] == ["2 | model gpt {", "  |       ^^^^^"]


def test_the_gutter_is_as_wide_as_the_line_number():
    source = "\n" * 11 + "  heads: 0\n"
    d = Diagnostic("error", "LMS043", "'heads' must be >= 1, found 0", Span("y", 12, 10, 12, 11))
    assert render_text([d], {"y": source}, colour=False).splitlines()[1:4] == [
        "   |", "12 |   heads: 0", "   |          ^"]


def test_a_very_long_line_is_cut_around_its_span():
    line = "model m { a: " + "x" * 500_000 + "@" + "y" * 500_000 + " }"
    d = Diagnostic("error", "LMS002", "unexpected character '@'", Span("z", 1, 500_014, 1, 500_015))
    shown, carets = render_text([d], {"z": line}, colour=False).splitlines()[2:4]
    assert len(shown) < 220 and shown.startswith("1 | ...") and shown.endswith("...")
    assert shown[carets.index("^")] == "@"  # the caret is still under the character


def test_tabs_keep_carets_aligned():
    d = Diagnostic("error", "LMS002", "unexpected character '@'", Span("t", 1, 6, 1, 7))
    shown, carets = render_text([d], {"t": "a:\t1\t@"}, colour=False).splitlines()[2:4]
    assert shown[carets.index("^")] == "@"


def test_colour_only_when_asked():
    plain = render_text([heads_do_not_divide()], SOURCES, colour=False)
    coloured = render_text([heads_do_not_divide()], SOURCES, colour=True)
    assert "\x1b[" not in plain
    assert "\x1b[1;31merror[LMS060]\x1b[0m" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain  # colour adds nothing but escapes
    warning = Diagnostic("warning", "LMS081", "w", Span(FILE, 2, 7, 2, 10))
    assert "\x1b[1;33m      ^^^" in render_text([warning], SOURCES, colour=True)  # yellow carets for a warning


def test_colour_follows_the_terminal_and_no_color_wins(monkeypatch):
    class Terminal:
        def isatty(self):
            return True

    class Pipe:
        def isatty(self):
            return False

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    assert use_colour(Terminal()) is True and use_colour(Pipe()) is False
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert use_colour(Pipe()) is True
    monkeypatch.setenv("NO_COLOR", "1")
    assert use_colour(Terminal()) is False and use_colour(Pipe()) is False
    monkeypatch.setenv("NO_COLOR", "")  # an empty NO_COLOR does not count (no-color.org)
    monkeypatch.delenv("FORCE_COLOR")
    assert use_colour(Terminal()) is True


def test_render_text_uses_the_terminal_when_not_told(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in render_text([heads_do_not_divide()], SOURCES)


def test_lmspec_error_carries_every_diagnostic():
    err = LmspecError([heads_do_not_divide()], SOURCES)
    assert err.diagnostics[0].code == "LMS060"
    assert str(err).startswith("specs/x.lmspec:4:12: error[LMS060]") and "\x1b[" not in str(err)


# ----------------------------------------------------------------------------- JSON


def test_json_rendering():
    (record,) = json.loads(render_json([heads_do_not_divide()]))
    assert record == {
        "severity": "error",
        "code": "LMS060",
        "message": "heads (12) must divide d_model (1000)",
        "span": {"file": FILE, "line": 4, "col": 12, "end_line": 4, "end_col": 16},
        "labels": [{"span": {"file": FILE, "line": 3, "col": 10, "end_line": 3, "end_col": 12},
                    "message": "heads set here"}],
        "help": "try d_model: 1008",
        "notes": ["head_dim would be 83.33"],
    }
    assert json.loads(render_json([])) == []


# ----------------------------------------------------------------------------- the catalogue of codes

_CODE = re.compile(r"""["'](LMS\d{3})["']""")


def _package_files():
    return sorted((ROOT / "lmspec").rglob("*.py"))


def test_every_code_used_in_the_package_is_catalogued():
    used: dict[str, list[str]] = {}
    for path in _package_files():
        found = set(_CODE.findall(path.read_text(encoding="utf-8")))
        if found and path.name != "diagnostics.py":
            # modules register their own codes in CODES when imported: import them
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            importlib.import_module(module)
        for code in found:
            used.setdefault(code, []).append(path.name)
    assert len(used) > 40
    missing = {code: files for code, files in used.items() if code not in CODES}
    assert missing == {}


def test_every_catalogued_code_has_a_meaning():
    assert all(re.fullmatch(r"LMS\d{3}", code) and meaning.strip() for code, meaning in CODES.items())


# ----------------------------------------------------------------------------- the command line


def test_check_passes_the_example_specs_with_a_summary(capsys):
    assert main(["check", *map(str, EXAMPLE_SPECS)]) == 0
    out, err = capsys.readouterr()
    for path in EXAMPLE_SPECS:
        assert f"{path}: ok" in out
    assert "  model      gpt\n" in out and "  schedule   pretrain" in out
    assert err == ""


def test_check_fails_with_diagnostics_on_a_bad_spec(write, capsys):
    bad = write("bad.lmspec", "lmspec 1\nmodel m {\n  layers = 2\n}\n")
    assert main(["check", "--no-meta", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{bad}:3:10: error[LMS005]: '=' is not how lmspec assigns\n")
    assert "3 |   layers = 2\n  |          ^\n" in err
    assert err.rstrip().endswith("1 error found")
    assert "\x1b[" not in err  # not a terminal: no colour


def test_check_colours_when_forced(write, capsys, monkeypatch):
    bad = write("bad.lmspec", "lmspec 1\nmodel m { layers = 2 }\n")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    main(["check", "--no-meta", str(bad)])
    assert "\x1b[1;31merror[LMS005]" in capsys.readouterr().err
    monkeypatch.setenv("NO_COLOR", "1")
    main(["check", "--no-meta", str(bad)])
    assert "\x1b[" not in capsys.readouterr().err


def test_check_of_a_missing_file_is_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "nope.lmspec"
    assert main(["check", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"lmspec: error: {missing}: no such file\n")


def test_check_without_a_spec_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["check"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "lmspec: error: the following arguments are required: SPEC" in err and "Traceback" not in err


def test_check_json_gives_codes_and_spans(write, capsys):
    bad = write("bad.lmspec", "lmspec 1\nmodel m { vocab: 300, context: 16, layers: 2, d_model: 32, heads: 4,"
                              " norm: rmsnrom }\n")
    assert main(["check", "--json", "--no-meta", str(bad)]) == 1
    (report,) = json.loads(capsys.readouterr().out)["files"]
    assert (report["file"], report["ok"], report["blocks"]) == (str(bad), False, {"m": "model"})
    (d,) = report["diagnostics"]
    assert (d["code"], d["message"], d["help"]) == ("LMS044", "unknown norm 'rmsnrom'", "did you mean 'rmsnorm'?")
    assert d["span"] == {"file": str(bad), "line": 2, "col": 76, "end_line": 2, "end_col": 83}


def test_check_json_of_several_files_lists_them(capsys):
    assert main(["check", "--json", "--no-meta", *map(str, EXAMPLE_SPECS)]) == 0
    reports = json.loads(capsys.readouterr().out)["files"]
    assert [r["file"] for r in reports] == list(map(str, EXAMPLE_SPECS))
    assert all(r["ok"] and r["diagnostics"] == [] for r in reports)


def test_check_of_a_file_that_is_not_utf8(write, capsys):
    bad = write("latin1.lmspec", b"lmspec 1\nmodel m { a: \"\xe9\" }\n")
    assert main(["check", "--no-meta", str(bad)]) == 1
    assert f"{bad}:2:15: error[LMS009]: byte 0xe9 is not valid UTF-8" in capsys.readouterr().err


def test_schema_prints_the_json_schema_of_every_block_kind(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) == {"tokenizer", "data", "model", "train", "judge", "feedback", "rl"}
    model = schema["$defs"]["ModelSpec"]
    assert {"vocab", "d_model", "heads", "layer"} <= set(model["properties"])
    assert {"vocab", "context", "d_model", "heads"} <= set(model["required"])


def test_a_report_says_where_every_problem_is():
    report = check_text("lmspec 1\nmodel m { layers = 2 }\nmodel n { norm: x }", "r.lmspec")
    assert not report.ok and {d.span.file for d in report.errors} == {"r.lmspec"}
    with pytest.raises(LmspecError) as err:
        report.raise_for_errors()
    assert "r.lmspec:2:18: error[LMS005]" in str(err.value)


def test_check_says_a_directory_is_not_a_spec_file(tmp_path, capsys):
    assert main(["check", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"lmspec: error: {tmp_path}: is a directory, not a spec file\n"

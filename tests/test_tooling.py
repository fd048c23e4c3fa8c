"""The tools around `check`: `lmspec schema` as a standard JSON Schema, the shape of
`check --json`, what `check` says about a file that defines nothing, and the outputs that
README.md and docs/diagnostics.md show, run and compared."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
from pydantic import BaseModel

from conftest import EXAMPLE_SPECS, GOOD_MODEL, ROOT, at
from lmspec.cli import main
from lmspec.compiler.api import check_file, check_text
from lmspec.compiler.json_schema import json_schema

ALL_SPECS = sorted((ROOT / "specs").rglob("*.lmspec"))  # the examples, reference/ and scale/

# ----------------------------------------------------------------------------- lmspec schema


def _printed_schema() -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["schema"]) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    """A validator of the schema `lmspec schema` prints."""
    return jsonschema.Draft202012Validator(_printed_schema())


def test_lmspec_schema_prints_a_draft_2020_12_schema():
    schema = _printed_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == {"tokenizer", "data", "model", "train", "judge", "feedback", "rl"}
    model = schema["$defs"]["ModelSpec"]
    assert schema["properties"]["model"]["additionalProperties"] == {"$ref": "#/$defs/ModelSpec"}
    assert {"vocab", "d_model", "heads", "layer"} <= set(model["properties"])
    assert {"vocab", "context", "d_model", "heads"} <= set(model["required"])


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _as_json(report) -> dict:
    """The JSON rendering the schema describes: {kind: {name: block}}."""
    doc: dict = {}
    for name, block in report.spec.blocks.items():
        kind = report.spec.resolved.blocks[name].kind
        doc.setdefault(kind, {})[name] = block.model_dump(mode="json", by_alias=True)
    return doc


def test_every_ref_of_the_schema_points_at_a_top_level_definition(validator):
    schema = validator.schema
    refs = set(_refs(schema))
    assert refs and all(ref.startswith("#/$defs/") for ref in refs)
    assert {ref.removeprefix("#/$defs/") for ref in refs} <= set(schema["$defs"])
    assert not any("$defs" in body for body in schema["$defs"].values())  # nothing left nested


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_schema_accepts_the_blocks_of_every_example_spec(validator, path):
    report = check_file(path)
    doc = _as_json(report)
    assert set(doc) and sum(map(len, doc.values())) == len(report.spec.resolved.blocks)
    assert [e.message for e in validator.iter_errors(doc)] == []


@pytest.mark.parametrize("change, where, message", [
    (lambda m: m.update(bais=False), ["model", "gpt"], "Additional properties are not allowed ('bais' was unexpected)"),
    (lambda m: m.update(heads="8"), ["model", "gpt", "heads"], "'8' is not of type 'integer'"),
    (lambda m: m.pop("d_model"), ["model", "gpt"], "'d_model' is a required property"),
    (lambda m: m.update(norm="rmsnrom"), ["model", "gpt", "norm"], "'rmsnrom' is not one of ['layernorm', 'rmsnorm']"),
], ids=["unknown key", "wrong type", "missing key", "unknown choice"])
def test_the_schema_rejects_a_wrong_block(validator, change, where, message):
    doc = _as_json(check_text(f"lmspec 1\nmodel gpt {{ {GOOD_MODEL} }}"))
    change(doc["model"]["gpt"])
    assert [(list(e.absolute_path), e.message) for e in validator.iter_errors(doc)] == [(where, message)]


def test_the_schema_rejects_an_unknown_kind_and_a_name_that_is_not_a_name(validator):
    good = _as_json(check_text(f"lmspec 1\nmodel gpt {{ {GOOD_MODEL} }}"))["model"]["gpt"]
    assert not validator.is_valid({"modle": {"gpt": good}})
    assert not validator.is_valid({"model": {"my model": good}})
    assert validator.is_valid({"model": {"gpt": good, "gpt_2": good}})


def _kind_with_a_head(size_type: type) -> type[BaseModel]:
    class Head(BaseModel):  # the same name (and qualified name) for two different schemas
        size: size_type

    class Spec(BaseModel):
        head: Head

    return Spec


def test_two_kinds_with_different_definitions_of_one_name_keep_both():
    schema = json_schema({"a": _kind_with_a_head(int), "b": _kind_with_a_head(str)})
    v = jsonschema.Draft202012Validator(schema)
    assert v.is_valid({"a": {"x": {"head": {"size": 1}}}, "b": {"y": {"head": {"size": "one"}}}})
    assert not v.is_valid({"a": {"x": {"head": {"size": "one"}}}})
    assert not v.is_valid({"b": {"y": {"head": {"size": 1}}}})


# ----------------------------------------------------------------------------- check --json


def test_check_json_of_one_file_is_an_object_with_a_list_of_one_report(write, capsys):
    text = f"lmspec 1\nmodel m {{ {GOOD_MODEL}, bais: false }}\n"
    bad = write("bad.lmspec", text)
    assert main(["check", "--json", "--no-meta", str(bad)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and [(r["file"], r["ok"], r["blocks"]) for r in out["files"]] == [
        (str(bad), False, {"m": "model"})]
    (d,) = out["files"][0]["diagnostics"]
    span = d["span"]
    assert (d["code"], f"{span['line']}:{span['col']}-{span['end_col']}") == ("LMS041", at(text, "bais"))


def test_check_json_of_several_files_has_the_same_shape(write, capsys):
    good = write("good.lmspec", f"lmspec 1\nmodel m {{ {GOOD_MODEL} }}\n")
    bad = write("bad.lmspec", "lmspec 1\nmodel m { }\n")
    assert main(["check", "--json", "--no-meta", str(good), str(bad)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and [(r["file"], r["ok"]) for r in out["files"]] == [(str(good), True), (str(bad), False)]
    assert main(["check", "--json", "--no-meta", *map(str, EXAMPLE_SPECS)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and [r["file"] for r in out["files"]] == list(map(str, EXAMPLE_SPECS))


# ----------------------------------------------------------------------------- a file with no blocks

@pytest.mark.parametrize("text", ["", "lmspec 1\n", "lmspec 1\n# a comment\n\n"], ids=["empty", "header", "comments"])
def test_a_file_with_no_blocks_gets_a_located_warning(write, capsys, text):
    path = write("empty.lmspec", text)
    assert main(["check", "--json", "--no-meta", str(path)]) == 0
    (report,) = json.loads(capsys.readouterr().out)["files"]
    assert report["ok"] and [(d["severity"], d["code"], d["message"]) for d in report["diagnostics"]
                             if d["code"] == "LMS034"] == [("warning", "LMS034", "the file defines no blocks")]
    assert [(d["span"] or {}).get("line") for d in report["diagnostics"]] == [1] * len(report["diagnostics"])


def test_an_empty_file_without_a_header_is_told_both_where_it_is(write, capsys):
    path = write("empty.lmspec", "")
    assert main(["check", "--no-meta", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: ok\n"
    assert err == (f"{path}:1:1: warning[LMS010]: the file does not start with a version header\n"
                   "  |\n1 | \n  | ^\n  = help: add `lmspec 1` as the first line\n\n"
                   f"{path}:1:1: warning[LMS034]: the file defines no blocks\n"
                   "  |\n1 | \n  | ^\n"
                   "  = help: a spec is blocks such as `model gpt { ... }` after `lmspec 1` (see docs/language.md)\n\n"
                   "2 warnings found\n")


def test_a_file_that_imports_its_blocks_is_not_empty(write):
    write("lib.lmspec", f"lmspec 1\nmodel m {{ {GOOD_MODEL} }}\n")
    main_spec = write("main.lmspec", 'lmspec 1\nimport "lib.lmspec"\n')
    assert [d.code for d in check_file(main_spec).diagnostics] == []


# ----------------------------------------------------------------------------- outputs the docs show

SHOWN_IN = [ROOT / "README.md", ROOT / "docs" / "diagnostics.md"]
_FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```$", re.M | re.S)


def _shown_checks(doc: Path) -> list:
    """(arguments, inline input, shown output) of each `$ lmspec check` block of `doc`. A command on
    a file that is not in the repository runs on the nearest ```lmspec block above it."""
    found, spec_above = [], "(no ```lmspec block above it)"
    for lang, body in _FENCE.findall(doc.read_text(encoding="utf-8")):
        if body.startswith("$ lmspec check "):
            command, shown = body.split("\n", 1)
            args = shlex.split(command.removeprefix("$ lmspec check "))
            in_repo = all((ROOT / a).is_file() for a in args if not a.startswith("-"))
            spec_text = None if in_repo else spec_above
            found.append(pytest.param(args, spec_text, shown, id=f"{doc.name}: {command[2:]}"))
        elif lang == "lmspec":
            spec_above = body
    return found


SHOWN = [case for doc in SHOWN_IN for case in _shown_checks(doc)]


def test_the_docs_show_the_checks_this_file_runs():
    assert {case.id.split(":")[0] for case in SHOWN} == {"README.md", "diagnostics.md"} and len(SHOWN) >= 5


@pytest.mark.parametrize("args, spec_text, shown", SHOWN)
def test_each_check_the_docs_show_prints_what_they_show(args, spec_text, shown, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    if spec_text is None:
        monkeypatch.chdir(ROOT)
    else:
        (name,) = [a for a in args if not a.startswith("-")]
        (tmp_path / name).write_text(spec_text, encoding="utf-8")
        monkeypatch.chdir(tmp_path)
    main(["check", *args])
    out, err = capsys.readouterr()
    assert err + out == shown  # as a terminal shows them: a file's diagnostics, then its summary


def test_every_other_spec_the_readme_shows_checks_clean():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    run_by_a_check = {case.values[1] for case in SHOWN}
    listings = [body for lang, body in _FENCE.findall(text) if lang == "lmspec" and body not in run_by_a_check]
    assert listings
    for body in listings:
        assert [d.code for d in check_text(body, "README.lmspec").diagnostics] == []

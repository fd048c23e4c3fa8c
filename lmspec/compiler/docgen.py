"""Generated parts of the docs: the key tables of docs/language.md and the code list of
docs/diagnostics.md, both from the schema and the code catalogue, so they cannot drift.

    python -m lmspec.compiler.docgen          # rewrite the generated sections in docs/
    python -m lmspec.compiler.docgen --check  # exit 1 if docs/ is out of date (a test runs this)
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from lmspec.compiler import compile as _compile, costs, graphs, rules  # noqa: F401 - they register codes
from lmspec.compiler import schema as S
from lmspec.compiler.schema_check import _annotation, _unwrap, variants_of
from lmspec.diagnostics import CODES

__all__ = ["key_tables", "code_table", "update_docs", "DOCS"]

DOCS = Path(__file__).resolve().parents[2] / "docs"
BEGIN, END = "<!-- generated:{name}:begin -->", "<!-- generated:{name}:end -->"


def _type_name(tp) -> str:
    variants = variants_of(tp)
    if variants:
        return " \\| ".join(_variant_signature(v) for v in variants.values())
    core, meta, optional = _unwrap(tp)
    refs = [m for m in meta if isinstance(m, S.RefTo)]
    if refs:
        return " or ".join(f"{k} block" for k in refs[0].kinds)
    origin = typing.get_origin(core)
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in typing.get_args(core))
    if origin is list:
        return f"list of {_type_name(typing.get_args(core)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(core))
    if isinstance(core, type) and issubclass(core, BaseModel):
        return f"`{core.__name__}`"
    return {int: "int", float: "number", bool: "bool", str: "string"}.get(core, str(core))


def _variant_signature(cls) -> str:
    params = [f"{info.alias or n}" for n, info in cls.model_fields.items() if n != "kind"]
    tag = cls.model_fields["kind"].default
    return f"`{tag}({', '.join(params)})`" if params else f"`{tag}`"


def _default(info) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "—"
    if isinstance(value, BaseModel):
        args = {k: v for k, v in value.model_dump(by_alias=True).items() if k != "kind"}
        tag = value.kind
        return f"`{tag}`" if not args else f"`{tag}({', '.join(f'{k}: {v}' for k, v in args.items())})`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def _range(info) -> str:
    parts = []
    for m in info.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{sym} {v}")
    return ", ".join(parts)


def _table(model: type[BaseModel]) -> list[str]:
    rows = ["| key | type | default | range | meaning |", "|---|---|---|---|---|"]
    # `allow`, which every block has, goes last: a block's own keys are what a reader looks for
    for name, info in sorted(model.model_fields.items(), key=lambda item: item[0] == "allow"):
        if name == "kind" and issubclass(model, S.Variant):
            continue
        key = info.alias or name
        doc = (info.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type_name(_annotation(info))} | {_default(info)} | {_range(info)} | {doc} |")
    return rows


def key_tables() -> str:
    """One table per block kind, then one per nested form and variant family."""
    out: list[str] = []
    for kind, model in S.BLOCK_KINDS.items():
        out += [f"### `{kind}`", "", (model.__doc__ or "").strip(), ""] + _table(model) + [""]
    out += ["### Nested blocks", ""]
    for model, title in ((S.StackSpec, "`encoder { }` / `decoder { }` (model, encoder_decoder)"),
                         (S.LayerOverrideSpec, "`layer A..B { }`, `layer every N [from K] { }` "
                                               "(model and stacks; `first`/`last`/`every` come from the selector)"),
                         (S.RolloutSpec, "`rollouts { }` (rl)")):
        out += [f"#### {title}", ""] + _table(model) + [""]
    out += ["### Variants", "", "A variant is written as a bare name (`cosine`) or a call with positional or "
            "keyword arguments (`cosine(100)`, `cosine(warmup: 100, min_lr: 10%)`).", ""]
    seen = set()
    for family in (S.TokenizerKind, S.DataSource, S.Attention, S.Position, S.Head, S.Objective, S.Optimizer,
                   S.Schedule, S.Score, S.Algorithm):
        for tag, cls in variants_of(family).items():
            if cls in seen:
                continue
            seen.add(cls)
            fields = [n for n in cls.model_fields if n != "kind"]
            if not fields:
                continue
            out += [f"#### `{tag}(...)`", ""] + _table(cls) + [""]
    return "\n".join(out).rstrip() + "\n"


def code_table() -> str:
    rows = ["| code | meaning |", "|---|---|"]
    rows += [f"| `{code}` | {meaning} |" for code, meaning in sorted(CODES.items())]
    return "\n".join(rows) + "\n"


def _replace(text: str, name: str, body: str) -> str:
    begin, end = BEGIN.format(name=name), END.format(name=name)
    if begin not in text or end not in text:
        raise ValueError(f"markers for '{name}' are missing")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}{end}{tail}"


GENERATED = {"language.md": {"keys": key_tables}, "diagnostics.md": {"codes": code_table}}


def update_docs(check: bool = False, docs: Path = DOCS) -> list[str]:
    """Rewrite the generated sections; with check=True only report which files are stale."""
    stale = []
    for file, sections in GENERATED.items():
        path = docs / file
        text = path.read_text(encoding="utf-8")
        new = text
        for name, make in sections.items():
            new = _replace(new, name, make())
        if new != text:
            stale.append(file)
            if not check:
                path.write_text(new, encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmspec.compiler.docgen")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/ is out of date")
    args = parser.parse_args(argv)
    stale = update_docs(check=args.check)
    if stale and args.check:
        print(f"out of date: {', '.join(stale)}; run `python -m lmspec.compiler.docgen`", file=sys.stderr)
        return 1
    for f in stale:
        print(f"updated docs/{f}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

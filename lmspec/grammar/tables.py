"""The LALR tables of `lmspec.lark`, built once and shipped as `lalr_tables.json`.

Building the parser from the grammar (lark reads the grammar with a parser of its own, then
computes the LALR tables) takes ~55 ms, a tenth of a `check --no-meta`. lark can serialize a
built parser to plain data (dicts, lists, strings, numbers: what its standalone generator
embeds); `lalr_tables.json` holds that data (2 ms to read, against 15-20 ms to import the same
data as a Python module), with the SHA-256 of the grammar and the lark version that built it.
`lmspec.grammar.parser.lark_parser` loads it when both match and builds from the grammar
otherwise, so an edited grammar is never parsed with old tables. No pickle.

After editing `lmspec.lark`, regenerate (tests/test_parser.py fails until then):

    python -m lmspec.grammar.tables
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["GRAMMAR", "TABLES", "OPTIONS", "grammar_sha256", "build_parser", "tables_text", "read_tables", "main"]

GRAMMAR = Path(__file__).with_name("lmspec.lark")
TABLES = Path(__file__).with_name("lalr_tables.json")
OPTIONS = {"parser": "lalr", "propagate_positions": True, "maybe_placeholders": True, "cache": False}


def grammar_sha256() -> str:
    return hashlib.sha256(GRAMMAR.read_bytes()).hexdigest()


def build_parser():
    """The parser built from the grammar (the slow path)."""
    from lark import Lark

    return Lark.open(GRAMMAR.name, rel_to=str(GRAMMAR), **OPTIONS)


def tables_text() -> str:
    """The text of `lalr_tables.json` for the grammar as it is now. lark numbers tokens and
    states in the iteration order of its sets, which differs from process to process: two
    builds of one grammar give differently numbered tables of the same parser (the tests
    compare what the parsers do, not the text)."""
    import lark
    from lark.grammar import Rule
    from lark.lexer import TerminalDef

    data, memo = build_parser().memo_serialize([TerminalDef, Rule])
    tables = {"grammar_sha256": grammar_sha256(), "lark_version": lark.__version__, "data": data, "memo": memo}
    return json.dumps(tables, separators=(",", ":")) + "\n"


def _int_keys(pairs: list[tuple[str, object]]) -> dict:
    # JSON writes lark's integer keys (memo ids, token and state numbers) as strings; no
    # other key of the tables is all digits
    return {int(k) if k.isdigit() else k: v for k, v in pairs}


def read_tables() -> dict:
    """The shipped tables: grammar_sha256, lark_version, data and memo (lark's serialized
    parser, for `Lark._load_from_dict`)."""
    return json.loads(TABLES.read_text(encoding="utf-8"), object_pairs_hook=_int_keys)


def main() -> None:
    TABLES.write_text(tables_text(), encoding="utf-8")
    print(f"wrote {TABLES}")


if __name__ == "__main__":
    main()

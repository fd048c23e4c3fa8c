"""Shared helpers and fixtures of the front-end tests: spec text in, diagnostics out."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # test this checkout, even where another lmspec is installed
    sys.path.insert(0, str(ROOT))

# `lmspec check`'s meta cache goes to a directory of this session, never the user's ~/.cache
# (tests that study the cache point LMSPEC_CACHE_DIR at their own tmp_path)
os.environ.setdefault("LMSPEC_CACHE_DIR", tempfile.mkdtemp(prefix="lmspec-test-meta-"))

from lmspec.compiler.api import CheckReport, check_text  # noqa: E402
from lmspec.diagnostics import Diagnostic  # noqa: E402

EXAMPLE_SPECS = sorted((ROOT / "specs").glob("*.lmspec"))

# A model block that passes the schema and every rule, for tests about one key.
GOOD_MODEL = "vocab: 300, context: 16, layers: 2, d_model: 32, heads: 4"


def diagnose(text: str, path: str = "spec.lmspec") -> CheckReport:
    """`check_text` under a file name. Snippets without `lmspec 1` get one LMS010 warning,
    which keeps their line numbers those of the snippet."""
    return check_text(text, path)


def errors(text: str) -> list[str]:
    """`line:col code message` of each error, in source order."""
    return [f"{d.span.line}:{d.span.col} {d.code} {d.message}" if d.span else f"- {d.code} {d.message}"
            for d in sorted(diagnose(text).errors, key=lambda d: (d.span.line, d.span.col) if d.span else (0, 0))]


def only(text: str, code: str) -> Diagnostic:
    """The one diagnostic of `text` with `code` (failing with every diagnostic otherwise)."""
    report = diagnose(text)
    found = [d for d in report.diagnostics if d.code == code]
    assert len(found) == 1, [f"{d.span}: {d.code} {d.message}" for d in report.diagnostics]
    return found[0]


def where(d: Diagnostic) -> str:
    """`line:col-end_col` of a one-line span: what the carets underline."""
    assert d.span is not None and d.span.line == d.span.end_line, d.span
    return f"{d.span.line}:{d.span.col}-{d.span.end_col}"


def at(text: str, fragment: str, nth: int = 1) -> str:
    """`line:col-end_col` of the nth occurrence of `fragment` in `text`: what `where` says
    the carets of a diagnostic underline."""
    start = -1
    for _ in range(nth):
        start = text.index(fragment, start + 1)
    line = text.count("\n", 0, start) + 1
    col = start - (text.rfind("\n", 0, start) + 1) + 1
    return f"{line}:{col}-{col + len(fragment)}"


@pytest.fixture
def write(tmp_path):
    """write("a.lmspec", text) -> its path under tmp_path (folders created)."""

    def _write(name: str, text: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return _write

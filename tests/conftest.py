"""Shared helpers and fixtures of the front-end tests: spec text in, diagnostics out."""

from __future__ import annotations

import contextlib
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
if "LMSPEC_CACHE_DIR" not in os.environ:  # (spawned workers import this file too)
    os.environ["LMSPEC_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmspec-test-meta-")

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


@contextlib.contextmanager
def gloo_group(rank: int, rendezvous: str, world_size: int = 2):
    """The gloo process group of a spawned test worker (`rendezvous` a file path), left as `lmspec
    run`'s workers leave theirs: after a barrier when the body ended cleanly
    (`distributed.leave_process_group`; without it a worker can abort at exit)."""
    import torch.distributed as dist

    from lmspec.runtime import distributed

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    clean = False
    try:
        yield
        clean = True
    finally:
        distributed.leave_process_group(clean)


# Preloaded once into multiprocessing's fork server, so that a spawned worker starts in a moment
# instead of importing torch afresh (seconds of the suite's time per worker).
_PRELOAD = ["torch", "torch.distributed.fsdp", "torch.distributed.checkpoint", "torch.distributed.tensor",
            "safetensors.torch", "lmspec.runtime.api", "lmspec.runtime.stages.train", "lmspec.runtime.stages.rl"]


def _in_parents_environment(rank: int, environ: dict, cwd: str, fn, *args) -> None:
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    fn(rank, *args)


def spawn(fn, *args, nprocs: int = 2) -> None:
    """`torch.multiprocessing.spawn(fn, args, nprocs)`: fn(rank, *args) in `nprocs` new
    processes, each with this process's environment and working directory, as spawn gives; forked
    from a server that has imported torch and lmspec once for the whole session. What torch reads
    at import (OMP_NUM_THREADS) is the server's; the workers end with os._exit, not the
    interpreter's shutdown (the launcher tests, `lmspec run --nproc 2`, exercise that).
    test_fsdp's full-disk test keeps spawn's real exit, where a gloo abort once showed."""
    import multiprocessing

    import torch.multiprocessing

    multiprocessing.set_forkserver_preload(_PRELOAD)
    torch.multiprocessing.start_processes(_in_parents_environment, args=(dict(os.environ), os.getcwd(), fn, *args),
                                          nprocs=nprocs, start_method="forkserver")

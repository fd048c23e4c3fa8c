"""A cache of meta-pass results on disk, so that `lmspec check` on a spec whose models did not
change (the usual case when a check runs on every save) neither imports torch nor runs a pass.

An entry is one JSON file, `<key>.json`, holding a `MetaResult`. The key is the SHA-256 of
everything the result depends on: the lowered `ArchConfig`, the pass's shapes and the outputs
its loss reads; lmspec's version and the text of every module of `lmspec.compiler` (the
builders and the torch modules the pass runs, and the lowering before it), so an edited
checkout never reads an entry of its earlier self; and torch's `version.py` (version and git
commit), read from disk without importing torch. A stale hit would need one of these to be
unchanged while the result changed.

Entries are plain JSON checked field by field on reading (never pickle: a planted file can at
worst be ignored), written to a temporary file and renamed into place (a reader never sees half
an entry), and at most `MAX_ENTRIES` are kept (the least recently used go first). Any failure to
read or write is a cache miss, never an error. The cache is used only inside `use_meta_cache()`
(`lmspec check` opens it); elsewhere every pass runs.

Where: `$LMSPEC_CACHE_DIR/meta`, else `$LMSPEC_CACHE/meta` (the root the runtime's data cache
uses), else `$XDG_CACHE_HOME/lmspec/meta`, else `~/.cache/lmspec/meta`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
import sys
import threading
from pathlib import Path
from typing import Collection, Iterator

import lmspec
from lmspec.compiler.arch import ArchConfig

# hashlib, json and importlib.util are imported where they are used: `lmspec check --no-meta`
# opens the cache (`use_meta_cache`) but never computes a key or reads an entry.

__all__ = ["use_meta_cache", "cache_directory", "cache_key", "load", "store", "FORMAT", "MAX_ENTRIES"]

FORMAT = 1  # bump when an entry's layout or the meaning of a MetaResult changes
MAX_ENTRIES = 512  # a few hundred bytes each: the representative model's parameter names at most
_MAX_ENTRY_BYTES = 1 << 20  # a larger file is not an entry this module wrote

_directory: contextvars.ContextVar[Path | None] = contextvars.ContextVar("lmspec_meta_cache", default=None)


def cache_directory() -> Path:
    # LMSPEC_CACHE is the root the runtime already keeps tokenised data under
    root = os.environ.get("LMSPEC_CACHE_DIR") or os.environ.get("LMSPEC_CACHE")
    if root:
        return Path(root).expanduser() / "meta"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "lmspec" / "meta"


@contextlib.contextmanager
def use_meta_cache(directory: str | Path | None = None) -> Iterator[Path]:
    """Within this block, `meta_pass` reads and writes the cache in `directory`
    (default `cache_directory()`)."""
    path = Path(directory) if directory is not None else cache_directory()
    token = _directory.set(path)
    try:
        yield path
    finally:
        _directory.reset(token)


def active_directory() -> Path | None:
    return _directory.get()


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """The text of every module of `lmspec.compiler` (build, modules, analysis, lowering), ~2 ms:
    a source checkout edited in place keeps its version number but not this digest."""
    import hashlib

    h = hashlib.sha256()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                h.update(os.path.relpath(path, root).encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _torch_digest() -> str:
    """torch's version.py (version and git commit), found and read without importing torch."""
    import hashlib
    import sys

    try:
        for entry in sys.path:  # the first torch on the path is the one `import torch` takes
            version = Path(entry or ".") / "torch" / "version.py"
            if version.is_file():
                return hashlib.sha256(version.read_bytes()).hexdigest()
    except (OSError, ValueError):
        pass
    return "torch not found"


def cache_key(arch: ArchConfig, batch: int, seq_len: int | None, decoder_seq_len: int | None,
              reads: Collection[str] | None) -> str:
    import hashlib
    import json

    material = {
        "format": FORMAT,
        "lmspec": lmspec.__version__,
        "code": _code_digest(),
        "torch": _torch_digest(),
        "python": sys.version,
        "arch": dataclasses.asdict(arch),
        "batch": batch,
        "seq_len": seq_len,
        "decoder_seq_len": decoder_seq_len,
        "reads": None if reads is None else sorted(reads),
    }
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _is_text_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def load(directory: Path, key: str) -> tuple[list[str], list[str]] | None:
    """(problems, unreached) of the entry for `key`; None when there is no valid one."""
    import json

    path = directory / f"{key}.json"
    try:
        if path.stat().st_size > _MAX_ENTRY_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # missing, unreadable, not UTF-8, not JSON, too deep
        return None
    if not (isinstance(data, dict) and data.get("format") == FORMAT and data.get("key") == key
            and _is_text_list(data.get("problems")) and _is_text_list(data.get("unreached"))):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: evicted last
    return data["problems"], data["unreached"]


def store(directory: Path, key: str, problems: list[str], unreached: list[str]) -> None:
    """Write the entry for `key` atomically; on any failure there is simply no entry."""
    import json

    text = json.dumps({"format": FORMAT, "key": key, "problems": problems, "unreached": unreached})
    if len(text) > _MAX_ENTRY_BYTES:
        return
    tmp = directory / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"  # one writer per file
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, directory / f"{key}.json")
        _evict(directory)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _evict(directory: Path) -> None:
    """Keep the MAX_ENTRIES most recently used entries (leftover temporary files count too)."""
    with os.scandir(directory) as it:
        files = [e for e in it if e.is_file(follow_symlinks=False)]
    if len(files) <= MAX_ENTRIES:
        return
    files.sort(key=lambda e: e.stat(follow_symlinks=False).st_mtime_ns)
    for entry in files[:len(files) - MAX_ENTRIES]:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)

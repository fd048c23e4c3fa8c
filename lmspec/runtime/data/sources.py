"""Where examples come from: a built-in corpus, text files, or JSON lines — read streaming.

Every source yields `Record`s: the text of each field the caller asked for (by its canonical
name: text, prompt, response), the label, and where the record came from (`corpus/a.txt:12`),
which every error about it names. Files are read line by line in binary and decoded per line,
so a file larger than memory streams and a bad byte is reported with its line and offset.

Paths are relative to the spec file. `text("corpus/*.txt")` is a glob: its files are read in
sorted order. Text must be UTF-8: a file that is not is an error naming the first bad byte,
not silently mangled text the model learns from.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import json
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

from lmspec.compiler.compile import spec_relative
from lmspec.runtime.errors import RunError

__all__ = ["Record", "FIELDS", "source_files", "fingerprint", "text_fingerprint", "read_records", "iter_texts",
           "describe"]

FIELDS = ("text", "prompt", "response")  # the canonical field names; a data block maps each to a key


@dataclass(frozen=True)
class Record:
    where: str  # "corpus/a.jsonl:12": for error messages
    fields: dict[str, str]  # canonical field -> text
    label: int | None = None


def describe(source) -> str:
    """How the spec wrote a source: `text("corpus/*.txt")`."""
    arg = source.name if source.kind == "builtin" else source.path
    return f'{source.kind}("{arg}")'


def source_files(source, *, spec_file: str, name: str) -> list[Path]:
    """The files of a text or jsonl source, in the order they are read."""
    pattern = spec_relative(source.path, spec_file)
    where = f"data '{name}': {describe(source)}"
    if glob.has_magic(str(source.path)):
        files = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True) if os.path.isfile(p))
        if not files:
            raise RunError(f"{where} matches no file ({pattern})",
                           help="the pattern is relative to the spec file's directory")
        return files
    if pattern.is_dir():
        raise RunError(f"{where}: {pattern} is a directory",
                       help=f'name its files with a glob: {source.kind}("{source.path.rstrip("/")}/*.'
                            f'{"txt" if source.kind == "text" else "jsonl"}")')
    if not pattern.is_file():
        raise RunError(f"{where}: no such file {pattern}", help="the path is relative to the spec file's directory")
    return [pattern]


def fingerprint(source, *, spec_file: str, name: str) -> dict:
    """What a source's examples depend on, for cache keys: a built-in corpus's name and
    version, or every file's bytes (sha256, streamed) and its name relative to the spec."""
    if source.kind == "builtin":
        from lmspec.runtime.data import builtin

        return {"kind": "builtin", "name": source.name, "version": builtin.VERSION}
    base = spec_relative(".", spec_file)
    files = []
    for path in source_files(source, spec_file=spec_file, name=name):
        files.append([os.path.relpath(path, base), _file_sha256(path)])
    return {"kind": source.kind, "files": files}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()  # hashlib.file_digest is 3.11+
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def text_fingerprint(spec, *, spec_file: str, name: str) -> dict:
    """What `iter_texts` of a data block depends on (a bpe tokenizer's cache key)."""
    return {"source": fingerprint(spec.source, spec_file=spec_file, name=name), "text": spec.text,
            "prompt": spec.prompt, "response": spec.response, "max_examples": spec.max_examples}


# ----------------------------------------------------------------------------- reading


def read_records(spec, *, name: str, spec_file: str, fields: tuple[str, ...] = ("text",),
                 label: str | None = None) -> Iterator[Record]:
    """The first `max_examples` records of a data block (a schema.DataSpec), each with the
    `fields` asked for and the integer under key `label`."""
    source = spec.source
    if source.kind == "text":
        if fields != ("text",) or label is not None:
            wanted = [f for f in fields if f != "text"] + ([f"label '{label}'"] if label else [])
            raise RunError(f"data '{name}': a text(...) source holds documents only, and this stage reads "
                           f"{', '.join(wanted)}", help="use a jsonl(...) source with those fields")
        records = (Record(where, {"text": doc}) for where, doc in _documents(source, spec_file, name))
    else:
        keys = {f: getattr(spec, f) for f in fields}
        objects = _builtin_objects(source) if source.kind == "builtin" else _json_objects(source, spec_file, name)
        records = (_record(obj, where, keys, label, name) for where, obj in objects)
    return islice(records, spec.max_examples)


def iter_texts(spec, *, spec_file: str, name: str = "data") -> Iterator[str]:
    """The raw texts of a data block's first `max_examples` records, streaming (what a bpe
    tokenizer learns from): each document or `text` field; a record without one gives its
    prompt and its response."""
    source = spec.source
    if source.kind == "text":
        for _, doc in islice(_documents(source, spec_file, name), spec.max_examples):
            yield doc
        return
    objects = _builtin_objects(source) if source.kind == "builtin" else _json_objects(source, spec_file, name)
    for where, obj in islice(objects, spec.max_examples):
        if isinstance(obj, dict) and spec.text not in obj and spec.prompt in obj and spec.response in obj:
            keys = {"prompt": spec.prompt, "response": spec.response}
        else:
            keys = {"text": spec.text}
        yield from _record(obj, where, keys, None, name).fields.values()


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without its line ending), decoding each line strictly."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise RunError(f"{path}:{number}: not UTF-8: byte {offset + err.start} of the file is "
                               f"{raw[err.start:err.start + 1].hex()}",
                               help="convert the file to UTF-8 (iconv -f latin1 -t utf-8 IN > OUT) "
                                    "or fix the byte") from None
            if number == 1 and line.startswith("\ufeff"):  # a byte-order mark is not text
                line = line[1:]
            offset += len(raw)
            yield number, line.rstrip("\r\n")


def _documents(source, spec_file: str, name: str) -> Iterator[tuple[str, str]]:
    """(where, document) of every file: documents are separated by blank lines. A document is
    held in memory whole; the file is not."""
    for path in source_files(source, spec_file=spec_file, name=name):
        lines: list[str] = []
        start = 0
        for number, line in _lines(path):
            if line and not line.isspace():
                if not lines:
                    start = number
                lines.append(line)
            elif lines:
                yield f"{path}:{start}", "\n".join(lines)
                lines = []
        if lines:
            yield f"{path}:{start}", "\n".join(lines)


def _json_objects(source, spec_file: str, name: str) -> Iterator[tuple[str, object]]:
    for path in source_files(source, spec_file=spec_file, name=name):
        for number, line in _lines(path):
            if not line or line.isspace():
                continue  # a trailing newline, or a blank line between records
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as err:
                raise RunError(f"{path}:{number}: not JSON: {err.msg} (column {err.colno})",
                               help=f"data '{name}' reads one JSON object per line; "
                                    f"fix or delete line {number}") from None


def _builtin_objects(source) -> Iterator[tuple[str, object]]:
    from lmspec.runtime.data import builtin

    for i, obj in enumerate(builtin.generate(source.name, seed=0)):
        yield f'builtin("{source.name}") record {i}', obj


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _record(obj, where: str, keys: dict[str, str], label: str | None, name: str) -> Record:
    """Check one JSON object (or built-in record) and take the fields asked for."""
    if not isinstance(obj, dict):
        raise RunError(f"{where}: {_JSON_TYPES.get(type(obj), 'a value')} where a JSON object was expected",
                       help='each line must be one object, such as {"text": "..."}')
    texts = {}
    for field, key in keys.items():
        if key not in obj:
            raise RunError(f"{where}: no field '{key}'{_has(obj, key)}",
                           help=f"data '{name}' reads its {field} from '{key}'; name the right field with "
                                f"`{field}: \"...\"` in the data block")
        value = obj[key]
        if not isinstance(value, str):
            raise RunError(f"{where}: field '{key}' is {_JSON_TYPES.get(type(value), 'a value')}, not a string",
                           help=f"data '{name}' reads its {field} from '{key}', which must hold text")
        texts[field] = value
    if label is None:
        return Record(where, texts)
    if label not in obj:
        raise RunError(f"{where}: no label field '{label}'{_has(obj, label)}",
                       help=f"name the field that holds the class with `label: \"...\"` in data '{name}'")
    value = obj[label]
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise RunError(f"{where}: label '{label}' is {value!r}, not a class number (0, 1, ...)",
                       help="labels are class indices; map names such as \"positive\" to numbers first")
    return Record(where, texts, value)


def _has(obj: dict, key: str) -> str:
    close = difflib.get_close_matches(key, [str(k) for k in obj], n=1)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f" (it has {', '.join(map(str, list(obj)[:8])) or 'no fields'})"

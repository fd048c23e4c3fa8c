"""Preparing a data block: read its source, split it, and tokenise it once into the cache.

The cache key covers everything the token files depend on (the source's content, the
tokenizer's identity, the fields and label read, validation, seed, max_examples), so a second
run with the same inputs opens the existing entry at once and a changed input makes a new one.

Each example goes to validation by a hash of (seed, its index) — decided while the source
streams, whatever its size. Two rules keep tiny corpora usable: a validation split that was
asked for but came out empty takes the last train example (when there are two or more), and an
empty train split takes the last validation example.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from lmspec.runtime.data.cache import FORMAT, SPLITS, Split, SplitWriter, token_dtype, write_atomically
from lmspec.runtime.data.order import is_validation
from lmspec.runtime.data.sources import FIELDS, Record, describe, fingerprint, read_records
from lmspec.runtime.errors import RunError

if TYPE_CHECKING:
    from lmspec.runtime.tokenizers import Tokenizer

__all__ = ["Dataset", "prepare_dataset", "open_dataset"]

CHUNK_EXAMPLES, CHUNK_CHARS = 1024, 1 << 22  # what one encode_arrays call gets: enough for BPE's threads


@dataclass
class Dataset:
    name: str  # the data block
    path: Path  # its cache entry
    fields: tuple[str, ...]
    label: str | None  # the record key the labels were read from
    train: Split
    validation: Split
    meta: dict

    def split(self, name: str) -> Split:
        return {"train": self.train, "validation": self.validation}[name]


def prepare_dataset(spec, *, name: str, spec_file: str, tokenizer: "Tokenizer", fields: tuple[str, ...] = ("text",),
                    label: str | None = None, cache_dir: Path) -> Dataset:
    """The tokenised train and validation splits of data block `name` (a schema.DataSpec).

    fields: the canonical fields to tokenise (text, prompt, response), read from the keys the
    data block names; label: the record key holding an integer class (a classify stage's)."""
    fields = tuple(fields)
    if not fields or set(fields) - set(FIELDS):
        raise ValueError(f"fields must be some of {FIELDS}, not {fields}")
    inputs = {"format": FORMAT, "source": fingerprint(spec.source, spec_file=spec_file, name=name),
              "tokenizer": tokenizer.identity, "fields": {f: getattr(spec, f) for f in fields}, "label": label,
              "validation": spec.validation, "seed": spec.seed, "max_examples": spec.max_examples}
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "data" / key
    if not (path / "meta.json").is_file():
        records = read_records(spec, name=name, spec_file=spec_file, fields=fields, label=label)
        write_atomically(path, lambda tmp: _tokenise(tmp, records, spec, name=name, tokenizer=tokenizer,
                                                      fields=fields, label=label, inputs=inputs))
    return open_dataset(path, name=name)


def open_dataset(path: Path, *, name: str) -> Dataset:
    """A cache entry prepare_dataset wrote."""
    meta = json.loads((Path(path) / "meta.json").read_text())
    train, validation = (Split(path, s, meta, data_name=name) for s in SPLITS)
    return Dataset(name, Path(path), tuple(meta["fields"]), meta["label"], train, validation, meta)


def _chunks(records: Iterable[Record]) -> Iterator[list[Record]]:
    chunk, chars = [], 0
    for record in records:
        chunk.append(record)
        chars += sum(map(len, record.fields.values()))
        if len(chunk) >= CHUNK_EXAMPLES or chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _tokenise(directory: Path, records: Iterable[Record], spec, *, name: str, tokenizer: "Tokenizer",
              fields: tuple[str, ...], label: str | None, inputs: dict) -> None:
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {s: SplitWriter(directory, s, fields, dtype, tokenizer.eos_id, label is not None) for s in SPLITS}
    held: dict[str, tuple | None] = {s: None for s in SPLITS}  # each split's latest example, written last
    seen = 0
    try:
        for chunk in _chunks(records):
            held_out = is_validation(spec.seed, np.arange(seen, seen + len(chunk)), spec.validation)
            seen += len(chunk)
            encoded = {f: tokenizer.encode_arrays([r.fields[f] for r in chunk]) for f in fields}
            for split, mask in (("train", ~held_out), ("validation", held_out)):
                mine = [({f: encoded[f][j] for f in fields}, chunk[j].label) for j in np.flatnonzero(mask)]
                if not mine:
                    continue
                if held[split] is not None:
                    mine.insert(0, held[split])
                held[split] = mine.pop()
                writers[split].add(mine)
        if seen == 0:
            what = "documents" if spec.source.kind == "text" else "records"
            raise RunError(f"data '{name}': {describe(spec.source)} holds no {what}",
                           help="documents are separated by blank lines" if what == "documents" else
                                "a jsonl file holds one JSON object per line")
        _rebalance(held, writers["train"].examples, spec.validation)
        for split in SPLITS:
            if held[split] is not None:
                writers[split].add([held[split]])
    finally:
        counts = {s: w.close() for s, w in writers.items()}
    for f in fields:
        eos = 1 if f == "text" and tokenizer.eos_id is not None else 0
        if sum(c["tokens"][f] - eos * c["examples"] for c in counts.values()) == 0:
            raise RunError(f"data '{name}': every {f} in {describe(spec.source)} is empty: nothing to train on",
                           help=f"check which field the data block reads as its {f}")
    meta = {**inputs, "name": name, "fields": list(fields), "label": label, "eos": tokenizer.eos_id if "text" in fields
            else None, "dtype": dtype.name, "vocab_size": tokenizer.vocab_size, "splits": counts}
    (directory / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")  # written last: it marks the entry complete


def _rebalance(held: dict, written_train: int, fraction: float) -> None:
    """The two tiny-corpus rules of the module docstring, on the held-back last examples."""
    train = written_train + (held["train"] is not None)
    if fraction > 0 and held["validation"] is None and train >= 2:
        held["validation"], held["train"] = held["train"], None
    elif held["train"] is None and held["validation"] is not None:
        held["train"], held["validation"] = held["validation"], None

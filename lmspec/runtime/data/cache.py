"""The on-disk form of a tokenised dataset, in nanoGPT's .bin manner, and the `Split` reader.

One cache entry is a directory `cache_dir/data/<key>/`:

    meta.json                       what was tokenised, and the counts below
    train.text.bin                  the field's tokens of every example, concatenated (uint16, or
                                    uint32 past 65,536 ids); for `text` each document is followed
                                    by EOS: the packed stream windows are cut from
    train.text.offsets.bin          int64, len + 1: example i is bin[off[i]:off[i+1]] (EOS included)
    train.labels.bin                int64 class per example, when the data has a label
    validation.*                    the same for the held-out split

An entry is written into a temporary directory beside it and renamed into place when complete,
so an interrupted tokenisation never leaves a broken entry; the leftovers of a killed run are
`.tmp-*` directories that can be deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lmspec.runtime.errors import RunError

__all__ = ["FORMAT", "SPLITS", "token_dtype", "SplitWriter", "Split", "write_atomically"]

FORMAT = 1  # bump when the layout or the tokenisation rules change: old entries are then ignored
SPLITS = ("train", "validation")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class SplitWriter:
    """Appends examples of one split to its files, a chunk of examples per write."""

    def __init__(self, directory: Path, split: str, fields: tuple[str, ...], dtype: np.dtype,
                 eos: int | None, labelled: bool):
        self.fields, self.dtype, self.split = fields, dtype, split
        self.separator = {f: eos if f == "text" else None for f in fields}  # only the packed stream has EOS
        self.examples = 0
        self.tokens = {f: 0 for f in fields}
        self._files = {f: open(directory / f"{split}.{f}.bin", "wb") for f in fields}
        self._offsets = {f: open(directory / f"{split}.{f}.offsets.bin", "wb") for f in fields}
        for f in fields:
            np.zeros(1, np.int64).tofile(self._offsets[f])
        self._labels = open(directory / f"{split}.labels.bin", "wb") if labelled else None

    def add(self, examples: list[tuple[dict[str, np.ndarray], int | None]]) -> None:
        """examples: [({field: token ids}, label)]."""
        if not examples:
            return
        for f in self.fields:
            arrays = [tokens[f] for tokens, _ in examples]
            sizes = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
            sep = self.separator[f]
            if sep is not None:
                eos = np.array([sep], dtype=self.dtype)
                arrays = [part for a in arrays for part in (a, eos)]
                sizes += 1
            np.concatenate(arrays).astype(self.dtype, copy=False).tofile(self._files[f])
            (self.tokens[f] + np.cumsum(sizes)).tofile(self._offsets[f])
            self.tokens[f] += int(sizes.sum())
        if self._labels is not None:
            np.array([label for _, label in examples], dtype=np.int64).tofile(self._labels)
        self.examples += len(examples)

    def close(self) -> dict:
        for f in [*self._files.values(), *self._offsets.values(), self._labels]:
            if f is not None:
                f.close()
        return {"examples": self.examples, "tokens": dict(self.tokens)}


class Split:
    """One split of a cached dataset, memory-mapped: nothing is read until it is used."""

    def __init__(self, directory: Path, name: str, meta: dict, *, data_name: str):
        self.directory, self.name, self.data_name = Path(directory), name, data_name
        self.fields: tuple[str, ...] = tuple(meta["fields"])
        self.label: str | None = meta["label"]  # the record key the labels were read from
        self.labelled = self.label is not None
        self.eos_id: int | None = meta["eos"]
        self.dtype = np.dtype(meta["dtype"])
        self._counts = meta["splits"][name]
        self._arrays: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self._counts["examples"]

    def __repr__(self) -> str:
        return f"<Split {self.data_name}.{self.name}: {len(self)} examples, {self._counts['tokens']} tokens>"

    def n_tokens(self, field: str = "text") -> int:
        """Tokens of that field over the split (for text, the packed stream's: EOS included)."""
        return self._counts["tokens"][self._field(field)]

    def tokens(self, field: str = "text") -> np.ndarray:
        """The field's tokens of every example, concatenated (memory-mapped)."""
        return self._array(f"{self.name}.{self._field(field)}.bin", self.dtype)

    def offsets(self, field: str = "text") -> np.ndarray:
        """int64, len + 1: example i's tokens are tokens()[off[i]:off[i+1]] (EOS included)."""
        return self._array(f"{self.name}.{self._field(field)}.offsets.bin", np.dtype(np.int64))

    def lengths(self, field: str = "text") -> np.ndarray:
        """Tokens per example of that field, EOS excluded."""
        eos = 1 if field == "text" and self.eos_id is not None else 0
        return np.diff(self.offsets(field)) - eos

    def labels(self) -> np.ndarray:
        if not self.labelled:
            raise ValueError(f"data '{self.data_name}' was prepared without a label")
        return self._array(f"{self.name}.labels.bin", np.dtype(np.int64))

    def example(self, i: int) -> dict:
        """{field: LongTensor (EOS excluded) ..., "label": int when the data has a label}."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} of split '{self.name}' ({len(self)} examples)")
        i %= len(self)
        out = {}
        for f in self.fields:
            start, end = self.offsets(f)[i:i + 2]
            if f == "text" and self.eos_id is not None:
                end -= 1
            out[f] = torch.from_numpy(self.tokens(f)[start:end].astype(np.int64))
        if self.labelled:
            out["label"] = int(self.labels()[i])
        return out

    def _field(self, field: str) -> str:
        if field not in self.fields:
            raise ValueError(f"data '{self.data_name}' was prepared with fields {self.fields}, not '{field}'")
        return field

    def _array(self, file: str, dtype: np.dtype) -> np.ndarray:
        if file not in self._arrays:
            path = self.directory / file
            size = path.stat().st_size if path.exists() else -1
            if size < 0 or size % dtype.itemsize:
                raise RunError(f"{path}: missing or truncated: the data cache entry is damaged",
                               help=f"delete {self.directory}; the next run tokenises the data again")
            # np.memmap cannot map an empty file: an empty split (validation: 0) is an empty array
            self._arrays[file] = np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype)
        return self._arrays[file]

    def __getstate__(self):  # DataLoader workers: send the paths, not the mapped arrays
        return {**self.__dict__, "_arrays": {}}


def write_atomically(final: Path, fill: Callable[[Path], object], *, complete: str = "meta.json") -> Path:
    """Run fill(tmp) on a fresh directory beside `final`, then rename it to `final`. Whatever
    goes wrong (an error, Ctrl-C), no half-written `final` is left. `complete` is the file
    every finished entry holds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        fill(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / complete).is_file():
                raise
            # another process finished the same entry first; its content is the same
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final

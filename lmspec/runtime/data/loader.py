"""The examples a stage reads: an endless stream over one split, epoch after epoch.

`take(position, n)` is a pure function of (seed, position): example p of the stream is
example order(epoch)[p % N] of the split, with epoch = p // N and order a seed-determined
permutation (or range(N) without shuffling). A resumed run needs only the position it stopped
at, and no loader state is saved.

    windows     {"tokens": LongTensor (length,)}: non-overlapping slices (stride `length`) of the
                packed stream, documents joined with EOS; N = n_tokens // length
    documents   {"tokens": LongTensor (T,)}: one document, EOS excluded
    records     {field: LongTensor ..., "label": int}: the fields the objective reads
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from lmspec.runtime.data.cache import Split
from lmspec.runtime.data.order import epoch_order
from lmspec.runtime.errors import RunError

if TYPE_CHECKING:
    from lmspec.runtime.objectives.base import Reads

__all__ = ["ExampleStream"]


class ExampleStream:
    def __init__(self, split: Split, reads: "Reads", *, seed: int, shuffle: bool = True):
        self.split, self.reads, self.seed, self.shuffle = split, reads, seed, shuffle
        self._orders: dict[int, np.ndarray] = {}  # the latest epochs' permutations
        where = f"data '{split.data_name}' ({split.name} split)"
        if reads.kind == "windows":
            if not reads.length or reads.length < 1:
                raise ValueError(f"windows need a positive length, not {reads.length}")
            have = split.n_tokens("text")
            if len(split) and have < reads.length:
                more = "a larger `validation:` fraction" if split.name == "validation" else "more data"
                raise RunError(f"{where} has {have} tokens, and one window needs {reads.length}",
                               help=f"lower seq_len until a window fits in {have} tokens, or use {more}")
            self._n = have // reads.length
        elif reads.kind in ("documents", "records"):
            needs = ("text",) if reads.kind == "documents" else reads.fields
            missing = [f for f in needs if f not in split.fields]
            if missing or (reads.kind == "records" and reads.label not in (None, split.label)):
                raise ValueError(f"{where} was prepared with fields {split.fields} and label {split.label!r}; "
                                 f"the objective reads {reads}")
            self._n = len(split)
        else:
            raise ValueError(f"unknown reads kind {reads.kind!r}")

    def __len__(self) -> int:
        """Examples per epoch."""
        return self._n

    def indices(self, position: int, n: int) -> np.ndarray:
        """The split's example (or window) numbers at stream positions position .. position+n-1."""
        if position < 0 or n < 0:
            raise ValueError(f"take({position}, {n}): position and n must be >= 0")
        if n and not self._n:
            raise RunError(f"data '{self.split.data_name}': the {self.split.name} split is empty",
                           help="raise the data block's `validation:` fraction" if self.split.name == "validation"
                                else "the data holds too few examples")
        positions = np.arange(position, position + n, dtype=np.int64)
        if not self.shuffle or not n:
            return positions % max(self._n, 1)
        epochs, within = np.divmod(positions, self._n)
        out = np.empty(n, dtype=np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            out[here] = self._order(int(epoch))[within[here]]
        return out

    def take(self, position: int, n: int) -> list[dict]:
        """Examples position .. position+n-1 of the endless stream."""
        idx = self.indices(position, n)
        if self.reads.kind == "windows":
            length = self.reads.length
            starts = idx * length
            rows = self.split.tokens("text")[starts[:, None] + np.arange(length)]  # (n, length), one gather
            return [{"tokens": row} for row in torch.from_numpy(rows.astype(np.int64))]
        if self.reads.kind == "documents":
            return [{"tokens": self.split.example(int(i))["text"]} for i in idx]
        out = []
        for i in idx:
            example = self.split.example(int(i))
            record = {f: example[f] for f in self.reads.fields}
            if self.reads.label is not None:
                record["label"] = example["label"]
            out.append(record)
        return out

    def random_document(self, gen: torch.Generator) -> torch.Tensor:
        """A document drawn uniformly from the split (nsp's "random next sentence"), EOS excluded."""
        if not len(self.split):
            raise RunError(f"data '{self.split.data_name}': the {self.split.name} split is empty")
        i = int(torch.randint(len(self.split), (1,), generator=gen))
        return self.split.example(i)["text"]

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # a take spans at most a boundary; keep memory at two epochs
                self._orders.pop(min(self._orders))
            self._orders[epoch] = epoch_order(self.seed, epoch, self._n)
        return self._orders[epoch]

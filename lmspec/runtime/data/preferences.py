"""Preference pairs, as a feedback stage wrote them (final/preferences.jsonl), for the stages
that learn from them (a reward model's `bradley_terry`, `dpo`).

Each pair becomes {"prompt": ids, "a": ids, "b": ids, "p": float}: the prompt's and each
response's tokens under the reading stage's tokenizer (a reward model may read with another
tokenizer than the policy wrote with). The split is the one the feedback stage chose (its
`validation` fraction of prompts), so every pair of a prompt lies on the same side. The
stream over a split is a pure function of (seed, position), as ExampleStream's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lmspec.runtime.data.order import epoch_order
from lmspec.runtime.errors import RunError

__all__ = ["PairSet", "PairStream", "read_pairs"]


class PairSet(list):
    """The pairs of one split."""

    name: str = "train"


def read_pairs(path: Path, tokenizer, *, source: str) -> tuple[PairSet, PairSet]:
    """(train, validation) pairs of a preference file."""
    train, validation = PairSet(), PairSet()
    train.name, validation.name = "train", "validation"
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise RunError(f"the preference set of stage '{source}' cannot be read: {err}",
                       help="run the feedback stage again (lmspec run --resume RUN --force)") from None
    records = []
    for n, line in enumerate(lines, 1):
        try:
            r = json.loads(line)
            records.append((r["prompt"], r["a"], r["b"], float(r["p"]), r.get("split", "train")))
        except (ValueError, KeyError, TypeError):
            raise RunError(f"{path}:{n}: not a preference record (prompt, a, b, p)",
                           help="the file was edited or damaged; run the feedback stage again") from None
    if not records:
        raise RunError(f"the preference set of stage '{source}' is empty ({path})",
                       help="the feedback stage collected no pairs: raise its prompts' count")
    texts = [t for r in records for t in r[:3]]
    ids = [torch.from_numpy(np.array(a, dtype=np.int64)) for a in tokenizer.encode_arrays(texts)]
    for i, (_, _, _, p, split) in enumerate(records):
        pair = {"prompt": ids[3 * i], "a": ids[3 * i + 1], "b": ids[3 * i + 2], "p": p}
        (validation if split == "validation" else train).append(pair)
    return train, validation


class PairStream:
    """An endless, seed-shuffled stream over one split of pairs."""

    def __init__(self, pairs: PairSet, *, seed: int, shuffle: bool = True):
        self.pairs, self.seed, self.shuffle = pairs, seed, shuffle
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def take(self, position: int, n: int) -> list[dict]:
        if not self.pairs:
            raise RunError(f"the {self.pairs.name} split of the preference set is empty",
                           help="raise the feedback stage's `validation` fraction or its prompts' count")
        out = []
        for pos in range(position, position + n):
            epoch, within = divmod(pos, len(self.pairs))
            if not self.shuffle:
                out.append(self.pairs[within])
                continue
            if epoch not in self._orders:
                self._orders = {epoch: epoch_order(self.seed, epoch, len(self.pairs))}
            out.append(self.pairs[int(self._orders[epoch][within])])
        return out

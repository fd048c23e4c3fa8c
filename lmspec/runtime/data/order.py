"""The split and the epoch order, as pure functions of (seed, index).

Both come from one keyed hash (splitmix64's finaliser), defined in `compiler.split` so that
check counts a split exactly as the runtime draws it:

    is_validation(seed, indices, fraction)   example i is held out when its hash < fraction
    epoch_order(seed, epoch, n)              a permutation of range(n): sort by hash
"""

from __future__ import annotations

import numpy as np

from lmspec.compiler.split import SHUFFLE_STREAM, is_validation, keyed_hash, mix64

__all__ = ["keyed_hash", "is_validation", "epoch_order"]


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n examples in `epoch`: range(n) sorted by their hash (int64)."""
    keys = keyed_hash(mix64(seed) ^ epoch, SHUFFLE_STREAM, np.arange(n, dtype=np.uint64))
    return np.argsort(keys, kind="stable")

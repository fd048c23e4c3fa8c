"""The split and the epoch order, as pure functions of (seed, index).

Both come from one keyed hash (splitmix64's finaliser), computed here in numpy rather than
drawn from numpy's or torch's generators, whose streams may change between versions: a run
resumed under a newer numpy still reads exactly the examples it would have.

    is_validation(seed, indices, fraction)   example i is held out when its hash < fraction
    epoch_order(seed, epoch, n)              a permutation of range(n): sort by hash
"""

from __future__ import annotations

import numpy as np

__all__ = ["keyed_hash", "is_validation", "epoch_order"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_SPLIT, _SHUFFLE = 1, 2  # separate streams: which examples are held out says nothing about their order


def _mix_int(x: int) -> int:
    x &= _MASK
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (a bijection; numpy arrays wrap on overflow)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def keyed_hash(seed: int, stream: int, indices: np.ndarray) -> np.ndarray:
    """A well-mixed uint64 per index, determined by (seed, stream, index) alone."""
    base = np.uint64(_mix_int(_mix_int(seed) ^ stream))
    return _mix(base + np.asarray(indices, dtype=np.uint64) * np.uint64(_GOLDEN))


def is_validation(seed: int, indices: np.ndarray, fraction: float) -> np.ndarray:
    """A bool per example index: held out with probability `fraction`, independently of how
    many examples there are (so a split can be decided while the source streams)."""
    threshold = np.uint64(min(int(fraction * 2.0**64), _MASK))
    return keyed_hash(seed, _SPLIT, indices) < threshold


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n examples in `epoch`: range(n) sorted by their hash (int64)."""
    keys = keyed_hash(_mix_int(seed) ^ epoch, _SHUFFLE, np.arange(n, dtype=np.uint64))
    return np.argsort(keys, kind="stable")

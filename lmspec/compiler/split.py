"""Which examples are held out for validation, as a pure function of (seed, index).

One definition for both sides of the seam: the runtime splits a data block with it
(`runtime.data.prepare`, through `runtime.data.order`), and check counts the split of a
built-in corpus with it (`rules_settings.held_out`) without reading a record, so the figure
check prints is the one the run gets.

The hash is splitmix64's finaliser, computed here in numpy rather than drawn from numpy's or
torch's generators, whose streams may change between versions: a run resumed under a newer
numpy still reads exactly the examples it would have.

    keyed_hash(seed, stream, indices)        a well-mixed uint64 per index
    is_validation(seed, indices, fraction)   example i is held out when its hash < fraction
"""

from __future__ import annotations

import numpy as np

__all__ = ["SPLIT_STREAM", "SHUFFLE_STREAM", "mix64", "keyed_hash", "is_validation"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
#: separate streams: which examples are held out says nothing about their order (runtime.data.order)
SPLIT_STREAM, SHUFFLE_STREAM = 1, 2


def mix64(x: int) -> int:
    """splitmix64's finaliser on one Python int, taken modulo 2**64 (a bijection)."""
    x &= _MASK
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (numpy arrays wrap on overflow)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def keyed_hash(seed: int, stream: int, indices: np.ndarray) -> np.ndarray:
    """A well-mixed uint64 per index, determined by (seed, stream, index) alone."""
    base = np.uint64(mix64(mix64(seed) ^ stream))
    return _mix(base + np.asarray(indices, dtype=np.uint64) * np.uint64(_GOLDEN))


def is_validation(seed: int, indices: np.ndarray, fraction: float) -> np.ndarray:
    """A bool per example index: held out with probability `fraction`, independently of how
    many examples there are (so a split can be decided while the source streams)."""
    threshold = np.uint64(min(int(fraction * 2.0**64), _MASK))
    return keyed_hash(seed, SPLIT_STREAM, indices) < threshold

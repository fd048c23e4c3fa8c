"""Timers and memory figures the benchmark scripts share.

No torch here: bench_check.py asserts that checking a spec never imports it.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable


def rss_mb() -> float:
    """The process's peak resident set size so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    """Seconds of each of `runs` calls of `fn`."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


"""Timers and memory figures the benchmark scripts share.

No torch here: bench_check.py asserts that checking a spec never imports it.
"""

from __future__ import annotations

import resource
import statistics
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


def time_alternating(
    fns: dict[str, Callable[[], object]], *, rounds: int, iters: int, warmup: int = 0
) -> dict[str, float]:
    """Median seconds per call of each function, after `warmup` untimed calls of each; the
    functions take turns round by round, so a slow patch of the machine (another process,
    thermal drift) hits them all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            samples[name].append((time.perf_counter() - start) / iters)
    return {name: statistics.median(s) for name, s in samples.items()}

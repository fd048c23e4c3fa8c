"""`lmspec check` on frontier-scale designs: Llama-3-70B and a 405B shape.

Targets (issue: the compiler): under 1 s each and under 500 MB peak memory, for parse +
resolve + validate + rules + figures + one forward/backward on the meta device, in-process
(interpreter start and the torch import excluded: torch is imported once, up front).

    python benchmarks/bench_check_scale.py
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import rss_mb  # noqa: E402

import torch  # noqa: E402,F401 - imported before timing on purpose

from lmspec.compiler.api import check_file  # noqa: E402
from lmspec.compiler.costs import spec_figures  # noqa: E402

SPECS = [ROOT / "specs/reference/llama3_70b.lmspec", ROOT / "specs/scale/llama3_405b.lmspec"]


def run(path: Path) -> tuple[float, int]:
    report = check_file(path)
    figures, problems = spec_figures(report)
    assert report.ok and not problems, (report.diagnostics, problems)
    return figures, sum(m.params.total for m in figures.models.values())


def main() -> None:
    base = rss_mb()
    print(f"peak RSS after importing torch and lmspec: {base:.0f} MB")
    print(f"{'spec':<22} {'params':>18} {'median s':>9} {'max s':>7} {'target':>7}  {'peak RSS MB':>11} {'growth MB':>9}")
    for path in SPECS:
        run(path)  # warm-up: first-use caches (lark, pydantic, torch dispatch)
        times = []
        for _ in range(5):
            gc.collect()
            t = time.perf_counter()
            _, params = run(path)
            times.append(time.perf_counter() - t)
        peak = rss_mb()
        ok = "ok" if max(times) < 1.0 and peak - base < 500 else "MISSED"
        print(f"{path.name:<22} {params:>18,} {statistics.median(times):>9.3f} {max(times):>7.3f} {'< 1 s':>7}  "
              f"{peak:>11.0f} {peak - base:>9.0f}  {ok}")


if __name__ == "__main__":
    main()

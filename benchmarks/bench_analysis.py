"""Static analysis at frontier scale: Llama-3-70B and a 405B shape.

Times, per shape: the analytic figures alone (count_parameters + flops_per_token +
training_memory + kv_cache_memory + stage_cost, no torch), and those plus `meta_check` (build
every layer on the meta device, compare every parameter, forward + backward on the
representative layers). Warm: median of 5 in one process after a warm-up. Cold: the first call
in a fresh interpreter that has already imported torch, which pays torch's one-time lazy
imports (its Python meta kernels import torch._dynamo on first use). Peak memory: tracemalloc's
peak of Python allocations during one warm call, and the process's peak RSS.

Targets: < 1 s and < 500 MB.

    python benchmarks/bench_analysis.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import rss_mb, timed  # noqa: E402

from lmspec.compiler import analysis as A  # noqa: E402
from lmspec.compiler.arch import ArchConfig, LayerConfig, PositionConfig, StackConfig  # noqa: E402

BATCH, SEQ = 1, 8192


def llama(name: str, layers: int, d: int, heads: int, kv: int, d_ff: int, vocab: int = 128_256) -> ArchConfig:
    rope = PositionConfig("rope", theta=500_000.0)
    layer = LayerConfig(d_model=d, heads=heads, kv_heads=kv, head_dim=d // heads, d_ff=d_ff, position=rope,
                        norm="rmsnorm", activation="swiglu", bias=False)  # fmt: skip
    return ArchConfig(name=name, arch="decoder", vocab=vocab, context=8192, d_model=d, position=rope,
                      decoder=StackConfig((layer,) * layers), norm="rmsnorm")  # fmt: skip


SHAPES = {
    "llama3-70b": llama("llama3-70b", 80, 8192, 64, 8, 28_672),
    "405b": llama("405b", 126, 16_384, 128, 8, 53_248),
}


def figures(arch: ArchConfig) -> dict:
    return {
        "params": A.count_parameters(arch).total,
        "flops": A.flops_per_token(arch, SEQ).training,
        "memory": A.training_memory(arch, batch=BATCH, seq_len=SEQ, precision="bf16").total,
        "kv": A.kv_cache_memory(arch, batch=BATCH, seq_len=SEQ).total,
        "stage": A.stage_cost(arch, steps=1000, batch=BATCH, seq_len=SEQ).flops,
    }


def full(arch: ArchConfig) -> list[str]:
    figures(arch)
    return A.meta_check(arch, batch=BATCH, seq_len=SEQ)


def cold(name: str) -> None:
    """In a fresh interpreter: import torch, then time the first figures + meta_check."""
    t = time.perf_counter()
    import torch  # noqa: F401

    imported = time.perf_counter() - t
    t = time.perf_counter()
    problems = full(SHAPES[name])
    print(json.dumps({"torch_import_s": imported, "first_call_s": time.perf_counter() - t, "problems": problems}))


def main() -> None:
    print(f"batch {BATCH} x seq_len {SEQ}; targets: < 1 s, < 500 MB\n")
    header = f"{'shape':<11} {'params':>17} {'analytic ms':>11} {'+meta warm s':>12} {'cold s':>7} " \
             f"{'torch import s':>14} {'py peak MB':>10} {'RSS MB':>7}  verdict"  # fmt: skip
    print(header)
    import torch  # noqa: F401 - outside the timings

    for name, arch in SHAPES.items():
        out = subprocess.run([sys.executable, __file__, "--cold", name], capture_output=True, text=True, check=True)
        first = json.loads(out.stdout.strip().splitlines()[-1])
        assert not first["problems"], first["problems"]
        analytic = statistics.median(timed(lambda: figures(arch), 20))
        full(arch)  # warm-up
        warm = statistics.median(timed(lambda: full(arch), 5))
        tracemalloc.start()
        full(arch)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        rss = rss_mb()
        verdict = "ok" if warm < 1.0 and peak < 500 and rss < 500 else "MISSED"
        if first["first_call_s"] >= 1.0:
            verdict += " (cold first call over 1 s: torch's one-time lazy imports)"
        print(f"{name:<11} {A.count_parameters(arch).total:>17,} {1e3 * analytic:>11.2f} {warm:>12.3f} "
              f"{first['first_call_s']:>7.2f} {first['torch_import_s']:>14.2f} {peak:>10.1f} {rss:>7.0f}  {verdict}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--cold":
        cold(sys.argv[2])
    else:
        main()

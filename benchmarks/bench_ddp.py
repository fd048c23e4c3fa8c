"""Data parallelism on the CPU: `lmspec run --nproc 2` against one process, same global batch.

Four runs of one spec (the quick-start model on tiny-stories), each `lmspec run` in fresh
processes, in alternate rounds:

    one      1 process, every core's threads, batch B              what you run without --nproc
    two      `--nproc 2`: 2 processes (gloo), 1/2 of the cores'     the same global batch B
             threads each, B/2 sequences each
    half     1 process, 1/2 of the cores' threads, batch B/2       the work of one rank of `two`, alone
    pair     two `half` runs at the same time, not connected       the work of `two`, without DDP

`two` against `one` is the scaling (tokens/s of the same global batch). `two` against `pair` is
what DDP itself costs per step — the gradient all-reduce, the two small all-reduces of loss
counts, waiting for the slower rank — with the same work and the same competition for cores
and memory bandwidth; `pair` against `half` is that competition. The figures are steady-state:
from the metrics lines (log_every 1), the median step time of steps `skip`+1 .. N-1 (no
evaluation, no checkpoint inside); for `pair`, the slower of the two, as DDP's ranks wait for
it. Also printed: the largest difference of the loss between `one` and `two` over the steps
(the same global batch gives the same losses).

    python benchmarks/bench_ddp.py            # 4 layers, d=256, context 256, batch 16, 24 steps, 3 rounds
    python benchmarks/bench_ddp.py --quick    # 2 layers, d=128, context 128, batch 8: a minute

On a machine other processes share, OMP_WAIT_POLICY=PASSIVE is set for every run (see
docs/running.md): spinning OpenMP threads of two workers would steal each other's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FULL = dict(layers=4, d_model=256, heads=4, context=256, batch=16, steps=24, skip=4, rounds=3)
QUICK = dict(layers=2, d_model=128, heads=2, context=128, batch=8, steps=16, skip=3, rounds=2)

SPEC = """lmspec 1
tokenizer tok {{ kind: bytes }}
data stories {{ source: builtin("tiny-stories"), validation: 2% }}
model storyteller {{ vocab: tok.vocab_size, context: {context}, layers: {layers}, d_model: {d_model},
                    heads: {heads}, position: rope, norm: rmsnorm, activation: swiglu, bias: false,
                    tie_embeddings: true, dropout: 0.0 }}
train pretrain {{ model: storyteller, objective: clm, data: stories, steps: {steps}, batch: {batch},
                 log_every: 1, eval_every: 0, eval_batches: 1, samples: 0, checkpoint_every: 0,
                 optimizer: adamw(lr: 1e-3), precision: fp32 }}
"""


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def lmspec_runs(spec: Path, outs: list[Path], *, nproc: int, threads: int, batch: int, cache: Path) -> list[list[dict]]:
    """`lmspec run` into each of `outs`, all at the same time; their metrics lines."""
    env = {**os.environ, "LMSPEC_CACHE": str(cache), "OMP_NUM_THREADS": str(threads),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "lmspec", "run", str(spec), "--plain", "--device", "cpu",
           "--set", f"pretrain.batch={batch}"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    procs = [subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=spec.parent) for out in outs]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return [[json.loads(line) for line in (out / "stages" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
            for out in outs]


def step_seconds(metrics: list[dict], skip: int) -> tuple[float, int]:
    """(median seconds of steps skip+1 .. N-1, tokens per step), from each line's tokens/s."""
    lines = [m for m in metrics if skip < m["step"] < metrics[-1]["step"]]
    per_step = metrics[-1]["tokens"] // metrics[-1]["step"]
    return statistics.median(per_step / m["tokens_per_s"] for m in lines), per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model, a minute")
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    n = cores()
    import torch

    print(f"CPU: {cpu_model()}, {n} cores; torch {torch.__version__}; model {cfg['layers']} layers, d_model "
          f"{cfg['d_model']}, context {cfg['context']}, global batch {cfg['batch']}; {cfg['rounds']} rounds of "
          f"{cfg['steps']} steps; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}")
    runs = {"one": dict(nproc=1, threads=n, batch=cfg["batch"]),
            "two": dict(nproc=2, threads=max(1, n // 2), batch=cfg["batch"]),
            "half": dict(nproc=1, threads=max(1, n // 2), batch=cfg["batch"] // 2),
            "pair": dict(nproc=1, threads=max(1, n // 2), batch=cfg["batch"] // 2, together=2)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    tokens: dict[str, int] = {}
    loss_gap = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = root / "ddp.lmspec"
        spec.write_text(SPEC.format(**cfg))
        for r in range(cfg["rounds"]):
            losses = {}
            for name, how in runs.items():
                outs = [root / f"{name}-{r}-{k}" for k in range(how.get("together", 1))]
                found = lmspec_runs(spec, outs, cache=root / "cache",
                                    **{k: v for k, v in how.items() if k != "together"})
                figures = [step_seconds(metrics, cfg["skip"]) for metrics in found]
                times[name].append(max(f[0] for f in figures))  # like DDP ranks, the slower one sets the pace
                tokens[name] = sum(f[1] for f in figures)
                losses[name] = [m["loss"] for m in found[0]]
            loss_gap = max(loss_gap, max(abs(a - b) for a, b in zip(losses["one"], losses["two"])))
            print(f"round {r + 1}: " + "  ".join(f"{k} {1000 * v[-1]:.1f} ms/step" for k, v in times.items()))
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: tokens[k] / med[k] for k in runs}
    print()
    print("| run | processes x threads | sequences per process | ms/step | tokens/s |")
    print("|---|---|---|---|---|")
    for k, how in runs.items():
        procs, per = how.get("together", how["nproc"]), how["batch"] // how["nproc"]
        print(f"| {k} | {procs} x {how['threads']} | {per} | {1000 * med[k]:.1f} | {tps[k]:,.0f} |")
    print()
    print(f"scaling, two / one (same global batch): {tps['two'] / tps['one']:.2f}x tokens/s")
    overhead = med["two"] - med["pair"]
    print(f"DDP overhead per step, two - pair (same work, same competition for the cores): {1000 * overhead:.1f} ms "
          f"({100 * overhead / med['pair']:.1f}% of a step)")
    print(f"competition of two processes for the machine, pair - half: {1000 * (med['pair'] - med['half']):.1f} ms")
    print(f"largest loss difference, one vs two, over {cfg['steps']} steps x {cfg['rounds']} rounds: {loss_gap:.2e}")


if __name__ == "__main__":
    main()

"""How long `lmspec check` takes from a fresh interpreter, against `python -c "import torch"`
measured in the same run (issue 9, "Speed": a check fast enough to run on every save).

Each command runs in a new interpreter, `--runs` times, the commands taking turns round by
round so that a busy patch of the machine hits them all alike; the figure is the median wall
time (CPU time, user + system, is printed beside it: it moves less when other processes share
the machine).

    import torch     python -c "import torch"                       the yardstick
    cold             lmspec check SPEC, empty meta cache each run   imports torch, runs the pass
    warm             lmspec check SPEC, meta cache filled before    the on-save case: no torch
    no-meta          lmspec check --no-meta SPEC
    floor            python -c "import pydantic, lark": the libraries any check must import
                     (printed for the record: what no front end built on them can go below)

Goals (ratios to `import torch`): (a) a full check no slower than importing torch, `warm` <= 1.0;
(b) `no-meta` <= 0.15. `cold` is printed for the record: it imports torch itself, so it can be no
faster than torch's import plus the front end. Exit status 1 when a goal is missed.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_check_cold.py [--runs 7] [--spec specs/gpt.lmspec]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GOALS = {"warm": 1.0, "no-meta": 0.15}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(argv: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of one run; a failed run stops the benchmark."""
    cpu, start = _children_cpu(), time.perf_counter()
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {out.returncode}:\n{out.stderr}")
    return wall, _children_cpu() - cpu, out.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--spec", default="specs/gpt.lmspec")
    args = parser.parse_args()

    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    base = {**os.environ, "PYTHONPATH": path, "NO_COLOR": "1"}  # this checkout, not an installed lmspec
    check = [sys.executable, "-m", "lmspec", "check", args.spec]
    with tempfile.TemporaryDirectory(prefix="lmspec-bench-") as tmp:
        warm_env = {**base, "LMSPEC_CACHE_DIR": str(Path(tmp) / "warm")}
        _, _, filled = run_once(check, warm_env)  # fills the warm cache (untimed)
        commands = {
            "import torch": ([sys.executable, "-c", "import torch"], lambda i: base),
            "cold": (check, lambda i: {**base, "LMSPEC_CACHE_DIR": str(Path(tmp) / f"cold-{i}")}),
            "warm": (check, lambda i: warm_env),
            "no-meta": (check[:4] + ["--no-meta", args.spec], lambda i: base),
            "floor": ([sys.executable, "-c", "import pydantic, lark; from pydantic import BaseModel"], lambda i: base),
        }
        walls: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        for i in range(args.runs):
            for name, (argv, env) in commands.items():
                wall, cpu, stdout = run_once(argv, env(i))
                if name in ("cold", "warm") and stdout != filled:
                    raise SystemExit(f"{name} check printed something else than the first check:\n{stdout}")
                walls[name].append(wall)
                cpus[name].append(cpu)

    torch_wall, torch_cpu = statistics.median(walls["import torch"]), statistics.median(cpus["import torch"])
    print(f"{args.spec}, {args.runs} runs each, {os.cpu_count()} CPUs, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"{'command':<14} {'wall median':>11} {'min':>7} {'max':>7} {'ratio':>7} {'cpu median':>11} {'ratio':>7}"
          "  goal")
    missed = []
    for name in commands:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        ratio = wall / torch_wall
        goal = GOALS.get(name)
        verdict = "" if goal is None else f"<= {goal:g}  {'ok' if ratio <= goal else 'MISSED'}"
        if goal is not None and ratio > goal:
            missed.append(name)
        print(f"{name:<14} {wall:>10.3f}s {min(walls[name]):>6.2f}s {max(walls[name]):>6.2f}s {ratio:>7.3f} "
              f"{cpu:>10.3f}s {cpu / torch_cpu:>7.3f}  {verdict}")
    if missed:
        print(f"missed: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

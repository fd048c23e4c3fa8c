"""How fast the front end checks a spec: parse + resolve + validate + rules + lowering.

`lmspec.compiler.api.check_file`, in-process, on every spec under specs/ (median of many
runs, target under 50 ms each) and on a generated 10,000-line spec (benchmarks/gen_spec.py:
many blocks, extends chains, references, layer overrides; target under 2 s). The meta-device
pass and the cost figures of `lmspec check` are not included (bench_check_scale.py has them).
Also asserts that importing the compiler's front door does not import torch.

    python benchmarks/bench_check.py [--runs 30] [--lines 10000] [--profile]

Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout, not an installed lmspec
sys.path.insert(0, str(ROOT / "benchmarks"))

import lmspec.compiler.api as api  # noqa: E402

# The front door must stay light: `lmspec check` of a design must not pay for torch.
assert "torch" not in sys.modules, "importing lmspec.compiler.api imported torch"

from gen_spec import generate  # noqa: E402
from timing import timed  # noqa: E402

from lmspec.compiler import rules  # noqa: E402

SMALL_TARGET_S = 0.050
LARGE_TARGET_S = 2.0


def row(name: str, detail: str, times: list[float], target: float) -> bool:
    median = statistics.median(times)
    ok = median < target
    print(f"{name:<34} {detail:>14} {median * 1e3:>10.1f} {min(times) * 1e3:>9.1f} {max(times) * 1e3:>9.1f} "
          f"{'< %g ms' % (target * 1e3):>10} {median / target:>6.2f}  {'ok' if ok else 'MISSED'}")
    return ok


def phases(path: Path) -> str:
    """Where the time of one check goes (best of 3 each)."""
    def best(fn):
        return min(timed(fn, 3))

    resolved = api.resolve(path)
    validated = api.validate(resolved)
    text = path.read_text(encoding="utf-8")
    t_parse = best(lambda: api.parse(text, str(path)))
    t_resolve = best(lambda: api.resolve(path)) - t_parse
    t_validate = best(lambda: api.validate(resolved))
    t_rules = best(lambda: rules.check(validated))
    return (f"parse {t_parse * 1e3:.0f} ms, resolve {t_resolve * 1e3:.0f} ms, validate {t_validate * 1e3:.0f} ms, "
            f"rules + lowering {t_rules * 1e3:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="runs per spec (default 30)")
    parser.add_argument("--lines", type=int, default=10_000, help="size of the generated spec")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the generated spec's check")
    args = parser.parse_args(argv)

    print("importing lmspec.compiler.api: torch not imported (ok)")
    print(f"{'spec':<34} {'size':>14} {'median ms':>10} {'min ms':>9} {'max ms':>9} {'target':>10} {'ratio':>6}")
    all_ok = True
    for path in sorted((ROOT / "specs").rglob("*.lmspec")):
        report = api.check_file(path)  # warm-up: lark tables, pydantic validators, schema caches
        assert report.ok, [f"{d.span}: {d.message}" for d in report.errors]
        text = path.read_text(encoding="utf-8")
        size = f"{text.count(chr(10))} lines"
        all_ok &= row(str(path.relative_to(ROOT)), size, timed(lambda: api.check_file(path), args.runs),
                      SMALL_TARGET_S)

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "generated.lmspec"
        big.write_text(generate(args.lines), encoding="utf-8")
        report = api.check_file(big)
        assert report.ok, [f"{d.span}: {d.message}" for d in report.errors][:10]
        size = f"{big.read_text().count(chr(10))} lines"
        blocks = len(report.spec.resolved.blocks)
        all_ok &= row(f"generated ({blocks} blocks)", size, timed(lambda: api.check_file(big), 5), LARGE_TARGET_S)
        print(f"  {phases(big)}")
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(api.check_file, big)
            pstats.Stats(profile).sort_stats("cumulative").print_stats(25)

    assert "torch" not in sys.modules, "checking a spec imported torch"
    print("checking every spec left torch unimported (ok)")
    print("all targets met" if all_ok else "a target was MISSED")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())

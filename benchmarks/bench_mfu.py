"""Model FLOP utilisation: a GPT-2-small shaped train stage stepped by the runtime, against this
machine's dense matmul peak measured in the same process.

The stage is set up as `lmspec run` sets it up (`make_stage(plan, ctx).setup()`: bytes tokenizer,
builtin("tiny-stories"), clm, AdamW with clip_grad 1.0, fp32) and timed step by step with
`stage.step(i)`: data, forward, loss, backward, clipping and the optimizer update. Model FLOPs
per token are `flops_per_token(arch, seq_len).training` (matmuls only, 3 x forward: see
docs/analysis.md). The peak is the median rate of a large fp32 `torch.mm` (FLOP = 2 n^3),
measured between the training steps, so a busy patch of the machine lowers both alike.

    python benchmarks/bench_mfu.py                 # d_model 768, 12 layers, vocab 50257, B=4, T=256
    python benchmarks/bench_mfu.py --quick         # 2 layers, vocab 8192, B=2: seconds
    python benchmarks/bench_mfu.py --profile       # and where one step's time goes, by kind of op

On a machine other processes share, run with OMP_WAIT_POLICY=PASSIVE (see bench_run.py).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from lmspec.compiler.analysis import flops_per_token  # noqa: E402
from lmspec.compiler.api import check_file  # noqa: E402
from lmspec.compiler.compile import compile_spec  # noqa: E402
from lmspec.runtime.stages import RunContext, make_stage  # noqa: E402

#: GPT-2 small at context 256; --quick keeps the width and cuts the depth and the vocabulary
FULL = dict(vocab=50_257, context=256, layers=12, d_model=768, heads=12, batch=4, steps=4)
QUICK = dict(vocab=8_192, context=256, layers=2, d_model=768, heads=12, batch=2, steps=3)

SPEC = """lmspec 1
tokenizer tok {{ kind: bytes }}
data stories {{ source: builtin("tiny-stories"), validation: 2% }}

model gpt2 {{
  arch: decoder, vocab: {vocab}, context: {context}
  layers: {layers}, d_model: {d_model}, heads: {heads}, d_ff: 4 * d_model
  position: learned, norm: layernorm, activation: gelu_tanh, bias: true, tie_embeddings: true
}}

train pretrain {{
  model: gpt2, objective: clm, data: stories
  steps: 1000, batch: {batch}
  optimizer: adamw(lr: 6e-4, betas: [0.9, 0.95], weight_decay: 0.1)
  clip_grad: 1.0, precision: fp32
}}
"""

# aten op name -> kind, first match wins; ops inside `optimizer.step` count as the optimizer's
KINDS = [
    ("matmul", r"^aten::(mm|addmm|bmm|matmul|linear|baddbmm)$"),
    ("attention (sdpa)", r"scaled_dot_product|flash_attention"),
    ("cross-entropy (log_softmax, nll)", r"log_softmax|nll_loss|cross_entropy"),
    ("gradient clipping", r"^aten::(_foreach_norm|linalg_vector_norm|norm|stack|clamp)$"),
    ("norms, gelu", r"layer_norm|gelu|rms_norm|tanh"),
    ("embedding", r"embedding"),
]


def matmul_rates(n: int, repeats: int) -> list[float]:
    """FLOP/s of each of `repeats` fp32 n x n matmuls."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - start))
    return rates


def profile_step(stage, i: int, total_s: float) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        stage.step(i)
    shares: dict[str, float] = {}
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    for e in ops:
        parent, in_optimizer = e.cpu_parent, False
        while parent is not None and not in_optimizer:
            in_optimizer, parent = parent.name.startswith("Optimizer.step"), parent.cpu_parent
        kind = "optimizer (AdamW)" if in_optimizer else next(
            (k for k, rx in KINDS if re.search(rx, e.name)), "other element-wise, copies, reductions")
        shares[kind] = shares.get(kind, 0.0) + e.self_cpu_time_total / 1e6
    measured = sum(shares.values())
    print(f"\nprofile of one step (self CPU time of aten ops, {measured:.1f} s; the step unprofiled: {total_s:.1f} s)")
    for kind, s in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<40} {s:7.2f} s  {100 * s / measured:5.1f} %")
    print("  top ops:")
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"    {e.key:<48} {e.self_cpu_time_total / 1e6:7.2f} s  x{e.count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 layers and vocab 8192: seconds")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--context", type=int, default=None, help="256 (default) or 512")
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps, after one warm-up step")
    parser.add_argument("--n", type=int, default=2048, help="the peak's matmul size")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="profile one more step with torch.profiler")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = dict(QUICK if args.quick else FULL)
    for key in ("batch", "context", "vocab", "steps"):
        if getattr(args, key):
            shape[key] = getattr(args, key)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        os.environ["LMSPEC_CACHE"] = str(cache)
        spec = tmp / "mfu.lmspec"
        spec.write_text(SPEC.format(**shape))
        report = check_file(spec)
        schedule = compile_spec(report)
        plan = schedule["pretrain"]
        stage = make_stage(plan, RunContext(report, schedule, torch.device("cpu"), cache, tmp / "run", log=print))
        stage.setup()  # tokenises tiny-stories into the temporary cache: a few seconds

        B, T = shape["batch"], shape["context"]
        flops = flops_per_token(plan.arch, T)
        step_flops = flops.training * B * T
        n_params = sum(p.numel() for p in stage.model.parameters())
        print(f"model: {shape['layers']} layers, d_model {shape['d_model']}, {shape['heads']} heads, vocab "
              f"{shape['vocab']}, context {T} ({n_params / 1e6:.1f}M parameters); batch {B} x {T} = {B * T} "
              f"tokens/step; fp32, {torch.get_num_threads()} threads, "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
        by_kind = {}
        for key, v in flops.breakdown.items():
            kind = "lm_head" if key == "lm_head" else key.split(".")[-1]
            by_kind[kind] = by_kind.get(kind, 0.0) + v
        print(f"model FLOPs: {flops.training / 1e9:.3f} GFLOP/token training ("
              + ", ".join(f"{k} {100 * v / flops.forward:.0f}%" for k, v in by_kind.items())
              + f"); {step_flops / 1e12:.2f} TFLOP/step")

        stage.step(0)  # warm-up: first-touch allocations, the first epoch's order
        peaks, steps = matmul_rates(args.n, 5), []
        for i in range(1, shape["steps"] + 1):
            start = time.perf_counter()
            stage.step(i)
            steps.append(time.perf_counter() - start)
            after = matmul_rates(args.n, 5)
            peaks += after
            print(f"  step {i}: {steps[-1]:.2f} s  ({step_flops / steps[-1] / 1e9:.1f} GFLOP/s); "
                  f"matmul peak after it {statistics.median(after) / 1e9:.1f} GFLOP/s", flush=True)

        step_s, peak = statistics.median(steps), statistics.median(peaks)
        achieved = step_flops / step_s
        print(f"\nmedian step {step_s:.2f} s = {B * T / step_s:.0f} tokens/s = {achieved / 1e9:.1f} GFLOP/s "
              "of model FLOPs")
        print(f"matmul peak ({args.n}x{args.n} fp32 torch.mm, median of {len(peaks)}, taken between the steps): "
              f"{peak / 1e9:.1f} GFLOP/s")
        print(f"  CPU MFU: {100 * achieved / peak:.1f} %  (goal >= 60 %)")
        if args.profile:
            profile_step(stage, shape["steps"] + 1, step_s)


if __name__ == "__main__":
    main()

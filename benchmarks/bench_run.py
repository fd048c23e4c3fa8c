"""End-to-end training speed: `lmspec run` against a bare hand-written PyTorch loop.

The bare loop (nanoGPT's manner: random windows of a pre-tokenised array, picked with
torch.randint offsets) trains the same compiled model (`build_model` from the stage's
ArchConfig, same init seed), with the same batch, sequence length, AdamW settings and param
groups, gradient clipping and lr schedule, on the same tokenised corpus. Both run in this
process, in alternate rounds (lmspec, bare, lmspec, bare, ...), and the figure compared is
steady-state tokens/s: the wall time of steps `skip`+1 .. N-1, read off a clock at the end of
every step. That span holds, for lmspec, the data loading, metrics lines, progress and a
checkpoint; it leaves out setup, the first (warm-up) steps and the final evaluation, which
runs inside step N. The ratio printed is the median over every adjacent pair of rounds (half
with lmspec first, half with the bare loop first). Target: lmspec >= 0.95x the bare loop.

Then the data loader alone: `ExampleStream.take` + the objective's `build`, the path a train
step takes for its batch, in tokens/s against what training consumes (target >= 20x).

    python benchmarks/bench_run.py            # 4 layers, d=256, context 256, batch 16, 40 steps, 3 rounds
    python benchmarks/bench_run.py --quick    # 2 layers, d=128, context 128, batch 8: seconds

On a machine other processes share, run with OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads
otherwise spin at every barrier, and each small kernel can cost a scheduler time slice.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from timing import time_alternating  # noqa: E402

from lmspec.compiler.api import check_file  # noqa: E402
from lmspec.compiler.build import build_model  # noqa: E402
from lmspec.compiler.compile import compile_spec  # noqa: E402
from lmspec.runtime import engine  # noqa: E402
from lmspec.runtime.api import run  # noqa: E402
from lmspec.runtime.progress import Progress  # noqa: E402
from lmspec.runtime.stages import RunContext, make_stage  # noqa: E402

#: the quick-start model; --quick shrinks it so a round takes about a second
FULL = dict(layers=4, d_model=256, heads=4, d_ff=640, context=256, batch=16, steps=40, skip=5, rounds=3,
            step_rounds=12)
QUICK = dict(layers=2, d_model=128, heads=2, d_ff=320, context=128, batch=8, steps=16, skip=3, rounds=4,
             step_rounds=20)

SPEC = """lmspec 1
tokenizer tok {{ kind: bytes }}
data stories {{ source: builtin("tiny-stories"), validation: 2% }}

model storyteller {{
  vocab: 320
  context: {context}, layers: {layers}, d_model: {d_model}, heads: {heads}, d_ff: {d_ff}
  position: rope, norm: rmsnorm, activation: swiglu, bias: false, tie_embeddings: true
}}

train pretrain {{
  model: storyteller, objective: clm, data: stories
  steps: {steps}, batch: {batch}
  optimizer: adamw(lr: 2e-3, betas: [0.9, 0.95], weight_decay: 0.1)
  schedule: cosine(warmup: {warmup}, min_lr: 10%)
  clip_grad: 1.0
  log_every: {log_every}, checkpoint_every: {checkpoint_every}
}}
"""


class StepClock(Progress):
    """A silent Progress that notes the time at the end of every step. The driver calls `update`
    after the step and its metrics line, and then writes the checkpoint if one is due: a
    checkpoint's cost lands in the interval of the step after it."""

    def __init__(self):
        super().__init__(quiet=True)
        self.ends: dict[int, float] = {}

    def start_stage(self, name: str, total: int, done: int = 0) -> None:
        super().start_stage(name, total, done)
        self.ends[0] = time.perf_counter()  # setup is over

    def update(self, step: int, record: dict, *, logged: bool) -> None:
        self.ends[step] = time.perf_counter()


def steady_tokens_per_s(ends: dict[int, float], *, skip: int, last: int, tokens_per_step: int) -> float:
    """Tokens/s over steps skip+1 .. last, from the clock at each step's end."""
    return (last - skip) * tokens_per_step / (ends[last] - ends[skip])


def metrics_tokens_per_s(lines: list[dict]) -> float:
    """The runtime's own figure for steps 2..N: tokens over the seconds its metrics lines give
    each interval between logs (the driver's clock leaves out evaluation and the lines' writing)."""
    lines = [m for m in lines if "tokens_per_s" in m]
    tokens = [b["tokens"] - a["tokens"] for a, b in zip(lines, lines[1:])]
    seconds = sum(n / m["tokens_per_s"] for n, m in zip(tokens, lines[1:]))
    return sum(tokens) / seconds


def lmspec_round(spec: Path, out: Path, cache: Path, shape: dict) -> dict:
    clock = StepClock()
    start = time.perf_counter()
    r = run(spec, out=out, progress=clock, cache_dir=cache, device="cpu")
    wall = time.perf_counter() - start
    n, B, T, skip = shape["steps"], shape["batch"], shape["context"], shape["skip"]
    per_step = [clock.ends[i] - clock.ends[i - 1] for i in range(skip + 1, n)]
    step_s = statistics.median(per_step)
    ckpt = shape["checkpoint_every"]
    return {
        "tokens_per_s": steady_tokens_per_s(clock.ends, skip=skip, last=n - 1, tokens_per_step=B * T),
        "metrics_tokens_per_s": metrics_tokens_per_s(r.metrics("pretrain")),
        "wall": wall,
        "setup": clock.ends[0] - start,
        "eval": clock.ends[n] - clock.ends[n - 1] - step_s,  # step N also evaluates and samples
        "finish": wall - (clock.ends[n] - start),  # final weights, tokenizer, loss plot
        "checkpoint": clock.ends[ckpt + 1] - clock.ends[ckpt] - step_s if 0 < ckpt < n - 1 else float("nan"),
        "step": step_s,
    }


class BareLoop:
    """nanoGPT's train.py, cut to its loop: same model, optimizer, clipping and schedule."""

    def __init__(self, arch, train, data: torch.Tensor, shape: dict):
        self.train, self.data, self.shape = train, data, shape
        torch.manual_seed(train.seed)
        self.model = build_model(arch, device="cpu")
        self.model.train()
        opt = train.optimizer
        # foreach=True: the kernels lmspec's make_optimizer picks on CPU (torch's default there is the loop)
        self.optimizer = torch.optim.AdamW(engine.param_groups(self.model, opt.weight_decay), lr=opt.lr,
                                           betas=tuple(opt.betas), eps=opt.eps, foreach=True)

    def get_lr(self, it: int) -> float:
        opt, sched, n = self.train.optimizer, self.train.schedule, self.shape["steps"]
        if it < sched.warmup:
            return opt.lr * (it + 1) / sched.warmup
        ratio = min(1.0, (it - sched.warmup) / max(1, n - 1 - sched.warmup))
        floor = opt.lr * sched.min_lr
        return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (opt.lr - floor)

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, data = self.shape["batch"], self.shape["context"], self.data
        ix = torch.randint(len(data) - T - 1, (B,))
        x = torch.stack([data[i:i + T] for i in ix])  # (B, T)
        y = torch.stack([data[i + 1:i + 1 + T] for i in ix])
        return x, y

    def step(self, it: int) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = self.get_lr(it)
        x, y = self.get_batch()
        logits = self.model(input_ids=x).logits  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def bare_round(arch, train, data: torch.Tensor, shape: dict) -> dict:
    n, B, T, skip = shape["steps"], shape["batch"], shape["context"], shape["skip"]
    loop = BareLoop(arch, train, data, shape)
    losses = []
    ends = {0: time.perf_counter()}
    for it in range(n):
        loss = loop.step(it)
        if it % shape["log_every"] == 0:
            losses.append(loss.item())
        ends[it + 1] = time.perf_counter()
    per_step = [ends[i] - ends[i - 1] for i in range(skip + 1, n)]
    return {"tokens_per_s": steady_tokens_per_s(ends, skip=skip, last=n - 1, tokens_per_step=B * T),
            "step": statistics.median(per_step), "first_loss": losses[0], "last_loss": loss.item()}


def step_by_step(stage, loop: BareLoop, *, rounds: int) -> dict[str, float]:
    """Median seconds of the stage's own step (its data, objective and `engine.train_step`) and
    of the bare loop's, taking turns step by step: the finest alternation, so the least noisy."""
    counters = {"lmspec": 0, "bare": 0}

    def ours():
        stage.step(counters["lmspec"])
        counters["lmspec"] += 1

    def bare():
        loop.step(counters["bare"])
        counters["bare"] += 1

    return time_alternating({"lmspec": ours, "bare": bare}, rounds=rounds, iters=1, warmup=1)


def loader_tokens_per_s(stage, *, seconds: float) -> float:
    """A train step's batch path on CPU: take the examples, build the objective's tensors."""
    stream, (_, objective) = stage.train_stream, stage.terms[0]
    B, i = stage.spec.batch, 0
    objective.build(stream.take(0, B), engine.micro_generator(0, 0, 0))  # the first epoch's order
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        i += 1
        batch = objective.build(stream.take(i * B, B), engine.micro_generator(0, i, 0))
    elapsed = time.perf_counter() - start
    return i * batch["input_ids"].numel() / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny model and a dozen steps: seconds")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None, help="rounds of (lmspec, bare)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = dict(QUICK if args.quick else FULL)
    shape["steps"] = args.steps or shape["steps"]
    rounds = args.rounds or shape["rounds"]
    n = shape["steps"]
    shape.update(log_every=10 if n >= 20 else 4, checkpoint_every=n // 2, warmup=max(1, n // 10))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        os.environ["LMSPEC_CACHE"] = str(cache)
        spec = tmp / "bench.lmspec"
        spec.write_text(SPEC.format(**shape))
        report = check_file(spec)
        plan = compile_spec(report)["pretrain"]

        # the stage as `run` sets it up: prepares the data cache, and lends its stream to the
        # loader figure and its tokenised split to the bare loop
        ctx = RunContext(report, compile_spec(report), torch.device("cpu"), cache, tmp / "setup-run", log=print)
        start = time.perf_counter()
        stage = make_stage(plan, ctx)
        stage.setup()
        print(f"setup (tokenising tiny-stories into the cache): {time.perf_counter() - start:.1f} s")
        torch.manual_seed(plan.spec.seed)
        same = all(torch.equal(a, b) for a, b in zip(build_model(plan.arch).state_dict().values(),
                                                     stage.model.state_dict().values()))
        data = torch.from_numpy(stage.dataset.train.tokens("text").astype("int64"))

        B, T = shape["batch"], shape["context"]
        n_params = sum(p.numel() for p in stage.model.parameters())
        print(f"model: {shape['layers']} layers, d_model {shape['d_model']}, context {T} "
              f"({n_params / 1e6:.2f}M parameters); batch {B} x {T} = {B * T} tokens/step, {n} steps, "
              f"checkpoint at step {shape['checkpoint_every']}, eval at the end; {torch.get_num_threads()} threads, "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
        print(f"bare loop's initial weights equal the stage's: {same}; corpus {len(data):,} tokens")
        print(f"figure: steady-state tokens/s over steps {shape['skip'] + 1}..{n - 1} "
              f"(setup, warm-up and the final evaluation excluded)\n")

        ours, bare = [], []
        for k in range(rounds):
            ours.append(lmspec_round(spec, tmp / f"run{k}", cache, shape))
            bare.append(bare_round(plan.arch, plan.spec, data, shape))
            o, b = ours[-1], bare[-1]
            print(f"round {k + 1}: lmspec {o['tokens_per_s']:8.0f} tok/s (median step {o['step'] * 1e3:6.1f} ms)   "
                  f"bare {b['tokens_per_s']:8.0f} tok/s (median step {b['step'] * 1e3:6.1f} ms)", flush=True)
        # every adjacent pair of the sequence lmspec, bare, lmspec, bare, ...: half the pairs have
        # lmspec first and half bare first, so a machine that slows down or speeds up favours neither
        sequence = [r for pair in zip(ours, bare) for r in pair]
        pairs = [(a, b) if k % 2 == 0 else (b, a) for k, (a, b) in enumerate(zip(sequence, sequence[1:]))]
        ratios = [o["tokens_per_s"] / b["tokens_per_s"] for o, b in pairs]
        step_ratios = [b["step"] / o["step"] for o, b in pairs]

        def med(rows, key):
            return statistics.median(r[key] for r in rows)

        print(f"\nlmspec run: {med(ours, 'tokens_per_s'):.0f} tok/s steady (its metrics lines say "
              f"{med(ours, 'metrics_tokens_per_s'):.0f}); end to end {med(ours, 'wall'):.1f} s = setup "
              f"{med(ours, 'setup'):.2f} + steps + final eval/samples {med(ours, 'eval'):.2f} + final artifacts "
              f"{med(ours, 'finish'):.2f} s; the checkpoint after step {shape['checkpoint_every']} cost "
              f"{med(ours, 'checkpoint') * 1e3:+.0f} ms over a median step of {med(ours, 'step') * 1e3:.0f} ms")
        print(f"bare loop:  {med(bare, 'tokens_per_s'):.0f} tok/s steady (loss {bare[-1]['first_loss']:.2f} -> "
              f"{bare[-1]['last_loss']:.2f})")
        print(f"  median ratio lmspec/bare: {statistics.median(ratios):.3f}  (target >= 0.95; the {len(ratios)} "
              f"adjacent pairs: {', '.join(f'{r:.3f}' for r in ratios)})")
        print(f"  the same from median step times: {statistics.median(step_ratios):.3f}  (robust to a few slow steps, "
              f"and blind to them)")

        secs = step_by_step(stage, BareLoop(plan.arch, plan.spec, data, shape), rounds=shape["step_rounds"])
        print(f"\nstep by step, taking turns ({shape['step_rounds']} each): lmspec TrainStage.step "
              f"{secs['lmspec'] * 1e3:.1f} ms, bare step {secs['bare'] * 1e3:.1f} ms")
        print(f"  ratio lmspec/bare (tokens/s): {secs['bare'] / secs['lmspec']:.3f}")

        consumed = med(ours, "tokens_per_s")
        loader = loader_tokens_per_s(stage, seconds=1.0 if args.quick else 3.0)
        print(f"\ndata loader alone (ExampleStream.take + clm build, batch {B} x {T + 1}): {loader / 1e6:.2f} M tok/s")
        print(f"  ratio loader/training: {loader / consumed:.0f}x  (target >= 20x)")


if __name__ == "__main__":
    main()

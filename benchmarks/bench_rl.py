"""RL speed against TRL: rollout generation with the KV cache, one GRPO step, one RLOO step and
one PPO step of lmspec's rl stage, and TRL's trainers on the same model, batch and generation
length, in this process. Goal (issue 7): at least 1.5x TRL's throughput.

One tiny GPT-2-shaped policy (2 layers, d_model 128, 4 heads, byte vocabulary of 257, context
128; dropout 0) is made as a transformers `GPT2LMHeadModel` with random weights and saved; TRL
loads that directory (policy and reference), lmspec loads the same tensors (`load_hf_model` for
generation; `load_hf_weights` into the rl stage's policy and reference, and the policy's body into
PPO's value model). The script checks that both sides' logits agree before it times anything.

    generation  lmspec `Transformer.generate` against transformers `generate(do_sample=True,
                use_cache=True)`, the call TRL's trainers make: 32 prompts of 8 tokens, 48 new
                tokens, temperature 1, no top-k / top-p (TRL's defaults), never an early stop
                (lmspec: no eos; transformers: min_new_tokens = max_new_tokens)
    grpo        `RLStage.step` (rollout, reward, no-grad log-probs of policy and reference,
                advantages, loss, backward, clipping, AdamW) of an rl stage built from a spec
                (`grpo(group: 8, kl: 0.04)`) against one optimizer step of TRL's GRPOTrainer
                (num_generations 8, beta 0.04, loss dapo = token mean on one process): 32
                completions of 48 tokens per step (4 prompts x 8) on both sides
    rloo        the same with `rloo(k: 4, kl: 0.05)` against TRL's RLOOTrainer (num_generations
                4, beta 0.05): 8 prompts x 4
    ppo         `ppo(epochs: 1, kl: 0.05)` (value model, GAE, one update of all 32 rollouts).
                TRL 1.16 ships no PPO trainer (not in `trl`, nor in `trl.experimental`), so it
                has no peer here: its time is printed beside TRL's RLOO step, the closest
                on-policy step TRL has, which does less work (no value model), and that ratio is
                left out of the goal.

Both sides: fp32, the same torch threads, AdamW fused (TRL's default optim adamw_torch_fused;
lmspec's on the CPU), lr 1e-5 constant, gradient-norm clip 1.0, no gradient checkpointing (TRL
turns it on by default), no logging inside the timed steps, the reward a Python function of the
completion's text: its length in characters (lmspec's own `Length` rule judge, set on the stage
after setup, since a spec cannot name it as a reward yet). Steps are interleaved: each TRL step is
followed by one step of each lmspec stage it is compared with (a trainer callback runs them), so a
slow patch of the machine hits both; the first `--warmup` steps of each side are dropped. A TRL
step is the wall time from the end of the previous lmspec step to TRL's `on_step_end`, which holds
its data loading, generation, scoring, loss, backward and optimizer step. Figures are medians;
ratio = TRL time / lmspec time (above 1: lmspec faster), with the range over adjacent pairs.

    python benchmarks/bench_rl.py            # 12 timed rounds of each
    python benchmarks/bench_rl.py --quick    # 3 rounds: under 2 minutes on 2 cores
    python benchmarks/bench_rl.py --json     # the figures as JSON on stdout (the table on stderr)

On a machine other processes share, run with OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads
otherwise spin at every barrier, and each small kernel can cost a scheduler time slice.
CPU only (TRL runs with use_cpu); exits 0 whether or not the goal is met: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

GOAL = 1.5  # issue 7: lmspec at least 1.5x TRL's throughput
SHAPE = {"vocab": 257, "context": 128, "layers": 2, "d_model": 128, "heads": 4}  # bytes + <pad>
PAD = 256
PROMPT_TOKENS, NEW_TOKENS, BATCH = 8, 48, 32
LR = 1e-5
WORDS = ("once upon time little girl boy cat dog sun tree happy sad went saw big red blue small "
         "friend park ball play run jump home mom dad day night star moon bird fish").split()


# ----------------------------------------------------------------------------- the shared model


def make_policy(directory: Path, seed: int) -> tuple[Path, int]:
    """A random GPT-2-shaped `GPT2LMHeadModel`, saved: the one model both sides load. Returns
    its directory and parameter count."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=SHAPE["vocab"], n_positions=SHAPE["context"], n_embd=SHAPE["d_model"],
                        n_layer=SHAPE["layers"], n_head=SHAPE["heads"], resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=PAD, eos_token_id=PAD, pad_token_id=PAD)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    return directory, sum(p.numel() for p in model.parameters())


def byte_tokenizer():
    """transformers' view of lmspec's `bytes` tokenizer with `specials: [pad]`: ids 0-255 are the
    bytes, 256 is <pad> (also TRL's eos, which min_new_tokens keeps from ever being sampled)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # GPT-2's printable stand-in for every byte, so that ByteLevel maps byte b to id b
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    char = {b: chr(b if b in printable else next(extra)) for b in range(256)}
    tok = Tokenizer(models.BPE(vocab={char[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<pad>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<pad>", padding_side="left")


def make_prompts(n: int, seed: int) -> list[str]:
    """n ASCII prompts of exactly PROMPT_TOKENS bytes: both sides sample from the same lengths."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(4))[:PROMPT_TOKENS] for _ in range(n)]
    return [t[:-1] + "." if t.endswith(" ") else t for t in texts]  # a text file's lines lose trailing spaces


SPEC = """lmspec 1
tokenizer tok {{ kind: bytes, specials: [pad] }}
data prompts {{ source: text("prompts.txt"), validation: 0% }}
{model}
# the spec needs a reward to check; the benchmark swaps in the Length rule judge after setup
model critic {{ arch: encoder, vocab: tok.vocab_size, context: 128, layers: 1, d_model: 32, heads: 2,
               head: classifier(classes: 2) }}
judge cheap {{ model: critic, score: probability(class: 1) }}
rl align {{
  policy: gpt
  reward: cheap
  algorithm: {algorithm}
  rollouts {{ prompts: prompts.prefixes(tokens: {prompt}), per_step: {batch}, max_new_tokens: {new} }}
  steps: 100000, eval_prompts: 4, optimizer: adamw(lr: {lr}), clip_grad: 1.0, precision: fp32
}}
"""


def lmspec_stage(work: Path, hf_dir: Path, prompts: list[str], algorithm: str):
    """An rl stage built the way `lmspec run` builds it, with the HF checkpoint's weights in its
    policy, reference (and value model), and the Length reward."""
    from lmspec.compiler.api import check_file
    from lmspec.compiler.compile import check_stages
    from lmspec.compiler.hf import load_hf_weights, spec_from_hf
    from lmspec.runtime.judges.rules import Length
    from lmspec.runtime.stages import make_stage
    from lmspec.runtime.stages.base import RunContext

    work.mkdir(parents=True, exist_ok=True)
    (work / "prompts.txt").write_text("\n\n".join(prompts) + "\n")
    model = spec_from_hf(hf_dir, name="gpt").split("\n", 1)[1]  # the model block, without `lmspec 1`
    (work / "rl.lmspec").write_text(SPEC.format(model=model, algorithm=algorithm, prompt=PROMPT_TOKENS, batch=BATCH,
                                                new=NEW_TOKENS, lr=LR))
    report = check_file(work / "rl.lmspec")  # what `lmspec run` checks before it builds a stage
    report.raise_for_errors()
    schedule, _ = check_stages(report, meta=True)
    report.raise_for_errors()
    ctx = RunContext(report, schedule, torch.device("cpu"), work / "cache", work / "run", log=lambda _: None)
    stage = make_stage(schedule["align"], ctx)
    stage.setup()
    load_hf_weights(stage.policy, hf_dir)  # in place: the optimizer keeps the same parameters
    load_hf_weights(stage.reference, hf_dir)
    if stage.value is not None:  # the value model starts from the policy's body, as in setup
        body = {k: v for k, v in stage.policy.state_dict().items() if not k.startswith(("lm_head", "mlm_head"))}
        stage.value.load_state_dict(body, strict=False)
    stage.reward = Length()
    short = [len(p) for p in stage.prompts + stage.eval_set if len(p) != PROMPT_TOKENS]
    if short:
        raise RuntimeError(f"the rl stage read prompts of {short} tokens, not {PROMPT_TOKENS} as TRL's")
    return stage


def logits_gap(hf_dir: Path, prompts: list[str]) -> float:
    """Max |logit difference| of the two implementations on the prompts: the same model or not."""
    from transformers import GPT2LMHeadModel

    from lmspec.compiler.hf import load_hf_model

    ids = torch.tensor([list(p.encode()) for p in prompts])
    _, ours = load_hf_model(hf_dir)
    theirs = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        return float((ours(ids).logits - theirs(ids).logits).abs().max())


# ----------------------------------------------------------------------------- timing


class Phases:
    """Seconds spent in named methods, by step: wrapped around a stage's or a trainer's methods
    to say where a step's time goes. `measure` counts only calls without autograd (the rollout's
    log-probs and values), not those of the update."""

    def __init__(self):
        self.current: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []

    def wrap(self, obj, method: str, phase: str, *, no_grad_only: bool = False) -> None:
        fn = getattr(obj, method)

        def timed(*args, **kwargs):
            if no_grad_only and torch.is_grad_enabled():
                return fn(*args, **kwargs)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[phase] = self.current.get(phase, 0.0) + time.perf_counter() - start

        setattr(obj, method, timed)

    def end_step(self) -> None:
        self.steps.append(self.current)
        self.current = {}


def wrap_stage(stage) -> Phases:
    phases = Phases()
    phases.wrap(stage, "_rollout", "rollout")
    phases.wrap(stage, "_score", "score")
    phases.wrap(stage, "_logprobs", "measure", no_grad_only=True)
    phases.wrap(stage, "_values", "measure", no_grad_only=True)
    return phases


def wrap_trainer(trainer) -> Phases:
    phases = Phases()
    phases.wrap(trainer, "_generate_single_turn", "rollout")
    phases.wrap(trainer, "_calculate_rewards", "score")
    phases.wrap(trainer, "_get_per_token_logps_and_entropies", "measure", no_grad_only=True)
    return phases


def summary(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def pair_ratios(trl: list[float], ours: list[float]) -> list[float]:
    """TRL time / lmspec time of each round's pair (above 1: lmspec faster)."""
    return [t / o for t, o in zip(trl, ours)]


def bench_generation(hf_dir: Path, prompts: list[str], rounds: int, warmup: int) -> dict:
    from transformers import GPT2LMHeadModel

    from lmspec.compiler.hf import load_hf_model

    _, ours = load_hf_model(hf_dir)
    theirs = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ids = torch.tensor([list(p.encode()) for p in prompts[:BATCH]])  # (B, P), all real tokens
    gen = torch.Generator().manual_seed(0)
    lengths = {}

    def run_ours():
        lengths["lmspec"] = ours.generate(ids, max_new_tokens=NEW_TOKENS, temperature=1.0, generator=gen).shape[1]

    @torch.no_grad()
    def run_theirs():
        lengths["trl"] = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                         min_new_tokens=NEW_TOKENS, do_sample=True, temperature=1.0, top_k=0,
                                         top_p=1.0, use_cache=True, pad_token_id=PAD, eos_token_id=PAD).shape[1]

    samples: dict[str, list[float]] = {"lmspec": [], "trl": []}
    for r in range(warmup + rounds):
        for name, fn in (("trl", run_theirs), ("lmspec", run_ours)):
            start = time.perf_counter()
            fn()
            if r >= warmup:
                samples[name].append(time.perf_counter() - start)
    if not lengths["lmspec"] == lengths["trl"] == PROMPT_TOKENS + NEW_TOKENS:
        raise RuntimeError(f"generation: sequences of {lengths} tokens, not {PROMPT_TOKENS + NEW_TOKENS} on both sides")
    return samples


def trl_trainer(kind: str, hf_dir: Path, prompts: list[str], out: Path, steps: int, callback):
    """TRL's GRPOTrainer or RLOOTrainer on the saved model, set to match the lmspec stage."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    def length(completions, **_):
        return [float(len(c)) for c in completions]

    common = dict(output_dir=str(out), per_device_train_batch_size=BATCH, max_completion_length=NEW_TOKENS,
                  max_steps=steps, learning_rate=LR, lr_scheduler_type="constant", max_grad_norm=1.0,
                  optim="adamw_torch_fused", bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
                  temperature=1.0, top_k=0, top_p=1.0, generation_kwargs={"min_new_tokens": NEW_TOKENS},
                  report_to="none", save_strategy="no", logging_steps=10**9, disable_tqdm=True,
                  dataloader_pin_memory=False, seed=0)
    if kind == "grpo":
        config, cls = GRPOConfig(num_generations=8, beta=0.04, epsilon=0.2, loss_type="dapo", **common), GRPOTrainer
    else:
        config, cls = RLOOConfig(num_generations=4, beta=0.05, **common), RLOOTrainer
    return cls(model=str(hf_dir), reward_funcs=length, args=config,
               train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=byte_tokenizer(),
               callbacks=[callback])


def bench_steps(kind: str, hf_dir: Path, prompts: list[str], work: Path, stages: dict, rounds: int,
                warmup: int) -> dict:
    """TRL's `kind` trainer, each of its steps followed by one step of each lmspec stage."""
    from transformers import PrinterCallback, TrainerCallback

    ours = {name: (stage, wrap_stage(stage)) for name, stage in stages.items()}
    samples: dict[str, list[float]] = {"trl": [], **{name: [] for name in stages}}
    lengths: dict[str, list[float]] = {name: [] for name in stages}

    class Interleave(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.mark, self.step = time.perf_counter(), 0

        def on_step_end(self, args, state, control, **kwargs):
            keep = self.step >= warmup
            if keep:
                samples["trl"].append(time.perf_counter() - self.mark)
            theirs_phases.end_step()
            for name, (stage, phases) in ours.items():
                start = time.perf_counter()
                record = stage.step(self.step)
                if keep:
                    samples[name].append(time.perf_counter() - start)
                    lengths[name].append(record["response_length"])
                phases.end_step()
            self.step += 1
            self.mark = time.perf_counter()

    trainer = trl_trainer(kind, hf_dir, prompts, work / f"trl-{kind}", warmup + rounds, Interleave())
    trainer.remove_callback(PrinterCallback)  # it prints the metrics dict at the end of train()
    theirs_phases = wrap_trainer(trainer)
    trainer.train()
    trl_lengths = trainer._metrics["train"]["completions/mean_length"]
    if not all(x == NEW_TOKENS for x in [*trl_lengths, *(x for v in lengths.values() for x in v)]):
        raise RuntimeError(f"{kind}: a completion ended before {NEW_TOKENS} tokens (TRL {trl_lengths}, lmspec "
                           f"{lengths}): the two sides would not do the same work")

    def phase_medians(phases: Phases, totals: list[float]) -> dict[str, float]:
        kept = phases.steps[warmup:]
        out = {p: statistics.median(s.get(p, 0.0) for s in kept) for p in ("rollout", "score", "measure")}
        out["update and the rest"] = statistics.median(
            t - sum(s.get(p, 0.0) for p in ("rollout", "score", "measure")) for t, s in zip(totals, kept))
        return out

    return {"samples": samples, "phases": {"trl": phase_medians(theirs_phases, samples["trl"]),
                                           **{n: phase_medians(p, samples[n]) for n, (_, p) in ours.items()}}}


# ----------------------------------------------------------------------------- report


def versions() -> dict:
    import transformers
    import trl

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    cpu = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), platform.processor())
    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "python": platform.python_version(), "cpu": cpu, "nproc": os.cpu_count(),
            "threads": torch.get_num_threads(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}


def row(name: str, what: str, ours: list[float], theirs: list[float], *, peer: bool, work: float | None = None) -> dict:
    """work: units per call (tokens) to report a throughput; None reports ms per step."""
    o, t = summary(ours), summary(theirs)
    pairs = pair_ratios(theirs, ours)
    return {"name": name, "what": what, "peer": peer, "unit": "tokens/s" if work else "ms/step",
            "lmspec": work / o["median"] if work else o["median"] * 1000,
            "trl": work / t["median"] if work else t["median"] * 1000,
            "ratio": t["median"] / o["median"], "pair_ratios": {"median": statistics.median(pairs), "min": min(pairs),
                                                                "max": max(pairs)},
            "lmspec_seconds": o, "trl_seconds": t}


def render(result: dict, stream) -> None:
    v = result["versions"]
    print(f"RL speed, lmspec vs TRL {v['trl']} (transformers {v['transformers']}, torch {v['torch']}); "
          f"{v['threads']} threads, {v['cpu']}, nproc {v['nproc']}, OMP_WAIT_POLICY={v['OMP_WAIT_POLICY']}",
          file=stream)
    c = result["config"]
    print(f"model: GPT-2 shape {c['shape']}, {c['parameters']:,} parameters, logits agree within "
          f"{c['logits_gap']:.1e}; batch {BATCH} x {PROMPT_TOKENS} prompt tokens, {NEW_TOKENS} new tokens; "
          f"{c['rounds']} rounds after {c['warmup']} warm-up", file=stream)
    print(f"\n{'benchmark':<34} {'lmspec':>14} {'TRL':>14} {'ratio':>7}  pairs", file=stream)
    for r in result["rows"]:
        unit = r["unit"]
        fmt = (lambda x: f"{x:,.0f} tok/s") if unit == "tokens/s" else (lambda x: f"{x:,.0f} ms")
        p = r["pair_ratios"]
        note = "" if r["peer"] else "  (not a peer: see below)"
        print(f"{r['what']:<34} {fmt(r['lmspec']):>14} {fmt(r['trl']):>14} {r['ratio']:>6.2f}x  "
              f"{p['min']:.2f}-{p['max']:.2f}{note}", file=stream)
    print("ratio = TRL time / lmspec time (above 1: lmspec faster); pairs: the range over rounds", file=stream)
    print("ppo: TRL 1.16 has no PPO trainer; its row sets lmspec's PPO step (value model, GAE, 1 epoch) beside "
          "TRL's RLOO step, the closest on-policy step TRL ships", file=stream)
    print(f"\nwhere a step goes (median ms): rollout = generate + decode, score = the reward, measure = no-grad "
          f"log-probs (and values), the rest = advantages, loss, backward, clipping, optimizer, bookkeeping",
          file=stream)
    for label, phases in result["phases"].items():
        print(f"  {label:<14} " + "  ".join(f"{k} {v * 1000:6.1f}" for k, v in phases.items()), file=stream)
    g = result["goal"]
    print(f"\ngoal: at least {GOAL}x TRL's throughput on every peer row: {'MET' if g['met'] else 'NOT MET'} "
          f"(lowest {g['lowest']:.2f}x, {g['lowest_row']})", file=stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 timed rounds instead of 12")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (steps) of each side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps of each side")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    parser.add_argument("--json", action="store_true", help="the figures as JSON on stdout, the table on stderr")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 12)
    # at least one: an rl stage's first step also samples its held-out prompts once
    warmup = max(1, 1 if args.quick and args.warmup == 2 else args.warmup)
    if args.threads:
        torch.set_num_threads(args.threads)

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()

    with tempfile.TemporaryDirectory(prefix="bench_rl-") as tmp:
        work = Path(tmp)
        hf_dir, n_params = make_policy(work / "policy", args.seed)
        prompts = make_prompts(64, args.seed)
        gap = logits_gap(hf_dir, prompts[:BATCH])
        if gap > 1e-4:
            raise SystemExit(f"bench_rl: lmspec and transformers disagree on the model's logits by {gap:.3g}: "
                             "the comparison would not be of the same model")
        generation = bench_generation(hf_dir, prompts, rounds, warmup)
        grpo = bench_steps("grpo", hf_dir, prompts, work, {
            "grpo": lmspec_stage(work / "grpo", hf_dir, prompts, "grpo(group: 8, kl: 0.04)")}, rounds, warmup)
        rloo = bench_steps("rloo", hf_dir, prompts, work, {
            "rloo": lmspec_stage(work / "rloo", hf_dir, prompts, "rloo(k: 4, kl: 0.05)"),
            "ppo": lmspec_stage(work / "ppo", hf_dir, prompts, "ppo(epochs: 1, kl: 0.05)")}, rounds, warmup)

    tokens = BATCH * NEW_TOKENS
    rows = [
        row("generation", "generation (KV cache, sampling)", generation["lmspec"], generation["trl"], peer=True,
            work=tokens),
        row("grpo", "GRPO step (32 x 48 tokens)", grpo["samples"]["grpo"], grpo["samples"]["trl"], peer=True),
        row("rloo", "RLOO step (32 x 48 tokens)", rloo["samples"]["rloo"], rloo["samples"]["trl"], peer=True),
        row("ppo", "PPO step vs TRL's RLOO step", rloo["samples"]["ppo"], rloo["samples"]["trl"], peer=False),
    ]
    peers = [r for r in rows if r["peer"]]
    lowest = min(peers, key=lambda r: r["ratio"])
    result = {
        "versions": versions(),
        "config": {"shape": SHAPE, "parameters": n_params, "batch": BATCH, "prompt_tokens": PROMPT_TOKENS,
                   "new_tokens": NEW_TOKENS, "rounds": rounds, "warmup": warmup, "logits_gap": gap},
        "rows": rows,
        "phases": {"GRPO lmspec": grpo["phases"]["grpo"], "GRPO TRL": grpo["phases"]["trl"],
                   "RLOO lmspec": rloo["phases"]["rloo"], "RLOO TRL": rloo["phases"]["trl"],
                   "PPO lmspec": rloo["phases"]["ppo"]},
        "goal": {"target": GOAL, "met": lowest["ratio"] >= GOAL, "lowest": lowest["ratio"],
                 "lowest_row": lowest["name"]},
    }
    render(result, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

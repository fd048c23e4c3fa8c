"""Mixture of experts: one forward + backward step of a tiny Mixtral-shaped model, lmspec's sparse
dispatch (`mlp: moe(...)`, tokens gathered per expert) against transformers' MixtralForCausalLM
on the same config, weights and batch, in one process (issue 10, "Speed": goal no slower).

The transformers model is saved to a temporary directory and imported with
`lmspec.compiler.hf.load_hf_model`, so both hold the same weights; the logits are compared
before timing. Each step is forward, the mean next-token cross-entropy (plus the router's
load-balancing loss on both sides when --aux), and backward; the two take turns round by round
(benchmarks/timing.py). Prints the median step of each and the ratio lmspec / transformers
(below 1.0: lmspec is faster).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_moe.py            # 8 experts, top-2, d 256
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_moe.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import time_alternating  # noqa: E402

FULL = dict(vocab_size=8192, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=512)
QUICK = dict(FULL, vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


def main() -> None:
    import transformers

    from lmspec.compiler.hf import load_hf_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = QUICK if args.quick else FULL
    torch.manual_seed(0)
    config = transformers.MixtralConfig(**shape, sliding_window=None, router_aux_loss_coef=0.0,
                                        attn_implementation="sdpa")
    hf = transformers.MixtralForCausalLM(config).train()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        _, ours = load_hf_model(tmp)
    ours.train()
    ids = torch.randint(0, shape["vocab_size"], (args.batch, args.seq + 1))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    with torch.no_grad():
        diff = (ours(inputs).logits - hf(input_ids=inputs).logits).abs().max().item()
    print(f"Mixtral-shaped: {shape['num_hidden_layers']} layers, d {shape['hidden_size']}, "
          f"{shape['num_local_experts']} experts top-{shape['num_experts_per_tok']}, batch {args.batch} x {args.seq}, "
          f"{torch.get_num_threads()} threads; max |logits difference| {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("the two models do not compute the same function: the comparison would mean nothing")

    def loss_of(logits):
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def step_ours():
        ours.zero_grad(set_to_none=True)
        loss_of(ours(inputs).logits).backward()

    def step_hf():
        hf.zero_grad(set_to_none=True)
        loss_of(hf(input_ids=inputs).logits).backward()

    times = time_alternating({"lmspec": step_ours, "transformers": step_hf}, rounds=args.rounds, iters=1, warmup=1)
    for name, t in times.items():
        print(f"  {name:<13} {t * 1000:8.1f} ms / step  ({args.batch * args.seq / t:,.0f} tokens/s)")
    print(f"ratio lmspec / transformers: {times['lmspec'] / times['transformers']:.2f} (goal <= 1.0)")


if __name__ == "__main__":
    main()

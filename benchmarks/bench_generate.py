"""Generation speed: greedy decoding with the KV cache, lmspec `Transformer.generate` against
transformers' `generate(do_sample=False, use_cache=True)`, on the same GPT-2-small shaped
model with the same random weights. Prints new tokens per second and the ratio of times
lmspec / HF (below 1.0: lmspec is faster), and checks both produced the same tokens.

    python benchmarks/bench_generate.py            # GPT-2 small, 64 new tokens
    python benchmarks/bench_generate.py --quick    # a 4-layer d=256 model, seconds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import gpt2_pair, sync  # noqa: E402
from timing import time_alternating  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small model instead of GPT-2 small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="new tokens")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, alternating the two models")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    shape, device, hf, ours = gpt2_pair(args)
    hf.eval()
    ours.eval()
    prompt = torch.randint(0, shape["vocab"], (args.batch, args.prompt), device=device)
    outputs: dict[str, torch.Tensor] = {}

    def run_ours() -> None:
        outputs["lmspec"] = ours.generate(prompt, max_new_tokens=args.new, temperature=0)
        sync(device)

    @torch.no_grad()
    def run_hf() -> None:
        outputs["hf"] = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=args.new,
            min_new_tokens=args.new,  # never stop early at the (random) eos
            do_sample=False,
            use_cache=True,
            pad_token_id=shape["vocab"] - 1,
        )
        sync(device)

    secs = time_alternating({"lmspec": run_ours, "hf": run_hf}, rounds=args.rounds, iters=1, warmup=args.warmup)

    same = torch.equal(outputs["lmspec"], outputs["hf"])
    print(f"model: {shape}, batch {args.batch}, prompt {args.prompt}, {args.new} new tokens (greedy), "
          f"{torch.get_num_threads()} threads, {device}")
    print(f"same tokens as hf: {same}")
    for name, s in secs.items():
        print(f"{name:>7}: {s * 1000:8.1f} ms  {args.batch * args.new / s:8.1f} new tokens/s")
    print(f"  ratio lmspec/hf (time): {secs['lmspec'] / secs['hf']:.3f}")


if __name__ == "__main__":
    main()

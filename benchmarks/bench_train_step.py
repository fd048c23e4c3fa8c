"""Training-step speed: forward + backward of a GPT-2-small shaped lmspec model against
transformers' GPT2LMHeadModel with the same configuration and the same weights, in one
process, on the same batch. Prints seconds per step, tokens/s and the ratio lmspec / HF
(below 1.0: lmspec is faster).

    python benchmarks/bench_train_step.py            # GPT-2 small, B=4, T=256
    python benchmarks/bench_train_step.py --quick    # a 4-layer d=256 model, seconds

The configs, the model pair and its weight copy are shared with bench_generate.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from timing import time_alternating  # noqa: E402

from lmspec.compiler.arch import ArchConfig, AttentionConfig, LayerConfig, PositionConfig, StackConfig  # noqa: E402
from lmspec.compiler.build import build_model  # noqa: E402

#: GPT-2 small; --quick shrinks it so a run takes seconds
FULL = dict(vocab=50_257, context=1024, layers=12, d_model=768, heads=12)
QUICK = dict(vocab=8_192, context=256, layers=4, d_model=256, heads=4)


def gpt2_arch(vocab: int, context: int, layers: int, d_model: int, heads: int) -> ArchConfig:
    layer = LayerConfig(
        d_model=d_model,
        heads=heads,
        kv_heads=heads,
        head_dim=d_model // heads,
        d_ff=4 * d_model,
        attention=AttentionConfig("causal"),
        position=PositionConfig("learned"),
        norm="layernorm",
        placement="pre",
        activation="gelu_tanh",
        bias=True,
    )
    return ArchConfig(
        name="gpt2",
        arch="decoder",
        vocab=vocab,
        context=context,
        d_model=d_model,
        position=PositionConfig("learned"),
        decoder=StackConfig((layer,) * layers),
        tie_embeddings=True,
    )


def hf_gpt2(vocab: int, context: int, layers: int, d_model: int, heads: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab,
        n_positions=context,
        n_embd=d_model,
        n_layer=layers,
        n_head=heads,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=vocab - 1,
        eos_token_id=vocab - 1,
    )
    config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(config)


@torch.no_grad()
def copy_gpt2_weights(hf, model) -> None:
    """Hugging Face GPT-2 -> lmspec (GPT-2's Conv1D stores weights transposed)."""
    t = hf.transformer
    model.embed.weight.copy_(t.wte.weight)
    model.pos_embed.weight.copy_(t.wpe.weight)
    for h, block in zip(t.h, model.decoder.layers):
        for src, dst in [(h.ln_1, block.attn_norm), (h.ln_2, block.mlp_norm)]:
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        for src, dst in [
            (h.attn.c_attn, block.attn.qkv_proj),
            (h.attn.c_proj, block.attn.o_proj),
            (h.mlp.c_fc, block.mlp.up_proj),
            (h.mlp.c_proj, block.mlp.down_proj),
        ]:
            dst.weight.copy_(src.weight.T)
            dst.bias.copy_(src.bias)
    model.decoder.final_norm.weight.copy_(t.ln_f.weight)
    model.decoder.final_norm.bias.copy_(t.ln_f.bias)


def gpt2_pair(args: argparse.Namespace) -> tuple[dict, torch.device, torch.nn.Module, torch.nn.Module]:
    """--threads, --quick and --device applied: the shape, the device, and the transformers and
    lmspec GPT-2s on it, seeded, with the same weights."""
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = QUICK if args.quick else FULL
    device = torch.device(args.device)
    torch.manual_seed(0)
    hf = hf_gpt2(**shape).to(device)
    ours = build_model(gpt2_arch(**shape), device=device)
    copy_gpt2_weights(hf, ours)
    return shape, device, hf, ours


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels, so a timer stops when the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small model instead of GPT-2 small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=None, help="default 256 (128 with --quick)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, alternating the two models")
    parser.add_argument("--iters", type=int, default=None, help="steps per round (default 1, 3 with --quick)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    T = args.seq or (128 if args.quick else 256)
    shape, device, hf, ours = gpt2_pair(args)
    hf.train()
    ours.train()

    ids = torch.randint(0, shape["vocab"], (args.batch, T + 1), device=device)
    inputs, targets = ids[:, :-1], ids[:, 1:]

    with torch.no_grad():  # the same weights compute the same function
        diff = (ours(inputs).logits - hf(input_ids=inputs).logits).abs().max().item()

    def step(model, logits_of):
        def run():
            model.zero_grad(set_to_none=True)
            logits = logits_of(model)
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).backward()
            sync(device)

        return run

    fns = {
        "lmspec": step(ours, lambda m: m(inputs).logits),
        "hf": step(hf, lambda m: m(input_ids=inputs).logits),
    }
    secs = time_alternating(fns, rounds=args.rounds, iters=args.iters or (3 if args.quick else 1), warmup=args.warmup)

    n_params = sum(p.numel() for p in ours.parameters())
    print(f"model: {shape} ({n_params / 1e6:.1f}M parameters), batch {args.batch} x {T} tokens, "
          f"{torch.get_num_threads()} threads, {device}")
    print(f"max |logits lmspec - logits hf| = {diff:.2e}")
    for name, s in secs.items():
        print(f"{name:>7}: {s * 1000:8.1f} ms/step  {args.batch * T / s:10.0f} tokens/s")
    print(f"  ratio lmspec/hf: {secs['lmspec'] / secs['hf']:.3f}")


if __name__ == "__main__":
    main()

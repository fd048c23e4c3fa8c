"""The GPU benchmark of issue 8, part 7: one script, run once on a CUDA machine, that prints its
figures and writes them as JSON (`benchmarks/gpu/run.sh` calls it; see there).

Sections, each timed and recorded on its own (a section that fails records its error and the
others still run):

  train       MFU and tokens/s of GPT-2-124M (vocab 50257, context 1024, 12 x 768) trained by
              the runtime (`make_stage(...).step(i)`: data, forward, loss, backward, clipping,
              fused AdamW) in bf16 autocast with `compile: true`; model FLOPs per token are
              `flops_per_token(arch, T).training` (docs/analysis.md), the peak is the GPU's
              dense bf16 peak (table below, or --peak-tflops). Goal: MFU >= 50%.
  memory      `torch.cuda.max_memory_allocated` over a few eager training steps against the
              training-memory estimate `lmspec check` prints, for 3 stage shapes (a GPT-2, a
              Llama-style decoder with GQA, RoPE, RMSNorm and SwiGLU, a BERT-style encoder
              with mlm). Goal: within 15%.
  fsdp        a GPT-2 train stage sharded with FSDP2 (fully_shard per layer, as `parallel:
              fsdp` shards it) in a process group of one GPU: it runs, its losses, tokens/s
              and peak memory.
  generate    greedy generation with the KV cache, lmspec `Transformer.generate` against
              transformers' `generate` on the same GPT-2 weights: new tokens/s and the ratio.
  flex        a Mistral-style decoder (sliding window shorter than the sequence, GQA) trained in
              bf16 with `attention_kernel: sdpa` (a dense mask: SDPA's math kernel) and
              `attention_kernel: flex` (FlexAttention, modules/flex.py): the first losses of
              both (same weights, same data), step time, tokens/s, and peak memory against
              `check`'s estimate for each kernel. On the CPU (--reduced) the sdpa stage trains
              and the flex logits are compared with SDPA's without gradients.

`--reduced` runs every section's code on the CPU with tiny shapes and fp32, in seconds: the
test suite runs it (tests/test_gpu_bench.py) so that the script cannot rot between GPU runs.

    python benchmarks/gpu/bench_gpu.py --out gpu.json              # on a CUDA machine
    python benchmarks/gpu/bench_gpu.py --reduced --out /tmp/r.json # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "benchmarks"))

from lmspec.compiler.analysis import flops_per_token  # noqa: E402
from lmspec.compiler.api import check_file  # noqa: E402
from lmspec.compiler.compile import compile_spec  # noqa: E402
from lmspec.compiler.costs import spec_figures  # noqa: E402
from lmspec.runtime.stages import RunContext, make_stage  # noqa: E402

#: dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by a substring of the device name
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "GH200": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.2}

GPT2 = """lmspec 1
tokenizer tok {{ kind: bytes }}
data stories {{ source: builtin("tiny-stories"), validation: 2% }}

model gpt2 {{
  arch: decoder, vocab: {vocab}, context: {context}
  layers: {layers}, d_model: {d_model}, heads: {heads}, d_ff: 4 * d_model
  position: learned, norm: layernorm, activation: gelu_tanh, bias: true, tie_embeddings: true
}}

train pretrain {{
  model: gpt2, objective: clm, data: stories
  steps: 1000, batch: {batch}, log_every: 1000
  optimizer: adamw(lr: 6e-4, betas: [0.9, 0.95], weight_decay: 0.1)
  clip_grad: 1.0, precision: {precision}, compile: {compile}, parallel: {parallel}
}}
"""

LLAMA = """lmspec 1
tokenizer tok {{ kind: bytes }}
data stories {{ source: builtin("tiny-stories"), validation: 2% }}

model llama {{
  arch: decoder, vocab: {vocab}, context: {context}
  layers: {layers}, d_model: {d_model}, heads: {heads}, kv_heads: {kv_heads}, d_ff: {d_ff}
  position: rope(theta: 500_000), norm: rmsnorm, activation: swiglu, bias: false
}}

train pretrain {{
  model: llama, objective: clm, data: stories
  steps: 1000, batch: {batch}, log_every: 1000
  optimizer: adamw(lr: 3e-4), clip_grad: 1.0, precision: {precision}
}}
"""

BERT = """lmspec 1
tokenizer tok {{ kind: bytes }}
data stories {{ source: builtin("tiny-stories"), validation: 2% }}

model bert {{
  arch: encoder, vocab: {vocab}, context: {context}
  layers: {layers}, d_model: {d_model}, heads: {heads}, d_ff: 4 * d_model
  position: learned, norm: layernorm, activation: gelu, placement: post, head: mlm
}}

train pretrain {{
  model: bert, objective: mlm, data: stories
  steps: 1000, batch: {batch}, log_every: 1000
  optimizer: adamw(lr: 1e-4), clip_grad: 1.0, precision: {precision}
}}
"""

SLIDING = """lmspec 1
tokenizer tok {{ kind: bytes }}
data stories {{ source: builtin("tiny-stories"), validation: 2% }}

model mistral {{
  arch: decoder, vocab: {vocab}, context: {context}
  layers: {layers}, d_model: {d_model}, heads: {heads}, kv_heads: {kv_heads}, d_ff: {d_ff}
  position: rope(theta: 10_000), norm: rmsnorm, activation: swiglu, bias: false
  attention: sliding(window: {window})
}}

train pretrain {{
  model: mistral, objective: clm, data: stories
  steps: 1000, batch: {batch}, log_every: 1000
  optimizer: adamw(lr: 3e-4), clip_grad: 1.0, precision: {precision}, attention_kernel: {kernel}
}}
"""

FULL = {
    "train": dict(vocab=50_257, context=1024, layers=12, d_model=768, heads=12, batch=16, precision="bf16",
                  compile="true", parallel="auto", warmup=3, steps=20),
    "memory": [
        ("gpt2-124M bf16 B8 T1024", GPT2, dict(vocab=50_257, context=1024, layers=12, d_model=768, heads=12, batch=8,
                                                precision="bf16", compile="false", parallel="auto")),
        ("llama-style 0.3B bf16 B4 T2048", LLAMA, dict(vocab=32_000, context=2048, layers=8, d_model=1024, heads=16,
                                                        kv_heads=4, d_ff=2816, batch=4, precision="bf16")),
        ("bert-style fp32 B16 T512", BERT, dict(vocab=30_522, context=512, layers=6, d_model=512, heads=8, batch=16,
                                                precision="fp32")),
    ],
    "fsdp": dict(vocab=50_257, context=1024, layers=12, d_model=768, heads=12, batch=8, precision="bf16",
                 compile="false", parallel="fsdp", steps=10),
    "generate": dict(vocab=50_257, context=1024, layers=12, d_model=768, heads=12, batch=8, prompt=64, new=128),
    "flex": dict(vocab=32_000, context=4096, layers=4, d_model=1024, heads=16, kv_heads=4, d_ff=2816, window=512,
                 batch=2, precision="bf16", warmup=3, steps=5),
}
REDUCED = {
    "train": dict(vocab=300, context=64, layers=2, d_model=64, heads=4, batch=2, precision="fp32",
                  compile="false", parallel="auto", warmup=1, steps=2),
    "memory": [
        ("gpt2-tiny fp32", GPT2, dict(vocab=300, context=64, layers=2, d_model=64, heads=4, batch=2,
                                      precision="fp32", compile="false", parallel="auto")),
        ("llama-tiny fp32", LLAMA, dict(vocab=300, context=64, layers=2, d_model=64, heads=4, kv_heads=2, d_ff=128,
                                        batch=2, precision="fp32")),
        ("bert-tiny fp32", BERT, dict(vocab=300, context=64, layers=2, d_model=64, heads=4, batch=2,
                                      precision="fp32")),
    ],
    "fsdp": dict(vocab=300, context=64, layers=2, d_model=64, heads=4, batch=2, precision="fp32",
                 compile="false", parallel="fsdp", steps=2),
    "generate": dict(vocab=300, context=64, layers=2, d_model=64, heads=4, batch=2, prompt=8, new=8),
    "flex": dict(vocab=300, context=64, layers=2, d_model=64, heads=4, kv_heads=2, d_ff=128, window=16,
                 batch=2, precision="fp32", warmup=1, steps=1),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def stage_of(template: str, shape: dict, tmp: Path, device: torch.device, name: str):
    """A set-up train stage of the spec `template` filled with `shape`, as `lmspec run` builds it."""
    spec = tmp / f"{name}.lmspec"
    spec.write_text(template.format(**shape))
    report = check_file(spec)
    report.raise_for_errors()
    schedule = compile_spec(report)
    plan = schedule["pretrain"]
    stage = make_stage(plan, RunContext(report, schedule, device, tmp / "cache", tmp / f"run-{name}", log=lambda _: None))
    stage.setup()
    return report, plan, stage


def peak_flops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "no GPU: no peak"
    name = torch.cuda.get_device_name(device)
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12, f"{name}: {key} dense bf16"
    return None, f"{name}: not in the table (give --peak-tflops)"


def section_train(cfg: dict, tmp: Path, device: torch.device, peak_override: float | None) -> dict:
    shape = dict(cfg)
    warmup, steps = shape.pop("warmup"), shape.pop("steps")
    start = time.perf_counter()
    _, plan, stage = stage_of(GPT2, shape, tmp, device, "train")
    setup_s = time.perf_counter() - start
    B, T = shape["batch"], shape["context"]
    step_flops = flops_per_token(plan.arch, T).training * B * T
    start = time.perf_counter()
    for i in range(warmup):  # torch.compile compiles here
        stage.step(i)
    sync(device)
    warmup_s = time.perf_counter() - start
    times = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        stage.step(i)
        sync(device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    peak, peak_source = peak_flops(device, peak_override)
    achieved = step_flops / step_s
    return {"shape": cfg, "parameters": sum(p.numel() for p in stage.model.parameters()),
            "setup_s": setup_s, "warmup_s": warmup_s, "median_step_s": step_s, "tokens_per_s": B * T / step_s,
            "model_tflops_per_s": achieved / 1e12, "peak_tflops": None if peak is None else peak / 1e12,
            "peak_source": peak_source, "mfu": None if peak is None else achieved / peak, "goal_mfu": 0.50}


def section_memory(cases: list, tmp: Path, device: torch.device) -> dict:
    out = []
    for i, (label, template, shape) in enumerate(cases):
        report, plan, stage = stage_of(template, shape, tmp, device, f"memory{i}")
        figures, _ = spec_figures(report, meta=False)
        estimate = figures.stages["pretrain"].memory
        row = {"case": label, "estimate_bytes": estimate.total,
               "estimate": {k: getattr(estimate, k) for k in ("weights", "weight_copies", "gradients", "optimizer",
                                                               "activations")}}
        if device.type == "cuda":
            stage.step(0)  # the optimizer state exists from the first step on
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            for step in range(1, 4):
                stage.step(step)
            sync(device)
            row["measured_bytes"] = torch.cuda.max_memory_allocated(device)
            row["ratio"] = row["measured_bytes"] / estimate.total
            row["within_15%"] = abs(row["ratio"] - 1) <= 0.15
        else:  # the CPU has no allocator statistics: the steps still run
            for step in range(2):
                stage.step(step)
            row["measured_bytes"] = None
        del stage
        if device.type == "cuda":
            torch.cuda.empty_cache()
        out.append(row)
    return {"cases": out, "goal": "measured within 15% of the estimate"}


def section_fsdp(cfg: dict, tmp: Path, device: torch.device) -> dict:
    """FSDP2 on one device: the train stage set up as `lmspec run` does, then sharded the way a
    `parallel: fsdp` stage on several processes is (`TrainStage._shard`: fully_shard per layer
    and the root, the optimizer on the shards) in a process group of one, and stepped. With one
    process `lmspec run` itself shards nothing (there is nothing to shard across)."""
    import socket

    import torch.distributed as dist

    from lmspec.runtime import distributed

    shape = dict(cfg)
    steps = shape.pop("steps")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        _, plan, stage = stage_of(GPT2, shape, tmp, device, "fsdp")
        stage.world = distributed.world()
        stage._shard()
        stage.sharded, stage.forward_model = True, stage.model
        if stage.precision.name == "fp16":
            stage.scaler = distributed.sharded_grad_scaler()
        sharded = sum(1 for p in stage.model.parameters() if type(p).__name__ == "DTensor" or
                      type(getattr(p, "data", None)).__name__ == "DTensor")
        B, T = shape["batch"], shape["context"]
        losses, times = [], []
        for i in range(steps):
            start = time.perf_counter()
            out = stage.step(i)
            sync(device)
            times.append(time.perf_counter() - start)
            losses.append(float(out["loss"]))
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        step_s = statistics.median(times[1:] or times)
        result = {"shape": cfg, "sharded_parameters": sharded, "losses": losses, "median_step_s": step_s,
                  "tokens_per_s": B * T / step_s, "finite": all(map(lambda v: v == v and abs(v) < 1e9, losses))}
        if device.type == "cuda":
            result["max_memory_allocated"] = peak
        if not result["finite"] or not sharded:
            result["error"] = "non-finite losses" if not result["finite"] else "no parameter was sharded"
        return result
    finally:
        dist.destroy_process_group()


def section_generate(cfg: dict, device: torch.device) -> dict:
    import argparse as _argparse

    from bench_train_step import copy_gpt2_weights, gpt2_arch, hf_gpt2  # the pair bench_generate.py uses

    from lmspec.compiler.build import build_model

    shape = {k: cfg[k] for k in ("vocab", "context", "layers", "d_model", "heads")}
    torch.manual_seed(0)
    hf = hf_gpt2(**shape).to(device).eval()
    ours = build_model(gpt2_arch(**shape), device=device).eval()
    copy_gpt2_weights(hf, ours)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    hf.to(dtype)
    ours.to(dtype)
    prompt = torch.randint(0, shape["vocab"], (cfg["batch"], cfg["prompt"]), device=device)
    new = cfg["new"]
    outputs: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def run(name: str) -> float:
        start = time.perf_counter()
        if name == "lmspec":
            outputs[name] = ours.generate(prompt, max_new_tokens=new, temperature=0)
        else:
            outputs[name] = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                        min_new_tokens=new, do_sample=False, use_cache=True,
                                        pad_token_id=0)[:, prompt.shape[1]:]
        sync(device)
        return time.perf_counter() - start

    for name in ("lmspec", "hf"):
        run(name)  # warm-up
    times = {"lmspec": [], "hf": []}
    for _ in range(3):
        for name in ("lmspec", "hf"):
            times[name].append(run(name))
    ours_s, hf_s = statistics.median(times["lmspec"]), statistics.median(times["hf"])
    tokens = cfg["batch"] * new
    same = bool(torch.equal(outputs["lmspec"][:, -new:].cpu(), outputs["hf"][:, -new:].cpu()))
    return {"shape": cfg, "dtype": str(dtype).replace("torch.", ""), "lmspec_tokens_per_s": tokens / ours_s,
            "hf_tokens_per_s": tokens / hf_s, "time_ratio_lmspec_over_hf": ours_s / hf_s, "same_tokens": same}


def section_flex(cfg: dict, tmp: Path, device: torch.device) -> dict:
    shape = dict(cfg)
    warmup, steps = shape.pop("warmup"), shape.pop("steps")
    B, T = shape["batch"], shape["context"]
    kernels = ("sdpa", "flex") if device.type == "cuda" else ("sdpa",)  # no FlexAttention backward on the CPU
    out: dict = {"shape": cfg, "kernels": {}}
    for kernel in kernels:
        report, plan, stage = stage_of(SLIDING, dict(shape, kernel=kernel), tmp, device, f"flex-{kernel}")
        estimate = spec_figures(report, meta=False)[0].stages["pretrain"].memory
        row: dict = {"estimate_bytes": estimate.total, "estimate_activations": estimate.activations}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        losses, times = [], []
        for i in range(warmup + steps):  # FlexAttention's kernels are compiled in the first step
            start = time.perf_counter()
            losses.append(stage.step(i).get("loss"))
            sync(device)
            times.append(time.perf_counter() - start)
        row.update(first_losses=losses[:3], median_step_s=statistics.median(times[warmup:]),
                   first_step_s=times[0])
        row["tokens_per_s"] = B * T / row["median_step_s"]
        if device.type == "cuda":
            row["measured_bytes"] = torch.cuda.max_memory_allocated(device)
            row["ratio"] = row["measured_bytes"] / estimate.total
            row["within_15%"] = abs(row["ratio"] - 1) <= 0.15
        else:  # the CPU trains with sdpa only: compare FlexAttention's forward pass with SDPA's
            model = stage.model.eval()
            ids = torch.randint(0, shape["vocab"], (B, T), device=device)
            with torch.no_grad():
                dense = model.attention_kernel("sdpa")(ids).logits
                flex = model.attention_kernel("flex")(ids).logits
            row["flex_forward_max_abs_diff"] = (flex - dense).abs().max().item()
        out["kernels"][kernel] = row
        del stage
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if len(out["kernels"]) == 2:
        sdpa, flex = out["kernels"]["sdpa"], out["kernels"]["flex"]
        out["flex_speedup"] = sdpa["median_step_s"] / flex["median_step_s"]
        out["flex_memory_ratio"] = flex["measured_bytes"] / sdpa["measured_bytes"]
        out["first_loss_diff"] = abs(flex["first_losses"][0] - sdpa["first_losses"][0])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu-bench.json", help="where the JSON goes")
    parser.add_argument("--reduced", action="store_true", help="tiny shapes on the CPU, in seconds (the tests)")
    parser.add_argument("--only", action="append", choices=("train", "memory", "fsdp", "generate", "flex"),
                        help="run only these sections (repeatable)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    args = parser.parse_args(argv)
    cfg = REDUCED if args.reduced else FULL
    if not args.reduced and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or use --reduced to run the code paths on the CPU",
              file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.reduced else torch.device("cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "reduced": args.reduced,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "sections": {},
    }
    sections = args.only or ["train", "memory", "fsdp", "generate", "flex"]
    with tempfile.TemporaryDirectory(prefix="lmspec-gpu-") as tmp:
        tmp = Path(tmp)
        os.environ["LMSPEC_CACHE"] = str(tmp / "cache")
        for name in sections:
            start = time.perf_counter()
            print(f"== {name}", flush=True)
            try:
                if name == "train":
                    res = section_train(cfg["train"], tmp, device, args.peak_tflops)
                elif name == "memory":
                    res = section_memory(cfg["memory"], tmp, device)
                elif name == "fsdp":
                    res = section_fsdp(cfg["fsdp"], tmp, device)
                elif name == "flex":
                    res = section_flex(cfg["flex"], tmp, device)
                else:
                    res = section_generate(cfg["generate"], device)
                res["ok"] = "error" not in res
            except Exception as err:  # one section failing must not lose the others' figures
                res = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
            res["section_s"] = time.perf_counter() - start
            results["sections"][name] = res
            print(json.dumps({k: v for k, v in res.items() if k != "traceback"}, indent=2, default=str), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(s["ok"] for s in results["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

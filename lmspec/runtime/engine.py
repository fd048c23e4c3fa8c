"""The training engine: devices and precision, optimisers, learning-rate schedules, and the step.

`train_step` is the one place a loss becomes an update. Its rule for a weighted sum of
objectives under gradient accumulation: each term is the mean of its loss over *all* of its
units (tokens, pairs, sequences) in the optimizer step, so every micro-batch's backward divides
its summed loss by the step's total count, never by its own count. That makes `batch: 8` and
`batch: 8, grad_accum: 4` give the same gradients when sequences hold different numbers of
loss tokens (the bug class of trl#2617). With several processes the count is that of the step
on *all* ranks (summed across them before the first backward) and the ranks' gradients are
summed, not averaged (`distributed.data_parallel`): N processes sharing a global batch compute
the gradients of one process taking all of it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from lmspec.compiler.modules.moe import moe_aux_loss
from lmspec.runtime import distributed
from lmspec.runtime.objectives import model_inputs

__all__ = ["resolve_device", "Precision", "resolve_precision", "param_groups", "make_optimizer", "lr_at",
           "train_step", "StepResult", "seed_everything", "micro_generator"]


def resolve_device(name: str = "auto") -> torch.device:
    """`cpu`, `cuda`, `cuda:N` or `auto` (cuda when there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from lmspec.runtime.errors import RunError

        raise RunError("--device cuda was asked for, but torch sees no CUDA device",
                       help="use --device cpu, or install a CUDA build of torch on a machine with a GPU")
    return device


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self):
        """Mixed precision: weights and optimizer state stay fp32; matmuls run in bf16/fp16."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> "torch.amp.GradScaler | None":
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range."""
        if self.name != "fp16":
            return None
        return torch.amp.GradScaler(self.device_type)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """`auto` is bf16 on a GPU that has it and fp32 otherwise (CPU autocast is slower than fp32)."""
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        name = "bf16" if bf16 else "fp32"
    if name == "fp16" and device.type != "cuda":
        from lmspec.runtime.errors import RunError

        raise RunError("precision fp16 needs a GPU (loss scaling on CPU is not supported by torch)",
                       help="use precision: bf16 or fp32 on CPU")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        from lmspec.runtime.errors import RunError

        raise RunError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support",
                       help="use precision: fp16 (with loss scaling) or fp32 on this GPU, or auto")
    return Precision(name, device.type)


def check_compile(device: torch.device, stage: str) -> None:
    """`compile: true` needs what torch.compile's default backend (inductor) builds kernels with:
    triton on a GPU, a C++ compiler on the CPU. Without them the first step fails deep inside
    torch; this says so before the run starts."""
    from lmspec.runtime.errors import RunError

    if device.type == "cuda":
        from torch.utils._triton import has_triton  # torch's own test (triton importable, a GPU it supports)

        if not has_triton():
            raise RunError(f"stage '{stage}' has compile: true, but triton, which torch.compile builds GPU kernels "
                           "with, is not available here (not installed, or it does not support this GPU)",
                           help="pip install triton (it comes with torch's CUDA wheels), or set compile: false")
        return
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as err:  # torch's InvalidCxxCompiler, or whatever the search meets
        raise RunError(f"stage '{stage}' has compile: true, but torch.compile finds no C++ compiler to build CPU "
                       f"kernels with ({type(err).__name__})",
                       help="install g++ or clang++ (or set CXX), or set compile: false") from None


def check_attention_kernel(device: torch.device, stage: str, kernel: str) -> None:
    """`attention_kernel: flex` runs FlexAttention, which trains only on CUDA (torch's CPU
    FlexAttention has no backward pass) and builds its kernels with triton; `auto` needs
    neither (it falls back to SDPA)."""
    from lmspec.compiler.modules.flex import AVAILABLE, _has_triton
    from lmspec.runtime.errors import RunError

    if kernel != "flex":
        return
    auto = "or attention_kernel: auto (FlexAttention on CUDA, SDPA elsewhere)"
    if not AVAILABLE:
        raise RunError(f"stage '{stage}' has attention_kernel: flex, but torch {torch.__version__} has no FlexAttention "
                       "(torch.nn.attention.flex_attention, torch 2.5 and later)",
                       help=f"upgrade torch, {auto}")
    if device.type != "cuda":
        raise RunError(f"stage '{stage}' has attention_kernel: flex, but runs on {device.type}: FlexAttention "
                       "trains on CUDA only (torch has no FlexAttention backward pass on the CPU)",
                       help=f"run on a GPU (--device cuda), {auto}")
    if not _has_triton():
        raise RunError(f"stage '{stage}' has attention_kernel: flex, but triton, which FlexAttention builds its "
                       "kernels with, is not available here",
                       help=f"pip install triton (it comes with torch's CUDA wheels), {auto}")


def seed_everything(seed: int) -> None:
    """The global generators: model initialisation and dropout draw from them. Data order and
    masking never do (they use `micro_generator`), so both are pure functions of the step."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def micro_generator(seed: int, step: int, micro: int, salt: int = 0) -> torch.Generator:
    """The generator for the random choices of one micro-batch (masks, pairs, prefixes): a
    function of (seed, step, micro) only, so a resumed run draws exactly what it would have."""
    g = torch.Generator()
    g.manual_seed(step_seed(seed, step, micro, salt))
    return g


def step_seed(seed: int, step: int, micro: int = 0, salt: int = 0) -> int:
    """The seed of the random choices of (step, micro-batch): sampling in feedback and rl stages
    seeds a generator on the model's device with it."""
    return (seed * 1_000_003 + step * 7_919 + micro * 104_729 + salt * 15_485_863) % (2**63 - 1)


# ----------------------------------------------------------------------------- optimisers


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on every matrix (embeddings included, as nanoGPT), never on norms and biases."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters yields a tied weight once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(spec, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """adamw | adam | sgd from the spec's variant. Adam(W) use torch's fused kernels, on the CPU
    too: for GPT-2 small's parameters one AdamW step took 87 ms fused, 570 ms foreach and 439 ms
    with the plain loop (benchmarks/RESULTS.md, 2026-12-01). SGD uses foreach."""
    fast = {"fused": True}
    kind = spec.kind
    if kind == "adamw":
        return torch.optim.AdamW(param_groups(model, spec.weight_decay), lr=spec.lr, betas=tuple(spec.betas),
                                 eps=spec.eps, **fast)
    if kind == "adam":
        return torch.optim.Adam(param_groups(model, 0.0), lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps, **fast)
    if kind == "sgd":
        return torch.optim.SGD(param_groups(model, spec.weight_decay), lr=spec.lr, momentum=spec.momentum,
                               foreach=True)
    raise ValueError(f"unknown optimizer {kind!r}")


def lr_at(step: int, schedule, peak: float, total: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of `total`: linear warm-up to the
    peak over `warmup` steps, then constant, linear or cosine decay to `min_lr * peak` at the
    last step. A pure function of the step, so a resumed run needs no scheduler state."""
    warmup = getattr(schedule, "warmup", 0)
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule.kind == "constant":
        return peak
    floor = peak * schedule.min_lr
    span = max(1, total - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    if schedule.kind == "linear":
        return peak - (peak - floor) * progress
    if schedule.kind == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule.kind!r}")


# ----------------------------------------------------------------------------- the step


@dataclass
class StepResult:
    loss: float  # the weighted sum of each term's mean loss over the step
    terms: dict[str, float]  # each term's mean loss
    grad_norm: float
    tokens: int  # input tokens processed (padding excluded)
    finite: bool  # the loss is finite (else the update was not applied)
    skipped: bool = False  # fp16: the grad scaler found inf/nan gradients and skipped the update
    moe_aux: float | None = None  # a mixture of experts: its load-balancing loss, mean over the step (unweighted)


def input_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (non-padding) tokens fed to the model, encoder and decoder sides together."""
    n = 0
    for ids, mask in (("input_ids", "attention_mask"), ("decoder_input_ids", "decoder_attention_mask")):
        if ids in batch:
            n += int(batch[mask].sum()) if mask in batch else batch[ids].numel()
    return n


def forward_terms(model, batch, terms, precision: Precision):
    """One forward pass and each term's summed loss on it."""
    with precision.autocast():
        out = model(**model_inputs(batch))
    return out, [obj.loss(out, batch) for _, obj in terms]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list[dict], terms: list,
               *, lr: float, clip_grad: float | None, precision: Precision, scaler=None, no_sync=None) -> StepResult:
    """One optimizer step over `micro_batches` (already on the device; this rank's share of the
    step). `terms` is the composed [(weight, objective)] list; see the module docstring for how
    losses are normalised. `no_sync`: DDP's context that holds back the gradient all-reduce, so
    it runs once, in the last micro-batch's backward."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    counts = [sum(obj.count(b) for b in micro_batches) for _, obj in terms]  # per term, over the step
    counts = distributed.sum_over_ranks(counts)  # ... on every rank
    sums = [0.0] * len(terms)
    tokens = 0
    # a mixture of experts' load-balancing loss is a mean per micro-batch: it joins the loss as
    # its mean over every micro-batch of the step on every rank (the ranks' gradients are summed)
    shares = len(micro_batches) * distributed.world().size
    aux_sum, aux_weighted = 0.0, 0.0
    for k, batch in enumerate(micro_batches):
        hold = no_sync() if no_sync is not None and k < len(micro_batches) - 1 else contextlib.nullcontext()
        with hold:
            _, losses = forward_terms(model, batch, terms, precision)
            loss = sum(w * l / max(c, 1) for (w, _), l, c in zip(terms, losses, counts))
            aux = moe_aux_loss(model)
            if aux is not None:  # (weighted by each layer's aux_loss, unweighted)
                loss = loss + aux[0] / shares
                aux_weighted, aux_sum = aux_weighted + float(aux[0].detach()), aux_sum + float(aux[1].detach())
            (scaler.scale(loss) if scaler is not None else loss).backward()
        for i, l in enumerate(losses):
            sums[i] += float(l.detach())
        tokens += input_tokens(batch)
    *sums, tokens, aux_sum, aux_weighted = distributed.sum_over_ranks(sums + [float(tokens), aux_sum, aux_weighted])
    tokens = int(tokens)
    moe_aux = aux_sum / shares if aux is not None else None
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    max_norm = clip_grad if clip_grad is not None else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    term_means = {obj.kind: s / max(c, 1) for (_, obj), s, c in zip(terms, sums, counts)}
    total = sum(w * s / max(c, 1) for (w, _), s, c in zip(terms, sums, counts)) + aux_weighted / shares
    finite = math.isfinite(total) and (math.isfinite(grad_norm) or scaler is not None)
    skipped = False
    if finite:
        if scaler is not None:  # an overflow (inf grad norm) makes the scaler skip the step and lower its scale
            skipped = not math.isfinite(grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    # under DDP the gradients are views into its all-reduce buckets (distributed.data_parallel): with
    # micro-batches under no_sync they are zeroed in place, so those accumulate into the buckets too;
    # with one micro-batch dropped, so that DDP's one rebuild of its buckets frees the old ones first
    optimizer.zero_grad(set_to_none=no_sync is None or len(micro_batches) == 1)
    return StepResult(total, term_means, grad_norm, tokens, finite, skipped, moe_aux)

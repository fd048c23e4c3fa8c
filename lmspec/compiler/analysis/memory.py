"""Training and inference memory from an `ArchConfig`.

Training memory = weights + gradients + optimizer state + activations (+ the half-precision
weight copies mixed precision makes). Conventions, written out in docs/analysis.md:

- **Mixed precision ("bf16", "fp16") is torch autocast.** Parameters stay fp32 (they are the
  master weights), so do their gradients and the optimizer state; autocast casts each matmul
  weight to half precision on use and keeps the copy until backward (`weight_copies`, 2 bytes
  per matmul parameter). Matmul inputs and outputs are half precision; the residual stream,
  norms' inputs and statistics, log-sum-exps and the loss stay fp32.
- **Activations are the tensors autograd saves for backward** during one forward pass of a
  batch and its loss, counted once per storage (a view shares its base's bytes), parameters
  and their autocast copies excluded, the loss's log-softmax over the vocabulary included.
  The formula follows torch 2.13's kernels module by module; where kernels differ by device
  (which attention kernel SDPA picks, what dropout and RMSNorm keep), `device` says whose:
  "cuda" (default) or "cpu". The CPU figures are checked byte for byte against
  `saved_tensors_hooks` in tests/test_analysis.py, in fp32 and under bf16 autocast.
- Not counted: temporaries that live only inside one op, the allocator's caching and
  fragmentation, kernel workspaces, and the logits tensor itself.
- **Activation checkpointing** (`checkpoint_activations=True`) keeps each block's input and
  recomputes one block at a time during backward; the figure is the most alive at once, the end
  of the forward pass or one block's recomputation (`_Timeline.peak`), also checked against a
  real pass on CPU (tests/test_parallel_check.py).
- **Per device** (`device_memory`): one of `world` devices under DDP (everything replicated;
  the gradients are views into the all-reduce buckets, one copy) or FSDP2 (`fully_shard` per
  block and root: shards, plus the root and two blocks gathered at once); an rl stage's under
  FSDP2 (`rl_device_memory`) also at its rollouts, the trained models gathered whole;
  docs/analysis.md#per-device-memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Literal

from lmspec.compiler.arch import GATED_ACTIVATIONS, ArchConfig, LayerConfig, StackConfig

from .params import ParamShape, parameter_shapes

__all__ = [
    "OPTIMIZERS",
    "PRECISIONS",
    "DEVICES",
    "MemoryEstimate",
    "KVCacheEstimate",
    "optimizer_state_bytes",
    "activation_bytes",
    "training_memory",
    "kv_cache_memory",
    "PARALLELISMS",
    "DeviceMemory",
    "device_memory",
    "RLDeviceMemory",
    "rl_device_memory",
    "ATTENTION_KERNELS",
    "dense_mask_layers",
]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
Device = Literal["cuda", "cpu"]
DEVICES: tuple[str, ...] = ("cuda", "cpu")
PARALLELISMS: tuple[str, ...] = ("ddp", "fsdp")

#: optimizer -> (fp32 values kept per parameter element, whether torch keeps a `step` tensor
#: per parameter). Adafactor is special-cased: it factors the second moment of a matrix into
#: a row and a column vector.
_STATE: dict[str, tuple[int, bool]] = {
    "adamw": (2, True),  # exp_avg, exp_avg_sq
    "adam": (2, True),
    "adamw_amsgrad": (3, True),  # + max_exp_avg_sq
    "adam_amsgrad": (3, True),
    "sgd": (0, False),  # plain SGD (momentum 0) keeps nothing
    "sgd_momentum": (1, False),  # momentum_buffer
    "adagrad": (1, True),  # sum
    "rmsprop": (1, True),  # square_avg (momentum 0, not centered)
    "lion": (1, False),  # exp_avg (not in torch; as the paper's reference implementation)
    "adafactor": (0, True),  # see _adafactor_elements
}
OPTIMIZERS: tuple[str, ...] = tuple(_STATE)

FP32, INDEX, INT32 = 4, 8, 4  # bytes of an fp32 element, an int64 index and an int32 one
FLEX_BLOCK = 128  # the side of a FlexAttention BlockMask tile (modules/flex.py BLOCK)
FLEX_MIN_HEAD_DIM = 16  # FlexAttention's CUDA kernels take no smaller heads (modules/flex.py MIN_HEAD_DIM)
ATTENTION_KERNELS: tuple[str, ...] = ("auto", "sdpa", "flex")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed to train: see the module docstring for the conventions.
    `activation_breakdown` splits `activations` by component."""

    weights: int
    weight_copies: int
    gradients: int
    optimizer: int
    activations: int
    total: int
    activation_breakdown: dict[str, int]
    precision: str
    optimizer_name: str


@dataclass(frozen=True)
class KVCacheEstimate:
    """Bytes of keys and values kept for generation: decoder self-attention, and for an
    encoder-decoder the cross-attention keys/values of the encoder output."""

    self_attention: int
    cross_attention: int
    total: int


# ---- weights, gradients, optimizer state ---------------------------------------------------


def _adafactor_elements(shape: tuple[int, ...]) -> int:
    """torch.optim.Adafactor: a (..., rows, 1) and a (..., 1, cols) variance for tensors of two
    or more dimensions, a full variance for vectors."""
    if len(shape) < 2:
        return prod(shape)
    batch = prod(shape[:-2])
    return batch * shape[-2] + batch * shape[-1]


def optimizer_state_bytes(arch: ArchConfig, optimizer: str = "adamw", *, momentum: float = 0.0) -> int:
    """Bytes of optimizer state after the first step: fp32 states, plus torch's 4-byte `step`
    tensor per parameter tensor for the optimizers that keep one. `momentum` > 0 gives "sgd"
    its momentum buffer (the same as "sgd_momentum")."""
    return _optimizer_state_bytes(parameter_shapes(arch), optimizer, momentum)


def _optimizer_state_bytes(shapes: list[ParamShape], optimizer: str, momentum: float) -> int:
    key = optimizer.lower()
    if key not in _STATE:
        raise ValueError(f"unknown optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    if key == "sgd" and momentum > 0:
        key = "sgd_momentum"
    per_element, step = _STATE[key]
    if key == "adafactor":
        elements = sum(_adafactor_elements(p.shape) for p in shapes)
    else:
        elements = per_element * sum(p.numel for p in shapes)
    return FP32 * elements + (FP32 * len(shapes) if step else 0)


def _matmul_parameters(arch: ArchConfig, shapes: list[ParamShape]) -> int:
    """Parameters autocast casts on every forward: the linear maps' weights and biases, and the
    token embedding when a tied head multiplies by it."""
    n = sum(p.numel for p in shapes if p.matmul)
    if arch.tie_embeddings and (arch.head("lm") or arch.head("mlm")):
        n += arch.vocab * arch.d_model
    return n


# ---- activations ---------------------------------------------------------------------------


def _mlp_elements(layer: LayerConfig) -> int:
    """Per position: what the feed-forward network's element-wise ops and down_proj keep.
    gelu/silu keep their input and down_proj the output (2 x d_ff); relu keeps only its output,
    which is down_proj's input too (1); a gate keeps the gate projection, its activation, the up
    projection and their product (4; reglu 3: relu's output is what the product reads)."""
    if layer.activation in GATED_ACTIVATIONS:
        return layer.d_ff * (3 if layer.activation == "reglu" else 4)
    return layer.d_ff * (1 if layer.activation == "relu" else 2)


def _moe_bytes(layer: LayerConfig, N: int, k: "_Kernels") -> int:
    """What a mixture of experts keeps over N positions (modules/moe.py). Which expert a token
    reaches depends on the data, but not how much is kept: every position makes top_k
    (position, expert) pairs and each pair keeps the same tensors, so the figure holds for any
    routing (an expert no token reaches keeps nothing)."""
    moe, d, a = layer.moe, layer.d_model, k.act
    gated = layer.activation in GATED_ACTIVATIONS
    jitter = FP32 * d if moe.router_jitter > 0 else 0  # the noise the input was multiplied by
    # the router's input (under autocast its half copy; in fp32 the norm's output, which a
    # shared norm's qkv_proj already keeps unless jitter made a new tensor of it), its softmax,
    # the chosen experts (int64), their probabilities and the sum that renormalises them
    shares = layer.shared_norm and not k.half and not jitter
    router = (0 if shares else a * d) + FP32 * moe.experts + 8 * moe.top_k + FP32 * moe.top_k + FP32
    # per pair: the expert's input (gathered; under autocast a half copy per projection that
    # reads it), its activations, its output, the weighted output, the weight, and two int64
    # indices (the pair's place in the sort by expert, and its position)
    copies = 2 if k.half and gated else 1
    pair = a * d * copies + a * _mlp_elements(layer) + a * d + FP32 * d + FP32 + 2 * 8
    # the shared experts read the router's input (under autocast, copies of their own)
    shared = moe.shared_experts * a * _mlp_elements(layer) + (a * d * copies if k.half else 0) \
        if moe.shared_experts else 0
    # and once per layer the load-balancing loss keeps each expert's share of the pairs
    return N * (jitter + router + moe.top_k * pair + shared) + FP32 * moe.experts


@dataclass(frozen=True)
class _Kernels:
    """What decides which tensors are kept: the device's kernels and the precision."""

    device: str
    act: int  # bytes of an activation element: 4 in fp32, 2 under autocast
    flex: bool = False  # FlexAttention takes the layers whose mask SDPA would take dense (modules/flex.py)

    @property
    def half(self) -> bool:
        return self.act == 2

    def dropout_mask(self, element: int) -> int:
        """Bytes per element of a dropout mask over `element`-byte values: CUDA's fused dropout
        keeps a bool mask, CPU's multiplies by a noise tensor it keeps in the values' dtype."""
        return 1 if self.device == "cuda" else element

    @property
    def math_element(self) -> int:
        """Bytes of what the math attention kernel keeps: CPU upcasts half precision to fp32."""
        return FP32 if self.device == "cpu" else self.act

    def norm(self, kind: str, d: int, input_bytes: int = FP32) -> int:
        """Per position, what a norm keeps: its input (fp32 on the residual stream, which
        autocast keeps in fp32) and fp32 statistics (LayerNorm: mean and 1/std; RMSNorm:
        1/rms). On CPU torch's rms_norm is a composite that also keeps the fp32 normalised
        input for the weight's gradient; CUDA's fused kernel does not."""
        if kind == "layernorm":
            return input_bytes * d + FP32 * 2
        return input_bytes * d + FP32 * (1 + (d if self.device == "cpu" else 0))

    def attention(self, layer: LayerConfig, *, masked: bool, trained_bias: bool) -> str:
        """"fused" or "math": which SDPA kernel torch picks for this layer's attention.

        CPU: its flash kernel, unless attention dropout is on or the mask is trained (T5's
        bias), which need the math kernel. CUDA: flash (half precision, no mask; grouped-query
        heads allowed), else memory-efficient (any mask, fp32, but no grouped-query heads),
        else math. A soft-capped layer is none of them: "softcap", its explicit path. With
        `flex`, a masked layer without a trained bias or attention dropout is "flex"."""
        if layer.attention.softcap is not None:
            return "softcap"
        if self.flex and masked and not trained_bias and layer.dropout == 0 and layer.head_dim >= FLEX_MIN_HEAD_DIM:
            return "flex"
        if self.device == "cpu":
            return "math" if layer.dropout > 0 or trained_bias else "fused"
        flash = self.half and not masked
        efficient = layer.kv_heads == layer.heads
        return "fused" if flash or efficient else "math"


def _self_attention_masked(layer: LayerConfig, T: int) -> tuple[str, bool]:
    """The layer's effective attention kind, and whether SDPA gets a mask tensor at all
    (causal and bidirectional attention without a bias use is_causal / no mask)."""
    kind, window = layer.attention.kind, layer.attention.window
    if kind == "sliding" and window is not None and T <= window:
        kind = "causal"  # every key inside the window: plain causal attention
    biased = layer.position.kind in ("alibi", "relative")
    return kind, biased or kind in ("sliding", "prefix")


def _attention_bytes(layer: LayerConfig, B: int, T: int, S: int, kernel: str, k: _Kernels, *, cross: bool) -> int:
    """What one attention branch keeps beyond its norm, over T queries and S keys.

    Both kernels: the input projection's input (d per query). A fused kernel keeps q, k, v
    (views of the projection outputs, or the rotated copies under rope), its output (o_proj's
    input is a view of it) and a fp32 log-sum-exp per query and head. The math kernel keeps
    scaled copies of q, k and v with k and v expanded to every query head, the (T x S)
    probabilities per head (and under dropout its mask and the dropped probabilities), and
    o_proj's input, a contiguous copy of its output."""
    q, kv, H = layer.heads * layer.head_dim, layer.kv_heads * layer.head_dim, layer.heads
    act = k.act
    if kernel in ("fused", "flex"):  # FlexAttention keeps what flash attention keeps (flex.py)
        per_query = layer.d_model + 2 * q  # projection input, q, attention output
        if not cross and (layer.position.kind == "rope" or layer.qk_norm):
            # rotated (or normalised) q; the raw q is a view of the projection output
            per_query += q
            per_key = 2 * kv + kv  # the projection output holds k and v; rotated (or normalised) k
        else:
            per_key = 2 * kv
        if not cross:
            per_query, per_key = per_query + per_key, 0  # self-attention: keys are the queries
        return B * (T * (act * per_query + FP32 * H) + S * act * per_key)
    if kernel == "softcap":
        # the explicit path of attention.py: per (T x S) score and head, tanh's output and the fp32
        # probabilities; under autocast also their copy in q's dtype that the product with v keeps,
        # and under dropout instead its noise and the dropped probabilities; q, k and v as contiguous
        # copies, k and v expanded to every query head, or for one head views of the projection
        # outputs (but q and k rotated or normalised, which are new tensors); the projection input
        # and o_proj's input
        cast = k.dropout_mask(act) + act if layer.dropout > 0 else act if k.half else 0
        probs = H * S * (act + FP32 + cast)
        per_key = act * 2 * (kv if H == 1 else q)
        per_query = act * (layer.d_model + 2 * q)
        if H == 1 and not cross and (layer.position.kind == "rope" or layer.qk_norm):
            per_query, per_key = per_query + act * q, per_key + act * kv
        return B * (T * (per_query + probs) + S * per_key)
    m = k.math_element
    probs = H * S * (m + (k.dropout_mask(m) + m if layer.dropout > 0 else 0))
    per_key = m * 2 * q
    if H == 1 and m == act:
        # one head and no upcast: v needs no copy, and what it keeps is a view of the whole
        # projection output (q, k and v for self-attention, k and v for cross-attention)
        per_key = m * q + act * (2 * kv if cross else 0)
        probs += 0 if cross else act * (q + 2 * kv)  # per query = per key in self-attention
    return B * (T * (act * (layer.d_model + q) + m * q + probs) + S * per_key)


def _qk_norm_bytes(layer: LayerConfig, kernel: str, k: _Kernels) -> int:
    """Per position, what the norms over each query and key head keep (QK-norm): what
    `_Kernels.norm` adds to their input per head, and under autocast an RMSNorm's fp32 copy of
    its input. Otherwise the input is a view of the projection output, which a fused kernel
    keeps anyway; the math kernel keeps copies instead, so the norms alone keep it then (but
    for one head, whose math kernel keeps a view of it too)."""
    q, kv = layer.heads * layer.head_dim, layer.kv_heads * layer.head_dim
    upcast = FP32 if k.half and layer.norm == "rmsnorm" else 0
    kept = (layer.heads + layer.kv_heads) * k.norm(layer.norm, layer.head_dim, upcast)
    if kernel in ("math", "softcap") and not upcast and not (
            layer.heads == 1 and (kernel == "softcap" or k.math_element == k.act)):
        kept += k.act * (q + 2 * kv)
    return kept


def _mask_bytes(layer: LayerConfig, B: int, T: int, kernel: str, k: _Kernels) -> tuple[tuple, int, int]:
    """What a layer's attention mask costs: (key under which the layers of a stack share it,
    bytes shared by the layers with that key, bytes of this layer alone).

    A fused kernel keeps what it was given: SDPA turns a boolean structure (a sliding window
    shorter than T, a prefix) into an additive mask in q's dtype, (1|B, 1, T, T), one per
    layer; ALiBi's and T5's (1|B, heads, T, T) fp32 biases are one tensor the stack's layers
    share (under autocast, SDPA's half-precision copy of it, one per layer). The math kernel
    adds the mask to the scores and keeps nothing of it. T5's bias is trained, so the
    masked_fill that hides future keys from it keeps its boolean structure. FlexAttention
    keeps its block mask, which its layers share (`_flex_mask_bytes`)."""
    kind, masked = _self_attention_masked(layer, T)
    alibi, relative = layer.position.kind == "alibi", layer.position.kind == "relative"
    rows = B if kind == "prefix" else 1
    structured = kind in ("sliding", "prefix") or (kind == "causal" and (alibi or relative))
    key = (kind, layer.attention.window, layer.heads if alibi else None, relative, kernel)
    if kernel == "flex":
        return key, _flex_mask_bytes(rows, T, layer.heads if alibi else None), 0
    shared = rows * T * T if relative and structured else 0
    if kernel in ("math", "softcap") or not masked:
        return key, shared, 0
    if alibi or relative:
        if k.half:  # SDPA casts the fp32 bias to q's dtype, a copy per layer
            return key, shared, k.act * rows * layer.heads * T * T
        return key, shared + FP32 * rows * layer.heads * T * T, 0
    return key, shared, k.act * rows * T * T


def dense_mask_layers(arch: ArchConfig, seq_len: int, *, dropout: bool = True) -> list[tuple[str, int, str | None]]:
    """The self-attention layers whose mask SDPA would take as a dense tensor over `seq_len`
    tokens (a sliding window shorter than it, a prefix, ALiBi, T5's bias): (stack, index, why
    FlexAttention cannot take it, or None when it can). dropout: whether attention dropout is
    on (training; rl updates run in eval mode)."""
    out = []
    for name, stack in (("encoder", arch.encoder), ("decoder", arch.decoder)):
        for i, layer in enumerate(stack.layers if stack is not None else ()):
            _, masked = _self_attention_masked(layer, seq_len)
            if not masked:
                continue
            why = ("a soft cap" if layer.attention.softcap is not None
                   else "T5's trained relative bias" if layer.position.kind == "relative"
                   else f"head_dim {layer.head_dim}, under {FLEX_MIN_HEAD_DIM}" if layer.head_dim < FLEX_MIN_HEAD_DIM
                   else f"attention dropout {layer.dropout:g}" if dropout and layer.dropout > 0 else None)
            out.append((name, i, why))
    return out


def _flex_mask_bytes(rows: int, T: int, alibi_heads: int | None, *, positions: bool = True) -> int:
    """A FlexAttention mask over T queries and keys (modules/flex.py): the BlockMask's int32
    tensors, for n = ceil(T / 128) tiles a side, the (rows, 1, n) counts and (rows, 1, n, n)
    indices of partial and of full tiles, by query tile and again by key tile; the mask
    function's buffers (a bool and an int64 scalar; with rows, a prefix's (rows, T) bool keys);
    and for ALiBi the buffers its score_mod reads, the (heads,) fp32 slopes and the (T,) position
    ids (`positions`: unless counted already, as a checkpointed stack's context counts them)."""
    buffers = 1 + INDEX + (rows * T if rows > 1 else 0)
    alibi = FP32 * alibi_heads + (INDEX * T if positions else 0) if alibi_heads else 0
    return _block_mask_bytes(rows, T) + buffers + alibi


def _block_mask_bytes(rows: int, T: int) -> int:
    n = -(-T // FLEX_BLOCK)
    return INT32 * rows * (4 * n + 4 * n * n)


def _layer_activations(layer: LayerConfig, B: int, T: int, S: int, k: _Kernels) -> tuple[dict[str, int], tuple, int]:
    """What one layer keeps for backward over T positions (S: encoder positions for
    cross-attention), by component; and its attention mask's sharing key and the bytes the
    stack's layers with that key share (`_mask_bytes`)."""
    out: dict[str, int] = {}

    def add(component: str, n: int) -> None:
        if n:
            out[component] = out.get(component, 0) + n

    d = layer.d_model
    _, masked = _self_attention_masked(layer, T)
    kernel = k.attention(layer, masked=masked, trained_bias=layer.position.kind == "relative")
    if not layer.parallel:
        add("norms", 2 * B * T * k.norm(layer.norm, d))  # attn_norm, mlp_norm
    elif layer.shared_norm:
        add("norms", B * T * k.norm(layer.norm, d))  # one norm feeds both branches
    else:  # both norms read the layer's input: it is kept once
        add("norms", B * T * (k.norm(layer.norm, d) + k.norm(layer.norm, d, 0)))
    add("attention", _attention_bytes(layer, B, T, T, kernel, k, cross=False))
    if layer.placement == "sandwich":
        # a norm over each branch's output, before the residual add, which keeps that output (under
        # autocast a LayerNorm keeps the half tensor, an RMSNorm its fp32 copy) and returns the
        # branch's dtype, as the qk-norms do
        kept = FP32 if not k.half or layer.norm == "rmsnorm" else k.act
        add("norms", (2 + layer.cross_attention) * B * T * k.norm(layer.norm, d, kept))
    if layer.qk_norm:
        add("norms", B * T * _qk_norm_bytes(layer, kernel, k))
    add("norms", _offset_sums(layer))
    if layer.moe is not None:
        add("mlp", _moe_bytes(layer, B * T, k))
    else:
        # up_proj's input, and under autocast gate_proj's own half-precision copy of it
        inputs = 2 if k.half and layer.activation in GATED_ACTIVATIONS else 1
        if layer.shared_norm and not k.half:
            inputs -= 1  # up_proj reads the tensor qkv_proj reads (autocast casts it for each apart)
        add("mlp", B * T * k.act * (inputs * d + _mlp_elements(layer)))
    key, shared, own = _mask_bytes(layer, B, T, kernel, k)
    add("masks", own)
    if layer.cross_attention:
        cross_kernel = k.attention(layer, masked=False, trained_bias=False)
        add("norms", B * T * k.norm(layer.norm, d))  # cross_norm
        add("cross_attention", _attention_bytes(layer, B, T, S, cross_kernel, k, cross=True))
        if k.half:  # kv_proj's half-precision copy of the encoder output, one per layer
            add("cross_attention", k.act * B * S * d)
    if layer.dropout > 0:  # one mask per residual branch, over its half-or-fp32 output
        add("dropout", B * T * d * k.dropout_mask(k.act) * (3 if layer.cross_attention else 2))
    return out, key, shared


def _offset_sums(layer: LayerConfig) -> int:
    """What a layer's norms keep with `norm_offset`, whatever the batch: each its (dim,) fp32
    sum offset + weight, the weight it hands the norm kernel."""
    if not layer.norm_offset:
        return 0
    sublayers = 2 + layer.cross_attention
    norms = (1 if layer.shared_norm else 2) + layer.cross_attention
    norms += sublayers if layer.placement == "sandwich" else 0
    return FP32 * (norms * layer.d_model + (2 * layer.head_dim if layer.qk_norm else 0))


def _rope_bytes(stack: StackConfig, T: int) -> int:
    """cos and sin (1, T, 1, rotated dims) in fp32, one pair per distinct rotary embedding (the
    dimensions it rotates, theta, layout and scaling)."""
    tables = {(l.position.rotary_dims(l.head_dim), l.position.theta, l.position.layout, l.position.scaling)
              for l in stack.layers if l.position.kind == "rope"}
    return sum(FP32 * 2 * T * dims for dims, *_ in tables)


def _final_norm_bytes(stack: StackConfig, B: int, T: int, k: _Kernels) -> int:
    last = stack.layers[-1]
    offset_sum = FP32 * last.d_model if last.norm_offset else 0  # see _offset_sums
    return B * T * k.norm(last.norm, last.d_model) + offset_sum if stack.final_norm else 0


class _Timeline:
    """What a forward pass keeps, in the order it makes it: tensors kept until backward
    reaches the op that saved them, and (activation checkpointing) blocks, each keeping its
    input until its backward and its recomputed activations during it."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, int, int]] = []  # (component, bytes kept, bytes recomputed)

    def keep(self, component: str, n: int) -> None:
        if n:
            self.entries.append((component, n, 0))

    def block(self, stack: str, inputs: int, recomputed: int) -> None:
        self.entries.append((f"{stack}.block_inputs", inputs, recomputed))

    def kept(self) -> dict[str, int]:
        """Every kept tensor at once: the end of the forward pass."""
        out: dict[str, int] = {}
        for component, n, _ in self.entries:
            out[component] = out.get(component, 0) + n
        return out

    def peak(self) -> dict[str, int]:
        """The most that is alive at once, by component. Backward runs the forward's ops in
        reverse and frees what each kept as it passes it, so while block i recomputes, what the
        forward made before block i and block i's input are alive, and nothing made after it;
        the other candidate is the end of the forward pass, when everything kept is alive."""
        alive: dict[str, int] = {}
        best, at = -1, {}
        for component, n, recomputed in self.entries:
            alive[component] = alive.get(component, 0) + n
            if recomputed:
                total = sum(alive.values()) + recomputed
                if total > best:
                    stack = component.rsplit(".", 1)[0]
                    best, at = total, {**alive, f"{stack}.recomputed": recomputed}
        return dict(alive) if sum(alive.values()) >= best else at


def _stack_activations(
    name: str, stack: StackConfig, B: int, T: int, S: int, k: _Kernels, into: _Timeline
) -> None:
    """Activations of one stack over T positions (S: encoder positions for cross-attention)."""
    masks: dict[tuple, int] = {}
    for layer in stack.layers:
        parts, key, shared = _layer_activations(layer, B, T, S, k)
        for component, n in parts.items():
            into.keep(f"{name}.{component}", n)
        masks[key] = shared
    # layers that agree share one mask tensor and one rope table
    into.keep(f"{name}.masks", sum(masks.values()))
    into.keep(f"{name}.rope", _rope_bytes(stack, T))
    if stack.relative_layer is not None:
        into.keep(f"{name}.relative_bias", INDEX * T * T)  # the bucket of every (query, key) pair
    into.keep(f"{name}.final_norm", _final_norm_bytes(stack, B, T, k))


def _context_bytes(stack: StackConfig, B: int, T: int, k: _Kernels) -> int:
    """What a stack's `AttentionContext` holds, which under activation checkpointing stays
    alive with the blocks that read it: the masks and biases it memoises (one per distinct
    mask of the layers, built before the blocks run), T5's bias table output, and the boolean
    structure T5's masked_fill keeps for backward. Position ids are counted by the caller."""
    n = FP32 * stack.relative_layer.heads * T * T if stack.relative_layer is not None else 0
    seen: set[tuple] = set()
    for layer in stack.layers:
        kind, window = layer.attention.kind, layer.attention.window
        alibi, relative = layer.position.kind == "alibi", layer.position.kind == "relative"
        _, masked = _self_attention_masked(layer, T)
        flex = k.attention(layer, masked=masked, trained_bias=relative) == "flex"
        key = (kind, window, layer.heads if alibi else None, relative, flex)
        if key in seen:
            continue
        seen.add(key)
        if kind == "sliding" and window is not None and T <= window:
            kind = "causal"
        rows = B if kind == "prefix" else 1
        if flex:  # the position ids are the caller's
            n += _flex_mask_bytes(rows, T, layer.heads if alibi else None, positions=False)
            continue
        structured = kind != "bidirectional"
        if alibi or relative:
            if structured:  # the masked copy of the bias (B|1, h, T, T), and for T5 the mask it keeps
                n += FP32 * rows * layer.heads * T * T + (rows * T * T if relative else 0)
            elif alibi:  # the bias itself (1, h, T, T); T5's unmasked bias is the table output above
                n += FP32 * layer.heads * T * T
        elif kind in ("sliding", "prefix"):
            n += rows * T * T  # the boolean structure (B|1, 1, T, T)
    return n


def _checkpointed_stack(
    name: str, stack: StackConfig, B: int, T: int, S: int, k: _Kernels, into: _Timeline, *, position_ids: bool
) -> None:
    """A stack whose blocks run under activation checkpointing: the shared tensors its
    attention context holds, then per block its fp32 input (the residual stream) and what it
    keeps when recomputed less the storage it shares with that input (a pre-norm or sandwich
    block's norm keeps its input; so does a post-norm block's first projection in fp32)."""
    into.keep(f"{name}.positions", INDEX * T if position_ids else 0)  # (1, T), held by the context
    if any(layer.attention.kind == "prefix" for layer in stack.layers):
        into.keep(f"{name}.positions", INDEX * B)  # and the prefix lengths (B,)
    into.keep(f"{name}.masks", _context_bytes(stack, B, T, k))
    into.keep(f"{name}.rope", _rope_bytes(stack, T))
    if stack.relative_layer is not None:
        into.keep(f"{name}.relative_bias", INDEX * T * T)
    for layer in stack.layers:
        parts, _, _ = _layer_activations(layer, B, T, S, k)
        block_input = FP32 * B * T * layer.d_model
        shared = block_input if layer.placement != "post" or not k.half else 0
        into.block(name, block_input, sum(parts.values()) - shared)
    into.keep(f"{name}.final_norm", _final_norm_bytes(stack, B, T, k))


def _mlm_transform_bytes(arch: ArchConfig, k: _Kernels) -> int:
    """Per position, what BERT's dense + activation + norm before the vocabulary keeps: the
    dense output (gelu's input) or relu's output; the norm's input, which is the activation's
    output in fp32 and for a LayerNorm under autocast (relu's output is that same tensor), but a
    fp32 copy for an RMSNorm under autocast; the norm's statistics; and its output (the
    decoder's input)."""
    d, relu = arch.d_model, arch.activation in ("relu", "reglu")
    if not k.half:
        return FP32 * d * (0 if relu else 1) + k.norm(arch.norm, d) + FP32 * d
    if arch.norm == "layernorm":
        norm = k.norm("layernorm", d, k.act) - (k.act * d if relu else 0)
    else:
        norm = k.norm("rmsnorm", d, FP32)
    return k.act * d + norm + k.act * d


def activation_bytes(
    arch: ArchConfig,
    *,
    batch: int,
    seq_len: int,
    decoder_seq_len: int | None = None,
    precision: Precision = "fp32",
    device: Device = "cuda",
    checkpoint_activations: bool = False,
    attention_kernel: str = "auto",
) -> dict[str, int]:
    """Bytes autograd saves for backward during one training forward pass and the loss,
    by component; see the module docstring. With `checkpoint_activations`, the most that is
    alive at once while every block runs under activation checkpointing, by component at that
    moment (`_Timeline.peak`). attention_kernel: "auto" and "flex" give FlexAttention the
    layers whose mask SDPA would take dense, on CUDA; "sdpa" keeps SDPA (`Transformer.attention_kernel`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be positive, got batch={batch}, seq_len={seq_len}")
    if attention_kernel not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {attention_kernel!r}: expected one of {', '.join(ATTENTION_KERNELS)}")
    act = FP32 if precision == "fp32" else 2
    kernels = _Kernels(device, act, flex=device == "cuda" and attention_kernel != "sdpa")
    B, T, d, V = batch, seq_len, arch.d_model, arch.vocab
    timeline = _Timeline()
    add = timeline.keep
    # a stack reads learned positions from its own table (BART) or from the model's shared one
    learned = lambda s: s.own_positions or arch.position.kind == "learned"  # noqa: E731

    def stack(name: str, s: StackConfig, T_stack: int, S: int) -> None:
        if checkpoint_activations:
            _checkpointed_stack(name, s, B, T_stack, S, kernels, timeline, position_ids=not learned(s))
        else:
            _stack_activations(name, s, B, T_stack, S, kernels, timeline)

    # embeddings keep the ids they looked up; the encoder-decoder's decoder embeds its own ids
    def embed(T_stack: int, s: StackConfig) -> None:
        add("embeddings", INDEX * B * T_stack)
        if learned(s):
            add("embeddings", INDEX * T_stack)  # position ids (1, T)
        if arch.segments:
            add("embeddings", INDEX * B * T_stack)
        if arch.embed_norm or s.own_embed_norm:
            add("embeddings", B * T_stack * kernels.norm(arch.norm, d) + (FP32 * d if arch.norm_offset else 0))
        if arch.dropout > 0:
            add("embeddings", B * T_stack * d * kernels.dropout_mask(FP32))  # over fp32 embeddings

    T_out = T
    if arch.arch == "encoder_decoder":
        assert arch.encoder is not None and arch.decoder is not None
        T_out = T if decoder_seq_len is None else decoder_seq_len
        embed(T, arch.encoder)
        stack("encoder", arch.encoder, T, T)
        # the memory every cross-attention reads (autocast: per-layer copies); checkpointed
        # decoder blocks hold it as an input whatever the precision
        if not kernels.half or checkpoint_activations:
            add("encoder.output", FP32 * B * T * d)
        embed(T_out, arch.decoder)
        stack("decoder", arch.decoder, T_out, T)
    else:
        if decoder_seq_len is not None:
            raise ValueError("decoder_seq_len applies to encoder_decoder models only")
        for name, s in (("encoder", arch.encoder), ("decoder", arch.decoder)):
            if s is not None:
                embed(T, s)
                stack(name, s, T, T)

    # The heads. In fp32 the last stack's hidden states (B, T_out, d) are kept once if any head
    # reads them whole or through a view (the first or the last token); mean pooling keeps
    # nothing of them. Under autocast each linear head keeps its own half-precision copy of
    # what it reads instead: all positions for a vocabulary head, one vector for the others.
    # T5's tied head reads a scaled copy of the hidden states (the scale applies to lm only).
    token_heads = any(h.kind in ("lm", "mlm") for h in arch.heads)
    scaled_lm = arch.head("lm") is not None and arch.tied_head_scale != 1.0
    pooled_reader = lambda h: h.kind == "nsp" or h.pool == "first"  # noqa: E731
    if kernels.half:
        if token_heads:
            add("heads", act * B * T_out * d)
    else:
        if scaled_lm:
            add("heads", FP32 * B * T_out * d)
        if (token_heads and not scaled_lm) or arch.pooler or any(
            h.kind in ("nsp", "classifier", "scalar") and (pooled_reader(h) or h.pool == "last") for h in arch.heads
        ):
            add("heads", FP32 * B * T_out * d)
    if arch.pooler:  # tanh's output, and under autocast the dense layer's copy of the first token
        add("heads", act * B * d * (2 if kernels.half else 1))
    for head in arch.heads:
        if head.kind in ("lm", "mlm"):
            if head.kind == "mlm" and arch.head("lm") is not None:
                continue  # the model runs one vocabulary head: lm when both are declared
            if head.kind == "mlm" and head.transform:
                add("heads", B * T_out * _mlm_transform_bytes(arch, kernels) + (FP32 * d if arch.norm_offset else 0))
            if head.softcap is not None:  # tanh's output, the logits before the cap's final multiply
                add("heads", act * B * T_out * V)
            # cross-entropy: fp32 log-probabilities over the vocabulary and the int64 targets
            add("loss", FP32 * B * T_out * V + INDEX * B * T_out + FP32)
            continue
        reads_pooler = arch.pooler and pooled_reader(head)
        if head.pool == "mean" and head.kind != "nsp":
            add("heads", act * B * d)  # the mean is a new (B, d) tensor
        elif kernels.half and not reads_pooler:
            add("heads", act * B * d)  # a half-precision copy of the token it reads
        if head.kind == "scalar":
            add("loss", FP32 * 2 * B)  # a logistic loss on the (B,) scores
        else:
            classes = 2 if head.kind == "nsp" else head.classes
            add("loss", FP32 * B * classes + INDEX * B + FP32)  # cross-entropy
    return timeline.peak() if checkpoint_activations else timeline.kept()


# ---- totals ------------------------------------------------------------------------------


def training_memory(
    arch: ArchConfig,
    *,
    batch: int,
    seq_len: int,
    precision: Precision = "fp32",
    optimizer: str = "adamw",
    decoder_seq_len: int | None = None,
    device: Device = "cuda",
    momentum: float = 0.0,
    checkpoint_activations: bool = False,
    attention_kernel: str = "auto",
) -> MemoryEstimate:
    """Bytes to train `arch` on batches of `batch` x `seq_len` tokens: one device, no
    sharding; `batch` is the micro-batch one forward pass sees.

    precision: "fp32", or "bf16"/"fp16" autocast (fp32 master weights, gradients and optimizer
    state; half-precision copies of the matmul weights). optimizer: one of `OPTIMIZERS`
    (`momentum` > 0 turns "sgd" into SGD with a momentum buffer). device: whose attention and
    dropout kernels decide what is kept for backward, "cuda" (the default) or "cpu".
    checkpoint_activations: every block runs under activation checkpointing; attention_kernel:
    which kernel takes the layers SDPA would give a dense mask (both `activation_bytes`)."""
    shapes = parameter_shapes(arch)  # listed once for the weights, their copies and the optimizer
    n = sum(p.numel for p in shapes)  # == count_parameters(arch).total: a tied weight is listed once
    weights = FP32 * n
    copies = 0 if precision == "fp32" else 2 * _matmul_parameters(arch, shapes)
    gradients = FP32 * n
    state = _optimizer_state_bytes(shapes, optimizer, momentum)
    acts = activation_bytes(
        arch, batch=batch, seq_len=seq_len, decoder_seq_len=decoder_seq_len, precision=precision, device=device,
        checkpoint_activations=checkpoint_activations, attention_kernel=attention_kernel,
    )
    activations = sum(acts.values())
    return MemoryEstimate(
        weights=weights,
        weight_copies=copies,
        gradients=gradients,
        optimizer=state,
        activations=activations,
        total=weights + copies + gradients + state + activations,
        activation_breakdown=acts,
        precision=precision,
        optimizer_name=optimizer,
    )


# ---- per device, under a parallelism -------------------------------------------------------


@dataclass(frozen=True)
class DeviceMemory:
    """Bytes one of `world` devices holds at the peak of a training step under `parallel`
    ("ddp" or "fsdp"); conventions in docs/analysis.md#per-device-memory. `batch` is the
    micro-batch one forward pass on this device sees. `gathered`: FSDP's all-gathered
    parameters; `gradient_buffers`: FSDP's unsharded gradients waiting for their reduce-scatter
    (0 under DDP, whose all-reduce buckets are the gradients themselves); `whole_model`: FSDP's
    fp32 model, which each process builds whole before sharding it; `bucket_rebuild`: DDP with gradient accumulation, the
    moment before the second step when it holds its old and its rebuilt buckets; `frozen`:
    frozen models the stage also holds (dpo's reference). `total` is `frozen` plus the largest
    of the training peak, `whole_model` and `bucket_rebuild`."""

    parallel: str
    world: int
    batch: int
    weights: int
    weight_copies: int
    gathered: int
    gradients: int
    gradient_buffers: int
    optimizer: int
    activations: int
    total: int
    activation_breakdown: dict[str, int]
    checkpoint_activations: bool
    whole_model: int = 0
    frozen: int = 0
    bucket_rebuild: int = 0

    @property
    def training(self) -> int:
        """The training peak: everything but the frozen models and the build before sharding."""
        return (self.weights + self.weight_copies + self.gathered + self.gradients + self.gradient_buffers
                + self.optimizer + self.activations)


def _shard(shape: tuple[int, ...], world: int) -> tuple[int, ...]:
    """One device's shard of a parameter under FSDP2: its first dimension cut into `world`
    equal chunks, the last one padded."""
    return (-(-shape[0] // world),) + shape[1:]


def _fsdp_group(name: str) -> str:
    """The `fully_shard` group a parameter belongs to: its block ("decoder.layers.3"), or the
    root (embeddings, final norms, T5's bias tables, the pooler and the heads)."""
    parts = name.split(".")
    return ".".join(parts[:3]) if len(parts) > 3 and parts[1] == "layers" else "root"


def device_memory(
    arch: ArchConfig,
    *,
    world: int,
    parallel: str,
    batch: int,
    seq_len: int,
    precision: Precision = "fp32",
    optimizer: str = "adamw",
    decoder_seq_len: int | None = None,
    device: Device = "cuda",
    momentum: float = 0.0,
    checkpoint_activations: bool = False,
    grad_accum: int = 1,
    attention_kernel: str = "auto",
) -> DeviceMemory:
    """Bytes on one of `world` devices training `arch` on micro-batches of `batch` x `seq_len`
    tokens per device, under `parallel`:

    - "ddp": every device holds the whole model, its gradients and optimizer state: what one
      process holds. The gradients are DDP's all-reduce buckets (`gradient_as_bucket_view`,
      runtime.distributed.data_parallel): each `.grad` is a view into them, one fp32 copy.
      torch 2.13 starts with one bucket of every parameter and rebuilds its buckets (1 MiB,
      then 25 MiB each) once, before the second forward pass; with `grad_accum` > 1 the
      gradients, kept in place between steps, hold the old bucket until each is copied into
      its new one: weights, optimizer state and two copies of the gradients at once
      (`bucket_rebuild`), before any activation exists. With one micro-batch per step
      (`grad_accum` 1) the gradients are dropped after each step and the old bucket goes first;
    - "fsdp": FSDP2 `fully_shard` on every block and then on the root. Parameters, gradients and
      optimizer state are sharded (`_shard`); at the peak a device also holds the unsharded
      parameters of the root and of the two largest blocks (the one computing and the one
      prefetched), in the compute dtype, and their unsharded fp32 gradients before the
      reduce-scatter. Under bf16/fp16 the mixed-precision policy gathers half-precision
      parameters, so autocast makes no weight copies. Each process first builds the whole
      model in fp32 and then shards it, so that must fit too (`whole_model`).

    Activations are `activation_bytes` of the micro-batch, either way."""
    if parallel not in PARALLELISMS:
        raise ValueError(f"unknown parallelism {parallel!r}: expected one of {', '.join(PARALLELISMS)}")
    if world < 1:
        raise ValueError(f"world must be 1 or more, got {world}")
    base = training_memory(arch, batch=batch, seq_len=seq_len, precision=precision, optimizer=optimizer,
                           decoder_seq_len=decoder_seq_len, device=device, momentum=momentum,
                           checkpoint_activations=checkpoint_activations, attention_kernel=attention_kernel)
    if parallel == "ddp":  # torch's reducer: one flat fp32 tensor per bucket, the sum of its parameters' numels
        rebuild = base.weights + 2 * base.gradients + base.optimizer if world > 1 and grad_accum > 1 else 0
        return DeviceMemory("ddp", world, batch, base.weights, base.weight_copies, 0, base.gradients, 0,
                            base.optimizer, base.activations, max(base.total, rebuild), base.activation_breakdown,
                            checkpoint_activations, bucket_rebuild=rebuild)
    shapes = parameter_shapes(arch)
    shards = [ParamShape(p.name, _shard(p.shape, world), p.component, p.matmul) for p in shapes]
    sharded = sum(p.numel for p in shards)
    full: dict[str, int] = {}  # group -> padded unsharded elements
    for p in shards:
        group = _fsdp_group(p.name)
        full[group] = full.get(group, 0) + world * p.numel
    root = full.pop("root", 0)
    at_once = root + sum(sorted(full.values(), reverse=True)[:2])
    compute = FP32 if precision == "fp32" else 2
    weights, gradients = FP32 * sharded, FP32 * sharded
    gathered, in_flight = compute * at_once, FP32 * at_once
    state = _optimizer_state_bytes(shards, optimizer, momentum)
    whole = FP32 * sum(p.numel for p in shapes)
    total = max(weights + gathered + gradients + in_flight + state + base.activations, whole)
    return DeviceMemory("fsdp", world, batch, weights, 0, gathered, gradients, in_flight, state, base.activations,
                        total, base.activation_breakdown, checkpoint_activations, whole)


@dataclass(frozen=True)
class RLDeviceMemory(DeviceMemory):
    """Bytes one of `world` devices holds for an rl stage under FSDP2 (`rl_device_memory`). The
    `DeviceMemory` fields are the update phase, summed over the trained models (the policy, and
    PPO's value model), `frozen` the models kept whole (reference, reward, judges). The rollout
    phase holds the same shards and optimizer state, no gradients, every trained model gathered
    whole (`gathered_whole`) and the KV cache of the device's rollouts (`kv_cache`): `rollout`
    bytes. `total` is `frozen` plus the largest of the update peak, `rollout` and `whole_model`."""

    gathered_whole: int = 0
    kv_cache: int = 0
    rollout: int = 0


def rl_device_memory(
    policy: ArchConfig,
    *,
    value: ArchConfig | None,
    world: int,
    batch: int,
    seq_len: int,
    rollouts: int,
    frozen: int,
    precision: Precision = "fp32",
    optimizer: str = "adamw",
    device: Device = "cuda",
    momentum: float = 0.0,
    checkpoint_activations: bool = False,
    attention_kernel: str = "auto",
) -> RLDeviceMemory:
    """Bytes on one of `world` devices of an rl stage whose policy (and `value` model, PPO's) are
    sharded with FSDP2 as a train stage's model is, one optimizer over both; `batch`: the
    device's share of a minibatch, `rollouts`: its share of a step's rollouts, `seq_len`: a
    rollout at its longest; `frozen`: bytes of the models kept whole on every device.

    - updates: `device_memory(..., parallel="fsdp")` of each trained model at `batch` x `seq_len`,
      summed (their shards, gathered root and two blocks, unsharded gradients and activations);
    - rollouts: generation and the no-grad scoring passes run on the trained models gathered
      whole and kept so (runtime.distributed.gathered), in the compute dtype (half precision
      under bf16/fp16, the mixed-precision policy's, else fp32), every unit padded as its
      shards are; the KV cache of the device's `rollouts` is in that dtype too (the cache takes
      the activations' dtype). Gradients are dropped after each update: none then;
    - each process first builds the trained models whole in fp32 (`whole_model`)."""
    models = {"policy": policy, **({"value": value} if value is not None else {})}
    parts = {name: device_memory(arch, world=world, parallel="fsdp", batch=batch, seq_len=seq_len,
                                 precision=precision, optimizer=optimizer, device=device, momentum=momentum,
                                 checkpoint_activations=checkpoint_activations, attention_kernel=attention_kernel)
             for name, arch in models.items()}
    total_of = lambda field: sum(getattr(m, field) for m in parts.values())  # noqa: E731
    weights, gathered, gradients = total_of("weights"), total_of("gathered"), total_of("gradients")
    in_flight, state, activations, whole = (total_of("gradient_buffers"), total_of("optimizer"),
                                            total_of("activations"), total_of("whole_model"))
    compute = FP32 if precision == "fp32" else 2
    gathered_whole = compute * world * (weights // FP32)  # every unit's padded shards, all-gathered
    kv = kv_cache_memory(policy, batch=rollouts, seq_len=seq_len, dtype_bytes=compute).total
    rollout = weights + state + gathered_whole + kv
    update = weights + gathered + gradients + in_flight + state + activations
    breakdown = {f"{name}.{k}": v for name, m in parts.items() for k, v in m.activation_breakdown.items()}
    return RLDeviceMemory("fsdp", world, batch, weights, 0, gathered, gradients, in_flight, state, activations,
                          frozen + max(update, rollout, whole), breakdown, checkpoint_activations, whole, frozen,
                          gathered_whole=gathered_whole, kv_cache=kv, rollout=rollout)


def kv_cache_memory(
    arch: ArchConfig,
    *,
    batch: int,
    seq_len: int,
    dtype_bytes: int = 2,
    encoder_seq_len: int | None = None,
    evict_sliding: bool = True,
) -> KVCacheEstimate:
    """Bytes of the KV cache for generating `seq_len` tokens (prompt included) per sequence.

    Each decoder layer keeps keys and values of kv_heads x head_dim per token; a sliding-window
    layer only its last min(window, seq_len), a ring buffer, when `evict_sliding`: exactly what
    lmspec's `KVCache` allocates for `new_cache(batch, seq_len)` (False: a cache that keeps
    every token, as one without eviction would). An encoder-decoder
    also keeps each cross-attention layer's keys and values over `encoder_seq_len` (default
    `seq_len`) encoder positions. An encoder-only model has no cache: all zeros."""
    if arch.decoder is None:
        return KVCacheEstimate(0, 0, 0)
    S = seq_len if encoder_seq_len is None else encoder_seq_len
    self_bytes = cross_bytes = 0
    for layer in arch.decoder.layers:
        per_token = 2 * layer.kv_heads * layer.head_dim * dtype_bytes * batch
        kept = seq_len
        if evict_sliding and layer.attention.kind == "sliding" and layer.attention.window:
            kept = min(seq_len, layer.attention.window)
        self_bytes += per_token * kept
        if layer.cross_attention:
            cross_bytes += per_token * S
    return KVCacheEstimate(self_bytes, cross_bytes, self_bytes + cross_bytes)

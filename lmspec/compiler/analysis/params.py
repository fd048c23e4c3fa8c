"""Exact parameter counts from an `ArchConfig`, without building the model.

The counts come from one list of named parameter shapes that mirrors the module tree
`compiler.build` creates (`embed.weight`, `decoder.layers.3.attn.qkv_proj.weight`, ...).
Keeping the names lets the tests compare shape for shape against a model built on the
"meta" device, and lets the memory estimate size per-tensor optimizer state (Adafactor
keeps a row and a column vector per matrix, not a full copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from lmspec.compiler.arch import GATED_ACTIVATIONS, ArchConfig, LayerConfig, StackConfig

__all__ = ["ParamShape", "ParamCount", "parameter_shapes", "count_parameters"]

#: components that are lookup tables rather than matrices applied to every token
EMBEDDING_COMPONENTS = frozenset({"embeddings", "positions", "segments"})


@dataclass(frozen=True)
class ParamShape:
    """One parameter tensor: its name in the built model, its shape, and the component
    of `ParamCount.breakdown` it belongs to. `matmul` is true for weights and biases of
    the linear maps (what mixed precision casts to half precision on every forward)."""

    name: str
    shape: tuple[int, ...]
    component: str
    matmul: bool = False

    @property
    def numel(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True)
class ParamCount:
    """Parameters of a model; tied weights are counted once.

    `breakdown` maps a component (`embeddings`, `decoder.attention`, `lm_head`, ...) to its
    count and sums to `total`. `non_embedding` is `total` less the token, position and
    segment lookup tables (Kaplan et al.'s N); an untied output head is counted in it.
    `tensors` is the number of distinct parameter tensors (optimizers keep a `step` per tensor).
    `active` is what one token's forward reads: `total` less the routed experts a mixture of
    experts leaves idle ((experts - top_k) of them per MoE layer); equal to `total` otherwise.
    """

    total: int
    breakdown: dict[str, int]
    non_embedding: int
    tensors: int
    active: int


def _norm(prefix: str, kind: str, dim: int, component: str, bias: bool = True) -> list[ParamShape]:
    shapes = [ParamShape(f"{prefix}.weight", (dim,), component)]
    if kind == "layernorm" and bias:
        shapes.append(ParamShape(f"{prefix}.bias", (dim,), component))
    return shapes


def _linear(prefix: str, d_in: int, d_out: int, bias: bool, component: str) -> list[ParamShape]:
    shapes = [ParamShape(f"{prefix}.weight", (d_out, d_in), component, matmul=True)]
    if bias:
        shapes.append(ParamShape(f"{prefix}.bias", (d_out,), component, matmul=True))
    return shapes


def _layer(prefix: str, layer: LayerConfig, stack: str) -> list[ParamShape]:
    d, hd = layer.d_model, layer.head_dim
    qkv_b, out_b, mlp_b = (layer.biased(p) for p in ("qkv", "out", "mlp"))
    q_dim, kv_dim = layer.heads * hd, layer.kv_heads * hd
    norms, attention, cross, mlp = (f"{stack}.{c}" for c in ("norms", "attention", "cross_attention", "mlp"))
    shapes = _norm(f"{prefix}.attn_norm", layer.norm, d, norms, layer.norm_bias)
    # one fused projection for q, k and v: (heads + 2 * kv_heads) * head_dim outputs
    shapes += _linear(f"{prefix}.attn.qkv_proj", d, q_dim + 2 * kv_dim, qkv_b, attention)
    shapes += _linear(f"{prefix}.attn.o_proj", q_dim, d, out_b, attention)
    if layer.qk_norm:  # one norm of head_dim for all query heads, one for all key heads
        shapes += _norm(f"{prefix}.attn.q_norm", layer.norm, hd, norms, layer.norm_bias)
        shapes += _norm(f"{prefix}.attn.k_norm", layer.norm, hd, norms, layer.norm_bias)
    sandwich = layer.placement == "sandwich"  # a second norm on each branch's output, before its add
    if sandwich:
        shapes += _norm(f"{prefix}.attn_post_norm", layer.norm, d, norms, layer.norm_bias)
    if layer.cross_attention:
        shapes += _norm(f"{prefix}.cross_norm", layer.norm, d, norms, layer.norm_bias)
        if sandwich:
            shapes += _norm(f"{prefix}.cross_post_norm", layer.norm, d, norms, layer.norm_bias)
        shapes += _linear(f"{prefix}.cross_attn.q_proj", d, q_dim, qkv_b, cross)
        shapes += _linear(f"{prefix}.cross_attn.kv_proj", d, 2 * kv_dim, qkv_b, cross)
        shapes += _linear(f"{prefix}.cross_attn.o_proj", q_dim, d, out_b, cross)
    if not layer.shared_norm:  # a parallel layer may feed its MLP from the attention's norm
        shapes += _norm(f"{prefix}.mlp_norm", layer.norm, d, norms, layer.norm_bias)
    if sandwich:
        shapes += _norm(f"{prefix}.mlp_post_norm", layer.norm, d, norms, layer.norm_bias)
    if layer.moe is None:
        return shapes + _feed_forward(f"{prefix}.mlp", layer, layer.d_ff, mlp)
    # a mixture of experts: the router, then each routed expert, then the shared ones as one MLP
    moe = layer.moe
    shapes += _linear(f"{prefix}.mlp.router", d, moe.experts, False, f"{stack}.router")
    for e in range(moe.experts):
        shapes += _feed_forward(f"{prefix}.mlp.experts.{e}", layer, layer.d_ff, f"{stack}.experts")
    if moe.shared_experts:
        shapes += _feed_forward(f"{prefix}.mlp.shared", layer, moe.shared_experts * layer.d_ff, mlp)
    return shapes


def _feed_forward(prefix: str, layer: LayerConfig, d_ff: int, component: str) -> list[ParamShape]:
    d, bias = layer.d_model, layer.biased("mlp")
    shapes = _linear(f"{prefix}.up_proj", d, d_ff, bias, component)
    if layer.activation in GATED_ACTIVATIONS:
        shapes += _linear(f"{prefix}.gate_proj", d, d_ff, bias, component)
    return shapes + _linear(f"{prefix}.down_proj", d_ff, d, bias, component)


def _stack(name: str, stack: StackConfig, arch: ArchConfig) -> list[ParamShape]:
    shapes: list[ParamShape] = []
    for i, layer in enumerate(stack.layers):
        shapes += _layer(f"{name}.layers.{i}", layer, name)
    if stack.own_positions:  # BART: each stack its own table, position_offset rows first
        shapes.append(ParamShape(f"{name}.pos_embed.weight", (arch.context + arch.position_offset, arch.d_model),
                                 "positions"))
    if stack.own_embed_norm:
        shapes += _norm(f"{name}.embed_norm", arch.norm, arch.d_model, "embed_norm", arch.norm_bias)
    rel = stack.relative_layer
    if rel is not None:
        # T5: one (buckets, heads) table per stack, shared by all its layers
        table = (rel.position.buckets, rel.heads)
        shapes.append(ParamShape(f"{name}.rel_bias.embed.weight", table, f"{name}.relative_bias"))
    if stack.final_norm:
        last = stack.layers[-1] if stack.layers else None
        kind, bias = (last.norm, last.norm_bias) if last else (arch.norm, arch.norm_bias)
        shapes += _norm(f"{name}.final_norm", kind, arch.d_model, f"{name}.final_norm", bias)
    return shapes


def parameter_shapes(arch: ArchConfig) -> list[ParamShape]:
    """Every parameter tensor of the model `build_model(arch)` creates, in module order.
    A tied output head shares `embed.weight` and so contributes no entry of its own."""
    d, V = arch.d_model, arch.vocab
    shapes = [ParamShape("embed.weight", (V, d), "embeddings")]
    if arch.shared_positions:
        # position_offset rows come before position 0's (OPT, RoBERTa)
        shapes.append(ParamShape("pos_embed.weight", (arch.context + arch.position_offset, d), "positions"))
    if arch.segments:
        shapes.append(ParamShape("segment_embed.weight", (arch.segments, d), "segments"))
    if arch.shared_embed_norm:
        shapes += _norm("embed_norm", arch.norm, d, "embed_norm", arch.norm_bias)
    if arch.encoder is not None:
        shapes += _stack("encoder", arch.encoder, arch)
    if arch.decoder is not None:
        shapes += _stack("decoder", arch.decoder, arch)
    if arch.pooler:
        shapes += _linear("pooler.dense", d, d, True, "pooler")
    for head in arch.heads:
        if head.kind == "lm":
            if not arch.tie_embeddings:
                shapes += _linear("lm_head", d, V, head.bias, "lm_head")
            elif head.bias:  # a tied head shares the matrix but keeps its own bias
                shapes.append(ParamShape("lm_head.bias", (V,), "lm_head", matmul=True))
        elif head.kind == "mlm":
            if head.transform:  # BERT: dense + activation + norm before the vocabulary projection
                shapes += _linear("mlm_head.dense", d, d, True, "mlm_head")
                shapes += _norm("mlm_head.norm", arch.norm, d, "mlm_head", arch.norm_bias)
            if not arch.tie_embeddings:
                shapes.append(ParamShape("mlm_head.decoder.weight", (V, d), "mlm_head", matmul=True))
            shapes.append(ParamShape("mlm_head.decoder.bias", (V,), "mlm_head", matmul=True))
        elif head.kind == "nsp":
            shapes += _linear("nsp_head", d, 2, True, "nsp")
        elif head.kind == "classifier":
            shapes += _linear("classifier", d, head.classes, True, "classifier")
        elif head.kind == "scalar":
            shapes += _linear("score", d, 1, True, "score")
    return shapes


def count_parameters(arch: ArchConfig) -> ParamCount:
    """Exact parameter count of `build_model(arch)`, tied weights once, from the config alone."""
    shapes = parameter_shapes(arch)
    breakdown: dict[str, int] = {}
    for p in shapes:
        breakdown[p.component] = breakdown.get(p.component, 0) + p.numel
    if arch.head("lm") is not None and arch.tie_embeddings:
        breakdown.setdefault("lm_head", 0)  # listed so a reader sees the head exists and is tied
    total = sum(breakdown.values())
    embedding = sum(n for c, n in breakdown.items() if c in EMBEDDING_COMPONENTS)
    idle = 0
    for stack in arch.stacks:
        for layer in stack.layers:
            if layer.moe is not None:  # every routed expert has the same shapes: one of them, times the idle ones
                expert = sum(p.numel for p in _feed_forward("", layer, layer.d_ff, ""))
                idle += (layer.moe.experts - layer.moe.top_k) * expert
    return ParamCount(total=total, breakdown=breakdown, non_embedding=total - embedding, tensors=len(shapes),
                      active=total - idle)

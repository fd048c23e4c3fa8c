"""From an `ArchConfig` to `torch.nn` modules: the only bridge between the spec and torch.

`build_model(arch)` checks what the torch code relies on (every problem at once), builds the
modules on the meta device (no memory, no init work: a 405B design builds in well under a
second), and unless asked for "meta" materialises them on the target device in the target
dtype and initialises them GPT-2 style.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .arch import GATED_ACTIVATIONS, ArchConfig, LayerConfig, RopeScaling, StackConfig
from .modules import (
    Attention,
    Block,
    CrossAttention,
    FeedForward,
    MLMHead,
    ParallelBlock,
    Pooler,
    RelativePositionBias,
    Rotary,
    Stack,
    Transformer,
    make_activation,
    make_norm,
)
from .modules.heads import LMHead
from .modules.moe import MixtureOfExperts
from .modules.norms import norm_init
from .modules.positions import LinearScaling, Llama3Scaling, LongropeScaling, RotaryScaling, YarnScaling

__all__ = ["build_model", "build_block", "build_stack", "init_weights", "check_buildable"]


def build_model(
    arch: ArchConfig, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Transformer:
    """The `Transformer` an `ArchConfig` describes. device="meta" allocates nothing (for
    static analysis); otherwise weights are normal(0, 0.02), residual output projections
    scaled by 1/sqrt(2 * layers) as GPT-2, biases zero, norms one."""
    problems = check_buildable(arch)
    if problems:
        raise ValueError(f"cannot build model {arch.name!r}:\n  - " + "\n  - ".join(problems))
    with torch.device("meta"):
        model = _build_transformer(arch)
    if dtype is not None:
        model.to(dtype=dtype)
    target = torch.device(device) if device is not None else torch.get_default_device()
    if target.type == "meta":
        return model
    model.to_empty(device=target)
    model.tie_weights()  # to_empty gave each module its own fresh parameter
    init_weights(model)
    return model


def check_buildable(arch: ArchConfig) -> list[str]:
    """Everything about `arch` the torch code cannot work with, as messages (empty: fine)."""
    problems: list[str] = []
    # arch -> (has an encoder, has a decoder), and the same in words
    stacks = {
        "decoder": ((False, True), "a decoder stack only"),
        "encoder": ((True, False), "an encoder stack only"),
        "encoder_decoder": ((True, True), "both stacks"),
    }
    if arch.arch not in stacks:
        problems.append(f"unknown arch {arch.arch!r}")
    elif (arch.encoder is not None, arch.decoder is not None) != stacks[arch.arch][0]:
        problems.append(f"arch {arch.arch!r} needs {stacks[arch.arch][1]}")
    if arch.vocab < 1:
        problems.append(f"vocab must be positive, got {arch.vocab}")
    if arch.position.kind == "learned" and arch.context < 1:
        problems.append(f"learned positions need a positive context, got {arch.context}")
    kinds = [h.kind for h in arch.heads]
    if len(set(kinds)) != len(kinds):
        problems.append(f"each head kind may appear once, got {kinds}")
    for stack_name, stack in (("encoder", arch.encoder), ("decoder", arch.decoder)):
        if stack is None:
            continue
        if not stack.layers:
            problems.append(f"the {stack_name} has no layers")
        if (stack.own_positions or stack.own_embed_norm) and arch.arch != "encoder_decoder":
            problems.append(f"the {stack_name} has its own position table or embedding norm, which only the stacks "
                            "of an encoder-decoder have")
        relative = {(l.heads, l.position.buckets, l.position.max_distance)
                    for l in stack.layers if l.position.kind == "relative"}
        if len(relative) > 1:
            problems.append(f"relative-position layers of the {stack_name} share one bias table, so they need "
                            f"the same heads, buckets and max_distance; got {sorted(relative)}")
        for buckets, max_distance in {(b, m) for _, b, m in relative}:
            # T5 keeps half its buckets (per direction, in an encoder) for exact distances
            exact = (buckets // 2 if stack_name == "encoder" else buckets) // 2
            if exact < 1 or max_distance <= exact:
                problems.append(f"the {stack_name}'s relative positions need more buckets or a larger "
                                f"max_distance: {buckets} buckets leave {exact} exact distances, "
                                f"max_distance {max_distance} must exceed that")
        for i, layer in enumerate(stack.layers):
            where = f"{stack_name} layer {i}"
            if layer.d_model != arch.d_model:
                problems.append(f"{where}: d_model {layer.d_model} differs from the model's {arch.d_model}")
            if layer.kv_heads < 1 or layer.heads % layer.kv_heads:
                problems.append(f"{where}: kv_heads ({layer.kv_heads}) must divide heads ({layer.heads})")
            if layer.head_dim < 1 or layer.d_ff < 1:
                problems.append(f"{where}: head_dim and d_ff must be positive")
            if layer.attention.kind == "sliding" and (layer.attention.window or 0) < 1:
                problems.append(f"{where}: sliding attention needs a window >= 1")
            if layer.position.kind == "rope" and (layer.position.rotary_dims(layer.head_dim) or 1) % 2:
                problems.append(f"{where}: rope needs an even head_dim, got {layer.head_dim}"
                                if layer.position.fraction == 1 else
                                f"{where}: rope rotates pairs of dimensions, but {layer.position.fraction:g} of "
                                f"head_dim {layer.head_dim} is not an even number")
            if layer.parallel and (layer.placement != "pre" or layer.cross_attention):
                problems.append(f"{where}: a parallel layer needs pre-norm and no cross-attention")
            if layer.cross_attention and not (stack_name == "decoder" and arch.arch == "encoder_decoder"):
                problems.append(f"{where}: cross-attention only exists in the decoder of an encoder-decoder")
    return problems


# ---- builders: one per module, each takes only what it needs ----------------------------------


def _scale(layer: LayerConfig) -> float | None:
    scale = layer.attention.scale
    if isinstance(scale, str):
        return 1.0 if scale == "none" else None  # None: SDPA's 1/sqrt(head_dim)
    return float(scale)


def _rotary(layer: LayerConfig) -> Rotary | None:
    p = layer.position
    if p.kind != "rope":
        return None
    return Rotary(p.rotary_dims(layer.head_dim), p.theta, p.layout == "interleaved", _rotary_scaling(p.scaling))


def _rotary_scaling(s: RopeScaling | None) -> RotaryScaling | None:
    if s is None:
        return None
    if s.kind == "linear":
        return LinearScaling(factor=s.factor)
    if s.kind == "llama3":
        return Llama3Scaling(factor=s.factor, low_freq=s.low_freq, high_freq=s.high_freq,
                             original_context=s.original_context)
    if s.kind == "yarn":
        return YarnScaling(factor=s.factor, original_context=s.original_context, beta_fast=s.beta_fast,
                           beta_slow=s.beta_slow, attention_factor=s.attention_factor, mscale=s.mscale,
                           mscale_all_dim=s.mscale_all_dim, truncate=s.truncate)
    return LongropeScaling(short_factor=s.short_factor, long_factor=s.long_factor, original_context=s.original_context,
                           factor=s.factor, attention_factor=s.attention_factor)


def build_attention(layer: LayerConfig) -> Attention:
    def head_norm() -> nn.Module | None:
        if not layer.qk_norm:
            return None
        return make_norm(layer.norm, layer.head_dim, layer.norm_eps, bias=layer.norm_bias, offset=layer.norm_offset)

    return Attention(
        d_model=layer.d_model,
        heads=layer.heads,
        kv_heads=layer.kv_heads,
        head_dim=layer.head_dim,
        kind=layer.attention.kind,
        window=layer.attention.window,
        position=layer.position.kind,
        rotary=_rotary(layer),
        scale=_scale(layer),
        softcap=layer.attention.softcap,
        qkv_bias=layer.biased("qkv"),
        out_bias=layer.biased("out"),
        q_norm=head_norm(),
        k_norm=head_norm(),
        dropout=layer.dropout,
    )


def build_cross_attention(layer: LayerConfig) -> CrossAttention:
    return CrossAttention(
        d_model=layer.d_model,
        heads=layer.heads,
        kv_heads=layer.kv_heads,
        head_dim=layer.head_dim,
        scale=_scale(layer),
        softcap=layer.attention.softcap,
        qkv_bias=layer.biased("qkv"),
        out_bias=layer.biased("out"),
        dropout=layer.dropout,
    )


def embedding(num: int, dim: int) -> nn.Embedding:
    """An embedding table left uninitialised: `init_weights` sets every weight anyway, and
    nn.Embedding's own init on the meta device imports torch._dynamo (seconds, once)."""
    return nn.Embedding(num, dim, _weight=torch.empty(num, dim))


def build_feed_forward(layer: LayerConfig, d_ff: int | None = None) -> FeedForward:
    gated, bias, d_ff = layer.activation in GATED_ACTIVATIONS, layer.biased("mlp"), d_ff or layer.d_ff
    return FeedForward(
        up_proj=nn.Linear(layer.d_model, d_ff, bias=bias),
        gate_proj=nn.Linear(layer.d_model, d_ff, bias=bias) if gated else None,
        down_proj=nn.Linear(d_ff, layer.d_model, bias=bias),
        activation=make_activation(layer.activation),
    )


def build_mlp(layer: LayerConfig) -> FeedForward | MixtureOfExperts:
    moe = layer.moe
    if moe is None:
        return build_feed_forward(layer)
    return MixtureOfExperts(
        router=nn.Linear(layer.d_model, moe.experts, bias=False),
        experts=[build_feed_forward(layer) for _ in range(moe.experts)],
        top_k=moe.top_k,
        shared=build_feed_forward(layer, moe.shared_experts * layer.d_ff) if moe.shared_experts else None,
        router_jitter=moe.router_jitter,
        aux_weight=moe.aux_loss,
    )


def build_block(layer: LayerConfig) -> Block | ParallelBlock:
    def norm() -> nn.Module:
        return make_norm(layer.norm, layer.d_model, layer.norm_eps, bias=layer.norm_bias, offset=layer.norm_offset)

    sandwich = layer.placement == "sandwich"
    if layer.parallel:
        return ParallelBlock(attn_norm=norm(), attn=build_attention(layer), mlp=build_mlp(layer),
                             mlp_norm=None if layer.shared_norm else norm(), dropout=layer.dropout)
    return Block(
        attn_norm=norm(),
        attn=build_attention(layer),
        cross_norm=norm() if layer.cross_attention else None,
        cross_attn=build_cross_attention(layer) if layer.cross_attention else None,
        mlp_norm=norm(),
        mlp=build_mlp(layer),
        post_norm=layer.placement == "post",
        attn_post_norm=norm() if sandwich else None,
        cross_post_norm=norm() if sandwich and layer.cross_attention else None,
        mlp_post_norm=norm() if sandwich else None,
        dropout=layer.dropout,
    )


def build_stack(
    stack: StackConfig, *, bidirectional: bool, pos_embed: nn.Embedding | None = None,
    embed_norm: nn.Module | None = None,
) -> Stack:
    """bidirectional: whether the stack's T5 bias distinguishes keys after the query
    (encoders) or spends every bucket on keys before it (decoders). pos_embed / embed_norm:
    the stack's own learned position table and embedding norm (BART), if it has them."""
    relative = stack.relative_layer
    last = stack.layers[-1]
    return Stack(
        [build_block(layer) for layer in stack.layers],
        pos_embed=pos_embed,
        embed_norm=embed_norm,
        final_norm=make_norm(last.norm, last.d_model, last.norm_eps, bias=last.norm_bias, offset=last.norm_offset)
        if stack.final_norm else None,
        rel_bias=None
        if relative is None
        else RelativePositionBias(
            embedding(relative.position.buckets, relative.heads),
            max_distance=relative.position.max_distance,
            bidirectional=bidirectional,
        ),
    )


def _build_embedded_stack(arch: ArchConfig, stack: StackConfig | None, *, bidirectional: bool) -> Stack | None:
    """A stack with the position table and embedding norm of its own that its block gives it."""
    if stack is None:
        return None
    d = arch.d_model
    return build_stack(
        stack,
        bidirectional=bidirectional,
        pos_embed=embedding(arch.context + arch.position_offset, d) if stack.own_positions else None,
        embed_norm=make_norm(arch.norm, d, arch.norm_eps, bias=arch.norm_bias, offset=arch.norm_offset)
        if stack.own_embed_norm else None,
    )


def _build_transformer(arch: ArchConfig) -> Transformer:
    d = arch.d_model
    lm, mlm = arch.head("lm"), arch.head("mlm")
    nsp, classifier, scalar = arch.head("nsp"), arch.head("classifier"), arch.head("scalar")
    return Transformer(
        embed=embedding(arch.vocab, d),
        context=arch.context,
        pos_embed=embedding(arch.context + arch.position_offset, d) if arch.shared_positions else None,
        position_offset=arch.position_offset,
        sinusoidal=arch.position.kind == "sinusoidal",
        segment_embed=embedding(arch.segments, d) if arch.segments > 0 else None,
        embed_norm=make_norm(arch.norm, d, arch.norm_eps, bias=arch.norm_bias, offset=arch.norm_offset)
        if arch.shared_embed_norm else None,
        embed_scale=arch.embed_scale,
        dropout=arch.dropout,
        encoder=_build_embedded_stack(arch, arch.encoder, bidirectional=True),
        decoder=_build_embedded_stack(arch, arch.decoder, bidirectional=False),
        pooler=Pooler(d) if arch.pooler else None,
        lm_head=LMHead(d, arch.vocab, bias=lm.bias, softcap=lm.softcap) if lm else None,
        mlm_head=None
        if mlm is None
        else MLMHead(
            d,
            arch.vocab,
            activation=make_activation(arch.activation) if mlm.transform else None,
            norm=make_norm(arch.norm, d, arch.norm_eps, bias=arch.norm_bias, offset=arch.norm_offset)
            if mlm.transform else None,
        ),
        nsp_head=nn.Linear(d, 2) if nsp else None,
        classifier=nn.Linear(d, classifier.classes) if classifier else None,
        class_pool=classifier.pool if classifier else "last",
        score=nn.Linear(d, 1) if scalar else None,
        score_pool=scalar.pool if scalar else "last",
        tie_embeddings=arch.tie_embeddings,
        tied_head_scale=arch.tied_head_scale,
        pad_id=arch.pad_id,
        decoder_start_id=arch.decoder_start_id,
    )


@torch.no_grad()
def init_weights(model: Transformer, std: float = 0.02) -> None:
    """GPT-2 initialisation: every matrix normal(0, std), biases zero, norms scaling by one (a
    weight of 1 - norm_offset); the
    projections that write into the residual stream get std / sqrt(2 * layers) so the
    stream's variance does not grow with depth."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.normal_(0.0, std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.zero_()
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            if module.weight is not None:
                module.weight.fill_(norm_init(module))
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    for stack in (model.encoder, model.decoder):
        if stack is None:
            continue
        residual_std = std / math.sqrt(2 * len(stack.layers))
        for block in stack.layers:
            block.attn.o_proj.weight.normal_(0.0, residual_std)
            for mlp in block.mlp.modules():  # a mixture of experts has one down_proj per expert
                if isinstance(mlp, FeedForward):
                    mlp.down_proj.weight.normal_(0.0, residual_std)
            if block.cross_attn is not None:
                block.cross_attn.o_proj.weight.normal_(0.0, residual_std)

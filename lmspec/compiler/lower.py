"""Lowering: a validated `ModelSpec` -> `ArchConfig`, every default applied.

Defaults that depend on other keys live here, in one place:
kv_heads = heads; head_dim = d_model / heads; d_ff = 4 * d_model; attention
causal for decoders, bidirectional for encoders (and causal for the decoder of
an encoder-decoder); final_norm for pre-norm and sandwich stacks; head lm (mlm for
encoders). Per-layer overrides apply in order, later ones winning.
"""

from __future__ import annotations

from dataclasses import replace

from lmspec.compiler import schema as S
from lmspec.compiler.arch import (
    GATED_ACTIVATIONS, ArchConfig, AttentionConfig, HeadConfig, LayerConfig, MoEConfig, PositionConfig, RopeScaling,
    StackConfig,
)

__all__ = ["lower_model", "attention_config", "position_config", "head_configs"]


def attention_config(spec, scale: str | float, softcap: float | None = None) -> AttentionConfig:
    scale = scale if isinstance(scale, str) else float(scale)
    return AttentionConfig(kind=spec.kind, window=getattr(spec, "window", None), scale=scale,
                           softcap=None if softcap is None else float(softcap))


def position_config(spec) -> PositionConfig:
    scaling = rope_scaling(getattr(spec, "scaling", None))
    return PositionConfig(
        kind=spec.kind,
        theta=float(getattr(spec, "theta", 10_000.0)),
        buckets=getattr(spec, "buckets", 32),
        max_distance=getattr(spec, "max_distance", 128),
        fraction=float(getattr(spec, "fraction", 1.0)),
        layout=getattr(spec, "layout", "half"),
        scaling=scaling,
    )


def rope_scaling(spec) -> RopeScaling | None:
    """The scaling variant as the architecture keeps it; each kind reads only its own fields and
    keeps the defaults for the rest (so one scaling has one ArchConfig, however it was written)."""
    if spec is None:
        return None
    if spec.kind == "linear":
        return RopeScaling("linear", float(spec.factor))
    if spec.kind == "llama3":
        return RopeScaling("llama3", float(spec.factor), float(spec.low_freq), float(spec.high_freq),
                           spec.original_context)
    if spec.kind == "yarn":
        return RopeScaling("yarn", float(spec.factor), original_context=spec.original_context,
                           beta_fast=float(spec.beta_fast), beta_slow=float(spec.beta_slow), truncate=spec.truncate,
                           mscale=_optional_float(spec.mscale), mscale_all_dim=_optional_float(spec.mscale_all_dim),
                           attention_factor=_optional_float(spec.attention_factor))
    return RopeScaling("longrope", float(spec.factor), original_context=spec.original_context,
                       attention_factor=_optional_float(spec.attention_factor),
                       short_factor=tuple(float(f) for f in spec.short_factor),
                       long_factor=tuple(float(f) for f in spec.long_factor))


def _optional_float(x) -> float | None:
    return None if x is None else float(x)


def moe_config(spec) -> MoEConfig | None:
    if spec.kind == "dense":
        return None
    return MoEConfig(spec.experts, spec.top_k, spec.shared_experts, float(spec.router_jitter), float(spec.aux_loss))


def head_configs(heads: list | None, arch: str) -> tuple[HeadConfig, ...]:
    if heads is None:
        return (HeadConfig("mlm"),) if arch == "encoder" else (HeadConfig("lm"),)
    out = []
    for h in heads:
        if h.kind == "none":
            continue
        if h.kind == "mlm":
            out.append(HeadConfig("mlm", transform=h.transform))
        elif h.kind == "classifier":
            out.append(HeadConfig("classifier", classes=h.classes, pool=h.pool))
        elif h.kind == "scalar":
            out.append(HeadConfig("scalar", pool=h.pool))
        elif h.kind == "lm":
            out.append(HeadConfig("lm", bias=h.bias, softcap=None if h.softcap is None else float(h.softcap)))
        else:
            out.append(HeadConfig(h.kind))
    return tuple(out)


def _stack(spec: S.ModelSpec, stack: S.StackSpec | None, n_layers: int, default_attention, cross: bool,
           overrides: list[S.LayerOverrideSpec]) -> StackConfig:
    """One stack: the model's keys, then the stack block's, then each layer's overrides."""
    def pick(key, fallback=None):
        v = getattr(stack, key, None) if stack is not None else None
        if v is None:
            v = getattr(spec, key, None)
        return fallback if v is None else v

    base = dict(
        d_model=spec.d_model,
        heads=pick("heads"),
        kv_heads=pick("kv_heads"),
        head_dim=pick("head_dim"),
        d_ff=pick("d_ff", 4 * spec.d_model),
        # the decoder of an encoder-decoder does not inherit the model-level attention
        attention=(stack.attention if stack is not None and stack.attention is not None
                   else default_attention if cross else spec.attention or default_attention),
        position=pick("position"),
        norm=pick("norm"),
        activation=pick("activation"),
        bias=pick("bias"),
        qkv_bias=pick("qkv_bias"),
        out_bias=pick("out_bias"),
        mlp_bias=pick("mlp_bias"),
        qk_norm=pick("qk_norm"),
        attention_softcap=pick("attention_softcap"),
        dropout=pick("dropout"),
    )
    layers = []
    for i in range(n_layers):
        fields = dict(base)
        for o in overrides:
            if o.covers(i):
                fields.update({k: v for k in S.LayerFields.model_fields if (v := getattr(o, k)) is not None})
        h = fields["heads"]
        layers.append(LayerConfig(
            d_model=spec.d_model,
            heads=h,
            kv_heads=fields["kv_heads"] or h,
            head_dim=fields["head_dim"] or max(1, spec.d_model // h),
            d_ff=fields["d_ff"],
            attention=attention_config(fields["attention"], spec.attention_scale, fields["attention_softcap"]),
            position=position_config(fields["position"]),
            norm=fields["norm"],
            norm_eps=spec.norm_eps,
            norm_bias=spec.norm_bias,
            norm_offset=float(spec.norm_offset),
            placement=spec.placement,
            activation=fields["activation"],
            bias=fields["bias"],
            qkv_bias=fields["qkv_bias"],
            out_bias=fields["out_bias"],
            mlp_bias=fields["mlp_bias"],
            qk_norm=fields["qk_norm"],
            dropout=fields["dropout"],
            cross_attention=cross,
            parallel=spec.residual.kind == "parallel",
            shared_norm=spec.residual.kind == "parallel" and spec.residual.norms == 1,
            moe=moe_config(spec.mlp),
        ))
    final_norm = spec.final_norm if spec.final_norm is not None else spec.placement in ("pre", "sandwich")
    return StackConfig(tuple(layers), final_norm=final_norm)


def _embedding_of(block: S.StackSpec, stack: StackConfig) -> StackConfig:
    """A stack block's own embedding parts: `position: learned` there is its own position table,
    `embed_norm: true` its own norm (else the stack reads the model's, shared by both stacks)."""
    own_positions = block.position is not None and block.position.kind == "learned"
    return replace(stack, own_positions=own_positions, own_embed_norm=bool(block.embed_norm))


def lower_model(name: str, spec: S.ModelSpec, head_override: list | None = None) -> ArchConfig:
    """The ArchConfig of a model block. Assumes `compiler.rules` found no errors in it."""
    causal, bidirectional = S.Causal(), S.Bidirectional()
    encoder = decoder = None
    if spec.arch == "decoder":
        decoder = _stack(spec, None, spec.layers or 1, causal, False, spec.layer)
    elif spec.arch == "encoder":
        encoder = _stack(spec, None, spec.layers or 1, bidirectional, False, spec.layer)
    else:  # each stack has its own layers and overrides (the model-level ones are LMS095, LMS048)
        enc, dec = spec.encoder, spec.decoder
        encoder = _embedding_of(enc, _stack(spec, enc, enc.layers, bidirectional, False, enc.layer))
        # the decoder of an encoder-decoder is causal unless its own block says otherwise
        decoder = _embedding_of(dec, _stack(spec, dec, dec.layers, causal, True, dec.layer))
    heads = head_configs(head_override if head_override is not None else spec.head, spec.arch)
    return ArchConfig(
        name=name,
        arch=spec.arch,
        vocab=spec.vocab,
        context=spec.context,
        d_model=spec.d_model,
        position=position_config(spec.position),
        encoder=encoder,
        decoder=decoder,
        heads=heads,
        tie_embeddings=spec.tie_embeddings,
        segments=spec.segments,
        pooler=spec.pooler,
        embed_norm=spec.embed_norm,
        embed_scale=spec.embed_scale,
        position_offset=spec.position_offset,
        tied_head_scale=spec.head_scale,
        norm=spec.norm,
        norm_eps=spec.norm_eps,
        norm_bias=spec.norm_bias,
        norm_offset=float(spec.norm_offset),
        activation=spec.activation if spec.activation not in GATED_ACTIVATIONS else "gelu",  # for head transforms
        dropout=spec.dropout,
        pad_id=spec.pad_id,
        mask_id=spec.mask_id,
        decoder_start_id=spec.decoder_start_id,
    )

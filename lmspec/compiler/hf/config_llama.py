"""The config.json builders of the Llama-shaped decoders: RMSNorm, a gated MLP and RoPE.
`_llama` reads Llama, Mistral, Mixtral (a sparse MLP), Qwen2, Qwen3, Gemma and Phi-3, each
Llama with a twist; `_gemma2` reads Gemma 2 and Gemma 3 (text), whose sandwich norms, score
scaling and per-layer windows (and, for Gemma 3, per-layer RoPE) set them apart. config.py
maps each model_type to its builder.
"""

from __future__ import annotations

from collections.abc import Collection

from ..arch import (
    Activation,
    ArchConfig,
    AttentionConfig,
    HeadConfig,
    LayerConfig,
    MoEConfig,
    PositionConfig,
)
from .config_common import _PLAIN_ACTIVATIONS, _Config, _activation, _decoder_arch, _lm_heads, _one_dropout, _rope
from .errors import HFImportError


# an ungated activation -> the gated lmspec activation that applies it to the gate: act(gate) * up
_GATED: dict[Activation, Activation] = {"silu": "swiglu", "gelu": "geglu", "gelu_tanh": "geglu_tanh", "relu": "reglu"}


def _gemma_activation(cfg: _Config) -> Activation:
    """Gemma's gated MLP activation. transformers 5 applies hidden_act and reads its legacy "gelu"
    (the first releases' value) as the tanh approximation; transformers 4 applied
    hidden_activation instead (the tanh approximation when unset), so a config whose two fields
    disagree computes differently in the two, and is refused."""
    act = cfg.get("hidden_act", "gelu_pytorch_tanh")
    if act not in _PLAIN_ACTIVATIONS:
        raise HFImportError(f"gemma config.json sets hidden_act={act!r}, which has no lmspec activation "
                            f"(supported: {', '.join(_PLAIN_ACTIVATIONS)})")
    ours = "gelu_tanh" if act == "gelu" else _PLAIN_ACTIVATIONS[act]
    legacy = cfg.get("hidden_activation")
    if legacy is not None and _PLAIN_ACTIVATIONS.get(legacy) != ours:
        raise HFImportError(f"gemma config.json sets hidden_act={act!r} and hidden_activation={legacy!r}: "
                            "transformers 5 applies the first, transformers 4 the second; make them agree")
    return _GATED[ours]


def _attentions(cfg: _Config, n_layers: int) -> list[AttentionConfig]:
    """Each layer's attention. Mistral slides one window over every layer; Qwen2 and Qwen3 slide
    it over the layers `layer_types` marks "sliding_attention" (from max_window_layers on), and
    only when use_sliding_window is set; Llama never slides. Phi-3, as Mistral, slides over every
    layer when sliding_window is set (Phi-3-mini: 2047 positions, the query's own included)."""
    window = cfg.get("sliding_window")
    if cfg.model_type in ("mistral", "mixtral", "phi3"):
        kinds = ["sliding_attention" if window else "full_attention"] * n_layers
    elif cfg.model_type in ("qwen2", "qwen3"):
        window = window if cfg.get("use_sliding_window", False) else None
        first = int(cfg.get("max_window_layers", n_layers))
        kinds = cfg.get("layer_types") or [
            "sliding_attention" if i >= first else "full_attention" for i in range(n_layers)
        ]
        unknown = sorted(set(kinds) - {"full_attention", "sliding_attention"})
        if unknown or len(kinds) != n_layers:
            raise HFImportError(
                f"{cfg.model_type} config.json sets layer_types={kinds!r}: lmspec reads one of full_attention "
                f"and sliding_attention per layer ({n_layers} layers)"
            )
    else:
        kinds = ["full_attention"] * n_layers
    # A window that covers the whole context slides over nothing: every position already sees
    # all the positions before it, so the layer is plain causal (same logits), and `check`
    # rejects a window longer than the context (LMS063).
    if window and int(window) >= int(cfg["max_position_embeddings"]):
        window = None
    sliding = AttentionConfig("sliding", window=int(window)) if window else AttentionConfig("causal")
    return [sliding if kind == "sliding_attention" else AttentionConfig("causal") for kind in kinds]


def _llama(cfg: _Config, name: str, cls: str, tensor_names: Collection[str] | None) -> ArchConfig:
    """Llama, and the families that are Llama with a twist: Mistral (a sliding window on every
    layer, no biases), Qwen2 (biases on q, k and v only; sliding windows per layer), Qwen3
    (as Qwen2 but with an RMSNorm over each query and key head before RoPE, and attention_bias)
    and Gemma (embeddings times sqrt(hidden_size), a gated tanh-GELU MLP, head_dim 256 by default,
    a tied head, and RMSNorms of x * (1 + w): norm_offset 1, the weights loaded as they are). Phi-3 is
    Mistral with q, k, v fused and gate, up fused (the loader splits them), RoPE over
    partial_rotary_factor of each head, and one dropout rate for everything."""
    if cfg.model_type == "gemma":
        cfg.require("use_bidirectional_attention", {False}, False, "lmspec's Gemma decoder is causal")
        activation = _gemma_activation(cfg)
    elif cfg.model_type == "phi3":  # up * act(gate), whatever act is
        activation = _GATED[_activation(cfg, "hidden_act", "silu")]
    else:
        hidden_act = cfg.get("hidden_act", "silu")
        if hidden_act not in ("silu", "swish"):
            raise HFImportError(
                f"{cfg.model_type} config.json sets hidden_act={hidden_act!r}; lmspec maps only silu (-> swiglu)"
            )
        activation = "swiglu"
    if cfg.model_type == "qwen2":  # fixed by the family: q, k and v have biases, o and the MLP none
        biases = dict(bias=False, qkv_bias=True)
    elif cfg.model_type in ("mistral", "mixtral", "phi3"):
        biases = dict(bias=False)
    elif cfg.model_type in ("qwen3", "gemma"):  # attention_bias: q, k, v and o; the MLP has none
        biases = dict(bias=bool(cfg.get("attention_bias", False)), mlp_bias=False)
    else:  # attention_bias: q, k, v and o; mlp_bias: the three MLP projections
        biases = dict(bias=bool(cfg.get("attention_bias", False)), mlp_bias=bool(cfg.get("mlp_bias", False)))
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    n_layers = cfg["num_hidden_layers"]
    # Qwen3Config's and GemmaConfig's own defaults (their head_dim is free of hidden_size / heads)
    head_dim = cfg.get("head_dim") or {"qwen3": 128, "gemma": 256}.get(cfg.model_type, d // heads)
    position = _rope(cfg, head_dim)
    eps = float(cfg.get("rms_norm_eps", 1e-5 if cfg.model_type == "phi3" else 1e-6))
    dropout = float(cfg.get("attention_dropout", 0.0))
    if cfg.model_type == "phi3":
        _one_dropout(cfg, ("attention_dropout", "resid_pdrop", "embd_pdrop"))
    layers = tuple(
        LayerConfig(
            d_model=d,
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads", heads),
            head_dim=head_dim,
            d_ff=cfg["intermediate_size"],
            attention=attention,
            position=position,
            norm="rmsnorm",
            norm_eps=eps,
            norm_offset=1.0 if cfg.model_type == "gemma" else 0.0,
            placement="pre",
            activation=activation,
            qk_norm=cfg.model_type == "qwen3",
            dropout=dropout,
            moe=_moe(cfg),
            **biases,
        )
        for attention in _attentions(cfg, n_layers)
    )
    return _decoder_arch(cfg, name, layers, context=cfg["max_position_embeddings"], position=position,
                         heads=_lm_heads(cls), tied_by_default=cfg.model_type == "gemma",
                         # Gemma's normalizer is sqrt(hidden_size) as a float32 tensor (then the weights'
                         # dtype): in float32 that is this float rounded once, as lmspec's product rounds it
                         embed_scale=d**0.5 if cfg.model_type == "gemma" else 1.0)


def _moe(cfg: _Config) -> MoEConfig | None:
    """Mixtral's sparse MLP: num_local_experts SwiGLU experts of intermediate_size, the top
    num_experts_per_tok renormalised. transformers adds router_aux_loss_coef x its load-balancing
    loss only when output_router_logits is set: aux_loss is that coefficient then, else 0."""
    if cfg.model_type != "mixtral":
        return None
    experts, top_k = int(cfg["num_local_experts"]), int(cfg["num_experts_per_tok"])
    if not 1 <= top_k <= experts or experts < 2:
        raise HFImportError(f"mixtral config.json sets num_local_experts={experts}, num_experts_per_tok={top_k}: "
                            "lmspec needs at least 2 experts and 1 <= num_experts_per_tok <= num_local_experts")
    coefficient = float(cfg.get("router_aux_loss_coef", 0.001)) if cfg.get("output_router_logits", False) else 0.0
    return MoEConfig(experts, top_k, 0, float(cfg.get("router_jitter_noise", 0.0)), coefficient)


def _gemma2(cfg: _Config, name: str, cls: str, tensor_names: Collection[str] | None) -> ArchConfig:
    """Gemma 2 and Gemma 3 (text), as transformers 5 computes them: Gemma's (1 + w) RMSNorms,
    embeddings times sqrt(hidden_size) and gated MLP (hidden_activation, tanh GELU by default), with
    a norm before and after each sublayer (sandwich), scores scaled by query_pre_attn_scalar**-0.5,
    and sliding windows on the layers `layer_types` marks (by default Gemma 2's every other layer
    from the first, Gemma 3's five of every sliding_window_pattern = 6). Gemma 2 caps the scores
    (attn_logit_softcapping) and the logits (final_logit_softcapping); Gemma 3 norms each query
    and key head (qk_norm) and gives its sliding layers RoPE of their own base
    (rope_local_base_freq, 10k) while the global ones read rope_theta (1M) and its scaling."""
    gemma3 = cfg.model_type == "gemma3_text"
    cfg.require("use_bidirectional_attention", {False}, False, "lmspec's Gemma decoder is causal")
    if gemma3 and cfg.get("attn_logit_softcapping") is not None:
        raise HFImportError(f"gemma3_text config.json sets attn_logit_softcapping="
                            f"{cfg.get('attn_logit_softcapping')!r}, which transformers' Gemma-3 attention never "
                            "applies and lmspec's would; set it to null to import the model transformers computes")
    activation = _GATED[_activation(cfg, "hidden_activation", "gelu_pytorch_tanh")]
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    n_layers = cfg["num_hidden_layers"]
    head_dim = int(cfg.get("head_dim", 256))
    scalar = cfg.get("query_pre_attn_scalar", 256)
    scale: str | float = "inverse_sqrt" if scalar == head_dim else float(scalar) ** -0.5
    # an absent cap is the config class's default, a null one no cap: read the raw file
    softcap = None if gemma3 else cfg.raw.get("attn_logit_softcapping", 50.0)
    softcap = None if softcap is None else float(softcap)
    # Gemma3TextConfig reads sliding_window_pattern (6); Gemma2Config slides every other layer, fixed
    pattern = int(cfg.get("sliding_window_pattern", 6)) if gemma3 else 2
    kinds = cfg.get("layer_types") or [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
    if sorted(set(kinds) - {"full_attention", "sliding_attention"}) or len(kinds) != n_layers:
        raise HFImportError(f"{cfg.model_type} config.json sets layer_types={kinds!r}: lmspec reads one of "
                            f"full_attention and sliding_attention per layer ({n_layers} layers)")
    window = cfg.raw.get("sliding_window", 4096)
    if window is None and "sliding_attention" in kinds:
        raise HFImportError(f"{cfg.model_type} config.json sets sliding_window=None while layer_types marks "
                            "sliding_attention layers, which transformers cannot build; give the window")
    # a window that covers the whole context slides over nothing (see `_attentions`)
    sliding = (AttentionConfig("sliding", window=int(window), scale=scale, softcap=softcap)
               if window and int(window) < int(cfg["max_position_embeddings"])
               else AttentionConfig("causal", scale=scale, softcap=softcap))
    attention = {"sliding_attention": sliding,
                 "full_attention": AttentionConfig("causal", scale=scale, softcap=softcap)}
    position = _gemma_ropes(cfg, head_dim) if gemma3 else dict.fromkeys(attention, _rope(cfg, head_dim))
    biases = dict(bias=bool(cfg.get("attention_bias", False)), mlp_bias=False)  # q, k, v and o; the MLP has none
    layers = tuple(
        LayerConfig(
            d_model=d,
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads", heads),
            head_dim=head_dim,
            d_ff=cfg["intermediate_size"],
            attention=attention[kind],
            position=position[kind],
            norm="rmsnorm",
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            norm_offset=1.0,
            placement="sandwich",
            activation=activation,
            qk_norm=gemma3,
            dropout=float(cfg.get("attention_dropout", 0.0)),
            **biases,
        )
        for kind in kinds
    )
    final = cfg.raw.get("final_logit_softcapping", None if gemma3 else 30.0)
    lm_heads = tuple(HeadConfig("lm", softcap=None if final is None else float(final)) for _ in _lm_heads(cls))
    positions = [layer.position for layer in layers]
    return _decoder_arch(cfg, name, layers, context=cfg["max_position_embeddings"],
                         # the model-level position is the one most layers read (the first on a tie),
                         # as the spec writer states it; the others are layer overrides
                         position=max(dict.fromkeys(positions), key=positions.count),
                         heads=lm_heads, tied_by_default=True, embed_scale=d**0.5)


def _gemma_ropes(cfg: _Config, head_dim: int) -> dict[str, PositionConfig]:
    """Gemma 3's two RoPEs, by layer type. transformers 5 writes rope_parameters={"sliding_attention":
    {...}, "full_attention": {...}}; 4.x wrote rope_local_base_freq (the sliding layers', no scaling)
    and rope_theta with rope_scaling (the global layers')."""
    params = cfg.get("rope_parameters") or {}
    if params and not all(isinstance(params.get(kind), dict) for kind in ("sliding_attention", "full_attention")):
        raise HFImportError(f"gemma3_text config.json sets rope_parameters={params!r}: Gemma-3 reads one for "
                            "sliding_attention and one for full_attention")
    if not params:
        params = {"sliding_attention": {"rope_type": "default",
                                        "rope_theta": float(cfg.get("rope_local_base_freq", 10_000.0))},
                  "full_attention": {"rope_type": "default", **(cfg.get("rope_scaling") or {}),
                                     "rope_theta": float(cfg.get("rope_theta", 1_000_000.0))}}
    defaults = {"sliding_attention": 10_000.0, "full_attention": 1_000_000.0}  # Gemma3TextConfig.default_theta
    return {kind: _rope(_Config({**cfg.raw, "rope_parameters": {"rope_theta": defaults[kind], **params[kind]}}),
                        head_dim)
            for kind in defaults}

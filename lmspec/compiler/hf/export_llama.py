"""The Llama-shaped families as the export reads them (RMSNorm, pre-norm, sequential, RoPE):
Llama, Mistral, Qwen2, Qwen3, Phi-3 and Mixtral, what each fixes beyond Llama in `_LLAMA_LIKE`
and one function for all of them; Gemma and Gemma 2, with their own function.
"""

from __future__ import annotations

import dataclasses

from ..arch import ArchConfig, MoEConfig
from .export_common import (
    _DENSE,
    _FULL_ROPE,
    _HALF_ROPE,
    _HEAD_DIM,
    _NO_LONGROPE,
    _NO_QK_NORM,
    _PHI3_ROPE,
    _PRE,
    _RMSNORM,
    _ROPE,
    _SCALED,
    _SEQUENTIAL,
    _SWIGLU,
    _Fit,
    _Need,
    _no_biases,
    _rope_fields,
)
from .spec import _float


# the llama-shaped families (RMSNorm, pre, sequential, RoPE): what each fixes beyond that
_CAUSAL_ONLY = _Need("attention", lambda L: L.attention.kind == "causal", "causal (sliding windows: mistral)")
_WINDOWED = _Need("attention", lambda L: L.attention.kind in ("causal", "sliding"),
                  "causal, or one sliding(window) on every layer")
_LLAMA_LIKE: dict[str, tuple[_Need, ...]] = {
    "llama": (_CAUSAL_ONLY, _Need("bias", lambda L: L.biased("qkv") == L.biased("out"),
                                  "one attention_bias for q, k, v and o, and mlp_bias"),
              _NO_QK_NORM, _SWIGLU, _FULL_ROPE, _DENSE, _NO_LONGROPE),
    "mistral": (_Need("attention", lambda L: L.attention.kind == "sliding", "one sliding(window) on every layer"),
                _no_biases("no biases"), _NO_QK_NORM, _SWIGLU, _FULL_ROPE, _DENSE, _NO_LONGROPE),
    "qwen2": (_CAUSAL_ONLY,
              _Need("bias", lambda L: (L.biased("qkv"), L.biased("out"), L.biased("mlp")) == (True, False, False),
                    "biases on q, k and v only: bias: false, qkv_bias: true"),
              _NO_QK_NORM, _SWIGLU, _FULL_ROPE, _DENSE, _NO_LONGROPE),
    "qwen3": (_CAUSAL_ONLY, _Need("bias", lambda L: L.biased("qkv") == L.biased("out") and not L.biased("mlp"),
                                  "one attention_bias for q, k, v and o, and no MLP biases"),
              _Need("qk_norm", lambda L: L.qk_norm, "an RMSNorm over each query and key head: qk_norm: true"),
              _SWIGLU, _FULL_ROPE, _DENSE, _NO_LONGROPE),
    # Phi-3: any gated activation (up * act(gate)), RoPE over part of each head, head_dim = d_model / heads
    "phi3": (_WINDOWED, _no_biases("no biases"), _NO_QK_NORM,
             _Need("activation", lambda L: L.activation in _UNGATED, "a gated one: swiglu, geglu, geglu_tanh or reglu"),
             _HALF_ROPE, _DENSE, _HEAD_DIM, _PHI3_ROPE),
    "mixtral": (_WINDOWED, _no_biases("no biases"), _NO_QK_NORM, _SWIGLU, _FULL_ROPE, _NO_LONGROPE,
                _Need("mlp", lambda L: L.moe is not None and L.moe.experts >= 2,
                      "moe(experts, top_k) on every layer, of 2 experts or more"),
                _Need("shared_experts", lambda L: L.moe is None or L.moe.shared_experts == 0,
                      "no expert every token runs through: its mixture of experts (mlp: moe(...)) has "
                      "shared_experts: 0")),
}
_WINDOW_FAMILIES = ("mistral", "phi3", "mixtral")

# a gated lmspec activation -> the HF activation it applies to the gate (the inverse of config_llama._GATED)
_UNGATED = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_new", "reglu": "relu"}


def _llama(arch: ArchConfig, family: str = "llama") -> _Fit:
    """Llama and the families that are Llama with a twist (`_LLAMA_LIKE` says which)."""
    fit = _Fit(arch, family)
    fit.needs(*_LLAMA_LIKE[family])
    L = fit.one("heads", "kv_heads", "head_dim", "d_ff", "dropout", "norm_eps", "position", "bias", "attention", "mlp")
    sliding = L.attention.kind == "sliding"
    if family in _WINDOW_FAMILIES and sliding:
        window = L.attention.window or 0
        fit.model("attention", f"sliding(window: {window})", window < arch.context,
                  f"a window shorter than the context ({arch.context}); a longer one slides over nothing")
    fit.needs(_SCALED, _ROPE, _RMSNORM, _PRE, _SEQUENTIAL)
    fit.position(L)
    fit.common(final_norm=True, embed_norm=False, segments=False, pooler=False)
    fit.heads()
    fit.config = {
        "model_type": family,
        "vocab_size": arch.vocab,
        "hidden_size": arch.d_model,
        "intermediate_size": L.d_ff,
        "num_hidden_layers": arch.decoder.n_layers,
        "num_attention_heads": L.heads,
        "num_key_value_heads": L.kv_heads,
        "head_dim": L.head_dim,
        "max_position_embeddings": arch.context,
        "rms_norm_eps": L.norm_eps,
        "hidden_act": _UNGATED.get(L.activation, "silu"),
        "attention_dropout": L.dropout,
        "tie_word_embeddings": fit.tied,
        **_rope_fields(L.position, partial=family == "phi3"),
    }
    if family in _WINDOW_FAMILIES:
        fit.config["sliding_window"] = L.attention.window if sliding else None
    if family == "phi3":  # one dropout rate; head_dim is hidden_size / heads, not a field
        del fit.config["head_dim"]
        fit.config.update(resid_pdrop=L.dropout, embd_pdrop=L.dropout)
    elif family == "mixtral":
        moe = L.moe or MoEConfig()
        # transformers adds router_aux_loss_coef x its load-balancing loss only with output_router_logits
        fit.config.update(num_local_experts=moe.experts, num_experts_per_tok=moe.top_k,
                          router_jitter_noise=moe.router_jitter, output_router_logits=moe.aux_loss > 0,
                          router_aux_loss_coef=moe.aux_loss if moe.aux_loss > 0 else 0.001)
    elif family in ("qwen2", "qwen3"):  # qwen2: q, k, v biased, o and the MLP not, fixed by the family
        fit.config.update(use_sliding_window=False, sliding_window=None, max_window_layers=arch.decoder.n_layers,
                          layer_types=["full_attention"] * arch.decoder.n_layers)
        if family == "qwen3":
            fit.config["attention_bias"] = L.biased("qkv")
    elif family == "llama":
        fit.config.update(attention_bias=L.biased("qkv"), mlp_bias=L.biased("mlp"))
    return fit


# Gemma (1, 2): RMSNorms of (1 + w), embeddings times sqrt(d_model), a gated MLP, a tied head by
# default; Gemma 2 adds sandwich norms, a free attention scale, soft caps and alternating windows
_GEMMA_ACTIVATIONS = {"geglu_tanh": "gelu_pytorch_tanh", "swiglu": "silu", "reglu": "relu"}
_GEMMA: tuple[_Need, ...] = (
    _Need("bias", lambda L: L.biased("qkv") == L.biased("out") and not L.biased("mlp"),
          "one attention_bias for q, k, v and o, and no MLP biases"),
    _NO_QK_NORM, _FULL_ROPE, _DENSE, _NO_LONGROPE, _ROPE, _RMSNORM, _SEQUENTIAL)


def _gemma(arch: ArchConfig, family: str = "gemma") -> _Fit:
    """Gemma and Gemma 2. Their norms' offset, embedding scale and soft caps are what `common`
    refuses for every other family: checked here instead."""
    fit = _Fit(arch, family)
    two = family == "gemma2"
    fit.needs(*_GEMMA)
    if two:  # Gemma 2 applies hidden_activation as it is: the exact gelu too
        fit.needs(_Need("activation", lambda L: L.activation in _GATED_HF,
                        "a gated one: geglu_tanh, geglu, swiglu or reglu"),
                  _Need("placement", lambda L: L.placement == "sandwich", "sandwich"),
                  _Need("attention", lambda L: L.attention.kind in ("causal", "sliding"),
                        "causal, or sliding(window) on the layers layer_types names"))
    else:  # transformers 5 reads Gemma's hidden_act "gelu" as the tanh approximation: no exact gelu
        fit.needs(_Need("activation", lambda L: L.activation in _GEMMA_ACTIVATIONS,
                        "geglu_tanh, swiglu or reglu (its legacy hidden_act gelu means the tanh approximation)"),
                  _SCALED, _PRE, _CAUSAL_ONLY)
    L = fit.one("heads", "kv_heads", "head_dim", "d_ff", "dropout", "norm_eps", "position", "bias", "mlp",
                "attention_scale")
    windows = {layer.attention.window for layer in arch.decoder.layers if layer.attention.kind == "sliding"}
    if len(windows) > 1:
        fit.gap("attention", f"attention: windows of {sorted(windows)} ({family} has one sliding_window)")
    window = min(windows, default=None)
    if window is not None:
        fit.model("attention", f"sliding(window: {window})", window < arch.context,
                  f"a window shorter than the context ({arch.context}); a longer one slides over nothing")
    fit.position(L)
    fit.common(final_norm=True, embed_norm=False, segments=False, pooler=False)
    for key in ("embed_scale", "norm_offset", "softcap"):  # Gemma's own: checked below
        fit.gaps.pop(key, None)
    fit.model("embed_scale", _float(arch.embed_scale), arch.embed_scale == arch.d_model**0.5,
              f"sqrt(d_model) = {_float(arch.d_model**0.5)}")
    fit.model("norm_offset", _float(arch.norm_offset), arch.norm_offset == 1, "norms scaling by 1 + weight: 1")
    caps = {layer.attention.softcap for layer in arch.decoder.layers}
    lm = arch.head("lm")
    if not two:
        fit.model("softcap", "/".join(sorted(_float(c) for c in caps | {lm and lm.softcap} if c)),
                  caps | {lm and lm.softcap} <= {None}, "no soft caps (gemma2 has them)")
    elif len(caps) > 1:
        fit.gap("attention_softcap", f"attention_softcap differs between layers ({family} has one "
                                     "attn_logit_softcapping)")
    # the heads as the family spells them, the logits' cap aside (final_logit_softcapping)
    plain = _Fit(dataclasses.replace(arch, heads=tuple(dataclasses.replace(h, softcap=None) for h in arch.heads)),
                 family)
    plain.heads()
    fit.cls = plain.cls
    for key, text in plain.gaps.items():
        fit.gap(key, text)
    fit.config = {
        "model_type": family,
        "vocab_size": arch.vocab,
        "hidden_size": arch.d_model,
        "intermediate_size": L.d_ff,
        "num_hidden_layers": arch.decoder.n_layers,
        "num_attention_heads": L.heads,
        "num_key_value_heads": L.kv_heads,
        "head_dim": L.head_dim,
        "max_position_embeddings": arch.context,
        "rms_norm_eps": L.norm_eps,
        "attention_bias": L.biased("qkv"),
        "attention_dropout": L.dropout,
        "tie_word_embeddings": fit.tied,
        **_rope_fields(L.position),
    }
    if not two:
        act = _GEMMA_ACTIVATIONS.get(L.activation, "gelu_pytorch_tanh")
        fit.config.update(hidden_act=act, hidden_activation=act)  # transformers 5 reads the first, 4 the second
        return fit
    scale = L.attention.scale
    fit.model("attention_scale", str(scale), scale != "none", "query_pre_attn_scalar ** -0.5")
    # the scale is query_pre_attn_scalar ** -0.5: a whole scalar where one gives the scale back exactly
    scalar: float = L.head_dim if isinstance(scale, str) else float(scale) ** -2
    if not isinstance(scale, str) and float(round(scalar)) ** -0.5 == scale:
        scalar = round(scalar)
    fit.config.update(
        hidden_activation=_GATED_HF.get(L.activation, "gelu_pytorch_tanh"),
        query_pre_attn_scalar=scalar,
        attn_logit_softcapping=next(iter(caps)),
        final_logit_softcapping=lm.softcap if lm else None,
        sliding_window=window if window is not None else arch.context,
        layer_types=["sliding_attention" if layer.attention.kind == "sliding" else "full_attention"
                     for layer in arch.decoder.layers],
    )
    return fit


# a gated lmspec activation -> the hidden_activation Gemma 2 applies to the gate
_GATED_HF = {"geglu_tanh": "gelu_pytorch_tanh", "geglu": "gelu", "swiglu": "silu", "reglu": "relu"}

"""The GPT-shaped families as the export reads them: GPT-2 and OPT (learned positions), GPT-NeoX,
GPT-J and Phi (RoPE with LayerNorms), Falcon, and BLOOM and MPT (ALiBi). For each, the `_Need`s
it fixes and one function that adds the model-level keys and writes its config.json.
"""

from __future__ import annotations

from ..arch import BIAS_PROJECTIONS, ArchConfig
from .export_common import (
    _BIASED,
    _CAUSAL,
    _DENSE,
    _HALF_ROPE,
    _HEAD_DIM,
    _HF_ACTIVATIONS,
    _LAYERNORM,
    _LEARNED,
    _NO_LONGROPE,
    _NO_QK_NORM,
    _ONE_KV,
    _PLAIN,
    _PRE,
    _ROPE,
    _SCALED,
    _SEQUENTIAL,
    _SHARED_NORM,
    _Fit,
    _Need,
    _no_biases,
    _rope_fields,
)
from .spec import _bool, _float


# the sequential families with learned positions, LayerNorms and biases
_GPT2 = (_CAUSAL, _SCALED, _LEARNED, _LAYERNORM, _PRE, _SEQUENTIAL, _PLAIN, _BIASED, _NO_QK_NORM, _ONE_KV, _HEAD_DIM,
         _DENSE)
_OPT = (_CAUSAL, _SCALED, _LEARNED, _LAYERNORM,
        _Need("placement", lambda L: L.placement in ("pre", "post"), "pre or post (do_layer_norm_before)"),
        _SEQUENTIAL, _PLAIN,
        _Need("bias", lambda L: L.bias or not any(L.biased(p) for p in BIAS_PROJECTIONS),
              "biases on every projection or on none (enable_bias)"),
        _NO_QK_NORM, _ONE_KV, _HEAD_DIM, _DENSE,
        _Need("norm_eps", lambda L: L.norm_eps == 1e-5, "1e-5: nn.LayerNorm's default, not a config field"))
# the RoPE families with LayerNorms: GPT-NeoX (a norm per branch, or sequential), GPT-J and Phi (one shared norm)
_NEOX = (_CAUSAL, _SCALED, _ROPE, _LAYERNORM, _PRE, _PLAIN, _NO_QK_NORM, _ONE_KV, _HEAD_DIM, _DENSE, _HALF_ROPE,
         _NO_LONGROPE,
         _Need("residual", lambda L: not (L.parallel and L.shared_norm),
               "parallel(norms: 2) or sequential (use_parallel_residual); one shared norm is gptj's and phi's"),
         _Need("bias", lambda L: L.biased("mlp") and L.biased("qkv") == L.biased("out"),
               "biases on the MLP, and one attention_bias for q, k, v and o"))
_GPTJ = (_CAUSAL, _SCALED, _ROPE, _LAYERNORM, _PRE, _SHARED_NORM, _PLAIN, _NO_QK_NORM, _ONE_KV, _HEAD_DIM, _DENSE,
         _Need("position", lambda L: L.position.layout == "interleaved" and L.position.theta == 10_000
               and L.position.scaling is None, "rope(theta: 10_000, layout: interleaved), unscaled", label="rope"),
         _Need("bias", lambda L: (L.biased("qkv"), L.biased("out"), L.biased("mlp")) == (False, False, True),
               "biases on the MLP only: bias: false, mlp_bias: true"))
_PHI = (_CAUSAL, _SCALED, _ROPE, _LAYERNORM, _PRE, _SHARED_NORM, _PLAIN, _BIASED, _HEAD_DIM, _DENSE, _HALF_ROPE,
        _NO_LONGROPE)
# Falcon (RoPE) and BLOOM and MPT (ALiBi): the decoders with a LayerNorm before each branch and
# no position table; Falcon takes any layer shape its flags select, BLOOM and MPT fix nearly all
_ALIBI = _Need("position", lambda L: L.position.kind == "alibi", "alibi")
_FOUR_X = _Need("d_ff", lambda L: L.d_ff == 4 * L.d_model, "4 x d_model: its MLP's width is not a config field")
_NORM_BIAS = _Need("norm_bias", lambda L: L.norm_bias, "true: LayerNorms with a bias")
_FALCON = (_CAUSAL, _SCALED, _ROPE, _LAYERNORM, _PRE, _PLAIN, _NO_QK_NORM, _HEAD_DIM, _DENSE, _NORM_BIAS, _NO_LONGROPE,
           _Need("position", lambda L: L.position.fraction == 1 and L.position.layout == "half",
                 "rope over every dimension of a head, in the half layout (partial rotary: gpt_neox or phi)",
                 label="rope"),
           _Need("bias", lambda L: L.bias or not any(L.biased(p) for p in BIAS_PROJECTIONS),
                 "biases on every projection or on none (bias)"),
           # the old decoder: one kv head (multi_query) or one per head; grouped ones are the new decoder's
           _Need("kv_heads", lambda L: L.parallel or L.kv_heads in (1, L.heads),
                 "in a sequential layer one kv head (multi_query) or one per head; grouped kv heads are its new "
                 "decoder's, which is parallel"))
_BLOOM = (_CAUSAL, _SCALED, _ALIBI, _LAYERNORM, _PRE, _SEQUENTIAL, _BIASED, _NO_QK_NORM, _ONE_KV, _HEAD_DIM, _DENSE,
          _NORM_BIAS, _FOUR_X,
          _Need("activation", lambda L: L.activation == "gelu_tanh", "gelu_tanh (bloom_gelu)"))
_MPT = (_CAUSAL, _ALIBI, _LAYERNORM, _PRE, _SEQUENTIAL, _NO_QK_NORM, _ONE_KV, _HEAD_DIM, _DENSE, _FOUR_X,
        _Need("attention_scale", lambda L: L.attention.scale in ("inverse_sqrt", "none"),
              "inverse_sqrt, or none (softmax_scale 1)"),
        _Need("activation", lambda L: L.activation == "gelu", "gelu"),
        _no_biases("false: no biases anywhere (no_bias)"),
        # an RMSNorm has no bias to drop: its gap is the norm
        _Need("norm_bias", lambda L: not L.norm_bias or L.norm != "layernorm", "false: LayerNorms without a bias"))


def _gpt2(arch: ArchConfig) -> _Fit:
    fit = _Fit(arch, "gpt2")
    L = fit.one("heads", "d_ff", "activation", "dropout", "norm_eps")
    fit.needs(*_GPT2)
    fit.norm_bias()
    fit.position(L)
    fit.common(final_norm=True, embed_norm=False, segments=False, pooler=False)
    fit.heads()
    fit.config = {
        "model_type": "gpt2",
        "vocab_size": arch.vocab,
        "n_positions": arch.context,
        "n_embd": arch.d_model,
        "n_layer": arch.decoder.n_layers,
        "n_head": L.heads,
        "n_inner": L.d_ff,
        "activation_function": _HF_ACTIVATIONS.get(L.activation, "gelu_new"),
        "layer_norm_epsilon": L.norm_eps,
        "resid_pdrop": L.dropout,
        "embd_pdrop": arch.dropout,
        "attn_pdrop": L.dropout,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": fit.tied,
    }
    return fit


def _opt(arch: ArchConfig) -> _Fit:
    """OPT: GPT-2's decoder with learned positions from row 2, pre-norm with a final norm or
    post-norm without one."""
    fit = _Fit(arch, "opt")
    L = fit.one("heads", "d_ff", "activation", "dropout", "placement", "bias")
    fit.needs(*_OPT)
    fit.norm_bias()
    fit.position(L)
    pre = L.placement == "pre"
    fit.common(final_norm=pre, embed_norm=False, segments=False, pooler=False, offset=2)
    fit.heads()
    fit.config = {
        "model_type": "opt",
        "vocab_size": arch.vocab,
        "hidden_size": arch.d_model,
        "word_embed_proj_dim": arch.d_model,
        "num_hidden_layers": arch.decoder.n_layers,
        "num_attention_heads": L.heads,
        "ffn_dim": L.d_ff,
        "max_position_embeddings": arch.context,  # OPT's table has 2 more rows
        "activation_function": _HF_ACTIVATIONS.get(L.activation, "relu"),
        "do_layer_norm_before": pre,
        "_remove_final_layer_norm": False,
        "enable_bias": L.bias,
        "layer_norm_elementwise_affine": True,
        "layerdrop": 0.0,
        "dropout": L.dropout,
        "attention_dropout": L.dropout,
        "tie_word_embeddings": fit.tied,
    }
    return fit


def _gpt_neox(arch: ArchConfig) -> _Fit:
    """GPT-NeoX / Pythia: RoPE over part of each head, a LayerNorm per branch side by side
    (use_parallel_residual) or sequential, biases on the MLP."""
    fit = _Fit(arch, "gpt_neox")
    L = fit.one("heads", "d_ff", "activation", "dropout", "norm_eps", "position", "bias", "residual")
    fit.needs(*_NEOX)
    fit.norm_bias()
    fit.position(L)
    fit.common(final_norm=True, embed_norm=False, segments=False, pooler=False)
    fit.heads()
    fit.config = {
        "model_type": "gpt_neox",
        "vocab_size": arch.vocab,
        "hidden_size": arch.d_model,
        "num_hidden_layers": arch.decoder.n_layers,
        "num_attention_heads": L.heads,
        "intermediate_size": L.d_ff,
        "hidden_act": _HF_ACTIVATIONS.get(L.activation, "gelu"),
        "max_position_embeddings": arch.context,
        "layer_norm_eps": L.norm_eps,
        "use_parallel_residual": L.parallel,
        "attention_bias": L.biased("qkv"),
        "hidden_dropout": L.dropout,
        "attention_dropout": L.dropout,
        "tie_word_embeddings": fit.tied,
        # transformers 4 read rotary_pct and rotary_emb_base
        "rotary_pct": L.position.fraction,
        "rotary_emb_base": L.position.theta,
        **_rope_fields(L.position, partial=True),
    }
    return fit


def _gptj(arch: ArchConfig) -> _Fit:
    """GPT-J: one LayerNorm feeding attention and MLP side by side, RoPE over rotary_dim of each
    head in the interleaved layout, biases on the MLP and the LM head only."""
    fit = _Fit(arch, "gptj")
    L = fit.one("heads", "d_ff", "activation", "dropout", "norm_eps", "position")
    fit.needs(*_GPTJ)
    fit.norm_bias()
    fit.position(L)
    fit.common(final_norm=True, embed_norm=False, segments=False, pooler=False)
    fit.heads()
    fit.config = {
        "model_type": "gptj",
        "vocab_size": arch.vocab,
        "n_positions": arch.context,
        "n_embd": arch.d_model,
        "n_layer": arch.decoder.n_layers,
        "n_head": L.heads,
        "n_inner": L.d_ff,
        "rotary_dim": L.position.rotary_dims(L.head_dim),
        "activation_function": _HF_ACTIVATIONS.get(L.activation, "gelu_new"),
        "layer_norm_epsilon": L.norm_eps,
        "resid_pdrop": L.dropout,
        "embd_pdrop": L.dropout,
        "attn_pdrop": L.dropout,
        "tie_word_embeddings": fit.tied,
    }
    return fit


def _phi(arch: ArchConfig) -> _Fit:
    """Phi-1, 1.5 and 2: one LayerNorm feeding attention and MLP side by side, RoPE over part of
    each head, biases everywhere (the LM head's too), a LayerNorm over each q and k head or none."""
    fit = _Fit(arch, "phi")
    L = fit.one("heads", "kv_heads", "d_ff", "activation", "dropout", "norm_eps", "position", "qk_norm")
    fit.needs(*_PHI)
    fit.norm_bias()
    fit.position(L)
    fit.common(final_norm=True, embed_norm=False, segments=False, pooler=False)
    fit.heads()
    fit.config = {
        "model_type": "phi",
        "vocab_size": arch.vocab,
        "hidden_size": arch.d_model,
        "intermediate_size": L.d_ff,
        "num_hidden_layers": arch.decoder.n_layers,
        "num_attention_heads": L.heads,
        "num_key_value_heads": L.kv_heads,
        "hidden_act": _HF_ACTIVATIONS.get(L.activation, "gelu_new"),
        "max_position_embeddings": arch.context,
        "layer_norm_eps": L.norm_eps,
        "resid_pdrop": L.dropout,
        "embd_pdrop": L.dropout,
        "attention_dropout": L.dropout,
        "qk_layernorm": L.qk_norm,
        "tie_word_embeddings": fit.tied,
        **_rope_fields(L.position, partial=True),
    }
    return fit


def _falcon(arch: ArchConfig) -> _Fit:
    """Falcon in the layer shapes its flags select: side by side behind one LayerNorm (Falcon-7B:
    the old decoder, one kv head or one per head), behind one or two (the new decoder: Falcon-40B,
    180B, Falcon2-11B, any kv_heads), or one after the other (Falcon-RW's shape, here with RoPE);
    RoPE over each full head, biases on every projection or none, ffn_hidden_size free."""
    fit = _Fit(arch, "falcon")
    L = fit.one("heads", "kv_heads", "d_ff", "activation", "dropout", "norm_eps", "position", "bias", "residual")
    fit.needs(*_FALCON)
    fit.norm_bias()
    fit.position(L)
    fit.common(final_norm=True, embed_norm=False, segments=False, pooler=False)
    fit.heads()
    # the old decoder where it fits (as Falcon-7B and RW write it), else the new one
    new = L.parallel and not (L.shared_norm and L.kv_heads in (1, L.heads))
    fit.config = {
        "model_type": "falcon",
        "vocab_size": arch.vocab,
        "hidden_size": arch.d_model,
        "num_hidden_layers": arch.decoder.n_layers,
        "num_attention_heads": L.heads,
        "num_kv_heads": L.kv_heads,
        "new_decoder_architecture": new,
        "multi_query": L.kv_heads == 1,  # read by the old decoder only
        "parallel_attn": L.parallel,
        "num_ln_in_parallel_attn": (1 if L.shared_norm else 2) if L.parallel else None,
        "ffn_hidden_size": L.d_ff,
        "activation": _HF_ACTIVATIONS.get(L.activation, "gelu"),
        "bias": L.bias,
        "alibi": False,
        "layer_norm_epsilon": L.norm_eps,
        "hidden_dropout": L.dropout,
        "attention_dropout": L.dropout,
        "max_position_embeddings": arch.context,
        "tie_word_embeddings": fit.tied,
        **_rope_fields(L.position),
    }
    return fit


def _bloom(arch: ArchConfig) -> _Fit:
    """BLOOM: ALiBi, pre-norm LayerNorms and one over the embeddings, biases everywhere, bloom_gelu
    (gelu_tanh), an MLP of 4 x d_model; the context is seq_length (ALiBi fixes none)."""
    fit = _Fit(arch, "bloom")
    L = fit.one("heads", "dropout", "norm_eps")
    fit.needs(*_BLOOM)
    fit.norm_bias()
    fit.position(L)
    embedding = (arch.norm, arch.norm_eps)  # word_embeddings_layernorm: the layers' LayerNorm
    fit.model("norm", f"{arch.norm}, eps {_float(arch.norm_eps)}", embedding == ("layernorm", L.norm_eps),
              f"the layers' LayerNorm over the embeddings: layernorm, eps {_float(L.norm_eps)}")
    fit.common(final_norm=True, embed_norm=True, segments=False, pooler=False)
    fit.heads()
    fit.config = {
        "model_type": "bloom",
        "vocab_size": arch.vocab,
        "hidden_size": arch.d_model,
        "n_layer": arch.decoder.n_layers,
        "n_head": L.heads,
        "layer_norm_epsilon": L.norm_eps,
        "hidden_dropout": L.dropout,
        "attention_dropout": L.dropout,
        "apply_residual_connection_post_layernorm": False,
        "pretraining_tp": 1,
        "slow_but_exact": False,
        "seq_length": arch.context,
        "tie_word_embeddings": fit.tied,
    }
    return fit


def _mpt(arch: ArchConfig) -> _Fit:
    """MPT as transformers' MptModel computes it: ALiBi (alibi_bias_max 8), LayerNorms without
    biases, no bias anywhere, the exact-gelu MLP of 4 x d_model; attention scaled by
    1/sqrt(head_dim) or not at all (softmax_scale 1)."""
    fit = _Fit(arch, "mpt")
    L = fit.one("heads", "dropout", "norm_eps", "attention_scale")
    fit.needs(*_MPT)
    fit.model("norm_bias", _bool(arch.norm_bias), not arch.norm_bias or arch.norm != "layernorm",
              "false: LayerNorms without a bias")
    # MptAttentionConfig types attn_pdrop as an int: transformers 5 refuses any other rate than 0
    fit.model("dropout", _float(L.dropout), L.dropout == 0, "0.0: transformers 5 reads attn_config.attn_pdrop "
              "as a whole number, and refuses a config with another rate")
    fit.position(L)
    fit.common(final_norm=True, embed_norm=False, segments=False, pooler=False)
    fit.heads()
    fit.config = {
        "model_type": "mpt",
        "vocab_size": arch.vocab,
        "d_model": arch.d_model,
        "n_heads": L.heads,
        "n_layers": arch.decoder.n_layers,
        "expansion_ratio": 4,
        "max_seq_len": arch.context,
        "layer_norm_epsilon": L.norm_eps,
        "resid_pdrop": L.dropout,
        "emb_pdrop": L.dropout,
        "learned_pos_emb": False,
        "no_bias": True,
        "norm_type": "low_precision_layernorm",
        "logit_scale": None,
        "embedding_fraction": 1.0,
        "attn_config": {
            "attn_type": "multihead_attention",
            "attn_pdrop": 0,
            "softmax_scale": 1.0 if L.attention.scale == "none" else None,
            "clip_qkv": None,
            "qk_ln": False,
            "prefix_lm": False,
            "attn_uses_sequence_id": False,
            "alibi": True,
            "alibi_bias_max": 8,
        },
        "tie_word_embeddings": fit.tied,
    }
    return fit

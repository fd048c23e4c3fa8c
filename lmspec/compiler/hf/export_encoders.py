"""The encoder and encoder-decoder families as the export reads them: BERT, RoBERTa and
DistilBERT; T5, mT5 and BART. For each, what it fixes and one function that adds the
model-level keys and writes its config.json.
"""

from __future__ import annotations

from ..arch import ArchConfig
from .export_common import (
    _BIASED,
    _BIDIRECTIONAL,
    _DENSE,
    _HEAD_DIM,
    _HF_ACTIVATIONS,
    _LAYERNORM,
    _LEARNED,
    _NO_QK_NORM,
    _ONE_KV,
    _PLAIN,
    _POST,
    _PRE,
    _RMSNORM,
    _SCALED,
    _SEQUENTIAL,
    _Fit,
    _Need,
    _no_biases,
)
from .spec import _float


# lmspec activation -> T5 feed_forward_proj (the inverse of config_encoders._T5_ACTIVATIONS)
_T5_PROJ = {"relu": "relu", "gelu": "gelu", "reglu": "gated-relu", "swiglu": "gated-silu", "geglu_tanh": "gated-gelu"}


# the BERT families: sequential, with learned positions, LayerNorms and biases
_BERT = (_BIDIRECTIONAL, _SCALED, _LEARNED, _LAYERNORM, _POST, _SEQUENTIAL, _PLAIN, _BIASED, _NO_QK_NORM, _ONE_KV,
         _HEAD_DIM, _DENSE)


def _bert(arch: ArchConfig) -> _Fit:
    fit = _Fit(arch, "bert")
    L = fit.one("heads", "d_ff", "activation", "dropout", "norm_eps")
    fit.needs(*_BERT)
    fit.norm_bias()
    fit.position(L)
    fit.model("norm", arch.norm, arch.norm == "layernorm", "layernorm")
    fit.common(final_norm=False, embed_norm=True, segments=True, pooler=_bert_pooler(arch))
    fit.heads()
    fit.config = {
        "model_type": "bert",
        "vocab_size": arch.vocab,
        "hidden_size": arch.d_model,
        "num_hidden_layers": arch.encoder.n_layers,
        "num_attention_heads": L.heads,
        "intermediate_size": L.d_ff,
        "hidden_act": _HF_ACTIVATIONS.get(L.activation, "gelu"),
        "hidden_dropout_prob": L.dropout,
        "attention_probs_dropout_prob": L.dropout,
        "max_position_embeddings": arch.context,
        "type_vocab_size": arch.segments,
        "layer_norm_eps": L.norm_eps,
        "position_embedding_type": "absolute",
        "is_decoder": False,
        "add_cross_attention": False,
        "tie_word_embeddings": fit.tied,
    }
    return fit


def _bert_pooler(arch: ArchConfig) -> bool | None:
    # BertForPreTraining's nsp head reads the pooler; the MLM classes are built without one
    kinds = {h.kind for h in arch.heads}
    return True if "nsp" in kinds else False if kinds == {"mlm"} else None


def _roberta(arch: ArchConfig) -> _Fit:
    """RoBERTa: BERT whose learned positions start at row pad_id + 1, whose MLM head applies the
    exact gelu, and which has no NSP head."""
    fit = _Fit(arch, "roberta")
    L = fit.one("heads", "d_ff", "activation", "dropout", "norm_eps")
    fit.needs(*_BERT)
    if arch.head("mlm") is not None:
        fit.fixed("activation", lambda L: L.activation == "gelu", "gelu: RobertaForMaskedLM's head applies the exact "
                  "gelu whatever hidden_act says")
    fit.norm_bias()
    fit.position(L)
    fit.model("norm", arch.norm, arch.norm == "layernorm", "layernorm")
    fit.common(final_norm=False, embed_norm=True, segments=True, pooler=_bert_pooler(arch), offset=None)
    offset, pad = arch.position_offset, arch.pad_id
    fit.model("position_offset", str(offset), offset >= 1, "positions from row pad_id + 1, after the pad token's row")
    if offset >= 1:
        fit.model("pad_id", "none" if pad is None else str(pad), pad == offset - 1,
                  f"pad_id = position_offset - 1 = {offset - 1}: it numbers positions from the pad token's row on")
    fit.heads()
    fit.config = {
        "model_type": "roberta",
        "vocab_size": arch.vocab,
        "hidden_size": arch.d_model,
        "num_hidden_layers": arch.encoder.n_layers,
        "num_attention_heads": L.heads,
        "intermediate_size": L.d_ff,
        "hidden_act": _HF_ACTIVATIONS.get(L.activation, "gelu"),
        "hidden_dropout_prob": L.dropout,
        "attention_probs_dropout_prob": L.dropout,
        "max_position_embeddings": arch.context + offset,
        "type_vocab_size": arch.segments,
        "layer_norm_eps": L.norm_eps,
        "position_embedding_type": "absolute",
        "is_decoder": False,
        "add_cross_attention": False,
        "tie_word_embeddings": fit.tied,
    }
    return fit


def _distilbert(arch: ArchConfig) -> _Fit:
    """DistilBERT: BERT without token types or pooler, every LayerNorm's epsilon 1e-12."""
    fit = _Fit(arch, "distilbert")
    L = fit.one("heads", "d_ff", "activation", "dropout")
    fit.needs(*_BERT, _Need("norm_eps", lambda L: L.norm_eps == 1e-12, "1e-12, fixed in modeling_distilbert"))
    fit.model("norm_eps", _float(arch.norm_eps), arch.norm_eps == 1e-12, "1e-12, fixed in modeling_distilbert")
    fit.norm_bias()
    fit.position(L)
    fit.model("norm", arch.norm, arch.norm == "layernorm", "layernorm")
    fit.common(final_norm=False, embed_norm=True, segments=False, pooler=False)
    fit.heads()
    fit.config = {
        "model_type": "distilbert",
        "vocab_size": arch.vocab,
        "dim": arch.d_model,
        "n_layers": arch.encoder.n_layers,
        "n_heads": L.heads,
        "hidden_dim": L.d_ff,
        "activation": _HF_ACTIVATIONS.get(L.activation, "gelu"),
        "dropout": L.dropout,
        "attention_dropout": L.dropout,
        "max_position_embeddings": arch.context,
        "sinusoidal_pos_embds": False,
        "tie_word_embeddings": fit.tied,
    }
    return fit


def _t5(arch: ArchConfig, family: str = "t5") -> _Fit:
    """T5 (v1.0, v1.1: tied) and mT5 (T5 v1.1 with its own, untied lm_head)."""
    fit = _Fit(arch, family)
    L = fit.one("heads", "kv_heads", "head_dim", "d_ff", "activation", "dropout", "norm_eps", "position")
    fit.fixed("attention", lambda L: L.attention.kind == "bidirectional", "bidirectional", ("encoder",),
              "encoder attention")
    fit.fixed("attention", lambda L: L.attention.kind == "causal", "causal", ("decoder",), "decoder attention")
    fit.fixed("attention_scale", lambda L: L.attention.scale == "none", "none")
    fit.fixed("position", lambda L: L.position.kind == "relative", "relative(buckets, max_distance)")
    fit.needs(_RMSNORM, _PRE, _SEQUENTIAL)
    if family == "mt5":
        fit.fixed("activation", lambda L: L.activation in ("reglu", "swiglu", "geglu_tanh"),
                  "a gated one, as T5 v1.1: reglu, swiglu or geglu_tanh")
    else:
        fit.fixed("activation", lambda L: L.activation in _T5_PROJ, "relu, gelu, reglu, swiglu or geglu_tanh")
    fit.needs(_no_biases("false"), _NO_QK_NORM, _DENSE)  # T5's d_kv is free
    fit.fixed("kv_heads", lambda L: L.kv_heads == L.heads, "one kv head per head: kv_heads = heads")
    fit.position(L)
    fit.common(final_norm=True, embed_norm=False, segments=False, pooler=False)
    if family == "mt5":
        fit.heads()
        if arch.head("lm") is not None:  # a tied mT5 is the T5 v1.1 it equals, and exports as t5
            fit.model("tie_embeddings", "true", not arch.tie_embeddings, "its own lm_head: tie_embeddings: false")
    else:
        scaled = arch.d_model**-0.5
        fit.heads(lambda a: a.tied_head_scale in (1.0, scaled),
                  f"1.0 (T5 v1.1) or d_model ** -0.5 = {_float(scaled)} (T5 v1.0)")
        if arch.head("lm") is not None:
            # transformers 5 always ties T5's lm_head to the shared embedding (T5Config forces it)
            fit.model("tie_embeddings", "false", arch.tie_embeddings, "true: transformers 5 always ties T5's lm_head")
    fit.config = {
        "model_type": family,
        "vocab_size": arch.vocab,
        "d_model": arch.d_model,
        "d_kv": L.head_dim,
        "d_ff": L.d_ff,
        "num_layers": arch.encoder.n_layers,
        "num_decoder_layers": arch.decoder.n_layers,
        "num_heads": L.heads,
        "relative_attention_num_buckets": L.position.buckets,
        "relative_attention_max_distance": L.position.max_distance,
        "dropout_rate": L.dropout,
        "layer_norm_epsilon": L.norm_eps,
        "feed_forward_proj": _T5_PROJ.get(L.activation, "relu"),
        "is_encoder_decoder": True,
        "n_positions": arch.context,
        "decoder_start_token_id": _decoder_start(arch),
    }
    if family == "mt5":
        # transformers 5 writes tie_word_embeddings: true into every mT5 config and unties when
        # the file holds its own lm_head.weight; transformers 4 reads false; mT5 never scales
        fit.config["tie_word_embeddings"] = fit.tied
    else:
        fit.config.update(
            # transformers 5 always ties and reads the head scaling from scale_decoder_outputs; 4 read
            # tie_word_embeddings as "tie and scale", so a tied unscaled (v1.1) export needs 5
            tie_word_embeddings=True,
            scale_decoder_outputs=fit.tied and arch.tied_head_scale != 1.0,
        )
    return fit


def _decoder_start(arch: ArchConfig) -> int:
    """The token lmspec's generate starts the decoder from: decoder_start_id, else pad_id, else 0."""
    return next((i for i in (arch.decoder_start_id, arch.pad_id) if i is not None), 0)


def _bart(arch: ArchConfig) -> _Fit:
    """BART: post-norm LayerNorm (eps 1e-5), biases, an ungated activation; in each stack its own
    learned positions from row 2 and its own embedding norm; no final norms; a tied lm head."""
    fit = _Fit(arch, "bart")
    L = fit.one("activation", "dropout", "norm_eps")
    enc, dec = (fit.one("heads", "d_ff", stacks=(s,)) for s in ("encoder", "decoder"))
    fit.fixed("attention", lambda L: L.attention.kind == "bidirectional", "bidirectional", ("encoder",),
              "encoder attention")
    fit.fixed("attention", lambda L: L.attention.kind == "causal", "causal", ("decoder",), "decoder attention")
    fit.needs(_SCALED, _LEARNED, _LAYERNORM, _POST, _SEQUENTIAL, _PLAIN, _BIASED, _NO_QK_NORM, _ONE_KV, _HEAD_DIM,
              _DENSE)
    fit.fixed("norm_eps", lambda L: L.norm_eps == 1e-5, "1e-5, nn.LayerNorm's default")
    fit.norm_bias()
    fit.position(L)
    fit.model("norm", arch.norm, arch.norm == "layernorm" and arch.norm_eps == 1e-5, "layernorm, eps 1e-5")
    fit.common(final_norm=False, embed_norm=False, segments=False, pooler=False, offset=2, stack_embeddings=True)
    scaled = arch.d_model**0.5
    fit.model("embed_scale", _float(arch.embed_scale), arch.embed_scale in (1.0, scaled),
              f"1.0, or sqrt(d_model) = {_float(scaled)} with scale_embedding")
    fit.heads()
    if arch.head("lm") is not None:
        fit.model("tie_embeddings", "false", arch.tie_embeddings, "true: its lm_head is the shared embedding")
    fit.config = {
        "model_type": "bart",
        "vocab_size": arch.vocab,
        "d_model": arch.d_model,
        "max_position_embeddings": arch.context,  # BART's tables have 2 more rows
        "encoder_layers": arch.encoder.n_layers,
        "decoder_layers": arch.decoder.n_layers,
        "encoder_attention_heads": enc.heads,
        "decoder_attention_heads": dec.heads,
        "encoder_ffn_dim": enc.d_ff,
        "decoder_ffn_dim": dec.d_ff,
        "activation_function": _HF_ACTIVATIONS.get(L.activation, "gelu"),
        "dropout": L.dropout,
        "attention_dropout": L.dropout,
        "activation_dropout": 0.0,  # lmspec has none
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "scale_embedding": arch.embed_scale != 1.0,
        "is_encoder_decoder": True,
        "tie_word_embeddings": True,
        "decoder_start_token_id": _decoder_start(arch),
    }
    return fit

"""The config.json builders of the encoder and encoder-decoder families: BERT (and RoBERTa),
DistilBERT, T5 (and mT5) and BART. Each reads its family's own names and states its fixed
choices (BERT post-norm LayerNorm with learned positions, T5 RMSNorm with unscaled attention
and a relative bias, BART post-norm with a learned position table per stack); config.py maps
each model_type to its builder.
"""

from __future__ import annotations

from collections.abc import Collection

from ..arch import (
    Activation,
    ArchConfig,
    AttentionConfig,
    HeadConfig,
    LayerConfig,
    PositionConfig,
    StackConfig,
)
from .config_common import _BARE, _Config, _activation, _head_activation, _lm_heads, _tied
from .errors import HFImportError


def _bert_layer(d: int, heads: int, d_ff: int, eps: float, activation: Activation, dropout: float) -> LayerConfig:
    """A BERT layer (also RoBERTa's and DistilBERT's): bidirectional, post-norm LayerNorms, biased."""
    return LayerConfig(d_model=d, heads=heads, kv_heads=heads, head_dim=d // heads, d_ff=d_ff,
                       attention=AttentionConfig("bidirectional"), position=PositionConfig("learned"),
                       norm="layernorm", norm_eps=eps, placement="post", activation=activation, bias=True,
                       dropout=dropout)


def _bert(cfg: _Config, name: str, cls: str, tensor_names: Collection[str] | None) -> ArchConfig:
    """BERT, and RoBERTa: BERT whose learned positions start at row pad_token_id + 1 (fairseq
    numbers the real tokens from there), and whose MLM head always uses the exact gelu."""
    cfg.require(
        "position_embedding_type", {"absolute"}, "absolute", "only absolute (learned) positions are supported"
    )
    cfg.require("is_decoder", {False}, False, f"{cfg.model_type} as a decoder is not supported")
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    activation = _activation(cfg, "hidden_act", "gelu")
    dropout = float(cfg.get("hidden_dropout_prob", 0.1))
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    layer = _bert_layer(d, heads, cfg["intermediate_size"], eps, activation, dropout)
    offset = 0
    if cfg.model_type == "roberta":
        # positions are numbered from input ids: a pad token gets row pad_token_id, real tokens the
        # rows after it; with pad tokens only where the attention mask is 0 that is an offset
        offset = int(cfg["pad_token_id"]) + 1
        if cfg["max_position_embeddings"] <= offset:
            raise HFImportError(f"roberta config.json sets max_position_embeddings={cfg['max_position_embeddings']}, "
                                f"which leaves no position after pad_token_id={offset - 1}")
        if cls != "RobertaModel":
            cfg.require("hidden_act", {"gelu"}, "gelu",
                        "RobertaForMaskedLM's head applies the exact gelu whatever hidden_act says, and lmspec's "
                        "mlm head applies the layers' activation")
    mlm = HeadConfig("mlm", transform=True)
    if cls == "BertForPreTraining":
        heads_, pooler = (mlm, HeadConfig("nsp")), True
    elif cls in ("BertForMaskedLM", "RobertaForMaskedLM"):
        heads_, pooler = (mlm,), False  # BertForMaskedLM is built without the pooler
    else:  # BertModel: pooler unless it was saved with add_pooling_layer=False
        heads_ = ()
        pooler = tensor_names is None or any(n.endswith("pooler.dense.weight") for n in tensor_names)
    return ArchConfig(
        name=name,
        arch="encoder",
        vocab=cfg["vocab_size"],
        context=cfg["max_position_embeddings"] - offset,
        d_model=d,
        position=PositionConfig("learned"),
        position_offset=offset,
        encoder=StackConfig((layer,) * cfg["num_hidden_layers"], final_norm=False),
        heads=heads_,
        tie_embeddings=_tied(cfg, True, heads_),
        segments=int(cfg.get("type_vocab_size", 2)),
        pooler=pooler,
        embed_norm=True,
        norm="layernorm",
        norm_eps=eps,
        activation=activation,
        dropout=dropout,
        pad_id=cfg.get("pad_token_id"),
    )


def _distilbert(cfg: _Config, name: str, cls: str, tensor_names: Collection[str] | None) -> ArchConfig:
    """DistilBERT: BERT's post-norm encoder without token types or a pooler; every LayerNorm's
    epsilon is fixed at 1e-12, and the MLM head is BERT's (dense, activation, LayerNorm, tied
    decoder with a bias)."""
    cfg.require("sinusoidal_pos_embds", {False}, False,
                "lmspec's sinusoidal table differs from DistilBERT's frozen one, and learned positions would train it")
    d, heads = cfg["dim"], cfg["n_heads"]
    activation = _activation(cfg, "activation", "gelu")
    dropout = float(cfg.get("dropout", 0.1))
    eps = 1e-12  # hard-coded in modeling_distilbert, not a config field
    layer = _bert_layer(d, heads, cfg["hidden_dim"], eps, activation, dropout)
    heads_ = () if cls in _BARE else (HeadConfig("mlm", transform=True),)
    return ArchConfig(
        name=name,
        arch="encoder",
        vocab=cfg["vocab_size"],
        context=cfg["max_position_embeddings"],
        d_model=d,
        position=PositionConfig("learned"),
        encoder=StackConfig((layer,) * cfg["n_layers"], final_norm=False),
        heads=heads_,
        tie_embeddings=_tied(cfg, True, heads_),
        embed_norm=True,
        norm="layernorm",
        norm_eps=eps,
        activation=activation,
        dropout=dropout,
        pad_id=cfg.get("pad_token_id"),
    )


# T5's feed_forward_proj -> lmspec activation. "gated-gelu" (T5 v1.1, Flan-T5) gates with
# gelu_new, the tanh approximation, which no gated lmspec activation computes.
_T5_ACTIVATIONS: dict[str, Activation] = {
    "relu": "relu",
    "gelu": "gelu",
    "gated-relu": "reglu",
    "gated-silu": "swiglu",
    "gated-gelu": "geglu_tanh",  # T5 v1.1, Flan-T5: HF's gelu_new, the tanh approximation
}


def _t5(cfg: _Config, name: str, cls: str, tensor_names: Collection[str] | None) -> ArchConfig:
    """T5 (v1.0: relu, tied head scaled by d_model**-0.5; v1.1 and Flan-T5: gated-gelu, untied)
    and mT5, which is T5 v1.1 by default and never scales its head."""
    proj = cfg.get("feed_forward_proj", "gated-gelu" if cfg.model_type == "mt5" else "relu")
    if proj not in _T5_ACTIVATIONS:
        raise HFImportError(
            f"{cfg.model_type} config.json sets feed_forward_proj={proj!r}: no lmspec activation matches it "
            f"(supported: {', '.join(_T5_ACTIVATIONS)})"
        )
    activation = _T5_ACTIVATIONS[proj]
    d = cfg["d_model"]
    eps = float(cfg.get("layer_norm_epsilon", 1e-6))
    dropout = float(cfg.get("dropout_rate", 0.1))
    position = PositionConfig(
        "relative",
        buckets=int(cfg.get("relative_attention_num_buckets", 32)),
        max_distance=int(cfg.get("relative_attention_max_distance", 128)),
    )

    def layer(kind: str, cross: bool) -> LayerConfig:
        return LayerConfig(
            d_model=d,
            heads=cfg["num_heads"],
            kv_heads=cfg["num_heads"],
            head_dim=cfg["d_kv"],
            d_ff=cfg["d_ff"],
            attention=AttentionConfig(kind, scale="none"),  # type: ignore[arg-type]
            position=position,
            norm="rmsnorm",
            norm_eps=eps,
            placement="pre",
            activation=activation,
            bias=False,
            dropout=dropout,
            cross_attention=cross,
        )

    said_tied = _tied(cfg, True, _lm_heads(cls))
    # transformers 5 writes tie_word_embeddings: true into every T5 and mT5 config, even one
    # re-saved from an untied v1.1 checkpoint, and then unties when the file holds its own
    # lm_head.weight: so does this import
    tied = said_tied and (tensor_names is None or "lm_head.weight" not in tensor_names)
    # Original T5 scales the decoder output by d_model**-0.5 before its tied head; v1.1 does not.
    # transformers 5 records the choice as scale_decoder_outputs; mT5 never scales.
    scaled = bool(_lm_heads(cls)) and cfg.model_type == "t5" and bool(cfg.get("scale_decoder_outputs", said_tied))
    n_enc = cfg["num_layers"]
    n_dec = cfg.get("num_decoder_layers", n_enc)
    return ArchConfig(
        name=name,
        arch="encoder_decoder",
        vocab=cfg["vocab_size"],
        context=int(cfg.get("n_positions", 512)),
        d_model=d,
        position=position,
        encoder=StackConfig((layer("bidirectional", False),) * n_enc, final_norm=True),
        decoder=StackConfig((layer("causal", True),) * n_dec, final_norm=True),
        heads=_lm_heads(cls),
        tie_embeddings=tied,
        tied_head_scale=d**-0.5 if scaled else 1.0,
        norm="rmsnorm",
        norm_eps=eps,
        activation=_head_activation(activation),
        dropout=dropout,
        pad_id=cfg.get("pad_token_id"),
        decoder_start_id=_decoder_start(cfg),
    )


def _decoder_start(cfg: _Config) -> int | None:
    """decoder_start_token_id, the token transformers starts an encoder-decoder's decoder from
    (BART: 2); None when it is the pad token (T5), from which lmspec starts by default."""
    start = cfg.get("decoder_start_token_id")
    return None if start is None or start == cfg.get("pad_token_id") else int(start)


#: fairseq options old BART config.json files carry, which transformers' BART never reads (it is
#: always post-norm with embedding norms and learned positions): a value other than this one
#: describes another model (mBART is pre-norm with final norms), so it is refused
_BART_FIXED = {"normalize_before": False, "add_final_layer_norm": False, "normalize_embedding": True,
               "static_position_embeddings": False, "add_bias_logits": False}


def _bart(cfg: _Config, name: str, cls: str, tensor_names: Collection[str] | None) -> ArchConfig:
    """BART: post-norm, gelu, biased; one token embedding for both stacks (times sqrt(d_model)
    with scale_embedding), but each stack its own learned positions from row 2 and its own
    LayerNorm after the embeddings (`layernorm_embedding`); no final norms; a tied lm head.
    Its final_logits_bias is a buffer, not a parameter: hf/weights.py loads it only when all zero."""
    for key, value in _BART_FIXED.items():
        cfg.require(key, {value}, value, f"transformers' BART does not read it and lmspec cannot build it "
                    f"(it describes another model, such as mBART); only {key}={value!r} is supported")
    for key in ("encoder_layerdrop", "decoder_layerdrop"):
        cfg.require(key, {0, 0.0}, 0.0, "lmspec has no LayerDrop (layers skipped at random in training)")
    d = cfg["d_model"]
    activation = _activation(cfg, "activation_function", "gelu")
    dropout = float(cfg.get("dropout", 0.1))

    def stack(side: str, kind: str) -> StackConfig:
        heads = cfg[f"{side}_attention_heads"]
        if d % heads:
            raise HFImportError(f"bart config.json sets {side}_attention_heads={heads}, which does not divide "
                                f"d_model={d}")
        layer = LayerConfig(
            d_model=d,
            heads=heads,
            kv_heads=heads,
            head_dim=d // heads,
            d_ff=cfg[f"{side}_ffn_dim"],
            attention=AttentionConfig(kind),  # type: ignore[arg-type]
            position=PositionConfig("learned"),
            norm="layernorm",
            norm_eps=1e-5,  # nn.LayerNorm's default: BART's config has no epsilon
            placement="post",
            activation=activation,
            dropout=dropout,
            cross_attention=side == "decoder",
        )
        return StackConfig((layer,) * cfg[f"{side}_layers"], final_norm=False, own_positions=True,
                           own_embed_norm=True)

    heads = _lm_heads(cls)
    return ArchConfig(
        name=name,
        arch="encoder_decoder",
        vocab=cfg["vocab_size"],
        context=int(cfg.get("max_position_embeddings", 1024)),
        d_model=d,
        position=PositionConfig("learned"),
        encoder=stack("encoder", "bidirectional"),
        decoder=stack("decoder", "causal"),
        heads=heads,
        tie_embeddings=_tied(cfg, True, heads),
        embed_scale=d**0.5 if cfg.get("scale_embedding", False) else 1.0,
        position_offset=2,  # fixed by BartLearnedPositionalEmbedding, whatever pad_token_id is
        norm="layernorm",
        norm_eps=1e-5,
        activation=_head_activation(activation),
        dropout=dropout,
        pad_id=cfg.get("pad_token_id"),
        decoder_start_id=_decoder_start(cfg),
    )

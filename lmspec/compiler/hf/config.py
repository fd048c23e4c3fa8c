"""Hugging Face config.json -> `ArchConfig`.

One function per model family reads the config's own names (n_embd, hidden_size, d_model,
...) and states the family's fixed choices (GPT-2 is pre-norm LayerNorm with learned
positions, BERT post-norm, T5 RMSNorm with unscaled attention and a relative bias, Llama
RMSNorm + SwiGLU + RoPE). An option lmspec cannot express exactly is an `HFImportError`,
never a silent approximation: a model imported here computes what the original computes.

The HF class named in `architectures` picks the heads, since the same config.json serves
GPT2Model and GPT2LMHeadModel alike.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from ..arch import (
    GATED_ACTIVATIONS,
    Activation,
    ArchConfig,
    AttentionConfig,
    HeadConfig,
    LayerConfig,
    MoEConfig,
    PositionConfig,
    RopeScaling,
    StackConfig,
)
from .errors import HFImportError

__all__ = ["SUPPORTED", "arch_from_hf_config", "hf_class"]

# model_type -> the HF classes lmspec can mirror; the first is assumed when a config names none
SUPPORTED: dict[str, tuple[str, ...]] = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Model"),
    "bert": ("BertForPreTraining", "BertForMaskedLM", "BertModel"),
    "t5": ("T5ForConditionalGeneration", "T5Model"),
    "llama": ("LlamaForCausalLM", "LlamaModel"),
    "mistral": ("MistralForCausalLM", "MistralModel"),
    "mixtral": ("MixtralForCausalLM", "MixtralModel"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Model"),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Model"),
    "gemma": ("GemmaForCausalLM", "GemmaModel"),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Model"),
    "gemma3_text": ("Gemma3ForCausalLM", "Gemma3TextModel"),
    "phi3": ("Phi3ForCausalLM", "Phi3Model"),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXModel"),
    "phi": ("PhiForCausalLM", "PhiModel"),
    "gptj": ("GPTJForCausalLM", "GPTJModel"),
    "distilbert": ("DistilBertForMaskedLM", "DistilBertModel"),
    "mt5": ("MT5ForConditionalGeneration", "MT5Model"),
    "bart": ("BartForConditionalGeneration", "BartModel"),
    "roberta": ("RobertaForMaskedLM", "RobertaModel"),
    "opt": ("OPTForCausalLM", "OPTModel"),
    "falcon": ("FalconForCausalLM", "FalconModel"),
    "bloom": ("BloomForCausalLM", "BloomModel"),
    "mpt": ("MptForCausalLM", "MptModel"),
}

# Hugging Face ACT2FN names -> lmspec activations (gelu_new is GPT-2's tanh approximation)
_PLAIN_ACTIVATIONS: dict[str, Activation] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


#: model types close to a supported one that lmspec refuses, and what to do instead
_REFUSED_TYPES = {
    "gemma3": "it is Gemma-3's multimodal model (Gemma3ForConditionalGeneration: a SigLIP vision tower and a "
              "projector beside the language model), and lmspec builds text models only; a text-only checkpoint "
              "(model_type gemma3_text, Gemma3ForCausalLM, as google/gemma-3-1b-pt) imports",
}


def hf_class(config: dict[str, Any]) -> str:
    """The HF model class the checkpoint was saved from (its heads), validated."""
    model_type = config.get("model_type")
    if model_type in _REFUSED_TYPES:
        raise HFImportError(f"model_type {model_type!r} is not supported: {_REFUSED_TYPES[model_type]}")
    if model_type not in SUPPORTED:
        supported = ", ".join(SUPPORTED)
        raise HFImportError(
            f"model_type {model_type!r} is not supported by lmspec's Hugging Face import (supported: {supported})"
        )
    classes = config.get("architectures") or [SUPPORTED[model_type][0]]
    cls = classes[0]
    if cls not in SUPPORTED[model_type]:
        raise HFImportError(
            f"{model_type} checkpoint saved from {cls}, whose head lmspec does not map; "
            f"supported classes: {', '.join(SUPPORTED[model_type])}"
        )
    return cls


def arch_from_hf_config(
    config: dict[str, Any], name: str, *, tensor_names: Collection[str] | None = None
) -> ArchConfig:
    """The lmspec architecture equivalent to a Hugging Face config.json (already parsed).

    `tensor_names`, when given, are the checkpoint's tensor names; they settle what the config
    leaves open (whether a BertModel was saved with its pooler).
    """
    cls = hf_class(config)
    builder = {"gpt2": _gpt2, "bert": _bert, "t5": _t5, "llama": _llama, "mistral": _llama, "qwen2": _llama,
               "qwen3": _llama, "gemma": _llama, "phi3": _llama, "mixtral": _llama, "gpt_neox": _gpt_neox, "phi": _phi,
               "gptj": _gptj, "distilbert": _distilbert,
               "mt5": _t5, "bart": _bart, "roberta": _bert, "opt": _opt,
               "falcon": _falcon, "bloom": _bloom, "mpt": _mpt,
               "gemma2": _gemma2, "gemma3_text": _gemma2}
    return builder[config["model_type"]](_Config(config), name, cls, tensor_names)


class _Config:
    """config.json with errors that name the model type and the key."""

    def __init__(self, raw: dict[str, Any]):
        self.raw = raw
        self.model_type = raw["model_type"]

    def __getitem__(self, key: str) -> Any:
        if self.raw.get(key) is None:
            raise HFImportError(f"{self.model_type} config.json has no {key!r}")
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.raw.get(key)
        return default if value is None else value

    def require(self, key: str, allowed: Collection[Any], default: Any, why: str) -> None:
        value = self.get(key, default)
        if value not in allowed:
            raise HFImportError(f"{self.model_type} config.json sets {key}={value!r}: {why}")


def _activation(cfg: _Config, key: str, default: str) -> Activation:
    act = cfg.get(key, default)
    if act not in _PLAIN_ACTIVATIONS:
        raise HFImportError(
            f"{cfg.model_type} config.json sets {key}={act!r}, which has no lmspec activation "
            f"(supported: {', '.join(_PLAIN_ACTIVATIONS)})"
        )
    return _PLAIN_ACTIVATIONS[act]


# the bare transformers: hidden states out, no head
_BARE = frozenset({"GPT2Model", "BertModel", "T5Model", "LlamaModel", "MistralModel", "Qwen2Model", "Qwen3Model",
                   "GemmaModel", "Gemma2Model", "Gemma3TextModel", "Phi3Model",
                   "GPTNeoXModel", "PhiModel", "GPTJModel", "DistilBertModel",
                   "MT5Model", "BartModel", "RobertaModel", "OPTModel", "FalconModel", "BloomModel", "MptModel"})


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


def _head_activation(activation: Activation) -> Activation:
    # ArchConfig.activation serves the heads' transforms, which are never gated; the lowering
    # of a model block falls back to gelu for a gated MLP activation, and so does this import
    return "gelu" if activation in GATED_ACTIVATIONS else activation


def _lm_heads(cls: str) -> tuple[HeadConfig, ...]:
    return () if cls in _BARE else (HeadConfig("lm"),)


def _tied(cfg: _Config, default: bool, heads: tuple[HeadConfig, ...]) -> bool:
    # a bare model has no vocabulary head to tie: say so, rather than carry a flag that means nothing
    return bool(cfg.get("tie_word_embeddings", default)) and any(h.kind in ("lm", "mlm") for h in heads)


def _decoder_arch(cfg: _Config, name: str, layers: tuple[LayerConfig, ...], *, context: int,
                  position: PositionConfig, heads: tuple[HeadConfig, ...], tied_by_default: bool,
                  final_norm: bool = True, **extra: Any) -> ArchConfig:
    """The ArchConfig of a decoder-only family: its layers, and the model-level fields every
    decoder builder fills alike (the embeddings' and heads' norm, activation and dropout are
    its layers')."""
    first = layers[0]
    return ArchConfig(
        name=name,
        arch="decoder",
        vocab=cfg["vocab_size"],
        context=context,
        d_model=first.d_model,
        position=position,
        decoder=StackConfig(layers, final_norm=final_norm),
        heads=heads,
        tie_embeddings=_tied(cfg, tied_by_default, heads),
        norm=first.norm,
        norm_eps=first.norm_eps,
        norm_offset=first.norm_offset,
        activation=_head_activation(first.activation),
        dropout=first.dropout,
        pad_id=cfg.get("pad_token_id"),
        **extra,
    )


def _gpt2(cfg: _Config, name: str, cls: str, tensor_names: Collection[str] | None) -> ArchConfig:
    cfg.require("scale_attn_weights", {True}, True, "lmspec always scales attention by 1/sqrt(head_dim)")
    cfg.require("scale_attn_by_inverse_layer_idx", {False}, False, "lmspec has no per-layer attention scaling")
    cfg.require("add_cross_attention", {False}, False, "cross-attention in a decoder-only model is not supported")
    d, heads = cfg["n_embd"], cfg["n_head"]
    activation = _activation(cfg, "activation_function", "gelu_new")
    dropout = float(cfg.get("resid_pdrop", 0.1))
    eps = float(cfg.get("layer_norm_epsilon", 1e-5))
    layer = LayerConfig(
        d_model=d,
        heads=heads,
        kv_heads=heads,
        head_dim=d // heads,
        d_ff=cfg.get("n_inner") or 4 * d,
        attention=AttentionConfig("causal"),
        position=PositionConfig("learned"),
        norm="layernorm",
        norm_eps=eps,
        placement="pre",
        activation=activation,
        bias=True,
        dropout=dropout,
    )
    return _decoder_arch(cfg, name, (layer,) * cfg["n_layer"], context=cfg["n_positions"],
                         position=PositionConfig("learned"), heads=_lm_heads(cls), tied_by_default=True)


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
    layer = LayerConfig(
        d_model=d,
        heads=heads,
        kv_heads=heads,
        head_dim=d // heads,
        d_ff=cfg["intermediate_size"],
        attention=AttentionConfig("bidirectional"),
        position=PositionConfig("learned"),
        norm="layernorm",
        norm_eps=eps,
        placement="post",
        activation=activation,
        bias=True,
        dropout=dropout,
    )
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
    layer = LayerConfig(
        d_model=d,
        heads=heads,
        kv_heads=heads,
        head_dim=d // heads,
        d_ff=cfg["hidden_dim"],
        attention=AttentionConfig("bidirectional"),
        position=PositionConfig("learned"),
        norm="layernorm",
        norm_eps=eps,
        placement="post",
        activation=activation,
        bias=True,
        dropout=dropout,
    )
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


#: rope_type -> the keys of rope_parameters each reads (beyond rope_theta)
_ROPE_TYPES = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
    "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
}
#: rope types transformers computes that lmspec refuses, and why
_REFUSED_ROPE_TYPES = {
    "dynamic": "transformers' dynamic NTK scaling recomputes theta from the longest sequence its rotary module has "
               "seen so far, a state kept across calls (a short input after a long one still uses the long one's "
               "frequencies), which lmspec's positions, a function of each call's position ids, cannot reproduce",
}


def _rope(cfg: _Config, head_dim: int, *, theta: float = 10_000.0, fraction: float = 1.0,
          layout: str = "half") -> PositionConfig:
    """RoPE as the config describes it: its base, its scaling (linear, llama3, yarn, longrope) and
    the share of each head it rotates. transformers 5 writes rope_parameters={"rope_type", "rope_theta",
    "partial_rotary_factor", ...}; 4.x wrote rope_theta, rope_scaling and partial_rotary_factor
    at the top level. `theta` and `fraction` are the family's defaults."""
    field = "rope_parameters" if cfg.get("rope_parameters") else "rope_scaling"
    params = dict(cfg.get(field) or {})
    type_key = "rope_type" if "rope_type" in params or "type" not in params else "type"  # transformers 4: type
    rope_type = params.get(type_key, "default")
    if cfg.model_type == "phi3" and rope_type in ("su", "yarn"):  # Phi3Config renames both to longrope
        rope_type = "longrope"
    if rope_type in _REFUSED_ROPE_TYPES:
        raise HFImportError(f"{cfg.model_type} config.json sets {field}.{type_key}={rope_type!r}: "
                            f"{_REFUSED_ROPE_TYPES[rope_type]} (see docs/architectures.md#rope)")
    if rope_type not in _ROPE_TYPES:
        raise HFImportError(
            f"{cfg.model_type} config.json sets {field}.{type_key}={rope_type!r}: lmspec's rope computes the default, "
            f"linear, llama3, yarn and longrope frequencies only (see docs/architectures.md#rope)"
        )
    for key in _ROPE_TYPES[rope_type]:
        if key not in params and not (key == "original_max_position_embeddings" and cfg.get("max_position_embeddings")):
            raise HFImportError(
                f"{cfg.model_type} config.json sets {field}.{type_key}={rope_type!r} but no {field}.{key}"
            )
    share = float(params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", fraction)))
    dims = int(head_dim * share)  # transformers rounds the rotated dimensions down
    if dims < 2 or dims % 2:
        raise HFImportError(
            f"{cfg.model_type} config.json rotates int({share} * head_dim {head_dim}) = {dims} dimensions of each "
            "head; RoPE needs an even number of them, at least 2"
        )
    scaling = _rope_scaling(cfg, field, rope_type, params, dims)
    theta = float(params.get("rope_theta", cfg.get("rope_theta", theta)))
    return PositionConfig("rope", theta=theta, fraction=dims / head_dim, layout=layout,  # type: ignore[arg-type]
                          scaling=scaling)


def _rope_scaling(cfg: _Config, field: str, rope_type: str, params: dict[str, Any], dims: int) -> RopeScaling | None:
    """rope_parameters' scaling, with what transformers derives from the rest of the config made
    explicit: the original context defaults to max_position_embeddings (Phi-3 reads its own
    top-level original_max_position_embeddings, 4096 by default, whatever rope_parameters says),
    and a yarn or longrope factor to max_position_embeddings / original context."""
    if rope_type == "default":
        return None
    if rope_type == "linear":
        return RopeScaling("linear", float(params["factor"]))
    if cfg.model_type == "phi3":
        original = int(cfg.get("original_max_position_embeddings", 4096))
    else:
        original = int(params.get("original_max_position_embeddings") or cfg.get("max_position_embeddings"))
    if rope_type == "llama3":
        return RopeScaling("llama3", float(params["factor"]), float(params["low_freq_factor"]),
                           float(params["high_freq_factor"]), original)
    factor = params.get("factor")
    factor = float(factor) if factor is not None else cfg["max_position_embeddings"] / original
    attention_factor = None if params.get("attention_factor") is None else float(params["attention_factor"])
    if rope_type == "yarn":
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        return RopeScaling("yarn", factor, original_context=original,
                           # transformers reads a missing or zero beta as its default, as `x or 32`
                           beta_fast=float(params.get("beta_fast") or 32),
                           beta_slow=float(params.get("beta_slow") or 1),
                           truncate=bool(params.get("truncate", True)),
                           mscale=None if mscale is None else float(mscale),
                           mscale_all_dim=None if mscale_all_dim is None else float(mscale_all_dim),
                           attention_factor=attention_factor)
    if cfg.model_type != "phi3":
        raise HFImportError(
            f"{cfg.model_type} config.json sets {field}.rope_type='longrope': transformers' {cfg.model_type} keeps the "
            "keys it cached with the short factors once generation passes the original context, while Phi-3 (and "
            "lmspec) recompute them with the long ones; lmspec imports longrope for phi3 only"
        )
    short, long_ = params["short_factor"], params["long_factor"]
    for key, factors in (("short_factor", short), ("long_factor", long_)):
        if not isinstance(factors, list) or len(factors) != dims // 2:
            raise HFImportError(f"phi3 config.json sets {field}.{key} with {len(factors)} values: longrope needs one "
                                f"per rotated frequency, {dims // 2} (rotated dimensions / 2)")
    return RopeScaling("longrope", factor, original_context=original, attention_factor=attention_factor,
                       short_factor=tuple(float(f) for f in short), long_factor=tuple(float(f) for f in long_))


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


def _one_dropout(cfg: _Config, keys: tuple[str, ...]) -> None:
    """lmspec has one dropout rate, for the embeddings, the attention weights and each residual
    branch alike: a config that sets those apart is refused."""
    rates = {key: float(cfg.get(key, 0.0)) for key in keys}
    if len(set(rates.values())) > 1:
        shown = ", ".join(f"{key}={rate!r}" for key, rate in rates.items())
        raise HFImportError(f"{cfg.model_type} config.json sets {shown}: lmspec has one dropout rate for the "
                            "embeddings, the attention weights and the residual branches; make them equal")


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


def _gpt_neox(cfg: _Config, name: str, cls: str, tensor_names: Collection[str] | None) -> ArchConfig:
    """GPT-NeoX and Pythia: pre-norm LayerNorm, RoPE over the first rotary_pct of each head
    (25%), attention and MLP side by side with a norm each (use_parallel_residual), biases."""
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = d // heads
    activation = _activation(cfg, "hidden_act", "gelu")
    eps = float(cfg.get("layer_norm_eps", 1e-5))
    dropout = float(cfg.get("hidden_dropout", 0.0))
    parallel = bool(cfg.get("use_parallel_residual", True))
    # transformers 4 wrote rotary_emb_base and rotary_pct; 5 writes rope_parameters
    position = _rope(cfg, head_dim, theta=float(cfg.get("rotary_emb_base", 10_000.0)),
                     fraction=float(cfg.get("rotary_pct", 0.25)))
    layer = LayerConfig(
        d_model=d,
        heads=heads,
        kv_heads=heads,
        head_dim=head_dim,
        d_ff=cfg["intermediate_size"],
        attention=AttentionConfig("causal"),
        position=position,
        norm="layernorm",
        norm_eps=eps,
        placement="pre",
        activation=activation,
        bias=bool(cfg.get("attention_bias", True)),  # query_key_value and dense
        mlp_bias=True,
        dropout=dropout,
        parallel=parallel,
        shared_norm=False,  # input_layernorm for attention, post_attention_layernorm for the MLP
    )
    return _decoder_arch(cfg, name, (layer,) * cfg["num_hidden_layers"], context=cfg["max_position_embeddings"],
                         position=position, heads=_lm_heads(cls), tied_by_default=False)


def _phi(cfg: _Config, name: str, cls: str, tensor_names: Collection[str] | None) -> ArchConfig:
    """Phi-1, 1.5 and 2: one LayerNorm feeding attention and MLP side by side, RoPE over part of
    each head (partial_rotary_factor), biases everywhere, the LM head's included; qk_layernorm
    is a LayerNorm over each query and key head."""
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = d // heads
    activation = _activation(cfg, "hidden_act", "gelu_new")
    eps = float(cfg.get("layer_norm_eps", 1e-5))
    dropout = float(cfg.get("resid_pdrop", 0.0))
    position = _rope(cfg, head_dim, fraction=0.5)  # PhiConfig's own default
    layer = LayerConfig(
        d_model=d,
        heads=heads,
        kv_heads=cfg.get("num_key_value_heads", heads),
        head_dim=head_dim,
        d_ff=cfg["intermediate_size"],
        attention=AttentionConfig("causal"),
        position=position,
        norm="layernorm",
        norm_eps=eps,
        placement="pre",
        activation=activation,
        bias=True,
        qk_norm=bool(cfg.get("qk_layernorm", False)),
        dropout=dropout,
        parallel=True,
        shared_norm=True,
    )
    heads_ = () if cls in _BARE else (HeadConfig("lm", bias=True),)
    return _decoder_arch(cfg, name, (layer,) * cfg["num_hidden_layers"], context=cfg["max_position_embeddings"],
                         position=position, heads=heads_, tied_by_default=False)


def _gptj(cfg: _Config, name: str, cls: str, tensor_names: Collection[str] | None) -> ArchConfig:
    """GPT-J: one LayerNorm feeding attention and MLP side by side, RoPE over the first
    rotary_dim dimensions of each head in the interleaved layout (rotate_every_two, base 10 000),
    no attention biases, biases on the MLP and the LM head."""
    d, heads = cfg["n_embd"], cfg["n_head"]
    head_dim = d // heads
    rotary_dim = cfg["rotary_dim"]  # without it transformers sizes its table by n_embd, not the head
    if not 2 <= int(rotary_dim) <= head_dim or int(rotary_dim) % 2:
        raise HFImportError(f"gptj config.json sets rotary_dim={rotary_dim}: lmspec rotates an even number of "
                            f"dimensions of each head, at most head_dim ({head_dim})")
    activation = _activation(cfg, "activation_function", "gelu_new")
    eps = float(cfg.get("layer_norm_epsilon", 1e-5))
    dropout = float(cfg.get("resid_pdrop", 0.0))
    position = PositionConfig("rope", theta=10_000.0, fraction=int(rotary_dim) / head_dim, layout="interleaved")
    layer = LayerConfig(
        d_model=d,
        heads=heads,
        kv_heads=heads,
        head_dim=head_dim,
        d_ff=cfg.get("n_inner") or 4 * d,
        attention=AttentionConfig("causal"),
        position=position,
        norm="layernorm",
        norm_eps=eps,
        placement="pre",
        activation=activation,
        bias=False,
        mlp_bias=True,  # fc_in and fc_out
        dropout=dropout,
        parallel=True,
        shared_norm=True,
    )
    heads_ = () if cls in _BARE else (HeadConfig("lm", bias=True),)
    return _decoder_arch(cfg, name, (layer,) * cfg["n_layer"], context=cfg["n_positions"], position=position,
                         heads=heads_, tied_by_default=False)


def _opt(cfg: _Config, name: str, cls: str, tensor_names: Collection[str] | None) -> ArchConfig:
    """OPT: GPT-2's decoder with nn.Linear projections, learned positions from row 2 (position_offset),
    relu; pre-norm with a final LayerNorm (do_layer_norm_before), or post-norm without (OPT-350m)."""
    d, proj = cfg["hidden_size"], cfg.get("word_embed_proj_dim", cfg["hidden_size"])
    if proj != d:
        raise HFImportError(f"opt config.json sets word_embed_proj_dim={proj} beside hidden_size={d}: lmspec has no "
                            "project_in/project_out between narrower embeddings and the layers (OPT-350m)")
    cfg.require("layer_norm_elementwise_affine", {True}, True, "lmspec's LayerNorms always have a weight")
    cfg.require("layerdrop", {0, 0.0}, 0.0, "lmspec has no LayerDrop (layers skipped at random in training)")
    pre = bool(cfg.get("do_layer_norm_before", True))
    activation = _activation(cfg, "activation_function", "relu")
    dropout = float(cfg.get("dropout", 0.1))
    heads = cfg["num_attention_heads"]
    layer = LayerConfig(
        d_model=d,
        heads=heads,
        kv_heads=heads,
        head_dim=d // heads,
        d_ff=cfg["ffn_dim"],
        attention=AttentionConfig("causal"),
        position=PositionConfig("learned"),
        norm="layernorm",
        norm_eps=1e-5,  # nn.LayerNorm's default: OPT's config has no epsilon
        placement="pre" if pre else "post",
        activation=activation,
        bias=bool(cfg.get("enable_bias", True)),
        dropout=dropout,
    )
    return _decoder_arch(cfg, name, (layer,) * cfg["num_hidden_layers"], context=cfg["max_position_embeddings"],
                         position=PositionConfig("learned"), heads=_lm_heads(cls), tied_by_default=True,
                         final_norm=pre and not cfg.get("_remove_final_layer_norm", False),
                         position_offset=2)  # fixed by OPTLearnedPositionalEmbedding, whatever pad_token_id is


# --- Falcon, BLOOM, MPT: query_key_value fused in one projection, one flag for every bias ----


def _size(cfg: _Config, *keys: str) -> int:
    """The first of `keys` the config sets: older BLOOM and Falcon files write n_embed for
    hidden_size, and transformers reads either."""
    for key in keys:
        if cfg.get(key) is not None:
            return int(cfg.get(key))
    return cfg[keys[0]]  # raises, naming the current key


def _head_dim(cfg: _Config, d: int, heads: int, keys: str) -> int:
    if d % heads:
        raise HFImportError(f"{cfg.model_type} config.json sets {keys} = {d}, {heads}: transformers splits "
                            "the hidden size into equal heads, so the heads must divide it")
    return d // heads


def _falcon(cfg: _Config, name: str, cls: str, tensor_names: Collection[str] | None) -> ArchConfig:
    """Falcon, in the three layer shapes modeling_falcon reads from its flags. The new decoder
    (new_decoder_architecture: Falcon-40B, 180B, Falcon2-11B) runs attention and MLP side by
    side, each behind its own LayerNorm (ln_attn, ln_mlp; one shared when
    num_ln_in_parallel_attn is 1), with num_kv_heads key/value heads, q, k and v fused group by
    group. The old decoder runs them side by side behind one input_layernorm (parallel_attn:
    Falcon-7B), with one key/value head under multi_query, or one after the other, pre-norm
    (Falcon-RW). RoPE over every head's full width, the `activation` MLP, every projection
    biased or none (bias), LayerNorms with biases, a tied head."""
    if cfg.get("alibi", False):
        raise HFImportError(
            "falcon config.json sets alibi=True (Falcon-RW): Falcon rounds its ALiBi bias to bfloat16 and divides "
            "it by sqrt(head_dim), which lmspec's alibi (the paper's slopes, in float32) does not"
        )
    d, heads = _size(cfg, "hidden_size", "n_embed"), cfg["num_attention_heads"]
    head_dim = _head_dim(cfg, d, heads, "hidden_size, num_attention_heads")
    multi_query = bool(cfg.get("multi_query", True))
    if cfg.get("new_decoder_architecture", False):
        # transformers ignores multi_query here, and parallel_attn too but for the norms it builds:
        # without parallel_attn, ones the new decoder never reads
        cfg.require("parallel_attn", {True}, True, "transformers' new Falcon decoder then builds "
                    "input_layernorm and post_attention_layernorm, which it never reads, and cannot run")
        parallel, kv_heads = True, int(cfg.get("num_kv_heads", heads))
        norms = cfg.get("num_ln_in_parallel_attn", 2)
        if norms not in (1, 2):
            raise HFImportError(f"falcon config.json sets num_ln_in_parallel_attn={norms!r}: transformers builds "
                                "one LayerNorm for both branches (1) or one each (2)")
    else:
        parallel, norms = bool(cfg.get("parallel_attn", True)), 1
        if parallel:
            cfg.require("num_ln_in_parallel_attn", {1}, 1, "transformers' old Falcon decoder "
                        "(new_decoder_architecture=False) then builds ln_attn and ln_mlp but reads "
                        "input_layernorm, and cannot run")
        kv_heads = 1 if multi_query else int(cfg.get("num_kv_heads", heads))
        if kv_heads != heads and not multi_query:
            raise HFImportError(f"falcon config.json sets num_kv_heads={kv_heads} with multi_query=False and "
                                f"new_decoder_architecture=False: the old decoder fuses q, k and v head by head "
                                f"for all {heads} heads, and transformers cannot run it")
    if heads % kv_heads:
        raise HFImportError(f"falcon config.json sets num_kv_heads={kv_heads}, which does not divide "
                            f"num_attention_heads={heads}")
    _one_dropout(cfg, ("hidden_dropout", "attention_dropout"))
    position = _rope(cfg, head_dim)
    if position.fraction != 1.0:  # transformers' Falcon rotates whole heads: a partial cos/sin cannot broadcast
        raise HFImportError(f"falcon config.json sets partial_rotary_factor={position.fraction}: transformers' "
                            f"Falcon rotates every dimension of a head and cannot run a partial rotary; "
                            f"remove the field (or import the model as the family it was trained as)")
    layer = LayerConfig(
        d_model=d,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        d_ff=int(cfg.get("ffn_hidden_size", 4 * d)),
        attention=AttentionConfig("causal"),
        position=position,
        norm="layernorm",
        norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
        placement="pre",
        activation=_activation(cfg, "activation", "gelu"),
        bias=bool(cfg.get("bias", False)),  # query_key_value, dense and the MLP's two
        dropout=float(cfg.get("hidden_dropout", 0.0)),
        parallel=parallel,
        shared_norm=norms == 1,
    )
    return _decoder_arch(cfg, name, (layer,) * cfg["num_hidden_layers"],
                         context=int(cfg.get("max_position_embeddings", 2048)), position=position,
                         heads=_lm_heads(cls), tied_by_default=True)


def _bloom(cfg: _Config, name: str, cls: str, tensor_names: Collection[str] | None) -> ArchConfig:
    """BLOOM: pre-norm LayerNorms, one more over the embeddings (word_embeddings_layernorm),
    ALiBi, query_key_value fused head by head ([q k v] per head), biases everywhere, Megatron's
    tanh-approximated gelu (bloom_gelu, sqrt(2/pi) rounded to 0.79788456: within 1e-9 of
    gelu_tanh in float64), an MLP of 4 x hidden_size, a tied head. ALiBi fixes no length: the context is
    seq_length where the config has one, else 2048, BLOOM's training length. pretraining_tp
    alone changes nothing."""
    cfg.require("apply_residual_connection_post_layernorm", {False}, False,
                "every residual then starts from the normalised input, norm(x) + attn(norm(x)), which no lmspec "
                "placement computes")
    if cfg.get("slow_but_exact", False) and int(cfg.get("pretraining_tp", 1)) > 1:
        # the output projections summed over slices of their input, F.linear without the bias
        raise HFImportError(f"bloom config.json sets slow_but_exact=True with pretraining_tp="
                            f"{cfg.get('pretraining_tp')}: transformers then drops the biases of the attention's "
                            "dense and the MLP's dense_4h_to_h (but not dense_h_to_4h's), which lmspec's biases "
                            "cannot express (with slow_but_exact false, transformers adds them, as lmspec does)")
    d, heads = _size(cfg, "hidden_size", "n_embed"), _size(cfg, "n_head", "num_attention_heads")
    _one_dropout(cfg, ("hidden_dropout", "attention_dropout"))
    layer = LayerConfig(
        d_model=d,
        heads=heads,
        kv_heads=heads,
        head_dim=_head_dim(cfg, d, heads, "hidden_size, n_head"),
        d_ff=4 * d,  # fixed by BloomMLP
        attention=AttentionConfig("causal"),
        position=PositionConfig("alibi"),
        norm="layernorm",
        norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
        placement="pre",
        activation="gelu_tanh",
        bias=True,
        dropout=float(cfg.get("hidden_dropout", 0.0)),
    )
    return _decoder_arch(cfg, name, (layer,) * _size(cfg, "n_layer", "num_hidden_layers"),
                         context=int(cfg.get("seq_length", 2048)), position=PositionConfig("alibi"),
                         heads=_lm_heads(cls), tied_by_default=True, embed_norm=True)


def _mpt(cfg: _Config, name: str, cls: str, tensor_names: Collection[str] | None) -> ArchConfig:
    """MPT as transformers' MptModel computes it: pre-norm LayerNorms without biases, ALiBi
    (alibi_bias_max 8: the slopes lmspec's alibi computes, for any head count), Wqkv fused
    [q | k | v], the exact-gelu MLP of 4 x d_model, no bias anywhere, a tied head. MptModel
    hard-codes much that llm-foundry's config could change (no_bias, expansion_ratio, qk_ln,
    logit_scale...): a config that changes one describes a model MptModel does not compute,
    and is refused naming it. softmax_scale is lmspec's attention_scale: null (1/sqrt(head_dim))
    is inverse_sqrt, 1 is none, any other positive number that number."""
    attn = dict(cfg.get("attn_config") or {})

    def require(key: str, allowed: Collection[Any], default: Any, why: str) -> None:
        value = default if attn.get(key) is None else attn[key]
        if value not in allowed:
            raise HFImportError(f"mpt config.json sets attn_config.{key}={value!r}: {why}")

    ignored = "transformers' MptModel ignores it"
    cfg.require("no_bias", {True}, True, "transformers' MptModel has no biases whatever no_bias says, and would "
                "drop the checkpoint's")
    cfg.require("expansion_ratio", {4}, 4, "transformers' MptModel always builds an MLP of 4 x d_model")
    cfg.require("logit_scale", {None, 1}, None, f"{ignored}, and lmspec has no logit scale")
    cfg.require("embedding_fraction", {1}, 1, "it scales the embeddings' gradients, which lmspec does not "
                f"({ignored})")
    cfg.require("norm_type", {"low_precision_layernorm", "layernorm"}, "low_precision_layernorm",
                f"{ignored} and computes a LayerNorm")
    require("attn_type", {"multihead_attention"}, "multihead_attention",
            "transformers' MptModel fuses q, k and v of every head (Wqkv, 3 x d_model rows)")
    require("clip_qkv", {None, 0}, None, "lmspec does not clamp the fused queries, keys and values")
    require("qk_ln", {False}, False, f"{ignored} (the checkpoint's norms over q and k would go unused)")
    require("prefix_lm", {False}, False, f"{ignored} and attends causally")
    require("attn_uses_sequence_id", {False}, False, f"{ignored} and attends across sequences")
    require("alibi", {True}, True, "transformers' MptModel adds ALiBi whatever alibi says")
    require("alibi_bias_max", {8}, 8, "lmspec's ALiBi slopes are 2 ** (-8 h / heads) (alibi_bias_max 8)")
    if tensor_names is not None and any(n.endswith("wpe.weight") for n in tensor_names):
        raise HFImportError("mpt checkpoint holds learned positions (wpe.weight), which transformers' MptModel "
                            "never reads: it computes ALiBi only")
    d, heads = _size(cfg, "d_model", "hidden_size"), _size(cfg, "n_heads", "num_attention_heads")
    head_dim = _head_dim(cfg, d, heads, "d_model, n_heads")
    scale = attn.get("softmax_scale")
    if scale is not None and not scale > 0:
        raise HFImportError(f"mpt config.json sets attn_config.softmax_scale={scale!r}: lmspec's attention_scale "
                            "multiplies q.k by a positive number")
    if scale is None or math.isclose(scale, head_dim**-0.5, rel_tol=1e-9):
        attention_scale: Any = "inverse_sqrt"
    else:
        attention_scale = "none" if scale == 1 else float(scale)
    rates = {"attn_config.attn_pdrop": float(attn.get("attn_pdrop") or 0.0),
             "resid_pdrop": float(cfg.get("resid_pdrop", 0.0)), "emb_pdrop": float(cfg.get("emb_pdrop", 0.0))}
    if len(set(rates.values())) > 1:
        shown = ", ".join(f"{key}={rate!r}" for key, rate in rates.items())
        raise HFImportError(f"mpt config.json sets {shown}: lmspec has one dropout rate for the embeddings, the "
                            "attention weights and the residual branches; make them equal")
    layer = LayerConfig(
        d_model=d,
        heads=heads,
        kv_heads=heads,
        head_dim=head_dim,
        d_ff=4 * d,
        attention=AttentionConfig("causal", scale=attention_scale),
        position=PositionConfig("alibi"),
        norm="layernorm",
        norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
        norm_bias=False,
        placement="pre",
        activation="gelu",
        bias=False,
        dropout=rates["resid_pdrop"],
    )
    return _decoder_arch(cfg, name, (layer,) * _size(cfg, "n_layers", "num_hidden_layers"),
                         context=int(cfg.get("max_seq_len", 2048)), position=PositionConfig("alibi"),
                         heads=_lm_heads(cls), tied_by_default=True, norm_bias=False)

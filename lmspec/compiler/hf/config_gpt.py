"""The config.json builders of the LayerNorm decoders of the GPT lineage: GPT-2 (pre-norm,
learned positions), GPT-NeoX and Pythia, Phi-1/1.5/2 and GPT-J (RoPE, attention and MLP side
by side), OPT (learned positions from row 2), and Falcon, BLOOM and MPT (query_key_value fused
in one projection, one flag for every bias). config.py maps each model_type to its builder.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from ..arch import (
    ArchConfig,
    AttentionConfig,
    HeadConfig,
    LayerConfig,
    PositionConfig,
)
from .config_common import _BARE, _Config, _activation, _decoder_arch, _lm_heads, _one_dropout, _rope
from .errors import HFImportError


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

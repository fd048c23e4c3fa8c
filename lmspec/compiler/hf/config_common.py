"""What the config.json builders share: `_Config` (config.json with errors that name the model
type and the key), the activations, heads and tying every family reads alike, `_decoder_arch`
(the model-level fields of a decoder-only family), RoPE as transformers 4 and 5 write it
(`_rope`, `_rope_scaling`) and lmspec's one dropout rate (`_one_dropout`).

The builders themselves live by kind in config_encoders.py, config_llama.py and config_gpt.py;
config.py maps each model_type to its builder.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ..arch import (
    GATED_ACTIVATIONS,
    Activation,
    ArchConfig,
    HeadConfig,
    LayerConfig,
    PositionConfig,
    RopeScaling,
    StackConfig,
)
from .errors import HFImportError


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


def _one_dropout(cfg: _Config, keys: tuple[str, ...]) -> None:
    """lmspec has one dropout rate, for the embeddings, the attention weights and each residual
    branch alike: a config that sets those apart is refused."""
    rates = {key: float(cfg.get(key, 0.0)) for key in keys}
    if len(set(rates.values())) > 1:
        shown = ", ".join(f"{key}={rate!r}" for key, rate in rates.items())
        raise HFImportError(f"{cfg.model_type} config.json sets {shown}: lmspec has one dropout rate for the "
                            "embeddings, the attention weights and the residual branches; make them equal")

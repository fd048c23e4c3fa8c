"""The lowered architecture: what a `model` block means once every default,
reference and per-layer override has been applied.

This is the one contract between the language front end and everything that
builds or measures a model: `compiler.build` turns an `ArchConfig` into
`torch.nn` modules, `compiler.analysis` counts its parameters, FLOPs and
memory, `compiler.graphs` draws it. Nothing here imports torch.

Every layer carries its own `LayerConfig`, so a heterogeneous stack (a few
sliding-window layers among global ones, say) needs no special case
downstream: consumers iterate `stack.layers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Arch = Literal["decoder", "encoder", "encoder_decoder"]
AttentionKind = Literal["causal", "bidirectional", "sliding", "prefix"]
PositionKind = Literal["learned", "sinusoidal", "rope", "alibi", "relative", "none"]
NormKind = Literal["layernorm", "rmsnorm"]
Placement = Literal["pre", "post"]
Activation = Literal["gelu", "gelu_tanh", "relu", "silu", "swiglu", "geglu", "geglu_tanh", "reglu"]
HeadKind = Literal["lm", "mlm", "nsp", "classifier", "scalar"]

#: activations whose MLP has a gate projection (three matrices instead of two)
GATED_ACTIVATIONS = frozenset({"swiglu", "geglu", "geglu_tanh", "reglu"})


@dataclass(frozen=True)
class AttentionConfig:
    kind: AttentionKind = "causal"
    window: int | None = None  # sliding: each query sees itself and the `window - 1` keys before it
    # T5 does not scale q.k by 1/sqrt(head_dim) (the scale is folded into its init): "none"
    scale: Literal["inverse_sqrt", "none"] = "inverse_sqrt"


@dataclass(frozen=True)
class PositionConfig:
    kind: PositionKind = "learned"
    theta: float = 10_000.0  # rope base
    buckets: int = 32  # relative (T5) bias buckets
    max_distance: int = 128  # relative (T5) bias: distances beyond this share the last bucket


@dataclass(frozen=True)
class LayerConfig:
    """One transformer block. Fields that may differ per layer live here."""

    d_model: int
    heads: int
    kv_heads: int  # == heads: multi-head; 1: multi-query; in between: grouped-query
    head_dim: int  # usually d_model // heads; may be set explicitly
    d_ff: int
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    position: PositionConfig = field(default_factory=PositionConfig)  # used when rope/alibi/relative
    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    placement: Placement = "pre"
    activation: Activation = "gelu"
    bias: bool = True  # bias on the attention and MLP projections
    dropout: float = 0.0
    cross_attention: bool = False  # decoder layers of an encoder-decoder


@dataclass(frozen=True)
class StackConfig:
    """A stack of layers: the encoder or the decoder of a model."""

    layers: tuple[LayerConfig, ...]
    final_norm: bool = True  # a norm after the last layer (pre-norm stacks need it)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def relative_layer(self) -> LayerConfig | None:
        """The layer whose settings size the stack's shared relative-position bias table (the
        first layer with `position: relative`), or None when no layer of the stack uses one."""
        return next((layer for layer in self.layers if layer.position.kind == "relative"), None)


@dataclass(frozen=True)
class HeadConfig:
    """An output head on top of the final hidden states."""

    kind: HeadKind
    classes: int = 2  # classifier: number of classes; nsp: always 2
    # mlm: BERT's dense + activation + norm before the vocabulary projection
    transform: bool = False
    # classifier/scalar: "pooler" reads the pooled first token; "last" the last real token;
    # "mean" the mean over real tokens
    pool: Literal["first", "last", "mean"] = "last"


@dataclass(frozen=True)
class ArchConfig:
    """A whole model, fully lowered. Built by `compiler.lower` from a `model` block."""

    name: str
    arch: Arch
    vocab: int
    context: int  # the longest sequence the model is built for
    d_model: int
    position: PositionConfig  # learned/sinusoidal are added to embeddings; others act in attention
    encoder: StackConfig | None = None  # encoder and encoder_decoder
    decoder: StackConfig | None = None  # decoder and encoder_decoder
    heads: tuple[HeadConfig, ...] = (HeadConfig("lm"),)
    tie_embeddings: bool = False  # the lm/mlm head reuses the token embedding matrix
    segments: int = 0  # token-type (segment) embeddings; BERT uses 2
    pooler: bool = False  # BERT's dense + tanh over the first token
    embed_norm: bool = False  # a norm right after the embeddings (BERT)
    embed_scale: float = 1.0  # token embeddings are multiplied by this
    # T5 multiplies the final hidden states by d_model**-0.5 before a tied lm head
    tied_head_scale: float = 1.0
    norm: NormKind = "layernorm"  # for the embedding norm and the heads' norms
    norm_eps: float = 1e-5
    activation: Activation = "gelu"  # for the heads' transforms
    dropout: float = 0.0
    pad_id: int | None = None
    mask_id: int | None = None

    @property
    def stacks(self) -> tuple[StackConfig, ...]:
        return tuple(s for s in (self.encoder, self.decoder) if s is not None)

    def head(self, kind: HeadKind) -> HeadConfig | None:
        return next((h for h in self.heads if h.kind == kind), None)


def arch_to_dict(arch: ArchConfig) -> dict:
    """Plain JSON for an ArchConfig (a run directory stores it beside the weights)."""
    from dataclasses import asdict

    return asdict(arch)


def arch_from_dict(data: dict) -> ArchConfig:
    """The inverse of `arch_to_dict`."""

    def layer(d: dict) -> LayerConfig:
        return LayerConfig(**{**d, "attention": AttentionConfig(**d["attention"]),
                              "position": PositionConfig(**d["position"])})

    def stack(d: dict | None) -> StackConfig | None:
        return None if d is None else StackConfig(tuple(layer(x) for x in d["layers"]), d["final_norm"])

    return ArchConfig(**{**data, "position": PositionConfig(**data["position"]), "encoder": stack(data["encoder"]),
                         "decoder": stack(data["decoder"]), "heads": tuple(HeadConfig(**h) for h in data["heads"])})

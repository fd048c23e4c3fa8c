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
Placement = Literal["pre", "post", "sandwich"]  # sandwich: a norm before and after each sublayer (Gemma 2)
Activation = Literal["gelu", "gelu_tanh", "relu", "silu", "swiglu", "geglu", "geglu_tanh", "reglu"]
HeadKind = Literal["lm", "mlm", "nsp", "classifier", "scalar"]

#: activations whose MLP has a gate projection (three matrices instead of two)
GATED_ACTIVATIONS = frozenset({"swiglu", "geglu", "geglu_tanh", "reglu"})
#: how far `fraction x head_dim` may be from a whole number of rotated dimensions: a fraction
#: written with 6 digits (0.291667 of 96 is 28.00003) means that whole number
ROTARY_TOLERANCE = 1e-3

#: the projections of a layer that `bias` switches, each also on its own (`qkv_bias`, ...)
BIAS_PROJECTIONS = ("qkv", "out", "mlp")


@dataclass(frozen=True)
class AttentionConfig:
    kind: AttentionKind = "causal"
    window: int | None = None  # sliding: each query sees itself and the `window - 1` keys before it
    # T5 does not scale q.k by 1/sqrt(head_dim) (the scale is folded into its init): "none";
    # a number multiplies the scores instead (Gemma 2 27B: query_pre_attn_scalar 144 -> 144 ** -0.5)
    scale: Literal["inverse_sqrt", "none"] | float = "inverse_sqrt"
    # scores become softcap * tanh(scores / softcap) after scaling, before the mask (Gemma 2: 50.0)
    softcap: float | None = None


@dataclass(frozen=True)
class RopeScaling:
    """How RoPE's frequencies are stretched for a longer context than the model was trained on.

    linear: every frequency divided by `factor` (positions interpolated). llama3 (Llama 3.1):
    wavelengths longer than original_context / low_freq are divided by `factor`, those shorter
    than original_context / high_freq are kept, and those between are interpolated smoothly.
    yarn (Qwen, DeepSeek): frequencies that turn fewer than beta_slow times over the original
    context are divided by `factor`, those turning more than beta_fast times kept, a linear ramp
    between, and cos and sin scaled by attention_factor. longrope (Phi-3): frequency i divided
    by short_factor[i], or by long_factor[i] in a forward pass that reaches past the original
    context, cos and sin scaled by attention_factor. attention_factor None: derived from factor
    (and mscale, mscale_all_dim) as transformers derives it."""

    kind: Literal["linear", "llama3", "yarn", "longrope"]
    factor: float
    low_freq: float = 1.0  # llama3 only
    high_freq: float = 4.0  # llama3 only
    original_context: int = 8192  # llama3, yarn, longrope: the context the model was pre-trained with
    beta_fast: float = 32.0  # yarn: frequencies turning more often than this over original_context are kept
    beta_slow: float = 1.0  # yarn: frequencies turning less often than this are divided by factor
    truncate: bool = True  # yarn: round the ramp's ends to whole dimensions
    mscale: float | None = None  # yarn (DeepSeek): attention_factor = mscale(factor) / mscale_all_dim(factor)
    mscale_all_dim: float | None = None
    attention_factor: float | None = None  # yarn, longrope: what cos and sin are multiplied by
    short_factor: tuple[float, ...] = ()  # longrope: one divisor per rotated frequency (rotated dims / 2)
    long_factor: tuple[float, ...] = ()  # longrope: the divisors past the original context


@dataclass(frozen=True)
class MoEConfig:
    """A mixture-of-experts MLP: a router (linear d_model -> experts, no bias) scores every token,
    softmax then top-k picks its experts and the k weights are renormalised to sum to one
    (Mixtral); each routed expert is an MLP of the layer's d_ff, activation and biases.
    `shared_experts` more run on every token (DeepSeek, Qwen-MoE), built as one MLP of
    shared_experts x d_ff (the same function as that many of width d_ff, summed)."""

    experts: int = 8
    top_k: int = 2
    shared_experts: int = 0
    router_jitter: float = 0.0  # training only: the layer's input times uniform(1 - j, 1 + j), as Mixtral
    aux_loss: float = 0.001  # coefficient of the load-balancing loss in the objective (Mixtral's default)


@dataclass(frozen=True)
class PositionConfig:
    kind: PositionKind = "learned"
    theta: float = 10_000.0  # rope base
    buckets: int = 32  # relative (T5) bias buckets
    max_distance: int = 128  # relative (T5) bias: distances beyond this share the last bucket
    fraction: float = 1.0  # rope: the share of each head's dimensions that rotate (GPT-NeoX: 0.25)
    # rope: which dimensions pair up: "half" rotates i with i + dims/2 (Llama, GPT-NeoX), "interleaved"
    # 2i with 2i + 1 (GPT-J)
    layout: Literal["half", "interleaved"] = "half"
    scaling: RopeScaling | None = None  # rope: stretched frequencies (Llama 3.1: llama3)

    def rotary_dims(self, head_dim: int) -> int | None:
        """How many of a head's dimensions RoPE rotates, or None when `fraction` of `head_dim`
        is not a whole number."""
        dims = self.fraction * head_dim
        return round(dims) if abs(dims - round(dims)) < ROTARY_TOLERANCE else None


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
    norm_bias: bool = True  # layernorm: a bias beside its weight (OLMo and MPT have none)
    # every norm multiplies by (norm_offset + weight), its weight starting at 1 - norm_offset (Gemma: 1)
    norm_offset: float = 0.0
    placement: Placement = "pre"
    activation: Activation = "gelu"
    bias: bool = True  # biases on every attention and MLP projection, unless one below says otherwise
    # one kind of projection on its own, where it differs from `bias` (None: as `bias`): qkv the
    # query, key and value projections (Qwen2 biases only these), out the attention output, mlp the MLP's
    qkv_bias: bool | None = None
    out_bias: bool | None = None
    mlp_bias: bool | None = None
    qk_norm: bool = False  # a norm (of the layer's kind) over each query and key head, before RoPE (Qwen3)
    dropout: float = 0.0
    cross_attention: bool = False  # decoder layers of an encoder-decoder
    parallel: bool = False  # attention and MLP both read the layer's input; their outputs are added to it
    shared_norm: bool = False  # parallel: one norm feeds both branches (GPT-J, Phi-2); else each its own
    moe: MoEConfig | None = None  # None: one dense MLP; else a mixture of experts of that MLP

    def __post_init__(self):
        # one spelling per model, so that equal models compare equal: `bias` is true only when
        # every projection has one, and a projection keeps its own flag only where it differs
        biased = {p: self.biased(p) for p in BIAS_PROJECTIONS}
        bias = all(biased.values())
        object.__setattr__(self, "bias", bias)
        for projection, value in biased.items():
            object.__setattr__(self, f"{projection}_bias", None if value == bias else value)
        if not self.parallel:  # a sequential layer has a norm per sublayer
            object.__setattr__(self, "shared_norm", False)

    def biased(self, projection: str) -> bool:
        """Whether the projections of one kind ("qkv", "out" or "mlp") have biases."""
        own = getattr(self, f"{projection}_bias")
        return self.bias if own is None else own


@dataclass(frozen=True)
class StackConfig:
    """A stack of layers: the encoder or the decoder of a model."""

    layers: tuple[LayerConfig, ...]
    final_norm: bool = True  # a norm after the last layer (pre-norm and sandwich stacks need it)
    # encoder-decoder only: this stack embeds with its own learned position table (context +
    # position_offset rows) and/or its own norm after the embeddings, where the model's
    # `position` / `embed_norm` would give both stacks one shared table / norm (BART)
    own_positions: bool = False
    own_embed_norm: bool = False

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
    bias: bool = False  # lm: a bias on the vocabulary projection (GPT-J, Phi-2)
    softcap: float | None = None  # lm: logits become softcap * tanh(logits / softcap) (Gemma 2: 30.0)


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
    position_offset: int = 0  # learned position p reads row p + offset of a context + offset table (OPT, RoBERTa)
    # T5 multiplies the final hidden states by d_model**-0.5 before a tied lm head
    tied_head_scale: float = 1.0
    norm: NormKind = "layernorm"  # for the embedding norm and the heads' norms
    norm_eps: float = 1e-5
    norm_bias: bool = True  # whether those norms, when LayerNorms, have a bias
    norm_offset: float = 0.0  # those norms multiply by (norm_offset + weight), as the layers' do
    activation: Activation = "gelu"  # for the heads' transforms
    dropout: float = 0.0
    pad_id: int | None = None
    mask_id: int | None = None
    # encoder-decoders: the token the decoder starts from (BART: 2); None: the pad id (T5)
    decoder_start_id: int | None = None

    @property
    def stacks(self) -> tuple[StackConfig, ...]:
        return tuple(s for s in (self.encoder, self.decoder) if s is not None)

    @property
    def shared_positions(self) -> bool:
        """Whether the model has the one learned position table that stacks without their own read."""
        return self.position.kind == "learned" and any(not s.own_positions for s in self.stacks)

    @property
    def shared_embed_norm(self) -> bool:
        """Whether the model has the one embedding norm that stacks without their own read."""
        return self.embed_norm and any(not s.own_embed_norm for s in self.stacks)

    def head(self, kind: HeadKind) -> HeadConfig | None:
        return next((h for h in self.heads if h.kind == kind), None)


def arch_to_dict(arch: ArchConfig) -> dict:
    """Plain JSON for an ArchConfig (a run directory stores it beside the weights)."""
    from dataclasses import asdict

    return asdict(arch)


def arch_from_dict(data: dict) -> ArchConfig:
    """The inverse of `arch_to_dict`."""

    def position(d: dict) -> PositionConfig:
        scaling = d.get("scaling")
        return PositionConfig(**{**d, "scaling": None if scaling is None else RopeScaling(**{
            **scaling, "short_factor": tuple(scaling.get("short_factor", ())),
            "long_factor": tuple(scaling.get("long_factor", ()))})})

    def layer(d: dict) -> LayerConfig:
        moe = d.get("moe")
        return LayerConfig(**{**d, "attention": AttentionConfig(**d["attention"]), "position": position(d["position"]),
                              "moe": None if moe is None else MoEConfig(**moe)})

    def stack(d: dict | None) -> StackConfig | None:
        return None if d is None else StackConfig(tuple(layer(x) for x in d["layers"]), d["final_norm"],
                                                    d.get("own_positions", False), d.get("own_embed_norm", False))

    return ArchConfig(**{**data, "position": position(data["position"]), "encoder": stack(data["encoder"]),
                         "decoder": stack(data["decoder"]), "heads": tuple(HeadConfig(**h) for h in data["heads"])})

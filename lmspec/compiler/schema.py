"""The schema: what each block kind accepts — keys, types, ranges, defaults, docs.

One pydantic model per block kind. Variants (`rope(theta: 10_000)`,
`cosine(warmup: 100)`) are small models with a `kind` tag; a bare name such as
`learned` is the variant with no arguments. The same models produce the JSON
Schema (`lmspec schema`) and the key tables in docs/language.md.

`compiler.schema_check` reads a `ResolvedSpec` into these models and turns
every problem into a located diagnostic with "did you mean".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from lmspec.grammar.ast import layer_covers, layer_selector

__all__ = [
    "BLOCK_KINDS", "TokenizerSpec", "DataSpec", "ModelSpec", "TrainSpec", "JudgeSpec", "FeedbackSpec", "RLSpec",
    "Ref_",
]


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Block(Schema):
    """A top-level block. Every kind can silence warnings located in its own text."""

    allow: list[str] = Field([], description='warning codes not to report for this block, e.g. ["LMS081"]; '
                                             "errors cannot be allowed")


class Variant(Schema):
    """A tagged choice. Positional arguments fill the fields after `kind` in order."""


@dataclass(frozen=True)
class RefTo:
    """Marks a `str` field as a reference to a top-level block of one of these kinds."""

    kinds: tuple[str, ...]


def Ref_(*kinds: str):  # noqa: N802 - reads as a type in annotations
    return Annotated[str, RefTo(kinds)]


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]  # torch rejects a beta outside [0, 1) at setup
MAX_LAYERS = 4096  # the deepest published transformers have ~200; checks walk every layer

# ----------------------------------------------------------------------------- tokenizer


class BytesTokenizer(Variant):
    kind: Literal["bytes"] = "bytes"


class BPETokenizer(Variant):
    kind: Literal["bpe"] = "bpe"
    vocab: int = Field(4096, ge=260, le=1_000_000, description="vocabulary size, special tokens included")
    train_on: Ref_("data") | None = Field(None, description="the data block the merges are learned from")


class HFTokenizer(Variant):
    kind: Literal["hf"] = "hf"
    path: str = Field(description="a local directory with tokenizer.json")


TokenizerKind = Annotated[Union[BytesTokenizer, BPETokenizer, HFTokenizer], Field(discriminator="kind")]
SpecialToken = Literal["pad", "bos", "eos", "mask", "sep", "cls", "unk"]


class TokenizerSpec(Block):
    """How text becomes token ids."""

    kind: TokenizerKind = Field(description="bytes | bpe(vocab, train_on) | hf(path)")
    specials: list[SpecialToken] = Field(["pad", "bos", "eos", "mask", "sep", "cls"],
                                         description="special tokens, in id order after the base vocabulary")
    sentinels: int = Field(0, ge=0, le=1000, description="sentinel tokens for span corruption (T5's <extra_id_n>)")


# ----------------------------------------------------------------------------- data


class BuiltinSource(Variant):
    kind: Literal["builtin"] = "builtin"
    name: Literal["tiny-stories", "tiny-reviews", "tiny-instructions"] = Field(
        description="a small corpus that ships with lmspec")


class TextFileSource(Variant):
    kind: Literal["text"] = "text"
    path: str = Field(description="a UTF-8 text file; documents separated by blank lines")


class JsonlSource(Variant):
    kind: Literal["jsonl"] = "jsonl"
    path: str = Field(description="a JSON-lines file, one example per line")


DataSource = Annotated[Union[BuiltinSource, TextFileSource, JsonlSource], Field(discriminator="kind")]


class DataSpec(Block):
    """A dataset: where examples come from and how they split."""

    source: DataSource = Field(description='builtin("tiny-stories") | text("path") | jsonl("path")')
    validation: float = Field(0.02, ge=0.0, lt=1.0, description="fraction held out for evaluation")
    text: str = Field("text", description="the field holding the text (jsonl)")
    label: str | None = Field(None, description="the field holding a class label, for classify")
    prompt: str = Field("prompt", description="the field holding the prompt, for sft")
    response: str = Field("response", description="the field holding the response, for sft")
    shuffle: bool = Field(True, description="shuffle examples each epoch")
    seed: int = Field(0, ge=0, description="seed for the split and the shuffle")
    max_examples: int | None = Field(None, ge=1, description="use only the first N examples")


# ----------------------------------------------------------------------------- model


class Causal(Variant):
    kind: Literal["causal"] = "causal"


class Bidirectional(Variant):
    kind: Literal["bidirectional"] = "bidirectional"


class Sliding(Variant):
    kind: Literal["sliding"] = "sliding"
    window: int = Field(ge=1, description="each token sees itself and the window - 1 tokens before it")


class Prefix(Variant):
    kind: Literal["prefix"] = "prefix"


Attention = Annotated[Union[Causal, Bidirectional, Sliding, Prefix], Field(discriminator="kind")]


class Learned(Variant):
    kind: Literal["learned"] = "learned"


class Sinusoidal(Variant):
    kind: Literal["sinusoidal"] = "sinusoidal"


class LinearRopeScaling(Variant):
    """`linear(factor: 4)`: every RoPE frequency divided by factor (position interpolation)."""

    kind: Literal["linear"] = "linear"
    factor: float = Field(gt=0, description="frequencies are divided by this")


class Llama3RopeScaling(Variant):
    """`llama3(factor: 8)`: Llama 3.1's frequency-dependent scaling of RoPE."""

    kind: Literal["llama3"] = "llama3"
    factor: float = Field(8.0, gt=0, description="the low frequencies are divided by this")
    low_freq: float = Field(1.0, gt=0, description="wavelengths above original_context / low_freq are scaled")
    high_freq: float = Field(4.0, gt=0, description="wavelengths below original_context / high_freq are kept; "
                                                    "those between are interpolated")
    original_context: int = Field(8192, ge=1, description="the context the model was pre-trained with")


class YarnRopeScaling(Variant):
    """`yarn(factor: 4, original_context: 32768)`: YaRN's blend of interpolated and kept RoPE
    frequencies, with cos and sin scaled by an attention factor (Qwen2.5/Qwen3, DeepSeek)."""

    kind: Literal["yarn"] = "yarn"
    factor: float = Field(gt=0, description="the slow frequencies are divided by this (context / original_context)")
    original_context: int = Field(ge=1, description="the context the model was pre-trained with")
    beta_fast: float = Field(32.0, gt=0, description="frequencies turning more often than this over "
                                                     "original_context are kept")
    beta_slow: float = Field(1.0, gt=0, description="frequencies turning less often than this are divided by "
                                                    "factor; those between are blended along a linear ramp")
    truncate: bool = Field(True, description="round the ramp's ends to whole dimensions (transformers' default)")
    attention_factor: float | None = Field(None, gt=0, description="cos and sin are multiplied by this; none: "
                                           "0.1 ln(factor) + 1, or the mscale ratio")
    mscale: float | None = Field(None, description="DeepSeek: attention_factor = (0.1 mscale ln(factor) + 1) / "
                                                   "(0.1 mscale_all_dim ln(factor) + 1)")
    mscale_all_dim: float | None = Field(None, description="DeepSeek: see mscale")


Divisor = Annotated[float, Field(gt=0)]


class LongRopeScaling(Variant):
    """`longrope(short_factor: [...], long_factor: [...], original_context: 4096, factor: 32)`:
    Phi-3's per-frequency divisors, long ones in a forward pass that reaches past the original context."""

    kind: Literal["longrope"] = "longrope"
    short_factor: list[Divisor] = Field(description="one divisor per rotated frequency (rotated dims / 2), "
                                                    "used while positions stay within original_context")
    long_factor: list[Divisor] = Field(description="the divisors of a forward pass whose positions reach past "
                                                   "original_context")
    original_context: int = Field(ge=1, description="the context the model was pre-trained with")
    factor: float = Field(gt=0, description="context / original_context (Phi-3-128k: 32); sets the default "
                                            "attention_factor")
    attention_factor: float | None = Field(None, gt=0, description="cos and sin are multiplied by this; none: "
                                           "sqrt(1 + ln(factor) / ln(original_context)), 1 when factor <= 1")


RopeScaling = Annotated[Union[LinearRopeScaling, Llama3RopeScaling, YarnRopeScaling, LongRopeScaling],
                        Field(discriminator="kind")]


class Rope(Variant):
    kind: Literal["rope"] = "rope"
    theta: float = Field(10_000.0, gt=0, description="the rotary base")
    scaling: RopeScaling | None = Field(None, description="linear(factor) | llama3(factor, low_freq, high_freq, "
                                                          "original_context) | yarn(factor, original_context, ...) | "
                                                          "longrope(short_factor, long_factor, original_context, "
                                                          "factor); none: the plain frequencies")
    fraction: float = Field(1.0, gt=0, le=1, description="the share of each head's dimensions that rotate "
                                                         "(GPT-NeoX: 25%); the rest pass through")
    layout: Literal["half", "interleaved"] = Field("half", description="half: dimension i pairs with i + d/2 "
                                                   "(Llama, GPT-NeoX); interleaved: 2i with 2i + 1 (GPT-J)")


class Alibi(Variant):
    kind: Literal["alibi"] = "alibi"


class Relative(Variant):
    kind: Literal["relative"] = "relative"
    buckets: int = Field(32, ge=2, le=1024, description="number of relative-position buckets")
    max_distance: int = Field(128, ge=2, description="distances beyond this share the last bucket")


class NoPosition(Variant):
    kind: Literal["none"] = "none"


Position = Annotated[Union[Learned, Sinusoidal, Rope, Alibi, Relative, NoPosition], Field(discriminator="kind")]


class LMHead(Variant):
    kind: Literal["lm"] = "lm"
    bias: bool = Field(False, description="a bias on the vocabulary projection (GPT-J, Phi-2)")
    softcap: float | None = Field(None, gt=0, description="logits become softcap * tanh(logits / softcap) "
                                                          "(Gemma 2: 30); none: uncapped")


class MLMHead(Variant):
    kind: Literal["mlm"] = "mlm"
    transform: bool = Field(False, description="BERT's dense + activation + norm before the vocabulary projection")


class NSPHead(Variant):
    kind: Literal["nsp"] = "nsp"


Pool = Literal["first", "last", "mean"]


class ClassifierHead(Variant):
    kind: Literal["classifier"] = "classifier"
    classes: int = Field(2, ge=2, description="number of classes")
    pool: Pool = Field("last", description="first | last | mean: which hidden state(s) the head reads")


class ScalarHead(Variant):
    kind: Literal["scalar"] = "scalar"
    pool: Pool = Field("last", description="first | last | mean")


class NoHead(Variant):
    kind: Literal["none"] = "none"


Head = Annotated[Union[LMHead, MLMHead, NSPHead, ClassifierHead, ScalarHead, NoHead], Field(discriminator="kind")]
class Sequential(Variant):
    kind: Literal["sequential"] = "sequential"


class Parallel(Variant):
    """`parallel`: attention and MLP both read the layer's input (GPT-J, GPT-NeoX, Phi-2)."""

    kind: Literal["parallel"] = "parallel"
    norms: int = Field(1, ge=1, le=2, description="1: one norm feeds both (GPT-J, Phi-2, Falcon); "
                                                  "2: each has its own (GPT-NeoX, Pythia)")


Residual = Annotated[Union[Sequential, Parallel], Field(discriminator="kind")]


class DenseMLP(Variant):
    """`dense`: one MLP that every token passes through."""

    kind: Literal["dense"] = "dense"


class MoEMLP(Variant):
    """`moe(experts: 8, top_k: 2)`: a mixture of experts, each token routed to top_k of them (Mixtral)."""

    kind: Literal["moe"] = "moe"
    experts: int = Field(8, ge=2, le=4096, description="routed experts, each an MLP of d_ff")
    top_k: int = Field(2, ge=1, description="experts each token is routed to; their weights are renormalised")
    shared_experts: int = Field(0, ge=0, description="experts every token also passes through (DeepSeek, Qwen-MoE)")
    router_jitter: float = Field(0.0, ge=0.0, lt=1.0, description="training only: the input is multiplied by "
                                                                  "uniform(1 - jitter, 1 + jitter) noise (Mixtral)")
    aux_loss: float = Field(0.001, ge=0.0, description="coefficient of the load-balancing loss added to the "
                                                       "objective (Switch; Mixtral's default 0.001)")

    @model_validator(mode="after")
    def _top_k_fits(self):
        if self.top_k > self.experts:
            raise PydanticCustomError("moe_top_k", "top_k ({top_k}) must be at most experts ({experts}): write "
                                      "`top_k: {experts}` or `experts: {top_k}`",
                                      {"top_k": self.top_k, "experts": self.experts})
        return self


MLP = Annotated[Union[DenseMLP, MoEMLP], Field(discriminator="kind")]
NormName = Literal["layernorm", "rmsnorm"]
ActivationName = Literal["gelu", "gelu_tanh", "relu", "silu", "swiglu", "geglu", "geglu_tanh", "reglu"]


class LayerFields(Schema):
    """Keys that may differ per layer: inside `layer a..b { }`, `encoder { }` and `decoder { }`."""

    heads: int | None = Field(None, ge=1, description="attention heads")
    kv_heads: int | None = Field(None, ge=1, description="key/value heads (grouped-query); 1 = multi-query")
    head_dim: int | None = Field(None, ge=1, description="width of one head; default d_model / heads")
    d_ff: int | None = Field(None, ge=1, description="hidden width of the MLP; default 4 * d_model")
    attention: Attention | None = Field(None, description="causal | bidirectional | sliding(window) | prefix")
    position: Position | None = Field(None, description="rope/alibi/relative/none per layer")
    norm: NormName | None = Field(None, description="layernorm | rmsnorm")
    activation: ActivationName | None = Field(None, description="gelu | gelu_tanh | relu | silu | swiglu | geglu | geglu_tanh | reglu")
    bias: bool | None = Field(None, description="biases on the attention and MLP projections")
    qkv_bias: bool | None = Field(None, description="biases on the query, key and value projections; default bias")
    out_bias: bool | None = Field(None, description="a bias on the attention output projection; default bias")
    mlp_bias: bool | None = Field(None, description="biases on the MLP projections; default bias")
    qk_norm: bool | None = Field(None, description="normalise each query and key head before RoPE")
    attention_softcap: float | None = Field(None, gt=0, description="attention scores become softcap * "
                                            "tanh(scores / softcap) before the mask; default the model's")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="dropout probability")


class LayerOverrideSpec(LayerFields):
    first: int = Field(ge=0, description="first layer (inclusive); `from K` of `layer every N from K`, else 0")
    last: int | None = Field(None, ge=0, description="last layer (inclusive); none: the stack's last "
                                                     "(`layer every N`)")
    every: int = Field(1, ge=0, description="the step between the layers it applies to: `layer every 6 from 5`, "
                                            "`layer 0..7 every 2`")

    def covers(self, layer: int) -> bool:
        """Whether the override applies to `layer`: first, first + every, ... up to last."""
        return layer_covers(self.first, self.last, self.every, layer)

    def selector(self) -> str:
        """As written: `layer 3`, `layer 0..3`, `layer every 6 from 5`."""
        return layer_selector(self.first, self.last, self.every)


class StackSpec(LayerFields):
    """`encoder { }` / `decoder { }` of an encoder-decoder. Here `position: learned` gives the
    stack its own learned position table (else it reads the model's, shared by both stacks)."""

    layers: int = Field(ge=1, le=MAX_LAYERS, description="number of layers in this stack")
    embed_norm: bool | None = Field(None, description="true: this stack's own norm after its embeddings (BART); "
                                                      "default: the model's embed_norm, shared by both stacks")
    layer: list[LayerOverrideSpec] = Field([], description="per-layer overrides inside this stack")


class ModelSpec(Block):
    """A transformer architecture."""

    arch: Literal["decoder", "encoder", "encoder_decoder"] = Field(
        "decoder", description="decoder | encoder | encoder_decoder")
    vocab: int = Field(ge=2, description="vocabulary size (embedding rows)")
    context: int = Field(ge=1, description="longest sequence the model is built for")
    layers: int | None = Field(None, ge=1, le=MAX_LAYERS, description="number of layers (decoder or encoder)")
    d_model: int = Field(ge=1, description="hidden width")
    heads: int = Field(ge=1, description="attention heads")
    kv_heads: int | None = Field(None, ge=1, description="key/value heads; default heads; 1 = multi-query")
    head_dim: int | None = Field(None, ge=1, description="width of one head; default d_model / heads")
    d_ff: int | None = Field(None, ge=1, description="MLP hidden width; default 4 * d_model")
    attention: Attention | None = Field(None, description="default causal for decoders, bidirectional for encoders")
    attention_scale: Literal["inverse_sqrt", "none"] | Annotated[float, Field(gt=0)] = Field(
        "inverse_sqrt", description="inverse_sqrt: scores / sqrt(head_dim); none: unscaled (T5); a number: "
                                    "scores times it (Gemma 2 27B: 1 / 12, its query_pre_attn_scalar 144 ** -0.5)")
    attention_softcap: float | None = Field(None, gt=0, description="attention scores become softcap * "
                                            "tanh(scores / softcap) after scaling, before the mask (Gemma 2: 50); "
                                            "none: uncapped")
    position: Position = Field(Learned(), description="learned | sinusoidal | rope(theta) | alibi | "
                                                     "relative(buckets, max_distance) | none")
    norm: NormName = Field("layernorm", description="layernorm | rmsnorm")
    norm_eps: float = Field(1e-5, gt=0, lt=1, description="epsilon of every norm")
    norm_bias: bool = Field(True, description="LayerNorms have a bias beside their weight; false: weight only "
                                              "(OLMo, MPT)")
    norm_offset: float = Field(0.0, ge=-16, le=16, description="every norm multiplies by (norm_offset + weight), "
                                                               "its weight starting at 1 - norm_offset (Gemma: 1)")
    placement: Literal["pre", "post", "sandwich"] = Field(
        "pre", description="pre: norm before each sublayer; post: after the residual add; sandwich: before and "
                           "after each sublayer, inside the residual (Gemma 2, Gemma 3)")
    residual: Residual = Field(Sequential(), description="sequential: x + attn, then + mlp; parallel(norms): "
                                                         "x + attn(norm(x)) + mlp(norm(x)) (GPT-J, GPT-NeoX)")
    activation: ActivationName = Field("gelu", description="MLP activation; swiglu/geglu/geglu_tanh/reglu are gated")
    mlp: MLP = Field(DenseMLP(), description="dense | moe(experts, top_k, shared_experts, router_jitter, aux_loss): "
                                             "a mixture of experts (Mixtral)")
    bias: bool = Field(True, description="biases on the attention and MLP projections")
    qkv_bias: bool | None = Field(None, description="biases on the query, key and value projections; default bias "
                                                     "(Qwen2: true beside bias: false)")
    out_bias: bool | None = Field(None, description="a bias on the attention output projection; default bias")
    mlp_bias: bool | None = Field(None, description="biases on the MLP projections; default bias")
    qk_norm: bool = Field(False, description="normalise each query and key head (with the layer's norm) before "
                                             "RoPE: Qwen3, OLMo-2, Gemma 3")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability")
    tie_embeddings: bool = Field(False, description="the output head reuses the token embeddings")
    segments: int = Field(0, ge=0, description="token-type (segment) embeddings; BERT uses 2")
    pooler: bool = Field(False, description="BERT's dense + tanh over the first token")
    embed_norm: bool = Field(False, description="a norm right after the embeddings (BERT)")
    embed_scale: float = Field(1.0, gt=0, description="token embeddings are multiplied by this")
    position_offset: int = Field(0, ge=0, description="learned positions start at this row of a table of context + "
                                                      "position_offset rows (RoBERTa, OPT: 2)")
    head_scale: float = Field(1.0, gt=0, description="final hidden states are multiplied by this before a tied lm head (T5: d_model ** -0.5)")
    final_norm: bool | None = Field(None, description="a norm after the last layer; default true for pre-norm "
                                                      "and sandwich")
    head: list[Head] | None = Field(None, min_length=1, description="lm | mlm(transform) | nsp | classifier(classes, pool) | "
                                                      "scalar(pool) | none, or a list; default lm (mlm for encoders)")
    pad_id: int | None = Field(None, ge=0, description="padding token id")
    mask_id: int | None = Field(None, ge=0, description="mask token id (mlm)")
    decoder_start_id: int | None = Field(None, ge=0, description="encoder-decoders: the token the decoder starts "
                                                                 "from (BART: 2); default the pad id (T5)")
    encoder: StackSpec | None = Field(None, description="the encoder stack of an encoder_decoder")
    decoder: StackSpec | None = Field(None, description="the decoder stack of an encoder_decoder")
    layer: list[LayerOverrideSpec] = Field([], description="per-layer overrides: `layer 0..3 { ... }`")


# ----------------------------------------------------------------------------- train


class CLM(Variant):
    kind: Literal["clm"] = "clm"


class MLM(Variant):
    kind: Literal["mlm"] = "mlm"
    mask: float = Field(0.15, gt=0.0, le=1.0, description="fraction of tokens selected for prediction (0 would "
                        "still select one per batch)")
    replace: list[Fraction] = Field([0.8, 0.1, 0.1], min_length=3, max_length=3,
                                    description="of those: [mask token, random token, unchanged], summing to 100%")


class NSP(Variant):
    kind: Literal["nsp"] = "nsp"


class SpanCorruption(Variant):
    kind: Literal["span_corruption"] = "span_corruption"
    noise: float = Field(0.15, gt=0.0, lt=1.0, description="fraction of tokens corrupted (at least one, and one "
                         "left uncorrupted)")
    mean_span: float = Field(3.0, ge=1.0, description="mean length of a corrupted span")


class PrefixLM(Variant):
    kind: Literal["prefix_lm"] = "prefix_lm"
    prefix: float = Field(0.5, gt=0.0, lt=1.0, description="mean fraction of each sequence used as the prefix "
                          "(at least one token, and one after it)")


class SFT(Variant):
    kind: Literal["sft"] = "sft"


class Classify(Variant):
    kind: Literal["classify"] = "classify"
    label: str = Field("label", description="the data field holding the class")


class BradleyTerry(Variant):
    kind: Literal["bradley_terry"] = "bradley_terry"
    margin: float = Field(0.0, ge=0, description="the reward gap the preferred response should win by (Llama 2)")


class DPO(Variant):
    kind: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0, description="inverse temperature of the implicit reward")
    loss: Literal["sigmoid", "ipo"] = Field("sigmoid", description="sigmoid: DPO with the soft label; ipo: "
                                                                   "IPO's squared loss on token-mean log-ratios")


Objective = Annotated[Union[CLM, MLM, NSP, SpanCorruption, PrefixLM, SFT, Classify, BradleyTerry, DPO],
                      Field(discriminator="kind")]


class ObjectiveTerm(Schema):
    weight: float = Field(1.0, description="weight of this term in the summed loss")
    objective: Objective


class AdamW(Variant):
    kind: Literal["adamw"] = "adamw"
    lr: float = Field(3e-4, gt=0, le=10, description="peak learning rate")
    betas: list[Beta] = Field([0.9, 0.999], min_length=2, max_length=2, description="[beta1, beta2]")
    eps: float = Field(1e-8, gt=0, description="denominator epsilon")
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay")


class Adam(Variant):
    kind: Literal["adam"] = "adam"
    lr: float = Field(3e-4, gt=0, le=10)
    betas: list[Beta] = Field([0.9, 0.999], min_length=2, max_length=2)
    eps: float = Field(1e-8, gt=0)


class SGD(Variant):
    kind: Literal["sgd"] = "sgd"
    lr: float = Field(1e-2, gt=0, le=100)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


Optimizer = Annotated[Union[AdamW, Adam, SGD], Field(discriminator="kind")]


class Constant(Variant):
    kind: Literal["constant"] = "constant"
    warmup: int = Field(0, ge=0, description="linear warm-up steps")


class Cosine(Variant):
    kind: Literal["cosine"] = "cosine"
    warmup: int = Field(0, ge=0, description="linear warm-up steps")
    min_lr: Fraction = Field(0.1, description="final learning rate as a fraction of the peak")


class Linear(Variant):
    kind: Literal["linear"] = "linear"
    warmup: int = Field(0, ge=0)
    min_lr: Fraction = Field(0.0)


Schedule = Annotated[Union[Constant, Cosine, Linear], Field(discriminator="kind")]


class HFInit(Variant):
    kind: Literal["hf"] = "hf"
    path: str = Field(description="a local Hugging Face checkpoint directory (config.json + safetensors)")


class ModelUse(Schema):
    """`gpt`, `gpt from pretrain`, `gpt with head scalar`."""

    model: str = Field(description="a model block")
    stage: str | None = Field(None, description="the stage whose trained weights to use")
    head: list[Head] | None = Field(None, description="a replacement head")


AttentionKernel = Literal["auto", "sdpa", "flex"]
Parallel = Literal["auto", "ddp", "fsdp"]
ATTENTION_KERNEL = ("what runs the layers whose mask SDPA takes dense (a sliding window shorter than seq_len, a prefix, "
                    "ALiBi): auto = FlexAttention on CUDA, SDPA elsewhere; sdpa; flex = FlexAttention (CUDA only)")


class TrainSpec(Block):
    """A training stage."""

    model: ModelUse = Field(description="the model to train: `gpt`, `gpt from stage`, `gpt with head scalar`")
    init: Ref_("train", "rl") | HFInit | None = Field(None, description="start from a stage's weights or hf(\"dir\")")
    objective: list[ObjectiveTerm] = Field(description="clm | mlm(mask) | nsp | span_corruption(noise, mean_span) | "
                                                       "prefix_lm | sft | classify(label) | bradley_terry | dpo(beta), "
                                                       "or a weighted sum such as `mlm + 0.5 * nsp`")
    data: Ref_("data", "feedback") = Field(description="a data block, or a feedback block for preference objectives")
    tokenizer: Ref_("tokenizer") | None = Field(None, description="default: the spec's only tokenizer")
    steps: int = Field(1000, ge=1, description="optimizer steps")
    batch: int = Field(32, ge=1, description="sequences per optimizer step")
    seq_len: int | None = Field(None, ge=1, description="tokens per sequence; default the model's context")
    grad_accum: int = Field(1, ge=1, description="micro-batches per step (batch is split into them)")
    optimizer: Optimizer = Field(AdamW(), description="adamw(lr, betas, eps, weight_decay) | adam | sgd(lr, momentum)")
    schedule: Schedule = Field(Constant(), description="constant | cosine(warmup, min_lr) | linear(warmup, min_lr)")
    clip_grad: float | None = Field(1.0, gt=0, description="clip the gradient norm to this; none to disable")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    eval_every: int = Field(0, ge=0, description="evaluate every N steps; 0 = only at the end")
    eval_batches: int = Field(4, ge=1, description="batches per evaluation")
    samples: int = Field(3, ge=0, le=64, description="texts sampled at each evaluation (models that generate)")
    sample_tokens: int = Field(128, ge=1, description="new tokens per sample at evaluations")
    checkpoint_every: int = Field(0, ge=0, description="checkpoint every N steps (and on Ctrl-C); 0 = never "
                                                       "mid-stage (a killed stage restarts from step 0)")
    keep_checkpoints: int = Field(3, ge=1, description="keep the newest N checkpoints of the stage")
    log_every: int = Field(10, ge=1, description="log metrics every N steps")
    compile: bool = Field(False, description="run the model through torch.compile")
    parallel: Parallel = Field("auto", description="with several processes: ddp replicates "
                                                     "the model (batch split across them); fsdp shards its weights, "
                                                     "gradients and optimizer state across them (FSDP2); auto: ddp")
    checkpoint_activations: bool = Field(False, description="recompute each block's activations during backward "
                                                            "instead of keeping them: less memory, one more forward "
                                                            "pass of the blocks")
    attention_kernel: AttentionKernel = Field("auto", description=ATTENTION_KERNEL)
    devices: int | None = Field(None, ge=1, description="the devices (processes) `check` plans the stage for: "
                                                        "memory per device, and the batch split over them; "
                                                        "default 1 (`run` uses the processes it is given)")
    device_memory: str | None = Field(None, description='the memory of one device, e.g. "80GB" or "80GiB": `check` '
                                                        "says whether the stage fits (and parallel: auto chooses by it)")
    seed: int = Field(0, ge=0, description="random seed")


# ----------------------------------------------------------------------------- judge / feedback / rl


class Probability(Variant):
    kind: Literal["probability"] = "probability"
    cls: int = Field(1, ge=0, alias="class", description="the class whose probability is the score")


class Logit(Variant):
    kind: Literal["logit"] = "logit"
    cls: int = Field(1, ge=0, alias="class", description="the class whose logit is the score")


class ScalarScore(Variant):
    kind: Literal["scalar"] = "scalar"


# Rule scores read the response alone, with no model (lmspec.runtime.judges.rules).


class LengthScore(Variant):
    """`length`: the number of characters of the response."""

    kind: Literal["length"] = "length"


class ContainsScore(Variant):
    """`contains("happy")`: 1 if the response contains the text (case-sensitive), else 0."""

    kind: Literal["contains"] = "contains"
    text: str = Field(min_length=1, description="the text looked for, case-sensitive")


class RegexScore(Variant):
    """`regex("lov(ed|ely)")`: 1 if Python's re.search finds the pattern in the response, else 0."""

    kind: Literal["regex"] = "regex"
    pattern: str = Field(min_length=1, description="a Python regular expression, searched for in the response")


Score = Annotated[Union[Probability, Logit, ScalarScore, LengthScore, ContainsScore, RegexScore],
                  Field(discriminator="kind")]


class ScoreTerm(Schema):
    """One term of a weighted sum of scores: `0.1 * contains("happy")`."""

    weight: float = Field(1.0, description="the term's weight (negative to penalise)")
    judge: Ref_("judge") | LengthScore | ContainsScore | RegexScore = Field(
        description="a judge block, or a rule written in place")


class ScoreSum(Schema):
    """`score: sentiment + 0.1 * contains("happy")`: the weighted sum of judges' scores."""

    terms: list[ScoreTerm] = Field(min_length=1, description="the weighted terms, in the order written")


class OpenAIModel(Variant):
    """`openai(url: "http://127.0.0.1:8000/v1", model: "NAME")`: an OpenAI-compatible server (vLLM,
    llama.cpp's llama-server, Ollama) whose next-token log-probs the LM judge reads."""

    kind: Literal["openai"] = "openai"
    url: str = Field(description="the API root, ending in /v1")
    model: str = Field(min_length=1, description="the served model's name, as the server lists it at /v1/models")
    api: Literal["completions", "chat"] = Field("completions", description="completions: the prompt as it is; "
                                                "chat: the prompt as the user's message, under the chat template")
    api_key_env: str | None = Field(None, description="the environment variable that holds the API key (the name, "
                                                      "never the key)")
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout: float = Field(30.0, gt=0, description="seconds per request")
    retries: int = Field(3, ge=0, description="tries after the first, for connection errors, timeouts, 429 and 5xx")
    top_logprobs: int = Field(20, ge=1, description="the next tokens visible per request (vLLM allows 20 by default)")


class JudgeSpec(Block):
    """The AI (or rule) that gives feedback: a model, an LM labeller, a rule or a sum of judges."""

    model: ModelUse | HFInit | OpenAIModel | None = Field(
        None, description="`critic from stage`, hf(\"dir\") or openai(url, model); none for a rule or a sum")
    score: Probability | Logit | ScalarScore | LengthScore | ContainsScore | RegexScore | ScoreSum = Field(
        Probability(), description="a model judge's head: probability(class) | logit(class) | scalar; without a "
                                   "model: length | contains(text) | regex(pattern), or a weighted sum of judges "
                                   "such as `sentiment + 0.1 * contains(\"happy\")`")
    task: Literal["compare", "rate"] = Field("compare", description="an LM judge's question: compare (which of two "
                                                                     "responses is better) or rate (1 to 10)")
    prompt: str | None = Field(None, description="an LM judge's template: {principle}, {prompt} and {a}, {b} "
                                                 "(compare) or {response} (rate); default the built-in one")
    principles: list[str] = Field([], description="an LM judge's constitution, placed in {principle}")
    principles_mode: Literal["sample", "ensemble"] = Field("sample", description="sample: one principle per pair, "
                                                           "chosen by a hash; ensemble: every one, labels averaged")


class Prefixes(Variant):
    """`stories.prefixes(tokens: 8, count: 2k)`: the first tokens of each document."""

    kind: Literal["prefixes"] = "prefixes"
    data: Ref_("data") = Field(description="the data block prompts are cut from")
    tokens: int = Field(8, ge=1, description="prompt length in tokens")
    count: int | None = Field(None, ge=1, description="number of prompts; default all")


class Until(Variant):
    """`stories.until("In the end,", tokens: 128)`: each document's text up to and including the
    first occurrence of a marker (documents without it are left out), at most its last `tokens`
    tokens: the policy writes what follows the marker."""

    kind: Literal["until"] = "until"
    data: Ref_("data") = Field(description="the data block prompts are cut from")
    marker: str = Field(min_length=1, description="the text each prompt ends with")
    tokens: int = Field(128, ge=1, description="the longest prompt in tokens (a longer one keeps its end)")
    count: int | None = Field(None, ge=1, description="number of prompts; default all")


Prompts = Annotated[Union[Prefixes, Until], Field(discriminator="kind")]


class FeedbackSpec(Block):
    """AI-labelled preference pairs."""

    policy: ModelUse = Field(description="the model that writes samples: `gpt from pretrain`")
    prompts: Prompts = Field(description="data.prefixes(tokens, count)")
    samples: int = Field(2, ge=2, le=64, description="samples per prompt")
    max_new_tokens: int = Field(48, ge=1, description="tokens generated per sample")
    temperature: float = Field(1.0, ge=0, description="sampling temperature; 0 = greedy")
    top_k: int | None = Field(None, ge=1, description="sample among the k likeliest tokens")
    judge: Ref_("judge") = Field(description="the judge that scores samples")
    debias: Literal["none", "swap"] = Field("none", description="swap: score both orders and average")
    batch: int = Field(32, ge=1, description="prompts sampled and judged per step")
    validation: Fraction = Field(0.1, lt=1.0, description="fraction of prompts whose pairs are held out "
                                                           "(reward models report pair accuracy on them)")
    log_every: int = Field(1, ge=1, description="log metrics every N steps")
    seed: int = Field(0, ge=0)


class PPO(Variant):
    kind: Literal["ppo"] = "ppo"
    clip: float = Field(0.2, gt=0, lt=1, description="ratio clip")
    kl: float = Field(0.05, ge=0, description="KL penalty coefficient (the start value when kl_target is set)")
    epochs: int = Field(4, ge=1, description="optimisation epochs per batch of rollouts")
    gae_lambda: float = Field(0.95, ge=0, le=1)
    gamma: float = Field(1.0, ge=0, le=1)
    value_coef: float = Field(0.5, ge=0)
    value_clip: float = Field(0.2, gt=0, description="a new value moves at most this far from the rollout's")
    kl_target: float | None = Field(None, gt=0, description="adaptive KL coefficient (Ziegler et al.): the "
                                                            "per-sequence KL it steers to; none = fixed")
    normalize_rewards: bool = Field(False, description="divide the per-token rewards by their std")


class GRPO(Variant):
    kind: Literal["grpo"] = "grpo"
    group: int = Field(8, ge=2, description="samples per prompt; advantages are relative to the group")
    clip: float = Field(0.2, gt=0, lt=1)
    kl: float = Field(0.04, ge=0)
    kl_estimator: Literal["k1", "k3"] = Field("k3", description="per-token KL estimator in the loss")
    loss: Literal["token_mean", "sequence_mean", "dr_grpo"] = Field("token_mean", description="loss aggregation")
    epochs: int = Field(1, ge=1, description="optimisation epochs per batch of rollouts")


class RLOO(Variant):
    kind: Literal["rloo"] = "rloo"
    k: int = Field(4, ge=2, description="samples per prompt; each baseline is the mean of the others")
    kl: float = Field(0.05, ge=0)
    clip: float = Field(0.2, gt=0, lt=1)
    epochs: int = Field(1, ge=1, description="optimisation epochs per batch of rollouts")


Algorithm = Annotated[Union[PPO, GRPO, RLOO], Field(discriminator="kind")]


class RolloutSpec(Schema):
    prompts: Prompts = Field(description="data.prefixes(tokens, count)")
    per_step: int = Field(64, ge=1, description="rollouts per optimizer step")
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0, description="sampling temperature; the policy ratio needs a sampling "
                                                      "distribution, so no greedy (0)")
    top_k: int | None = Field(None, ge=1)


class RLSpec(Block):
    """A reinforcement-learning stage."""

    policy: ModelUse = Field(description="the model being optimised: `gpt from pretrain`")
    reference: Ref_("train", "rl") | None = Field(None, description="frozen stage KL is measured against; default the policy's stage")
    reward: Ref_("train", "judge") = Field(description="a reward-model stage, or a judge (direct RLAIF)")
    algorithm: Algorithm = Field(PPO(), description="ppo(clip, kl, epochs, gae_lambda) | grpo(group) | rloo(k)")
    rollouts: RolloutSpec = Field(description="nested block: prompts, per_step, max_new_tokens, temperature")
    steps: int = Field(100, ge=1)
    minibatch: int | None = Field(None, ge=1, description="rollouts per optimizer update and per no-grad "
                                                          "scoring pass; default all of a step's")
    optimizer: Optimizer = Field(AdamW(lr=1e-5))
    schedule: Schedule = Field(Constant())
    clip_grad: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto")
    eval_every: int = Field(0, ge=0, description="evaluate on held-out prompts every N steps; 0 = only at the end")
    eval_prompts: int = Field(32, ge=1, description="held-out prompts each evaluation samples and scores")
    eval_judges: list[Ref_("judge")] = Field([], description="judges that also score the held-out samples at "
                                                             "each evaluation (the before/after table)")
    samples: int = Field(3, ge=0, le=64, description="samples logged at each evaluation")
    checkpoint_every: int = Field(0, ge=0, description="checkpoint every N steps (and on Ctrl-C)")
    keep_checkpoints: int = Field(3, ge=1)
    log_every: int = Field(10, ge=1)
    checkpoint_activations: bool = Field(False, description="recompute each block's activations during the updates' "
                                                            "backward instead of keeping them (the policy and PPO's "
                                                            "value model): less memory, one more forward pass of the "
                                                            "blocks")
    attention_kernel: AttentionKernel = Field("auto", description=ATTENTION_KERNEL)
    parallel: Parallel = Field("auto", description="with several processes: ddp replicates "
                                                     "the policy (and PPO's value model); fsdp shards their weights, "
                                                     "gradients and optimizer state (FSDP2), gathering the policy "
                                                     "whole for the rollouts; the rollouts are split either way and "
                                                     "the frozen models stay whole on each; auto: ddp, or fsdp on "
                                                     "GPUs the stage fits only sharded")
    device_memory: str | None = Field(None, description='the memory of the device, e.g. "80GB" or "80GiB": `check` '
                                                        "says whether the stage fits (on several devices: under its "
                                                        "parallel, the rollouts split)")
    seed: int = Field(0, ge=0)


BLOCK_KINDS: dict[str, type[Schema]] = {
    "tokenizer": TokenizerSpec, "data": DataSpec, "model": ModelSpec, "train": TrainSpec,
    "judge": JudgeSpec, "feedback": FeedbackSpec, "rl": RLSpec,
}

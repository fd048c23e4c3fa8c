"""`ArchConfig` + lmspec weights -> a Hugging Face checkpoint: config.py and weights.py backwards.

An architecture goes out only as a family that computes exactly what it computes. What each
family fixes is data: a tuple of `_Need`s, per-layer keys with the value the family has (GPT-2:
pre-norm LayerNorm, learned positions, biases; BERT: post-norm; the Llama-shaped families:
`_LLAMA_LIKE`), and one function per family adds the model-level keys and reads the config
values off the architecture. A feature the family lacks is a *gap*; an architecture with gaps
in every family is an `HFExportError` naming them for the closest one, never an approximation. A config without
gaps is then read back by the import (`arch_from_hf_config`) and stands only if that gives the
same ArchConfig, so a feature no family function checks (a key added to the language later)
can still not slip through.

The tensors follow `mapping.py` backwards: the first name of each rule's alternatives, q, k and
v split out of the fused projection (or regrouped head by head: GPT-NeoX, BLOOM; key/value
group by group: Falcon), gate and up fused again (Phi-3), GPT-2's Conv1D weights transposed; a
tied matrix is written once, under the embedding's name, as transformers writes it.

    model_type, hf_class = export_family(arch)              # or HFExportError, naming the gaps
    config, tensors = export_hf(arch, model.state_dict(), special_ids={"eos": 257})

Pure: no files, no run directory (that is `lmspec.runtime.export`). `export_family` and
`hf_config_from_arch` need no torch; the tensor functions import it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..arch import BIAS_PROJECTIONS, ArchConfig, LayerConfig, MoEConfig, PositionConfig, RopeScaling
from .config import arch_from_hf_config
from .errors import HFError
from .mapping import hf_mapping
from .spec import _attention, _bool, _float, _head, _heads, _mlp, _position, _residual

__all__ = ["EXPORTS", "HFExportError", "export_family", "hf_config_from_arch", "hf_tensors", "export_hf"]

# model_type -> {sorted head spellings: the class}; which families an arch kind may become
EXPORTS: dict[str, dict[tuple[str, ...], str]] = {
    "gpt2": {("lm",): "GPT2LMHeadModel", (): "GPT2Model"},
    "bert": {
        ("mlm(transform: true)", "nsp"): "BertForPreTraining",
        ("mlm(transform: true)",): "BertForMaskedLM",
        (): "BertModel",
    },
    "t5": {("lm",): "T5ForConditionalGeneration", (): "T5Model"},
    "llama": {("lm",): "LlamaForCausalLM", (): "LlamaModel"},
    "mistral": {("lm",): "MistralForCausalLM", (): "MistralModel"},
    "qwen2": {("lm",): "Qwen2ForCausalLM", (): "Qwen2Model"},
    "qwen3": {("lm",): "Qwen3ForCausalLM", (): "Qwen3Model"},
    "phi3": {("lm",): "Phi3ForCausalLM", (): "Phi3Model"},
    "mixtral": {("lm",): "MixtralForCausalLM", (): "MixtralModel"},
    "opt": {("lm",): "OPTForCausalLM", (): "OPTModel"},
    "gpt_neox": {("lm",): "GPTNeoXForCausalLM", (): "GPTNeoXModel"},
    "gptj": {("lm(bias: true)",): "GPTJForCausalLM", (): "GPTJModel"},
    "phi": {("lm(bias: true)",): "PhiForCausalLM", (): "PhiModel"},
    "roberta": {("mlm(transform: true)",): "RobertaForMaskedLM", (): "RobertaModel"},
    "distilbert": {("mlm(transform: true)",): "DistilBertForMaskedLM", (): "DistilBertModel"},
    "mt5": {("lm",): "MT5ForConditionalGeneration", (): "MT5Model"},
    "bart": {("lm",): "BartForConditionalGeneration", (): "BartModel"},
    "falcon": {("lm",): "FalconForCausalLM", (): "FalconModel"},
    "bloom": {("lm",): "BloomForCausalLM", (): "BloomModel"},
    "mpt": {("lm",): "MptForCausalLM", (): "MptModel"},
    "gemma": {("lm",): "GemmaForCausalLM", (): "GemmaModel"},
    "gemma2": {("lm",): "Gemma2ForCausalLM", (): "Gemma2Model"},  # lm(softcap): final_logit_softcapping
}
# Which families an arch kind may become, in the order tried: the first that fits is written. No
# two of them express the same architecture but for the Llama-shaped ones, where the most common
# comes first (a causal Llama is a Phi-3 with full rotary too, a Mistral a windowed Phi-3 or a
# Mixtral without experts); mT5 is tried after T5, since it adds only the untied v1.1 head.
_CANDIDATES = {
    "decoder": ("llama", "mistral", "qwen2", "qwen3", "phi3", "mixtral", "gpt2", "opt", "gpt_neox", "phi", "gptj",
                "falcon", "bloom", "mpt", "gemma", "gemma2"),
    "encoder": ("bert", "roberta", "distilbert"),
    "encoder_decoder": ("t5", "mt5", "bart"),
}

# lmspec activation -> Hugging Face ACT2FN name (the inverse of config._PLAIN_ACTIVATIONS)
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
# lmspec activation -> T5 feed_forward_proj (the inverse of config._T5_ACTIVATIONS)
_T5_PROJ = {"relu": "relu", "gelu": "gelu", "reglu": "gated-relu", "swiglu": "gated-silu", "geglu_tanh": "gated-gelu"}


class HFExportError(HFError):
    """The architecture (or the weights given with it) has no exact Hugging Face equivalent.

    `family`: the closest family, when the architecture is the problem; `gaps`: what that family
    lacks, one line each; `help`: what to do about it."""

    def __init__(self, message: str, *, help: str, family: str | None = None, gaps: Iterable[str] = ()):
        self.family, self.gaps, self.help = family, list(gaps), help
        super().__init__(message)

# --- reading an architecture as one family ------------------------------------------------

def _bias(L: LayerConfig) -> str:
    """`true`, `false`, or which projections have biases: "only qkv_bias" (Qwen2)."""
    if L.bias or not any(L.biased(p) for p in BIAS_PROJECTIONS):
        return _bool(L.bias)
    return "only " + " and ".join(f"{p}_bias" for p in BIAS_PROJECTIONS if L.biased(p))


# the per-layer keys of a model block, shown as a spec writes them
_SHOW: dict[str, Callable[[LayerConfig], str]] = {
    "heads": lambda L: str(L.heads),
    "kv_heads": lambda L: str(L.kv_heads),
    "head_dim": lambda L: str(L.head_dim),
    "d_ff": lambda L: str(L.d_ff),
    "attention": lambda L: _attention(L.attention),
    "attention_scale": lambda L: str(L.attention.scale),
    "position": lambda L: _position(L.position),
    "norm": lambda L: L.norm,
    "norm_eps": lambda L: _float(L.norm_eps),
    "placement": lambda L: L.placement,
    "activation": lambda L: L.activation,
    "bias": _bias,
    "qk_norm": lambda L: _bool(L.qk_norm),
    "dropout": lambda L: _float(L.dropout),
    "residual": _residual,
    "mlp": _mlp,
    "shared_experts": lambda L: str(L.moe.shared_experts if L.moe else 0),
    "norm_bias": lambda L: _bool(L.norm_bias),
}


@dataclass(frozen=True)
class _Need:
    """A per-layer key a family fixes: every layer (of `stacks`) must pass `ok`. `theirs` says
    what the family has; `label` names the gap where it is not the key ("rope", for what a
    family fixes of `position` beyond its kind)."""

    key: str
    ok: Callable[[LayerConfig], bool]
    theirs: str
    stacks: tuple[str, ...] = ("encoder", "decoder")
    label: str | None = None


class _Fit:
    """One family's reading of an architecture: the gaps found (one per key, the first wins)
    and, once the reading is done, the config and the class."""

    def __init__(self, arch: ArchConfig, family: str):
        self.arch, self.family = arch, family
        self.gaps: dict[str, str] = {}
        self.cls: str | None = None
        self.config: dict[str, Any] = {}

    def _layers(self, stacks: Iterable[str]) -> list[tuple[str, int, LayerConfig]]:
        return [
            (name, i, layer)
            for name in stacks
            if (stack := getattr(self.arch, name)) is not None
            for i, layer in enumerate(stack.layers)
        ]

    def _shown(self, key: str, layers: list[tuple[str, int, LayerConfig]]) -> str:
        """A key's value, or which layers have which values: "sliding(window: 8) on layers
        0..1, causal on layers 2..3"."""
        values = [_SHOW[key](L) for _, _, L in layers]
        if len(set(values)) == 1:
            return values[0]
        runs: list[list] = []  # [value, stack, first, last]
        for (stack, i, _), value in zip(layers, values):
            if runs and runs[-1][:2] == [value, stack] and runs[-1][3] == i - 1:
                runs[-1][3] = i
            else:
                runs.append([value, stack, i, i])
        several = len({stack for stack, _, _ in layers}) > 1
        parts = []
        for value, stack, first, last in runs:
            span = f"layer {first}" if first == last else f"layers {first}..{last}"
            parts.append(f"{value} on {stack + ' ' if several else ''}{span}")
        return ", ".join(parts)

    def gap(self, key: str, text: str) -> None:
        self.gaps.setdefault(key, text)

    def fixed(self, key: str, ok: Callable[[LayerConfig], bool], theirs: str, stacks=("encoder", "decoder"),
              label: str | None = None) -> None:
        """A per-layer key the family fixes: every layer must pass `ok`."""
        layers = self._layers(stacks)
        if not all(ok(L) for _, _, L in layers):
            label = label or key
            self.gap(label, f"{label}: {self._shown(key, layers)} ({self.family} has {theirs})")

    def needs(self, *needs: _Need) -> None:
        for n in needs:
            self.fixed(n.key, n.ok, n.theirs, n.stacks, n.label)

    def one(self, *keys: str, stacks=("encoder", "decoder")) -> LayerConfig:
        """Per-layer keys the family sets once for the whole model: the layers must agree.
        Returns the first layer, whose values the config then states."""
        layers = self._layers(stacks)
        for key in keys:
            if len({_SHOW[key](L) for _, _, L in layers}) > 1:
                self.gap(key, f"{key} differs between layers ({self._shown(key, layers)}); "
                              f"{self.family} has one {key} for every layer")
        return layers[0][2]

    def model(self, key: str, ours: str, ok: bool, theirs: str) -> None:
        """A model-level key."""
        if not ok:
            self.gap(key, f"{key}: {ours} ({self.family} has {theirs})")

    def norm_bias(self) -> None:
        a = self.arch
        self.model("norm_bias", _bool(a.norm_bias), a.norm_bias, "true: LayerNorms with a bias")

    def position(self, L: LayerConfig, theirs: str | None = None) -> None:
        """The model's position (what its embeddings add) is the layers' one."""
        a = self.arch
        self.model("position", _position(a.position), a.position == L.position, theirs or _position(L.position))

    def common(self, *, final_norm: bool, embed_norm: bool, segments: bool, pooler: bool | None,
               offset: int | None = 0, stack_embeddings: bool = False) -> None:
        """The model-level keys most families fix the same way. `offset`: the row of position
        0 in the family's learned table (OPT: 2); None when the family checks it itself.
        `stack_embeddings`: each stack its own position table and embedding norm (BART; the
        family checks embed_scale itself), else one of each shared by both stacks."""
        a = self.arch
        finals = {s.final_norm for s in a.stacks}
        self.model("final_norm", "/".join(_bool(f) for f in sorted(finals)), finals == {final_norm}, _bool(final_norm))
        self.model("embed_norm", _bool(a.embed_norm), a.embed_norm == embed_norm, _bool(embed_norm))
        # BART's per-stack tables and norms: no family lmspec exports has them
        stacks = (("encoder", a.encoder), ("decoder", a.decoder))
        own = [f"{name} {{ {key} }}" for name, stack in stacks
               if stack is not None for key, on in (("position: learned", stack.own_positions),
                                                    ("embed_norm: true", stack.own_embed_norm)) if on]
        if stack_embeddings:
            every = [f"{name} {{ {key} }}" for name, stack in stacks if stack is not None
                     for key in ("position: learned", "embed_norm: true")]
            self.model("stack embeddings", ", ".join(own) or "none", own == every,
                       "its own position table and embedding norm in each stack: " + ", ".join(every))
        else:
            self.model("stack embeddings", ", ".join(own), not own,
                       "one position table and embedding norm for both stacks")
        if segments:
            self.model("segments", "0", a.segments > 0, "token-type embeddings: segments 1 or more")
        else:
            self.model("segments", str(a.segments), a.segments == 0, "no segment embeddings")
        if pooler is not None:
            self.model("pooler", _bool(a.pooler), a.pooler == pooler, _bool(pooler))
        if not stack_embeddings:
            self.model("embed_scale", _float(a.embed_scale), a.embed_scale == 1.0, "1.0")
        if offset is not None:
            self.model("position_offset", str(a.position_offset), a.position_offset == offset,
                       f"positions from row {offset}")
        # Gemma's norms scale by (1 + w), but lmspec imports Gemma only
        self.model("norm_offset", _float(a.norm_offset), a.norm_offset == 0, "norms scaling by their weight: 0.0")
        # Gemma 2's soft caps: no exported family has them (the import would not give them back either)
        softcaps = {L.attention.softcap for s in a.stacks for L in s.layers} | {h.softcap for h in a.heads}
        self.model("softcap", "/".join(sorted(_float(c) for c in softcaps if c is not None)), softcaps == {None},
                   "no soft-capped attention scores or logits")

    def heads(self, head_scale: Callable[[ArchConfig], bool] = lambda a: a.tied_head_scale == 1.0,
              scales: str = "1.0") -> None:
        """The HF class the heads make (self.cls), or a gap."""
        classes = EXPORTS[self.family]
        shown = tuple(sorted(_head(h) for h in self.arch.heads))
        self.cls = classes.get(shown)
        if self.cls is None:
            have = " or ".join(f"[{', '.join(k)}]" if len(k) > 1 else (k[0] if k else "none") for k in classes)
            self.gap("head", f"head: {_heads(self.arch.heads)} ({self.family} has {have})")
        if self.arch.head("lm") is not None:
            self.model("head_scale", _float(self.arch.tied_head_scale), head_scale(self.arch), scales)

    @property
    def tied(self) -> bool:
        # a model without a vocabulary head ties nothing, whatever the flag says (as the import)
        return self.arch.tie_embeddings and any(h.kind in ("lm", "mlm") for h in self.arch.heads)


# --- what the families fix, as data ---------------------------------------------------------

_CAUSAL = _Need("attention", lambda L: L.attention.kind == "causal", "causal")
_BIDIRECTIONAL = _Need("attention", lambda L: L.attention.kind == "bidirectional", "bidirectional")
_SCALED = _Need("attention_scale", lambda L: L.attention.scale == "inverse_sqrt", "inverse_sqrt")
_LEARNED = _Need("position", lambda L: L.position.kind == "learned", "learned")
_ROPE = _Need("position", lambda L: L.position.kind == "rope", "rope(theta)")
_HALF_ROPE = _Need("position", lambda L: L.position.layout == "half",
                   "rope in the half layout (the interleaved one is gptj's)", label="rope")
_FULL_ROPE = _Need("position", lambda L: L.position.fraction == 1 and L.position.layout == "half",
                   "rope over every dimension of a head, in the half layout", label="rope")
_LAYERNORM = _Need("norm", lambda L: L.norm == "layernorm", "layernorm")
_RMSNORM = _Need("norm", lambda L: L.norm == "rmsnorm", "rmsnorm")
_PRE = _Need("placement", lambda L: L.placement == "pre", "pre")
_POST = _Need("placement", lambda L: L.placement == "post", "post")
_SEQUENTIAL = _Need("residual", lambda L: not L.parallel, "sequential: attention, then the MLP")
_SHARED_NORM = _Need("residual", lambda L: L.parallel and L.shared_norm,
                     "parallel: one norm feeding attention and the MLP side by side")
_PLAIN = _Need("activation", lambda L: L.activation in _HF_ACTIVATIONS, "an ungated one: gelu, gelu_tanh, relu or silu")
_SWIGLU = _Need("activation", lambda L: L.activation == "swiglu", "swiglu")
_BIASED = _Need("bias", lambda L: L.bias, "true")
_NO_QK_NORM = _Need("qk_norm", lambda L: not L.qk_norm, "no norm on queries and keys; qwen3 has one")
_ONE_KV = _Need("kv_heads", lambda L: L.kv_heads == L.heads, "one kv head per head: kv_heads = heads")
_HEAD_DIM = _Need("head_dim", lambda L: L.head_dim * L.heads == L.d_model, "head_dim = d_model / heads")
_DENSE = _Need("mlp", lambda L: L.moe is None, "a dense MLP; a mixture of experts exports as mixtral")
# longrope changes every position's frequencies once a sequence passes its original context: Phi-3's
# generate re-reads the sequence there (as lmspec's does); the other families keep the stale cache
_NO_LONGROPE = _Need("position", lambda L: L.position.scaling is None or L.position.scaling.kind != "longrope",
                     "no longrope scaling: its generate keeps the keys it cached with the short factors; "
                     "phi3 has longrope", label="rope scaling")
_PHI3_ROPE = _Need("position", lambda L: L.position.scaling is None or L.position.scaling.kind == "longrope",
                   "unscaled or longrope rope (Phi3Config reads no other rope type)", label="rope scaling")


def _no_biases(theirs: str) -> _Need:
    return _Need("bias", lambda L: not any(L.biased(p) for p in BIAS_PROJECTIONS), theirs)


# the sequential families with learned positions, LayerNorms and biases
_GPT2 = (_CAUSAL, _SCALED, _LEARNED, _LAYERNORM, _PRE, _SEQUENTIAL, _PLAIN, _BIASED, _NO_QK_NORM, _ONE_KV, _HEAD_DIM,
         _DENSE)
_BERT = (_BIDIRECTIONAL, _SCALED, _LEARNED, _LAYERNORM, _POST, _SEQUENTIAL, _PLAIN, _BIASED, _NO_QK_NORM, _ONE_KV,
         _HEAD_DIM, _DENSE)
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

# a gated lmspec activation -> the HF activation it applies to the gate (the inverse of config._GATED)
_UNGATED = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_new", "reglu": "relu"}


def _rope_fields(p: PositionConfig, *, partial: bool = False) -> dict[str, Any]:
    """RoPE in a config: transformers 5 reads rope_parameters, 4 rope_theta, rope_scaling and
    (Phi, Phi-3) partial_rotary_factor."""
    params: dict[str, Any] = {"rope_theta": p.theta, **_rope_scaling(p.scaling)}
    if partial:
        params["partial_rotary_factor"] = p.fraction
    fields: dict[str, Any] = {"rope_theta": p.theta, "rope_parameters": params}
    if p.scaling is not None:  # transformers 4 reads scaling only from rope_scaling
        fields["rope_scaling"] = dict(params)
    if partial:
        fields["partial_rotary_factor"] = p.fraction
    if p.scaling is not None and p.scaling.kind == "longrope":  # Phi3Config reads it here, not in rope_parameters
        fields["original_max_position_embeddings"] = p.scaling.original_context
    return fields


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


def _rope_scaling(scaling: RopeScaling | None) -> dict[str, Any]:
    """rope_parameters' rope_type and its arguments (the inverse of config._rope)."""
    if scaling is None:
        return {"rope_type": "default"}
    if scaling.kind == "linear":
        return {"rope_type": "linear", "factor": scaling.factor}
    if scaling.kind == "llama3":
        return {"rope_type": "llama3", "factor": scaling.factor, "low_freq_factor": scaling.low_freq,
                "high_freq_factor": scaling.high_freq, "original_max_position_embeddings": scaling.original_context}
    optional = {"attention_factor": scaling.attention_factor}
    if scaling.kind == "longrope":
        return {"rope_type": "longrope", "short_factor": list(scaling.short_factor),
                "long_factor": list(scaling.long_factor), "factor": scaling.factor,
                "original_max_position_embeddings": scaling.original_context,
                **{key: value for key, value in optional.items() if value is not None}}
    optional.update(mscale=scaling.mscale, mscale_all_dim=scaling.mscale_all_dim)
    return {"rope_type": "yarn", "factor": scaling.factor, "original_max_position_embeddings": scaling.original_context,
            "beta_fast": scaling.beta_fast, "beta_slow": scaling.beta_slow, "truncate": scaling.truncate,
            **{key: value for key, value in optional.items() if value is not None}}


_FITS: dict[str, Callable[[ArchConfig], _Fit]] = {
    "gpt2": _gpt2,
    "bert": _bert,
    "t5": _t5,
    "bart": _bart,
    **{family: (lambda arch, family=family: _llama(arch, family)) for family in _LLAMA_LIKE},
    "opt": _opt,
    "gpt_neox": _gpt_neox,
    "gptj": _gptj,
    "phi": _phi,
    "roberta": _roberta,
    "distilbert": _distilbert,
    "mt5": lambda arch: _t5(arch, "mt5"),
    "falcon": _falcon,
    "bloom": _bloom,
    "mpt": _mpt,
    "gemma": _gemma,
    "gemma2": lambda arch: _gemma(arch, "gemma2"),
}

_KINDS = {"decoder": "decoder", "encoder": "encoder", "encoder_decoder": "encoder-decoder"}


def _fit(arch: ArchConfig) -> _Fit:
    """The first family that expresses `arch` exactly, or HFExportError for the closest."""
    arch = _plain_scales(arch)
    order = list(_CANDIDATES.get(arch.arch, ()))
    if arch.arch == "decoder":
        # what brings a decoder closest to one family: a mixture of experts (mixtral), else a
        # sliding window (mistral), so that its refusal names what that family lacks
        layers = arch.decoder.layers
        first = "mixtral" if any(L.moe is not None for L in layers) else \
            "mistral" if any(L.attention.kind == "sliding" for L in layers) else None
        if first is not None:
            order.remove(first)
            order.insert(0, first)
        if any(L.position.kind == "alibi" for L in layers):
            # only BLOOM and MPT add ALiBi: what another family lacks first is ALiBi itself, so the
            # refusal names one of these two (MPT, which has no biases, first for a model without any)
            biased = any(L.biased(p) for L in layers for p in BIAS_PROJECTIONS)
            order = ["bloom", "mpt"] if biased else ["mpt", "bloom"]
    fits = [_FITS[family](arch) for family in order]
    exact = next((f for f in fits if not f.gaps), None)
    if exact is not None:
        return exact
    if not fits:
        raise HFExportError(f"cannot export model '{arch.name}': arch {arch.arch} has no Hugging Face family",
                            help="export supports decoders, encoders and encoder-decoders")
    closest = min(fits, key=lambda f: len(f.gaps))  # min keeps the first of equals: the preferred one
    # families as close (opt beside gpt2 for a model with OPT's offset table): named too, at most two
    equals = [f for f in fits if f is not closest and len(f.gaps) == len(closest.gaps)][:2]
    gaps = list(closest.gaps.values())

    def lacks(fit: _Fit) -> str:
        cls = fit.cls or next(iter(EXPORTS[fit.family].values()))
        return f"{fit.family} ({cls}), which lacks:\n" + "\n".join(f"  - {g}" for g in fit.gaps.values())

    raise HFExportError(
        f"cannot export model '{arch.name}' to Hugging Face: no {_KINDS[arch.arch]} family lmspec exports "
        f"({', '.join(_CANDIDATES[arch.arch])}) computes what it computes. The closest is {lacks(closest)}"
        + "".join(f"\nAs close is {lacks(f)}" for f in equals),
        help=f"export writes exact equivalents only, never an approximation: give the model block what "
             f"{closest.family} has (see docs/huggingface.md#families), or keep using the model in lmspec",
        family=closest.family,
        gaps=gaps,
    )


def export_family(arch: ArchConfig) -> tuple[str, str]:
    """(model_type, HF class) that computes exactly what `arch` computes; HFExportError, naming
    what the closest family lacks, when none does. Reads nothing but the architecture."""
    fit = _fit(arch)
    return fit.family, fit.cls


def hf_config_from_arch(arch: ArchConfig, *, special_ids: Mapping[str, int | None] | None = None,
                        dtype: str | None = None) -> dict[str, Any]:
    """The config.json (as a dict) of the family that expresses `arch`.

    special_ids: the tokenizer's {"bos": id, "eos": id, ...}; bos and eos become the config's
    bos_token_id/eos_token_id (generation stops at eos). pad_token_id is the model's own
    `pad_id`, which the import reads back. dtype: the weights' dtype name ("float32")."""
    fit = _fit(arch)
    specials = dict(special_ids or {})
    config: dict[str, Any] = {"architectures": [fit.cls], **fit.config, "pad_token_id": arch.pad_id}
    if arch.arch != "encoder":  # an encoder's objectives bring their own [CLS]/[SEP]; it generates nothing
        config.update(bos_token_id=specials.get("bos"), eos_token_id=specials.get("eos"))
    if dtype is not None:
        config["dtype"] = dtype
    return config


# --- the tensors ---------------------------------------------------------------------------


# HF tensors written under a second name too: transformers 5 ties BERT's (and RoBERTa's) decoder
# bias to cls.predictions.bias only when it ties the decoder weight, and reads decoder.bias otherwise
_ALSO = {"bert": {"cls.predictions.bias": "cls.predictions.decoder.bias"},
         "roberta": {"lm_head.bias": "lm_head.decoder.bias"}}


def _prefix(model_type: str, cls: str, arch: ArchConfig) -> str:
    """The base model's prefix in the class's tensor names ("transformer." in GPT2LMHeadModel);
    the bare classes (GPT2Model, BertModel, ...) have none."""
    bare = cls == next(c for heads, c in EXPORTS[model_type].items() if not heads)
    return "" if bare else hf_mapping(model_type, arch).prefix


def _layer(name: str, arch: ArchConfig) -> LayerConfig:
    found = re.match(r"(encoder|decoder)\.layers\.(\d+)\.", name)
    if found is None:
        raise ValueError(f"{name}: a fused projection outside a layer")
    return getattr(arch, found[1]).layers[int(found[2])]


def _grouped(qkv: Any, layer: LayerConfig) -> Any:
    """lmspec's fused [all q | all k | all v] rows regrouped per key/value head, [q .. q k v] for
    each (GPT-NeoX: [q k v] head by head): the inverse of weights._value's regrouping."""
    import torch

    share, rest = layer.heads // layer.kv_heads, qkv.shape[1:]
    q, k, v = qkv.split([layer.heads * layer.head_dim, layer.kv_heads * layer.head_dim,
                         layer.kv_heads * layer.head_dim])
    groups = [q.reshape(layer.kv_heads, share, -1, *rest), k.reshape(layer.kv_heads, 1, -1, *rest),
              v.reshape(layer.kv_heads, 1, -1, *rest)]
    return torch.cat(groups, dim=1).reshape(qkv.shape)


def _split_sizes(name: str, arch: ArchConfig, pieces: int) -> list[int]:
    """Rows of each HF tensor in a fused lmspec projection: [q | k | v] or [k | v]."""
    layer = _layer(name, arch)
    q, kv = layer.heads * layer.head_dim, layer.kv_heads * layer.head_dim
    return [q, kv, kv] if pieces == 3 else [kv] * pieces


def hf_tensors(arch: ArchConfig, state: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict of an lmspec model of `arch` under the HF family's tensor names.

    `state` is `model.state_dict()` or the same with tied copies left out (what lmspec's
    checkpoints hold). Its names and shapes are checked against a meta-device build of `arch`
    first: a state dict that belongs to another model is an HFExportError naming the tensors."""
    import torch

    from ..build import build_model

    model_type, cls = export_family(arch)
    meta = build_model(arch, device="meta")
    groups: dict[int, list[str]] = {}  # one entry per parameter; a tied one has several names
    shapes: dict[str, tuple[int, ...]] = {}
    for name, param in meta.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
        shapes[name] = tuple(param.shape)
    missing, mismatched = [], []
    chosen: dict[str, Any] = {}  # canonical lmspec name -> tensor
    for names in groups.values():
        present = [n for n in names if n in state]
        if not present:
            missing.append(names[0])
            continue
        tensor = state[present[0]]
        if tuple(tensor.shape) != shapes[names[0]]:
            mismatched.append(f"{present[0]}: expected {shapes[names[0]]}, found {tuple(tensor.shape)}")
            continue
        chosen["embed.weight" if "embed.weight" in names else names[0]] = tensor
    unexpected = sorted(set(state) - set(shapes))
    if missing or unexpected or mismatched:
        problems = [f"missing: {', '.join(missing)}"] if missing else []
        problems += [f"unexpected: {', '.join(unexpected)}"] if unexpected else []
        problems += [f"shape {m}" for m in mismatched]
        raise HFExportError(f"the weights do not belong to model '{arch.name}':\n"
                            + "\n".join(f"  - {p}" for p in problems),
                            help="export the state dict of a model built from this architecture")

    mapping = hf_mapping(model_type, arch)
    prefix = _prefix(model_type, cls, arch)
    also = _ALSO.get(model_type, {})
    out: dict[str, Any] = {}
    fused: dict[str, dict[int, Any]] = {}  # Phi-3's gate_up_proj: its pieces, by position
    for name, tensor in chosen.items():
        found = mapping.sources_for(name, prefix)
        if found is None:  # the families' gaps rule these out; a new module would land here
            raise HFExportError(f"lmspec parameter {name} has no {model_type} tensor name",
                                help="this is a bug in lmspec's export: please report it", family=model_type)
        rule, slots = found
        tensor = tensor.detach()
        if rule.per_head:  # GPT-NeoX: [q k v] head by head
            tensor = _grouped(tensor, _layer(name, arch))
        if rule.split is not None:  # one piece of a tensor fused along dim 0 (Phi-3's [gate | up])
            fused.setdefault(slots[0][0], {})[rule.split[0]] = tensor
            continue
        pieces = [tensor] if len(slots) == 1 else tensor.split(_split_sizes(name, arch, len(slots)), dim=0)
        for slot, piece in zip(slots, pieces):
            if rule.transpose:
                piece = piece.t()
            # safetensors stores no views: each tensor gets its own contiguous memory
            out[slot[0]] = piece.clone(memory_format=torch.contiguous_format) \
                if len(slots) > 1 or rule.transpose or rule.per_head else piece.contiguous()
            if slot[0] in also:
                out[also[slot[0]]] = out[slot[0]].clone()
    for hf_name, parts in fused.items():
        out[hf_name] = torch.cat([parts[i] for i in sorted(parts)], dim=0)
    return out


# --- the whole export, checked by the import -----------------------------------------------


def _normalised(arch: ArchConfig) -> ArchConfig:
    """What the import can be asked to give back: heads in one order, the tie flag of a model
    with no vocabulary head dropped (it ties nothing), no name, no mask id (a tokenizer matter
    that config.json does not hold)."""
    vocab_head = any(h.kind in ("lm", "mlm") for h in arch.heads)
    return dataclasses.replace(_plain_scales(arch), name="", mask_id=None, tie_embeddings=arch.tie_embeddings and
                               vocab_head, heads=tuple(sorted(arch.heads, key=lambda h: h.kind)))


def _plain_scales(arch: ArchConfig) -> ArchConfig:
    """`arch` with every attention scale written as the number 1/sqrt(head_dim) made inverse_sqrt: the
    same function, which every family expresses and the import reads back."""
    def plain(layer: LayerConfig) -> LayerConfig:
        scale = layer.attention.scale
        if isinstance(scale, float) and scale == layer.head_dim ** -0.5:
            return dataclasses.replace(layer, attention=dataclasses.replace(layer.attention, scale="inverse_sqrt"))
        return layer

    stacks = {k: dataclasses.replace(s, layers=tuple(plain(layer) for layer in s.layers))
              for k, s in (("encoder", arch.encoder), ("decoder", arch.decoder)) if s is not None}
    return dataclasses.replace(arch, **stacks)


def _differences(ours: Any, theirs: Any, path: str) -> list[str]:
    if dataclasses.is_dataclass(ours) and type(ours) is type(theirs):
        return [d for f in dataclasses.fields(ours)
                for d in _differences(getattr(ours, f.name), getattr(theirs, f.name), f"{path}.{f.name}".lstrip("."))]
    if isinstance(ours, tuple) and isinstance(theirs, tuple) and len(ours) == len(theirs):
        return [d for i, (a, b) in enumerate(zip(ours, theirs)) for d in _differences(a, b, f"{path}[{i}]")]
    return [] if ours == theirs else [f"{path}: {ours!r} in the model, {theirs!r} in the exported config"]


def export_hf(arch: ArchConfig, state: Mapping[str, Any], *, special_ids: Mapping[str, int | None] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json as a dict, {HF tensor name: tensor}) for an lmspec model of `arch`.

    Raises HFExportError when no family computes what `arch` computes, when `state` does not
    fit `arch`, or when the import of the config written would not give `arch` back."""
    tensors = hf_tensors(arch, state)
    dtypes = {str(t.dtype).removeprefix("torch.") for t in tensors.values()}
    config = hf_config_from_arch(arch, special_ids=special_ids, dtype=dtypes.pop() if len(dtypes) == 1 else None)
    back = arch_from_hf_config(config, arch.name, tensor_names=tensors.keys())
    differences = _differences(_normalised(arch), _normalised(back), "")
    if differences:
        family = config["model_type"]
        raise HFExportError(
            f"cannot export model '{arch.name}' as {family}: the config would import as a different "
            "architecture:\n" + "\n".join(f"  - {d}" for d in differences),
            help=f"{family} does not express these fields; change them in the model block, or keep using it in lmspec",
            family=family, gaps=differences)
    return config, tensors

"""What the export's family readings share: the classes each family may become (`EXPORTS`), the
refusal (`HFExportError`), `_Fit` (one family's reading of an architecture, collecting the gaps:
what the family lacks, one per key) and `_Need` (a per-layer key a family fixes, with the value
it has), the `_Need`s several families fix alike, and RoPE as transformers 4 and 5 write it
(`_rope_fields`, `_rope_scaling`).

The families themselves live by kind in export_gpt.py, export_llama.py and export_encoders.py,
each its `_Need` tables and one function per family; export_fits.py picks the one that fits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..arch import BIAS_PROJECTIONS, ArchConfig, LayerConfig, PositionConfig, RopeScaling
from .errors import HFError
from .spec import _attention, _bool, _float, _head, _heads, _mlp, _position, _residual

__all__ = ["EXPORTS", "HFExportError"]

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


# lmspec activation -> Hugging Face ACT2FN name (the inverse of config_common._PLAIN_ACTIVATIONS)
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


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


def _rope_scaling(scaling: RopeScaling | None) -> dict[str, Any]:
    """rope_parameters' rope_type and its arguments (the inverse of config_common._rope)."""
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

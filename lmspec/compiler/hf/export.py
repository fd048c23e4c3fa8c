"""`ArchConfig` + lmspec weights -> a Hugging Face checkpoint: config.py and weights.py backwards.

An architecture goes out only as a family that computes exactly what it computes. One function
per family reads the config values off the architecture and states what the family fixes
(GPT-2: pre-norm LayerNorm, learned positions, biases; BERT: post-norm, segments, embedding
norm; ...). A feature the family lacks is a *gap*; an architecture with gaps in every family is
an `HFExportError` naming them for the closest one, never an approximation. A config without
gaps is then read back by the import (`arch_from_hf_config`) and stands only if that gives the
same ArchConfig, so a feature no family function checks (a key added to the language later)
can still not slip through.

The tensors follow `mapping.py` backwards: the first name of each rule's alternatives, q, k and
v split out of the fused projection, GPT-2's Conv1D weights transposed; a tied matrix is
written once, under the embedding's name, as transformers writes it.

    model_type, hf_class = export_family(arch)              # or HFExportError, naming the gaps
    config, tensors = export_hf(arch, model.state_dict(), special_ids={"eos": 257})

Pure: no files, no run directory (that is `lmspec.runtime.export`). `export_family` and
`hf_config_from_arch` need no torch; the tensor functions import it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..arch import BIAS_PROJECTIONS, ArchConfig, LayerConfig, RopeScaling
from .config import arch_from_hf_config
from .errors import HFError
from .mapping import hf_mapping
from .spec import _attention, _bool, _float, _head, _heads, _position, _residual

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
}
_CANDIDATES = {"decoder": ("llama", "mistral", "qwen2", "qwen3", "gpt2"), "encoder": ("bert",),
               "encoder_decoder": ("t5",)}

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
    "attention_scale": lambda L: L.attention.scale,
    "position": lambda L: _position(L.position),
    "norm": lambda L: L.norm,
    "norm_eps": lambda L: _float(L.norm_eps),
    "placement": lambda L: L.placement,
    "activation": lambda L: L.activation,
    "bias": _bias,
    "qk_norm": lambda L: _bool(L.qk_norm),
    "dropout": lambda L: _float(L.dropout),
    "residual": _residual,
}


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

    def common(self, *, final_norm: bool, embed_norm: bool, segments: bool, pooler: bool | None) -> None:
        """The model-level keys most families fix the same way."""
        a = self.arch
        finals = {s.final_norm for s in a.stacks}
        self.model("final_norm", "/".join(_bool(f) for f in sorted(finals)), finals == {final_norm}, _bool(final_norm))
        self.model("embed_norm", _bool(a.embed_norm), a.embed_norm == embed_norm, _bool(embed_norm))
        if segments:
            self.model("segments", "0", a.segments > 0, "token-type embeddings: segments 1 or more")
        else:
            self.model("segments", str(a.segments), a.segments == 0, "no segment embeddings")
        if pooler is not None:
            self.model("pooler", _bool(a.pooler), a.pooler == pooler, _bool(pooler))
        self.model("embed_scale", _float(a.embed_scale), a.embed_scale == 1.0, "1.0")
        # OPT and RoBERTa have offset tables, but lmspec imports them only
        self.model("position_offset", str(a.position_offset), a.position_offset == 0, "positions from row 0")

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


def _sequential(fit: _Fit) -> None:
    fit.fixed("residual", lambda L: not L.parallel, "sequential: attention, then the MLP")


def _no_qk_norm(fit: _Fit) -> None:
    fit.fixed("qk_norm", lambda L: not L.qk_norm, "no norm on queries and keys; qwen3 has one")


def _plain_activation(fit: _Fit) -> None:
    fit.fixed("activation", lambda L: L.activation in _HF_ACTIVATIONS, "an ungated one: gelu, gelu_tanh, relu or silu")


def _mha(fit: _Fit, d_model: int | None) -> None:
    """Multi-head attention with one kv head per head (and head_dim = d_model / heads)."""
    fit.fixed("kv_heads", lambda L: L.kv_heads == L.heads, "one kv head per head: kv_heads = heads")
    if d_model is not None:
        fit.fixed("head_dim", lambda L: L.head_dim * L.heads == d_model, "head_dim = d_model / heads")


def _gpt2(arch: ArchConfig) -> _Fit:
    fit = _Fit(arch, "gpt2")
    L = fit.one("heads", "d_ff", "activation", "dropout", "norm_eps")
    fit.fixed("attention", lambda L: L.attention.kind == "causal", "causal")
    fit.fixed("attention_scale", lambda L: L.attention.scale == "inverse_sqrt", "inverse_sqrt")
    fit.fixed("position", lambda L: L.position.kind == "learned", "learned")
    fit.fixed("norm", lambda L: L.norm == "layernorm", "layernorm")
    fit.model("norm_bias", _bool(arch.norm_bias), arch.norm_bias, "true: LayerNorms with a bias")
    fit.fixed("placement", lambda L: L.placement == "pre", "pre")
    _sequential(fit)
    _plain_activation(fit)
    fit.fixed("bias", lambda L: L.bias, "true")
    _no_qk_norm(fit)
    _mha(fit, arch.d_model)
    fit.model("position", _position(arch.position), arch.position.kind == "learned", "learned")
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


def _bert(arch: ArchConfig) -> _Fit:
    fit = _Fit(arch, "bert")
    L = fit.one("heads", "d_ff", "activation", "dropout", "norm_eps")
    fit.fixed("attention", lambda L: L.attention.kind == "bidirectional", "bidirectional")
    fit.fixed("attention_scale", lambda L: L.attention.scale == "inverse_sqrt", "inverse_sqrt")
    fit.fixed("position", lambda L: L.position.kind == "learned", "learned")
    fit.fixed("norm", lambda L: L.norm == "layernorm", "layernorm")
    fit.model("norm_bias", _bool(arch.norm_bias), arch.norm_bias, "true: LayerNorms with a bias")
    fit.fixed("placement", lambda L: L.placement == "post", "post")
    _sequential(fit)
    _plain_activation(fit)
    fit.fixed("bias", lambda L: L.bias, "true")
    _no_qk_norm(fit)
    _mha(fit, arch.d_model)
    fit.model("position", _position(arch.position), arch.position.kind == "learned", "learned")
    fit.model("norm", arch.norm, arch.norm == "layernorm", "layernorm")
    kinds = {h.kind for h in arch.heads}
    # BertForPreTraining's nsp head reads the pooler; BertForMaskedLM is built without one
    pooler = True if "nsp" in kinds else False if kinds == {"mlm"} else None
    fit.common(final_norm=False, embed_norm=True, segments=True, pooler=pooler)
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


def _t5(arch: ArchConfig) -> _Fit:
    fit = _Fit(arch, "t5")
    L = fit.one("heads", "kv_heads", "head_dim", "d_ff", "activation", "dropout", "norm_eps", "position")
    fit.fixed("attention", lambda L: L.attention.kind == "bidirectional", "bidirectional", ("encoder",),
              "encoder attention")
    fit.fixed("attention", lambda L: L.attention.kind == "causal", "causal", ("decoder",), "decoder attention")
    fit.fixed("attention_scale", lambda L: L.attention.scale == "none", "none")
    fit.fixed("position", lambda L: L.position.kind == "relative", "relative(buckets, max_distance)")
    fit.fixed("norm", lambda L: L.norm == "rmsnorm", "rmsnorm")
    fit.fixed("placement", lambda L: L.placement == "pre", "pre")
    _sequential(fit)
    fit.fixed("activation", lambda L: L.activation in _T5_PROJ, "relu, gelu, reglu, swiglu or geglu_tanh")
    fit.fixed("bias", lambda L: not any(L.biased(p) for p in BIAS_PROJECTIONS), "false")
    _no_qk_norm(fit)
    _mha(fit, None)  # T5's d_kv is free
    fit.model("position", _position(arch.position), arch.position == L.position, _position(L.position))
    fit.common(final_norm=True, embed_norm=False, segments=False, pooler=False)
    scaled = arch.d_model**-0.5
    fit.heads(lambda a: a.tied_head_scale in (1.0, scaled),
              f"1.0 (T5 v1.1) or d_model ** -0.5 = {_float(scaled)} (T5 v1.0)")
    if arch.head("lm") is not None:
        # transformers 5 always ties T5's lm_head to the shared embedding (T5Config forces it)
        fit.model("tie_embeddings", "false", arch.tie_embeddings, "true: transformers 5 always ties T5's lm_head")
    fit.config = {
        "model_type": "t5",
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
        # transformers 5 always ties and reads the head scaling from scale_decoder_outputs; 4 read
        # tie_word_embeddings as "tie and scale", so a tied unscaled (v1.1) export needs 5
        "tie_word_embeddings": True,
        "scale_decoder_outputs": fit.tied and arch.tied_head_scale != 1.0,
        "decoder_start_token_id": arch.pad_id if arch.pad_id is not None else 0,  # as lmspec's generate
    }
    return fit


def _llama(arch: ArchConfig, family: str = "llama") -> _Fit:
    fit = _Fit(arch, family)
    if family == "mistral":
        fit.fixed("attention", lambda L: L.attention.kind == "sliding", "one sliding(window) on every layer")
        fit.fixed("bias", lambda L: not any(L.biased(p) for p in BIAS_PROJECTIONS), "no biases")
    else:
        fit.fixed("attention", lambda L: L.attention.kind == "causal", "causal (sliding windows: mistral)")
    if family == "llama":
        fit.fixed("bias", lambda L: L.biased("qkv") == L.biased("out"),
                  "one attention_bias for q, k, v and o, and mlp_bias")
    elif family == "qwen2":
        fit.fixed("bias", lambda L: (L.biased("qkv"), L.biased("out"), L.biased("mlp")) == (True, False, False),
                  "biases on q, k and v only: bias: false, qkv_bias: true")
    elif family == "qwen3":
        fit.fixed("bias", lambda L: L.biased("qkv") == L.biased("out") and not L.biased("mlp"),
                  "one attention_bias for q, k, v and o, and no MLP biases")
    if family == "qwen3":
        fit.fixed("qk_norm", lambda L: L.qk_norm, "an RMSNorm over each query and key head: qk_norm: true")
    else:
        _no_qk_norm(fit)
    L = fit.one("heads", "kv_heads", "head_dim", "d_ff", "dropout", "norm_eps", "position", "bias", "attention")
    if family == "mistral":
        window = L.attention.window or 0
        fit.model("attention", f"sliding(window: {window})", window < arch.context,
                  f"a window shorter than the context ({arch.context}); a longer one slides over nothing")
    fit.fixed("attention_scale", lambda L: L.attention.scale == "inverse_sqrt", "inverse_sqrt")
    fit.fixed("position", lambda L: L.position.kind == "rope", "rope(theta)")
    fit.fixed("norm", lambda L: L.norm == "rmsnorm", "rmsnorm")
    fit.fixed("placement", lambda L: L.placement == "pre", "pre")
    _sequential(fit)
    fit.fixed("activation", lambda L: L.activation == "swiglu", "swiglu")
    fit.model("position", _position(arch.position), arch.position == L.position, _position(L.position))
    fit.common(final_norm=True, embed_norm=False, segments=False, pooler=False)
    fit.fixed("position", lambda L: L.position.fraction == 1 and L.position.layout == "half",
              "rope over every dimension of a head, in the half layout", label="rope")
    fit.heads()
    theta = L.position.theta
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
        "hidden_act": "silu",
        "attention_dropout": L.dropout,
        "tie_word_embeddings": fit.tied,
        # transformers 5 reads rope_parameters, 4 reads rope_theta (and rope_scaling)
        "rope_theta": theta,
        "rope_parameters": {"rope_theta": theta, **_rope_scaling(L.position.scaling)},
    }
    if L.position.scaling is not None:  # transformers 4 reads scaling only from rope_scaling
        fit.config["rope_scaling"] = dict(fit.config["rope_parameters"])
    if family == "mistral":
        fit.config["sliding_window"] = L.attention.window
    elif family in ("qwen2", "qwen3"):  # qwen2: q, k, v biased, o and the MLP not, fixed by the family
        fit.config.update(use_sliding_window=False, sliding_window=None, max_window_layers=arch.decoder.n_layers,
                          layer_types=["full_attention"] * arch.decoder.n_layers)
        if family == "qwen3":
            fit.config["attention_bias"] = L.biased("qkv")
    else:
        fit.config.update(attention_bias=L.biased("qkv"), mlp_bias=L.biased("mlp"))
    return fit


def _rope_scaling(scaling: RopeScaling | None) -> dict[str, Any]:
    """rope_parameters' rope_type and its arguments (the inverse of config._rope)."""
    if scaling is None:
        return {"rope_type": "default"}
    if scaling.kind == "linear":
        return {"rope_type": "linear", "factor": scaling.factor}
    return {"rope_type": "llama3", "factor": scaling.factor, "low_freq_factor": scaling.low_freq,
            "high_freq_factor": scaling.high_freq, "original_max_position_embeddings": scaling.original_context}


_FITS: dict[str, Callable[[ArchConfig], _Fit]] = {
    "gpt2": _gpt2,
    "bert": _bert,
    "t5": _t5,
    "llama": _llama,
    "mistral": lambda arch: _llama(arch, "mistral"),
    "qwen2": lambda arch: _llama(arch, "qwen2"),
    "qwen3": lambda arch: _llama(arch, "qwen3"),
}


def _fit(arch: ArchConfig) -> _Fit:
    """The first family that expresses `arch` exactly, or HFExportError for the closest."""
    layers = [L for stack in arch.stacks for L in stack.layers]
    if any(getattr(L, "moe", None) is not None for L in layers):
        raise HFExportError(f"cannot export model '{arch.name}' to Hugging Face: its MLP is a mixture of experts "
                            "(mlp: moe(...)), and no family lmspec exports has one (mixtral export is not built)",
                            help="keep using the model in lmspec; lmspec import-hf reads Mixtral checkpoints")
    order = list(_CANDIDATES.get(arch.arch, ()))
    if arch.arch == "decoder" and any(L.attention.kind == "sliding" for L in arch.decoder.layers):
        order.remove("mistral")
        order.insert(0, "mistral")  # a sliding window is what brings it closest to mistral
    fits = [_FITS[family](arch) for family in order]
    exact = next((f for f in fits if not f.gaps), None)
    if exact is not None:
        return exact
    if not fits:
        raise HFExportError(f"cannot export model '{arch.name}': arch {arch.arch} has no Hugging Face family",
                            help="export supports decoders, encoders and encoder-decoders")
    closest = min(fits, key=lambda f: len(f.gaps))  # min keeps the first of equals: the preferred one
    cls = closest.cls or next(iter(EXPORTS[closest.family].values()))
    gaps = list(closest.gaps.values())
    raise HFExportError(
        f"cannot export model '{arch.name}' to Hugging Face: no family lmspec exports "
        f"({', '.join(EXPORTS)}) computes what it computes. The closest is {closest.family} ({cls}), "
        f"which lacks:\n" + "\n".join(f"  - {g}" for g in gaps),
        help=f"export writes exact equivalents only, never an approximation: give the model block what "
             f"{closest.family} has (see docs/huggingface.md#export), or keep using the model in lmspec",
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
    if fit.family != "bert":  # BERT's objectives bring their own [CLS]/[SEP]; it generates nothing
        config.update(bos_token_id=specials.get("bos"), eos_token_id=specials.get("eos"))
    if dtype is not None:
        config["dtype"] = dtype
    return config


# --- the tensors ---------------------------------------------------------------------------


# HF tensors written under a second name too: transformers 5 ties BERT's decoder bias to
# cls.predictions.bias only when it ties the decoder weight, and reads decoder.bias otherwise
_ALSO = {"cls.predictions.bias": "cls.predictions.decoder.bias"}


def _prefix(model_type: str, cls: str, arch: ArchConfig) -> str:
    """The base model's prefix in the class's tensor names ("transformer." in GPT2LMHeadModel);
    the bare classes (GPT2Model, BertModel, ...) have none."""
    bare = cls == next(c for heads, c in EXPORTS[model_type].items() if not heads)
    return "" if bare else hf_mapping(model_type, arch).prefix


def _split_sizes(name: str, arch: ArchConfig, pieces: int) -> list[int]:
    """Rows of each HF tensor in a fused lmspec projection: [q | k | v] or [k | v]."""
    found = re.match(r"(encoder|decoder)\.layers\.(\d+)\.", name)
    if found is None:
        raise ValueError(f"{name}: a fused projection outside a layer")
    layer = getattr(arch, found[1]).layers[int(found[2])]
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
    out: dict[str, Any] = {}
    for name, tensor in chosen.items():
        found = mapping.sources_for(name, prefix)
        if found is None:  # the families' gaps rule these out; a new module would land here
            raise HFExportError(f"lmspec parameter {name} has no {model_type} tensor name",
                                help="this is a bug in lmspec's export: please report it", family=model_type)
        rule, slots = found
        # GPT-NeoX's head-by-head qkv, Phi-3's fused [gate | up], Gemma's 1 + w norms: import only, so no
        # export family has them (the gaps rule them out), and writing them back would need the inverse
        if rule.per_head or rule.split is not None or rule.add:
            raise HFExportError(f"lmspec parameter {name} has no {model_type} tensor layout",
                                help="this is a bug in lmspec's export: please report it", family=model_type)
        tensor = tensor.detach()
        pieces = [tensor] if len(slots) == 1 else tensor.split(_split_sizes(name, arch, len(slots)), dim=0)
        for slot, piece in zip(slots, pieces):
            if rule.transpose:
                piece = piece.t()
            # safetensors stores no views: each tensor gets its own contiguous memory
            out[slot[0]] = piece.clone(memory_format=torch.contiguous_format) if len(slots) > 1 or rule.transpose \
                else piece.contiguous()
            if slot[0] in _ALSO:
                out[_ALSO[slot[0]]] = out[slot[0]].clone()
    return out


# --- the whole export, checked by the import -----------------------------------------------


def _normalised(arch: ArchConfig) -> ArchConfig:
    """What the import can be asked to give back: heads in one order, the tie flag of a model
    with no vocabulary head dropped (it ties nothing), no name, no mask id (a tokenizer matter
    that config.json does not hold)."""
    vocab_head = any(h.kind in ("lm", "mlm") for h in arch.heads)
    return dataclasses.replace(arch, name="", mask_id=None, heads=tuple(sorted(arch.heads, key=lambda h: h.kind)),
                               tie_embeddings=arch.tie_embeddings and vocab_head)


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

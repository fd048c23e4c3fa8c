"""Which family expresses an architecture, and what the closest lacks when none does: the
families an arch kind may become, in the order tried (`_CANDIDATES`), each family's reading
(`_FITS`), and `export_family`, which writes the first that fits or refuses naming the gaps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..arch import BIAS_PROJECTIONS, ArchConfig, LayerConfig
from .export_common import EXPORTS, HFExportError, _Fit
from .export_encoders import _bart, _bert, _distilbert, _roberta, _t5
from .export_gpt import _bloom, _falcon, _gpt2, _gpt_neox, _gptj, _mpt, _opt, _phi
from .export_llama import _LLAMA_LIKE, _gemma, _llama

__all__ = ["export_family"]

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

"""Hugging Face config.json -> `ArchConfig`.

One function per model family reads the config's own names (n_embd, hidden_size, d_model,
...) and states the family's fixed choices (GPT-2 is pre-norm LayerNorm with learned
positions, BERT post-norm, T5 RMSNorm with unscaled attention and a relative bias, Llama
RMSNorm + SwiGLU + RoPE). An option lmspec cannot express exactly is an `HFImportError`,
never a silent approximation: a model imported here computes what the original computes.

The HF class named in `architectures` picks the heads, since the same config.json serves
GPT2Model and GPT2LMHeadModel alike.

This module holds the front door: the supported model types and classes, and which builder
reads each model_type. The builders live by kind: config_encoders.py (BERT, RoBERTa,
DistilBERT, T5, mT5, BART), config_llama.py (Llama and the families shaped like it, Gemma 2
and 3), config_gpt.py (GPT-2, GPT-NeoX, Phi, GPT-J, OPT, Falcon, BLOOM, MPT); what they
share (`_Config`, `_decoder_arch`, `_rope`, ...) is config_common.py.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ..arch import ArchConfig
from .config_common import _Config
from .config_encoders import _bart, _bert, _distilbert, _t5
from .config_gpt import _bloom, _falcon, _gpt2, _gpt_neox, _gptj, _mpt, _opt, _phi
from .config_llama import _gemma2, _llama
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

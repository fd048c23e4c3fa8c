"""Hugging Face interoperability: read a local checkpoint (config.json + safetensors) as an
lmspec architecture, a `.lmspec` spec, or a loaded lmspec model; and write an lmspec model
back as one (`export_hf`; `lmspec export-hf` does it for a run).

    arch = arch_from_hf_config(read_hf_config("ckpt/"), "gpt2")   # config.json -> ArchConfig
    text = spec_from_hf("ckpt/")                                   # -> .lmspec text
    arch, model = load_hf_model("ckpt/")                           # -> built model with weights
    load_hf_weights(model, "ckpt/")                                # into a model you built
    config, tensors = export_hf(arch, model.state_dict())          # back: config.json + HF tensors

Model types (`SUPPORTED` is what the import reads, `EXPORTS` what the export writes):
- both ways: gpt2, gpt_neox, gptj, phi, phi3, opt, llama, mistral, mixtral, qwen2, qwen3, falcon,
  bloom, mpt (decoders); bert, roberta, distilbert (encoders); t5, mt5, bart (encoder-decoders);
- import only: gemma, gemma2, gemma3_text (an imported Gemma exports as no family).
An import refuses a config option lmspec cannot reproduce, naming the field; `export_hf` writes the
first family that computes the architecture exactly, and otherwise refuses, naming the closest
family and what it lacks. Nothing is ever downloaded and pickle checkpoints (pytorch_model.bin)
are refused. The weight loaders import torch; the rest of this package does not, so
`lmspec import-hf` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import SUPPORTED, arch_from_hf_config
from .errors import HFError, HFImportError, HFWeightsError
from .export import EXPORTS, HFExportError, export_family, hf_config_from_arch
from .files import read_hf_config
from .spec import import_hf_main, spec_from_arch, spec_from_config, spec_from_hf

if TYPE_CHECKING:
    from .export import export_hf, hf_tensors
    from .weights import check_hf_weights, load_hf_model, load_hf_weights

__all__ = [
    "SUPPORTED",
    "HFError",
    "HFImportError",
    "HFWeightsError",
    "read_hf_config",
    "arch_from_hf_config",
    "spec_from_arch",
    "spec_from_config",
    "spec_from_hf",
    "import_hf_main",
    "load_hf_weights",
    "load_hf_model",
    "check_hf_weights",
    "EXPORTS",
    "HFExportError",
    "export_family",
    "hf_config_from_arch",
    "hf_tensors",
    "export_hf",
]

_LAZY = {"load_hf_weights", "load_hf_model", "check_hf_weights"}  # these need torch and safetensors


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import weights

        return getattr(weights, name)
    if name in ("export_hf", "hf_tensors"):  # defined beside the torch-free part, but they use torch
        from . import export

        return getattr(export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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

    model_type, hf_class = export_family(arch)              # or HFExportError, naming the gaps
    config, tensors = export_hf(arch, model.state_dict(), special_ids={"eos": 257})

This module is the front door: config.json (`hf_config_from_arch`) and the whole export checked
by the import (`export_hf`). The rest lives beside it: export_fits.py (which family expresses an
architecture, `export_family`), export_common.py (`_Fit`, `_Need`, `EXPORTS`, `HFExportError`),
the families by kind in export_gpt.py, export_llama.py and export_encoders.py, and the tensors
under the family's names in export_tensors.py (`hf_tensors`).

Pure: no files, no run directory (that is `lmspec.runtime.export`). `export_family` and
`hf_config_from_arch` need no torch; the tensor functions import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..arch import ArchConfig
from .config import arch_from_hf_config
from .export_common import EXPORTS, HFExportError
from .export_fits import _fit, _plain_scales, export_family
from .export_tensors import hf_tensors

__all__ = ["EXPORTS", "HFExportError", "export_family", "hf_config_from_arch", "hf_tensors", "export_hf"]


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


# --- the whole export, checked by the import -----------------------------------------------


def _normalised(arch: ArchConfig) -> ArchConfig:
    """What the import can be asked to give back: heads in one order, the tie flag of a model
    with no vocabulary head dropped (it ties nothing), no name, no mask id (a tokenizer matter
    that config.json does not hold)."""
    vocab_head = any(h.kind in ("lm", "mlm") for h in arch.heads)
    return dataclasses.replace(_plain_scales(arch), name="", mask_id=None, tie_embeddings=arch.tie_embeddings and
                               vocab_head, heads=tuple(sorted(arch.heads, key=lambda h: h.kind)))


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

"""An lmspec state dict under the Hugging Face family's tensor names (`hf_tensors`).

The tensors follow `mapping.py` backwards: the first name of each rule's alternatives, q, k and
v split out of the fused projection (or regrouped head by head: GPT-NeoX, BLOOM; key/value
group by group: Falcon), gate and up fused again (Phi-3), GPT-2's Conv1D weights transposed; a
tied matrix is written once, under the embedding's name, as transformers writes it. Imports
torch where it is used, not at the top.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..arch import ArchConfig, LayerConfig
from .export_common import EXPORTS, HFExportError
from .export_fits import export_family
from .mapping import hf_mapping

__all__ = ["hf_tensors"]

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

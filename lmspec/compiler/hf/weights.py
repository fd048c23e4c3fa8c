"""Loading a local Hugging Face safetensors checkpoint into an lmspec model.

The load is planned before anything is copied: every lmspec parameter is matched to its
HF tensor(s) by the family's `Mapping`, and the shapes are read from the safetensors
headers. Only when the plan is complete (no parameter without a source, no checkpoint
tensor left over, no shape off) are the tensors read, one at a time, and copied in. A
partial load is never left behind: a mismatch raises `HFWeightsError` listing them all.
Pickle files are never opened.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..arch import ArchConfig
from .config import arch_from_hf_config
from .errors import HFImportError, HFWeightsError
from .files import read_hf_config, safetensors_files, tensor_shapes
from .mapping import Rule, hf_mapping
from .spec import default_model_name

__all__ = ["load_hf_weights", "load_hf_model", "check_hf_weights"]


@dataclass
class _Copy:
    param: nn.Parameter
    name: str  # the lmspec name reported in errors
    rule: Rule
    sources: list[str]  # HF tensor names, concatenated along dim 0 in this order
    heads: int = 0  # rule.per_head: the layer's query heads and key/value heads, whose row groups
    kv_heads: int = 0  # [q .. q k v] (one per key/value head) are regrouped


# safetensors dtypes a parameter can be copied from (converted to the model's dtype)
_FLOATS = frozenset({"F64", "F32", "F16", "BF16"})

# the lmspec modules that are output heads (a `with head ...` model may replace them)
HEAD_MODULES = ("lm_head", "mlm_head", "nsp_head", "classifier", "score")


def load_hf_weights(model: nn.Module, directory: str | Path, *, new_heads: bool = False) -> None:
    """Fill `model` (built from the checkpoint's ArchConfig) with the checkpoint's tensors.

    Raises `HFWeightsError` naming every missing, unexpected and misshapen tensor before
    copying anything. Parameters shared by several modules (tied embeddings) are filled once.

    new_heads: the model's output heads differ from the checkpoint's (`gpt with head scalar`
    initialised from a causal LM): head parameters with no tensor keep their initialisation
    and the checkpoint's own head tensors are left unused. The body must still match exactly.
    """
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("the model is on the meta device, which holds no values: build it on a real device")
    with _open_checkpoint(directory) as (model_type, arch, handles):
        plan = _plan(model, str(directory), model_type, arch, handles, new_heads)
        _check_zeros(model_type, arch, handles)
        with torch.no_grad():
            for copy in plan:
                copy.param.copy_(_value(copy, [handles[s].get_tensor(s) for s in copy.sources]))


def _check_zeros(model_type: str, arch: ArchConfig, handles: dict) -> None:
    """Refuse a buffer lmspec drops (BART's final_logits_bias) that is not all zero: added to
    the logits, it would change what the model computes."""
    mapping = hf_mapping(model_type, arch)
    for name in handles:
        if mapping.must_be_zero(name) and bool(handles[name].get_tensor(name).any()):
            raise HFImportError(f"the checkpoint's {name} is not all zero: lmspec has no place for this "
                                "buffer (a tied lm head's bias outside the parameters), so it cannot add it; "
                                f"to import the model without it, save {name} as zeros (each logit then "
                                "loses its bias: the model computes something else)")


def _value(copy: _Copy, tensors: list[torch.Tensor]) -> torch.Tensor:
    """The rule's sources made into the lmspec parameter's value."""
    rule = copy.rule
    if rule.transpose:
        tensors = [t.t() for t in tensors]
    if rule.split is not None:  # Phi-3's [gate | up]: this rule's piece
        part, parts = rule.split
        tensors = [t.chunk(parts, dim=0)[part] for t in tensors]
    value = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
    if rule.per_head:  # (kv, r + 2, hd, ...), r = heads / kv queries per group -> all q, all k, all v
        share, rest = copy.heads // copy.kv_heads, value.shape[1:]
        groups = value.reshape(copy.kv_heads, share + 2, -1, *rest)
        value = torch.cat([groups[:, :share].reshape(-1, *rest), groups[:, share].reshape(-1, *rest),
                           groups[:, share + 1].reshape(-1, *rest)])
    return value


def check_hf_weights(arch: ArchConfig, directory: str | Path, *, new_heads: bool = False) -> None:
    """Raise what `load_hf_weights` would raise for a model of `arch`, reading only the config
    and the safetensors headers: the model is built on the meta device and no tensor is read."""
    from ..build import build_model

    with _open_checkpoint(directory) as (model_type, checkpoint, handles):
        _plan(build_model(arch, device="meta"), str(directory), model_type, checkpoint, handles, new_heads)


@contextmanager
def _open_checkpoint(directory: str | Path) -> Iterator[tuple[str, ArchConfig, dict]]:
    """The checkpoint's model type, its ArchConfig and its tensors, each HF tensor name mapped
    to the open safetensors file that holds it (the files stay open inside the `with`)."""
    config = read_hf_config(directory)
    with ExitStack() as stack:
        handles = {}
        for path in safetensors_files(directory):
            f = stack.enter_context(safe_open(str(path), framework="pt"))
            handles.update(dict.fromkeys(f.keys(), f))
        yield config["model_type"], arch_from_hf_config(config, "checkpoint", tensor_names=handles.keys()), handles


def _plan(
    model: nn.Module, directory: str, model_type: str, arch: ArchConfig, handles: dict, new_heads: bool
) -> list[_Copy]:
    mapping = hf_mapping(model_type, arch)
    available: dict[str, str] = {}  # normalised HF name -> name in the file
    for name in handles:
        if not mapping.is_ignored(name):
            available[mapping.normalize(name)] = name
    prefix = mapping.resolve_prefix(available)

    # one entry per Parameter object: a tied weight is reachable under several names
    groups: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), (param, []))[1].append(name)

    plan: list[_Copy] = []
    used: set[str] = set()
    missing: list[str] = []
    mismatched: list = []
    wrong_dtype: list[tuple[str, str]] = []
    for param, names in groups.values():
        candidates = []  # (lmspec name, rule, [chosen source or None], every alternative present)
        for name in names:
            found = mapping.sources_for(name, prefix)
            if found is None:
                continue
            rule, slots = found
            chosen = [next((alt for alt in slot if alt in available), None) for slot in slots]
            present = [alt for slot in slots for alt in slot if alt in available]
            candidates.append((name, rule, slots, chosen, present))
        if not candidates:
            if new_heads and names[0].split(".")[0] in HEAD_MODULES:
                continue  # a new head: keeps its initialisation
            missing.append(f"{names[0]} (no source: lmspec has no mapping for it)")
            continue
        # of several names for one tied parameter, take the one whose tensors are on disk
        name, rule, slots, chosen, present = next((c for c in candidates if None not in c[3]), candidates[0])
        used.update(present)  # alternatives not chosen are tied copies of the chosen one
        if None in chosen:
            if new_heads and name.split(".")[0] in HEAD_MODULES:
                continue  # a new head: keeps its initialisation
            absent = [" | ".join(slot) for slot, c in zip(slots, chosen) if c is None]
            missing.append(f"{name} (from {', '.join(absent)})")
            continue
        sources = [available[c] for c in chosen]
        shapes = [tuple(handles[s].get_slice(s).get_shape()) for s in sources]
        if rule.transpose:
            shapes = [s[::-1] for s in shapes]
        if rule.split is not None:  # a piece of each; a length that does not divide is reported whole
            parts = rule.split[1]
            shapes = [(s[0] // parts, *s[1:]) if s and s[0] % parts == 0 else s for s in shapes]
        wrong_dtype += [(s, d) for s in sources if (d := handles[s].get_slice(s).get_dtype()) not in _FLOATS]
        found_shape = _concatenated(shapes)
        if found_shape != tuple(param.shape):
            mismatched.append((name, tuple(param.shape), found_shape, tuple(sources)))
            continue
        heads = kv_heads = 0
        if rule.per_head:
            found = re.match(r"(encoder|decoder)\.layers\.(\d+)\.", name)
            layer = getattr(arch, found[1]).layers[int(found[2])]
            heads, kv_heads = layer.heads, layer.kv_heads
        plan.append(_Copy(param, name, rule, sources, heads, kv_heads))

    unexpected = sorted(available[n] for n in set(available) - used)
    if new_heads:
        unexpected = [n for n in unexpected if not re.search(mapping.head_tensors, mapping.normalize(n))]
    if missing or unexpected or mismatched or wrong_dtype:
        raise HFWeightsError(directory, missing=missing, unexpected=unexpected, mismatched=mismatched,
                             wrong_dtype=sorted(set(wrong_dtype)))
    return plan


def _concatenated(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The shape of the tensors concatenated along dim 0; the first shape's trailing dims
    when they disagree (the mismatch is then reported against it)."""
    if len(shapes) == 1:
        return shapes[0]
    bad = next((s for s in shapes if len(s) == 0 or s[1:] != shapes[0][1:]), None)
    if bad is not None:
        return bad
    return (sum(s[0] for s in shapes), *shapes[0][1:])


def load_hf_model(
    directory: str | Path,
    name: str | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[ArchConfig, nn.Module]:
    """Build the lmspec model for a local HF checkpoint and load its weights.

    Returns the ArchConfig and the model, in eval mode as `from_pretrained` leaves it. The
    model is built on the meta device and materialised empty, so no time is spent on a random
    initialisation that the checkpoint overwrites anyway.
    """
    from ..build import build_model  # imported here: the builders import every module file

    config = read_hf_config(directory)
    arch = arch_from_hf_config(
        config, name or default_model_name(directory), tensor_names=tensor_shapes(directory).keys()
    )
    model = build_model(arch, device="meta", dtype=dtype)
    if any(True for _ in model.buffers()):
        # to_empty would leave buffers uninitialised: build (and initialise) for real instead
        model = build_model(arch, device=device, dtype=dtype)
    else:
        model.to_empty(device=device if device is not None else torch.get_default_device())
        model.tie_weights()  # to_empty gave the tied modules separate parameters
    load_hf_weights(model, directory)
    return arch, model.eval()

"""Static analysis of a model from its `ArchConfig`: exact parameter counts, FLOPs, training
and inference memory, and a wiring check on the "meta" device. Nothing here allocates
weights; only `meta_check` and `meta_pass` import torch, and only when called (and
`.meta` itself is imported on first use: `lmspec check --no-meta` never needs it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .flops import FlopCount, StageCost, flops_per_token, forward_flops, stage_cost
from .memory import (
    ATTENTION_KERNELS,
    OPTIMIZERS,
    PARALLELISMS,
    PRECISIONS,
    DeviceMemory,
    KVCacheEstimate,
    MemoryEstimate,
    activation_bytes,
    dense_mask_layers,
    device_memory,
    kv_cache_memory,
    optimizer_state_bytes,
    training_memory,
)
from .params import ParamCount, ParamShape, count_parameters, parameter_shapes

if TYPE_CHECKING:
    from .meta import MetaResult, meta_check, meta_pass, representative_arch

_LAZY = {"meta_check", "meta_pass", "MetaResult", "representative_arch"}

__all__ = [
    "ParamShape",
    "ParamCount",
    "parameter_shapes",
    "count_parameters",
    "FlopCount",
    "StageCost",
    "forward_flops",
    "flops_per_token",
    "stage_cost",
    "OPTIMIZERS",
    "PRECISIONS",
    "MemoryEstimate",
    "KVCacheEstimate",
    "optimizer_state_bytes",
    "activation_bytes",
    "training_memory",
    "kv_cache_memory",
    "PARALLELISMS",
    "DeviceMemory",
    "device_memory",
    "ATTENTION_KERNELS",
    "dense_mask_layers",
    "meta_check",
    "meta_pass",
    "MetaResult",
    "representative_arch",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import meta

        return getattr(meta, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

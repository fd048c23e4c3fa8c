"""The torch building blocks of lmspec models, one small file each, assembled by
`lmspec.compiler.build.build_model` (the only place that reads an `ArchConfig`).

norms.py      make_norm: LayerNorm / RMSNorm, with Gemma's (offset + weight) scale
positions.py  sinusoidal tables, RoPE, ALiBi, T5 relative-position bias
masks.py      AttentionContext: every layer's mask, built once per forward
attention.py  Attention (self, fused qkv), CrossAttention, attend (SDPA)
flex.py       FlexAttention for the masks SDPA takes dense (sliding, prefix, ALiBi), on CUDA
mlp.py        FeedForward (plain or gated)
moe.py        MixtureOfExperts: a routed mixture of FeedForwards (Mixtral), moe_aux_loss
block.py      Block: attention (+ cross-attention) + feed-forward, pre-, post- or sandwich norm
parallel_block.py  ParallelBlock: attention and feed-forward side by side (GPT-J, GPT-NeoX, Phi-2, Falcon)
heads.py      LMHead (soft-capped logits), Pooler, MLMHead, pool
kv_cache.py   KVCache, LayerCache
model.py      Stack, Transformer (forward, new_cache, generate), ModelOutput
"""

from .attention import Attention, CrossAttention, attend
from .block import Block
from .heads import LMHead, MLMHead, Pooler, pool
from .kv_cache import KVCache, LayerCache
from .masks import AttentionContext, AttentionMask
from .mlp import FeedForward, make_activation
from .moe import MixtureOfExperts, moe_aux_loss
from .model import ModelOutput, Stack, Transformer, sample_next
from .norms import make_norm
from .parallel_block import ParallelBlock
from .positions import RelativePositionBias, Rotary

__all__ = [
    "Attention",
    "AttentionContext",
    "AttentionMask",
    "Block",
    "CrossAttention",
    "FeedForward",
    "KVCache",
    "LMHead",
    "LayerCache",
    "MLMHead",
    "MixtureOfExperts",
    "ModelOutput",
    "ParallelBlock",
    "Pooler",
    "RelativePositionBias",
    "Rotary",
    "Stack",
    "Transformer",
    "attend",
    "make_activation",
    "make_norm",
    "moe_aux_loss",
    "pool",
    "sample_next",
]

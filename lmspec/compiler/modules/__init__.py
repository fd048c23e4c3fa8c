"""The torch building blocks of lmspec models, one small file each, assembled by
`lmspec.compiler.build.build_model` (the only place that reads an `ArchConfig`).

norms.py      make_norm: LayerNorm / RMSNorm
positions.py  sinusoidal tables, RoPE, ALiBi, T5 relative-position bias
masks.py      AttentionContext: every layer's mask, built once per forward
attention.py  Attention (self, fused qkv), CrossAttention, attend (SDPA)
mlp.py        FeedForward (plain or gated)
block.py      Block: attention (+ cross-attention) + feed-forward, pre- or post-norm
parallel_block.py  ParallelBlock: attention and feed-forward side by side (GPT-J, GPT-NeoX)
heads.py      Pooler, MLMHead, pool
kv_cache.py   KVCache, LayerCache
model.py      Stack, Transformer (forward, new_cache, generate), ModelOutput
"""

from .attention import Attention, CrossAttention, attend
from .block import Block
from .heads import MLMHead, Pooler, pool
from .kv_cache import KVCache, LayerCache
from .masks import AttentionContext, AttentionMask
from .mlp import FeedForward, make_activation
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
    "LayerCache",
    "MLMHead",
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
    "pool",
    "sample_next",
]

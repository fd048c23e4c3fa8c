"""Which keys each query may see, computed once per forward pass of a stack.

Layers of one stack may differ (a few sliding-window layers among causal ones, ALiBi with
different head counts...), so the masks are built on demand and memoised per distinct kind:
every layer asks its `AttentionContext` and layers that agree share one tensor.

Vocabulary: a *slot* is a token's index in the sequence seen so far (cached keys first, so the
queries of this call occupy slots start .. start+T-1); a *position id* is what positional
encodings read. They differ only under left padding, where real tokens start at position 0.
Causal, sliding and prefix structure is defined on slots; rope/alibi/relative on positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .positions import Rotary, alibi_bias, alibi_slopes, rope_cos_sin

__all__ = ["AttentionMask", "AttentionContext"]


@dataclass
class AttentionMask:
    """What `F.scaled_dot_product_attention` takes: a boolean mask (True = may attend),
    an additive float bias, or nothing at all with `is_causal` (the fast kernels)."""

    mask: torch.Tensor | None = None  # bool (B|1, 1, T, S) or float (B|1, nh, T, S)
    is_causal: bool = False


class AttentionContext:
    """Everything the layers of a stack share during one forward pass.

    q_pos: (B|1, T) position ids of the queries; k_pos: (B|1, S) of all keys, cached ones
    included; start: how many keys were cached before this call (S = start + T);
    key_mask: (B, S) bool, False for padding keys, or None when nothing is padding;
    relative_bias: the stack's T5 bias (B|1, nh, T, S) or None; memory_mask: (B, S_enc) bool,
    False at encoder padding, or None, from which `cross_mask` is made for cross-attention.
    """

    def __init__(
        self,
        *,
        q_pos: torch.Tensor,
        k_pos: torch.Tensor,
        start: int,
        key_mask: torch.Tensor | None,
        prefix_lengths: torch.Tensor | None,
        relative_bias: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
        dtype: torch.dtype,
    ):
        self.q_pos, self.k_pos, self.start = q_pos, k_pos, start
        self.key_mask = key_mask
        self.prefix_lengths = prefix_lengths
        self.relative_bias = relative_bias
        self.cross_mask = _cross_mask(memory_mask)
        self.dtype = dtype
        self.T, self.S = q_pos.shape[1], k_pos.shape[1]
        self._memo: dict[tuple, object] = {}

    def rope(self, rotary: Rotary) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B|1, T, 1, dims) for the queries; keys of this call share their positions."""
        key = ("rope", rotary)
        if key not in self._memo:
            self._memo[key] = rope_cos_sin(self.q_pos, rotary, self.dtype)
        return self._memo[key]  # type: ignore[return-value]

    def mask(
        self, kind: str, window: int | None = None, *, alibi_heads: int | None = None, relative: bool = False
    ) -> AttentionMask:
        key = ("mask", kind, window, alibi_heads, relative)
        if key not in self._memo:
            self._memo[key] = self._build(kind, window, alibi_heads, relative)
        return self._memo[key]  # type: ignore[return-value]

    def _build(self, kind: str, window: int | None, alibi_heads: int | None, relative: bool) -> AttentionMask:
        bias = None
        if alibi_heads is not None:
            bias = alibi_bias(alibi_slopes(alibi_heads), self.q_pos, self.k_pos)
        if relative:
            if self.relative_bias is None:
                raise ValueError("a layer uses relative positions but its stack has no relative bias table")
            bias = self.relative_bias if bias is None else bias + self.relative_bias

        if kind == "sliding" and window is not None and self.S <= window:
            kind = "causal"  # every key is inside the window: plain causal attention
        if bias is None and self.key_mask is None:
            # the fast paths: no mask tensor at all
            if kind == "bidirectional" or (kind == "causal" and self.T == 1):
                return AttentionMask()
            if kind == "causal" and self.start == 0:
                return AttentionMask(is_causal=True)

        allowed = self._structure(kind, window)  # (B|1, 1, T, S) or None: all allowed
        if self.key_mask is not None:
            # a padding key is hidden from everyone except itself, so no row is ever fully
            # masked (a softmax over nothing is NaN); padding queries' outputs are ignored anyway
            keys = self.key_mask[:, None, None, :] | self._diagonal()
            allowed = keys if allowed is None else allowed & keys
        if bias is None:
            return AttentionMask(allowed)
        bias = bias.to(self.dtype)
        if allowed is not None:
            bias = bias.masked_fill(~allowed, float("-inf"))
        return AttentionMask(bias)

    def _slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.q_pos.device
        q_slot = torch.arange(self.start, self.start + self.T, device=device)
        return q_slot, torch.arange(self.S, device=device)

    def _diagonal(self) -> torch.Tensor:
        q_slot, k_slot = self._slots()
        return (k_slot[None, :] == q_slot[:, None])[None, None]  # (1, 1, T, S)

    def _structure(self, kind: str, window: int | None) -> torch.Tensor | None:
        if kind == "bidirectional":
            return None
        q_slot, k_slot = self._slots()
        causal = k_slot[None, :] <= q_slot[:, None]  # (T, S)
        if kind == "causal":
            return causal[None, None]
        if kind == "sliding":
            if window is None:
                raise ValueError("sliding attention needs a window")
            recent = k_slot[None, :] > q_slot[:, None] - window  # the query and window-1 keys before it
            return (causal & recent)[None, None]
        if kind == "prefix":
            if self.prefix_lengths is None:
                raise ValueError(
                    "prefix attention needs prefix_lengths (B,): how many leading tokens of each row "
                    "see each other bidirectionally; pass prefix_lengths= to forward()"
                )
            p = self.prefix_lengths.to(q_slot.device)[:, None, None]  # (B, 1, 1)
            inside = (q_slot[None, :, None] < p) & (k_slot[None, None, :] < p)  # (B, T, S)
            return (causal[None] | inside)[:, None]
        raise ValueError(f"unknown attention kind {kind!r}")


def _cross_mask(memory_mask: torch.Tensor | None) -> AttentionMask:
    """What each decoder query may see of the encoder output: every real encoder token."""
    if memory_mask is None:
        return AttentionMask()
    mask = memory_mask[:, None, None, :]  # (B, 1, 1, S_enc)
    # an all-padding encoder row would make softmax NaN; let it attend everywhere instead
    return AttentionMask(mask | ~mask.any(dim=-1, keepdim=True))

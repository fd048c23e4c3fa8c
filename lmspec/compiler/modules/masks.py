"""Which keys each query may see, computed once per forward pass of a stack.

Layers of one stack may differ (a few sliding-window layers among causal ones, ALiBi with
different head counts...), so the masks are built on demand and memoised per distinct kind:
every layer asks its `AttentionContext` and layers that agree share one tensor.

Vocabulary: a *slot* is a token's index in the sequence seen so far (cached keys first, so the
queries of this call occupy slots start .. start+T-1); a *position id* is what positional
encodings read. They differ only under left padding, where real tokens start at position 0.
Causal, sliding and prefix structure is defined on slots; rope/alibi/relative on positions.

A sliding-window layer decoding with a KV cache keeps its keys in a ring buffer (kv_cache.py),
so the keys it attends to are not slots 0 .. S-1 in order: its mask is asked for with `ring=`
the ring's rows, and built over the slots `ring_key_slots` says those keys hold, reading their
position ids and padding from the per-slot records as for any other layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .flex import FlexMask, build_flex_mask
from .kv_cache import ring_key_count, ring_key_slots
from .positions import Rotary, alibi_bias, alibi_slopes, rope_cos_sin

__all__ = ["AttentionMask", "AttentionContext"]


@dataclass
class AttentionMask:
    """What `F.scaled_dot_product_attention` takes: a boolean mask (True = may attend),
    an additive float bias, or nothing at all with `is_causal` (the fast kernels); or, for
    FlexAttention, its block mask and score modification (flex.py)."""

    mask: torch.Tensor | None = None  # bool (B|1, 1, T, S) or float (B|1, nh, T, S)
    is_causal: bool = False
    flex: FlexMask | None = None


class AttentionContext:
    """Everything the layers of a stack share during one forward pass.

    q_pos: (B|1, T) position ids of the queries; k_pos: (B|1, S) of all keys, cached ones
    included; start: how many keys were cached before this call (S = start + T);
    key_mask: (B, S) bool, False for padding keys, or None when nothing is padding;
    relative_bias: the stack's T5 bias (B|1, nh, T, S) or None; memory_mask: (B, S_enc) bool,
    False at encoder padding, or None, from which `cross_mask` is made for cross-attention.
    flex: layers that ask for it (`mask(flex=True)`) get FlexAttention masks where SDPA would
    get a dense one (flex.py): a sliding window shorter than the keys, a prefix, ALiBi.
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
        flex: bool = False,
    ):
        self.q_pos, self.k_pos, self.start = q_pos, k_pos, start
        self.key_mask = key_mask
        self.prefix_lengths = prefix_lengths
        self.relative_bias = relative_bias
        self.cross_mask = _cross_mask(memory_mask)
        self.dtype, self.flex = dtype, flex
        self.T, self.S = q_pos.shape[1], k_pos.shape[1]
        self._memo: dict[tuple, object] = {}

    def rope(self, rotary: Rotary) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B|1, T, 1, dims) for the queries; keys of this call share their positions."""
        key = ("rope", rotary)
        if key not in self._memo:
            self._memo[key] = rope_cos_sin(self.q_pos, rotary, self.dtype)
        return self._memo[key]  # type: ignore[return-value]

    def mask(
        self,
        kind: str,
        window: int | None = None,
        *,
        alibi_heads: int | None = None,
        relative: bool = False,
        ring: int | None = None,
        flex: bool = False,
    ) -> AttentionMask:
        """The mask of a layer of this kind; ring: the rows of the layer's ring-buffer cache
        (its keys are then those `ring_key_slots` names), or None for slots 0 .. S-1; flex: the
        layer can take a FlexAttention mask (no attention dropout, no soft cap), which it gets
        when the context was made with `flex` and SDPA would need a dense mask."""
        flex = flex and self.flex and ring is None and self.start == 0 and not relative
        key = ("mask", kind, window, alibi_heads, relative, ring, flex)
        if key not in self._memo:
            self._memo[key] = self._build(kind, window, alibi_heads, relative, ring, flex)
        return self._memo[key]  # type: ignore[return-value]

    def _build(
        self, kind: str, window: int | None, alibi_heads: int | None, relative: bool, ring: int | None,
        flex: bool = False,
    ) -> AttentionMask:
        if relative and self.relative_bias is None:
            raise ValueError("a layer uses relative positions but its stack has no relative bias table")
        # every key is inside every query's window: plain causal attention. With a ring that is
        # when it hands over at most `window` keys: the ring before it wraps (slots 0 .. S-1,
        # S <= window), or a single query's last `window` slots.
        n_keys = self.S if ring is None else ring_key_count(self.start, self.T, ring)
        if kind == "sliding" and window is not None and n_keys <= window:
            kind = "causal"
        if alibi_heads is None and not relative and self.key_mask is None:
            # the fast paths: no mask tensor at all
            if kind == "bidirectional" or (kind == "causal" and self.T == 1):
                return AttentionMask()
            if kind == "causal" and self.start == 0:
                return AttentionMask(is_causal=True)
        if flex and (alibi_heads is not None or kind in ("sliding", "prefix")):
            # the layers check counts as FlexAttention's (analysis/memory.py): padding alone
            # (a causal or bidirectional mask over padded keys) stays with SDPA
            slopes = None if alibi_heads is None else alibi_slopes(alibi_heads)
            return AttentionMask(flex=build_flex_mask(
                kind, window, T=self.T, key_mask=self.key_mask, prefix_lengths=self.prefix_lengths,
                positions=self.q_pos, slopes=slopes, device=self.q_pos.device))

        k_slot = self._key_slots(ring)  # (S',) the slot of every key this layer attends to
        k_pos, key_mask, relative_bias = self.k_pos, self.key_mask, self.relative_bias
        if ring is not None:  # what the cache records per slot, for the slots the ring holds
            k_pos = k_pos[:, k_slot]
            key_mask = None if key_mask is None else key_mask[:, k_slot]
            relative_bias = None if relative_bias is None else relative_bias[..., k_slot]
        bias = None
        if alibi_heads is not None:
            bias = alibi_bias(alibi_slopes(alibi_heads), self.q_pos, k_pos)
        if relative:
            bias = relative_bias if bias is None else bias + relative_bias

        allowed = self._structure(kind, window, k_slot)  # (B|1, 1, T, S) or None: all allowed
        if key_mask is not None:
            # a padding key is hidden from everyone except itself, so no row is ever fully
            # masked (a softmax over nothing is NaN); padding queries' outputs are ignored anyway
            keys = key_mask[:, None, None, :] | self._diagonal(k_slot)
            allowed = keys if allowed is None else allowed & keys
        if bias is None:
            return AttentionMask(allowed)
        bias = bias.to(self.dtype)
        if allowed is not None:
            bias = bias.masked_fill(~allowed, float("-inf"))
        return AttentionMask(bias)

    def _query_slots(self) -> torch.Tensor:
        return torch.arange(self.start, self.start + self.T, device=self.q_pos.device)  # (T,)

    def _key_slots(self, ring: int | None) -> torch.Tensor:
        if ring is None:
            return torch.arange(self.S, device=self.q_pos.device)
        return ring_key_slots(self.start, self.T, ring, self.q_pos.device)

    def _diagonal(self, k_slot: torch.Tensor) -> torch.Tensor:
        return (k_slot[None, :] == self._query_slots()[:, None])[None, None]  # (1, 1, T, S)

    def _structure(self, kind: str, window: int | None, k_slot: torch.Tensor) -> torch.Tensor | None:
        if kind == "bidirectional":
            return None
        q_slot = self._query_slots()
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

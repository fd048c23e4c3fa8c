"""The key/value cache for incremental decoding.

One `KVCache` serves one decoder stack: a `LayerCache` per layer holds that layer's keys and
values (preallocated on first write, in the dtype and device of the keys), and the cache as a
whole remembers what every layer needs about past tokens: how many there are, their position
ids, and which were padding. For an encoder-decoder it also keeps each layer's
cross-attention keys/values of the encoder output, computed once.

Usage: `cache = model.new_cache(batch, max_len)`, then call the model on successive chunks
with `cache=cache`; each call appends its tokens, and `max_len` bounds the prompt plus
everything generated.

A global layer keeps every token's keys: `max_len` rows. A sliding-window layer (window W)
keeps only the last `capacity = min(W, max_len)`, a ring buffer: token slot s lives in row
s % capacity, overwritten W tokens later, when no query can see it any more. Keys are cached
rotated (RoPE), so a key never needs its position again; the mask still reads the position
ids and padding of the keys a ring holds, from the cache's per-slot records, through
`ring_key_slots`: the slot of every key `update` hands back, in its order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["KVCache", "LayerCache", "ring_key_count", "ring_key_slots"]


def _writes_first(start: int, T: int, capacity: int) -> bool:
    """Whether a ring may take this call's keys before attending: true when nothing it
    overwrites is still visible, a single query (the overwritten key is W back) or no wrap yet."""
    return T == 1 or start + T <= capacity


def _ring_slots(end: int, capacity: int, device: torch.device | None) -> torch.Tensor:
    """The slot held in each row of a ring after `end` tokens, rows 0 .. min(end, capacity)-1:
    row i holds the latest slot s < end with s % capacity == i."""
    rows = torch.arange(min(end, capacity), device=device)
    return end - 1 - (end - 1 - rows) % capacity


def ring_key_slots(start: int, T: int, capacity: int, device: torch.device | None = None) -> torch.Tensor:
    """(S',) the slot of each key a ring of `capacity` rows returns from `update(k, v, start)`
    with T new keys: the ring after writing them, or (a chunk that would overwrite keys its
    own first queries still see) the ring before writing them followed by the chunk."""
    if _writes_first(start, T, capacity):
        return _ring_slots(start + T, capacity, device)
    return torch.cat([_ring_slots(start, capacity, device), torch.arange(start, start + T, device=device)])


def ring_key_count(start: int, T: int, capacity: int) -> int:
    """len(ring_key_slots(start, T, capacity)), without building it."""
    if _writes_first(start, T, capacity):
        return min(start + T, capacity)
    return min(start, capacity) + T


class LayerCache:
    """Keys and values of one attention layer: (B, nkv, rows, hd) each, rows = max_len, or
    for a sliding-window layer `ring` = min(window, max_len) (see the module docstring)."""

    def __init__(self, max_len: int, window: int | None = None):
        self.max_len = max_len  # the batch comes with the first keys written
        self.ring = None if window is None else min(window, max_len)  # rows of a ring buffer
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.cross_kv: tuple[torch.Tensor, torch.Tensor] | None = None  # encoder keys/values

    def update(self, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's keys/values (B, nkv, T, hd) at slot `start`; return the keys and
        values to attend to, (B, nkv, S, hd): every slot so far, or for a ring those in
        `ring_key_slots(start, T, ring)` order."""
        B, nkv, T, hd = k.shape
        if self.k is None:
            rows = self.max_len if self.ring is None else self.ring
            self.k, self.v = k.new_zeros(B, nkv, rows, hd), v.new_zeros(B, nkv, rows, hd)
        if self.ring is None:
            self.k[:, :, start : start + T] = k
            self.v[:, :, start : start + T] = v
            return self.k[:, :, : start + T], self.v[:, :, : start + T]  # (B, nkv, S, hd)
        C = self.ring
        if _writes_first(start, T, C):
            self._write(k, v, start)
            n = min(start + T, C)
            return self.k[:, :, :n], self.v[:, :, :n]  # (B, nkv, min(S, C), hd)
        n = min(start, C)
        k_all = torch.cat([self.k[:, :, :n], k], dim=2)  # (B, nkv, n + T, hd): read before overwriting
        v_all = torch.cat([self.v[:, :, :n], v], dim=2)
        kept = min(T, C)  # only the chunk's last `capacity` keys outlive it
        self._write(k[:, :, T - kept :], v[:, :, T - kept :], start + T - kept)
        return k_all, v_all

    def _write(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        rows = torch.arange(start, start + k.shape[2], device=k.device) % self.ring  # distinct: T <= ring
        self.k.index_copy_(2, rows, k)
        self.v.index_copy_(2, rows, v)


class KVCache:
    """All layers' caches of one decoder stack, plus what they share about past tokens.

    windows: per layer, the window of a sliding-window layer (its cache becomes a ring
    buffer), else None; default all None."""

    def __init__(self, batch: int, max_len: int, n_layers: int, windows: Sequence[int | None] | None = None):
        self.batch, self.max_len = batch, max_len
        self.length = 0  # tokens cached so far
        windows = [None] * n_layers if windows is None else list(windows)
        if len(windows) != n_layers:
            raise ValueError(f"{len(windows)} windows for {n_layers} layers")
        self.layers = [LayerCache(max_len, w) for w in windows]
        self.positions: torch.Tensor | None = None  # (B|1, max_len) position ids of cached tokens
        self.key_mask: torch.Tensor | None = None  # (B, max_len) bool; None until padding appears
        self.memory_mask: torch.Tensor | None = None  # (B, S_enc) bool encoder padding, or None
        self.encoded = False  # encoder-decoder: the cross-attention keys/values are in place

    def append(
        self, positions: torch.Tensor, key_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Record the position ids (B|1, T) and padding (B, T) of the tokens about to be added;
        return those of every key so far, (B|1, S) and (B, S) or None. `length` advances when
        the stack has written every layer (`advance`)."""
        start, T = self.length, positions.shape[1]
        if start + T > self.max_len:
            raise ValueError(
                f"KV cache overflow: it holds {self.max_len} tokens, {start} are cached and {T} more "
                "arrived; make the cache with a larger max_len"
            )
        if positions.shape[0] not in (1, self.batch) or (key_mask is not None and key_mask.shape[0] != self.batch):
            raise ValueError(f"the cache was made for batch {self.batch}, got a batch of {positions.shape[0]}")
        if self.positions is None:
            self.positions = positions.new_zeros(positions.shape[0], self.max_len)
        elif self.positions.shape[0] < positions.shape[0]:  # shared ids so far, per-row ids now
            self.positions = self.positions.expand(positions.shape[0], -1).clone()
        self.positions[:, start : start + T] = positions
        if key_mask is not None and self.key_mask is None:
            self.key_mask = torch.ones(self.batch, self.max_len, dtype=torch.bool, device=key_mask.device)
        if self.key_mask is not None:
            self.key_mask[:, start : start + T] = True if key_mask is None else key_mask
        key_mask_so_far = None if self.key_mask is None else self.key_mask[:, : start + T]
        return self.positions[:, : start + T], key_mask_so_far

    def advance(self, n: int) -> None:
        self.length += n

"""The key/value cache for incremental decoding.

One `KVCache` serves one decoder stack: a `LayerCache` per layer holds that layer's keys and
values (preallocated to `max_len` on first write, in the dtype and device of the keys), and the
cache as a whole remembers what every layer needs about past tokens: how many there are, their
position ids, and which were padding. For an encoder-decoder it also keeps each layer's
cross-attention keys/values of the encoder output, computed once.

Usage: `cache = model.new_cache(batch, max_len)`, then call the model on successive chunks
with `cache=cache`; each call appends its tokens. Keys of every past token are kept (sliding
-window layers mask the old ones rather than evicting them), so `max_len` bounds the prompt
plus everything generated.
"""

from __future__ import annotations

import torch

__all__ = ["KVCache", "LayerCache"]


class LayerCache:
    """Keys and values of one attention layer: (B, nkv, max_len, hd) each."""

    def __init__(self, max_len: int):
        self.max_len = max_len  # the batch comes with the first keys written
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.cross_kv: tuple[torch.Tensor, torch.Tensor] | None = None  # encoder keys/values

    def update(self, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's keys/values (B, nkv, T, hd) at `start`; return all of them so far."""
        B, nkv, T, hd = k.shape
        if self.k is None:
            self.k = k.new_zeros(B, nkv, self.max_len, hd)
            self.v = v.new_zeros(B, nkv, self.max_len, hd)
        self.k[:, :, start : start + T] = k
        self.v[:, :, start : start + T] = v
        return self.k[:, :, : start + T], self.v[:, :, : start + T]  # (B, nkv, S, hd)


class KVCache:
    """All layers' caches of one decoder stack, plus what they share about past tokens."""

    def __init__(self, batch: int, max_len: int, n_layers: int):
        self.batch, self.max_len = batch, max_len
        self.length = 0  # tokens cached so far
        self.layers = [LayerCache(max_len) for _ in range(n_layers)]
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

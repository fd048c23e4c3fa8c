"""The model: embeddings, one or two stacks of blocks, output heads; and generation.

Reads top to bottom: `Stack` runs a list of `Block`s over shared attention context,
`Transformer` embeds tokens, runs the encoder and/or decoder, then its heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .block import Block
from .flex import use_flex
from .heads import MLMHead, Pooler, pool
from .kv_cache import KVCache
from .masks import AttentionContext
from .positions import RelativePositionBias, rope_switch_length, sinusoidal_positions

__all__ = ["ModelOutput", "Stack", "Transformer", "sample_next"]


@dataclass
class ModelOutput:
    hidden: torch.Tensor  # (B, T, d) final hidden states of the last stack (after its final norm)
    logits: torch.Tensor | None = None  # (B, T, V) from the lm head, else the mlm head
    nsp_logits: torch.Tensor | None = None  # (B, 2)
    class_logits: torch.Tensor | None = None  # (B, classes)
    scores: torch.Tensor | None = None  # (B,) scalar head (reward / value)
    cache: KVCache | None = None
    encoder_hidden: torch.Tensor | None = None  # encoder-decoder: the encoder output, when it ran


class Stack(nn.Module):
    """The layers of an encoder or a decoder, a final norm, and (T5) the relative-position
    bias table that all its layers share. In an encoder-decoder a stack may also hold its own
    learned position table and embedding norm (BART), which `Transformer` reads in place of its
    shared ones when it embeds this stack's tokens.

    With `checkpoint_activations` set, a training forward pass with gradients keeps only each
    block's inputs and recomputes the block's activations during backward
    (`torch.utils.checkpoint`, non-reentrant; dropout draws the same masks both times). With
    `checkpoint_in_eval` too, so does an eval-mode pass with gradients (an rl stage's updates,
    which run with dropout off)."""

    def __init__(
        self,
        layers: list[Block],
        *,
        final_norm: nn.Module | None = None,
        rel_bias: RelativePositionBias | None = None,
        pos_embed: nn.Embedding | None = None,
        embed_norm: nn.Module | None = None,
    ):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.pos_embed = pos_embed
        self.embed_norm = embed_norm
        self.rel_bias = rel_bias
        self.final_norm = final_norm
        self.checkpoint_activations = False
        self.checkpoint_in_eval = False
        self.attention_kernel = "auto"  # flex.use_flex: FlexAttention on CUDA for the masks SDPA takes dense

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        *,
        key_mask: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        cache: KVCache | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, d); positions (B|1, T) position ids; key_mask (B, T) False at padding, or
        None; memory (B, S_enc, d) the encoder output for cross-attention."""
        start = 0 if cache is None else cache.length
        k_pos, keys = (positions, key_mask) if cache is None else cache.append(positions, key_mask)
        ctx = AttentionContext(
            q_pos=positions,
            k_pos=k_pos,
            start=start,
            key_mask=keys,
            prefix_lengths=prefix_lengths,
            relative_bias=None if self.rel_bias is None else self.rel_bias(positions, k_pos),
            memory_mask=memory_mask,
            dtype=x.dtype,
            flex=cache is None and use_flex(self.attention_kernel, x.device),  # decoding keeps SDPA
        )
        training = self.training or self.checkpoint_in_eval
        if self.checkpoint_activations and training and cache is None and torch.is_grad_enabled():
            for layer in self.layers:
                layer.prepare(ctx)  # shared tensors outside the recomputed region: see Block.prepare
            for layer in self.layers:
                x = checkpoint(layer, x, ctx, None, memory, use_reentrant=False)
        else:
            for i, layer in enumerate(self.layers):
                x = layer(x, ctx, None if cache is None else cache.layers[i], memory)
        if cache is not None:
            cache.advance(x.shape[1])
        return x if self.final_norm is None else self.final_norm(x)


class Transformer(nn.Module):
    """A decoder, an encoder, or an encoder-decoder, with any of the heads. Built by
    `lmspec.compiler.build.build_model`; every submodule is injected, none reads a config."""

    def __init__(
        self,
        *,
        embed: nn.Embedding,
        context: int,
        encoder: Stack | None = None,
        decoder: Stack | None = None,
        pos_embed: nn.Embedding | None = None,
        sinusoidal: bool = False,  # add sinusoidal position tables to the embeddings
        position_offset: int = 0,  # position p reads row p + position_offset of pos_embed (OPT, RoBERTa)
        segment_embed: nn.Embedding | None = None,
        embed_norm: nn.Module | None = None,
        embed_scale: float = 1.0,
        dropout: float = 0.0,
        pooler: Pooler | None = None,
        lm_head: nn.Linear | None = None,
        mlm_head: MLMHead | None = None,
        nsp_head: nn.Linear | None = None,
        classifier: nn.Linear | None = None,
        score: nn.Linear | None = None,
        class_pool: str = "last",
        score_pool: str = "last",
        tie_embeddings: bool = False,
        tied_head_scale: float = 1.0,
        pad_id: int | None = None,
        decoder_start_id: int | None = None,
    ):
        super().__init__()
        if encoder is None and decoder is None:
            raise ValueError("a Transformer needs an encoder, a decoder, or both")
        self.context = context
        self.embed = embed
        self.pos_embed = pos_embed
        self.sinusoidal = sinusoidal
        self.position_offset = position_offset
        self.segment_embed = segment_embed
        self.embed_norm = embed_norm
        self.embed_scale = embed_scale
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.encoder = encoder
        self.decoder = decoder
        self.pooler = pooler
        self.lm_head = lm_head
        self.mlm_head = mlm_head
        self.nsp_head = nsp_head
        self.classifier = classifier
        self.score = score
        self.class_pool, self.score_pool = class_pool, score_pool
        self.tie_embeddings = tie_embeddings
        self.tied_head_scale = tied_head_scale
        self.pad_id = pad_id
        self.decoder_start_id = decoder_start_id  # None: pad_id, else 0 (T5)
        self.tie_weights()

    def checkpoint_activations(self, on: bool = True, *, in_eval: bool = False) -> "Transformer":
        """Recompute each block's activations during backward instead of keeping them
        (training forward passes with gradients only; evaluation and generation are unchanged).
        Saves memory for about one more forward pass of the blocks; `train { checkpoint_activations:
        true }` sets it. `in_eval`: eval-mode passes with gradients too (`rl { checkpoint_activations:
        true }`: its updates run with dropout off). Returns the model."""
        for stack in (self.encoder, self.decoder):
            if stack is not None:
                stack.checkpoint_activations, stack.checkpoint_in_eval = on, on and in_eval
        return self

    def attention_kernel(self, kernel: str = "auto") -> "Transformer":
        """Which kernel runs the layers whose mask SDPA takes as a dense tensor (a sliding window
        shorter than the sequence, a prefix, ALiBi): "auto" FlexAttention on CUDA and SDPA
        elsewhere, "sdpa" always SDPA, "flex" always FlexAttention (modules/flex.py);
        `train { attention_kernel: ... }` sets it. Returns the model."""
        use_flex(kernel, torch.device("cpu"))  # an unknown name fails here, not at the first forward
        for stack in (self.encoder, self.decoder):
            if stack is not None:
                stack.attention_kernel = kernel
        return self

    def tie_weights(self) -> None:
        """Make the vocabulary projections share the token embedding matrix (again: moving a
        model off the meta device creates fresh parameters)."""
        if not self.tie_embeddings:
            return
        if self.lm_head is not None:
            self.lm_head.weight = self.embed.weight
        if self.mlm_head is not None:
            self.mlm_head.decoder.weight = self.embed.weight

    # ---- forward -------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> ModelOutput:
        """Run the model.

        input_ids (B, T) go to the decoder of a decoder-only model, to the encoder otherwise;
        attention_mask, segment_ids, prefix_lengths and position_ids describe input_ids.
        attention_mask (B, T): True/1 = real token. With a cache it may instead span the cached
        tokens as well, (B, past + T): only its last T columns are read (the cache remembers
        which past tokens were padding).
        position_ids (B|1, T): default past + arange(T); `generate` passes them for left padding.
        decoder_input_ids / decoder_attention_mask: the decoder side of an encoder-decoder.
        cache: a `KVCache` from `new_cache`; this call's tokens are appended to it. An
        encoder-decoder runs its encoder on the first call only; later calls may omit input_ids.
        logits_to_keep: if > 0, vocabulary logits for the last that many positions only.
        """
        encoder_hidden = None
        if self.encoder is not None and self.decoder is not None:
            if decoder_input_ids is None:
                raise ValueError("an encoder-decoder needs decoder_input_ids")
            memory, memory_mask = None, None
            if cache is not None and cache.encoded:
                memory_mask = cache.memory_mask
            else:
                if input_ids is None:
                    raise ValueError("an encoder-decoder needs input_ids for its encoder")
                memory_mask = _key_mask(attention_mask, input_ids.shape[1])  # the encoder's own key mask
                memory = encoder_hidden = self._run(
                    self.encoder, input_ids, memory_mask, segment_ids, prefix_lengths, position_ids
                )
            mask, T = decoder_attention_mask, decoder_input_ids.shape[1]
            hidden = self._run(
                self.decoder, decoder_input_ids, _key_mask(mask, T), cache=cache, memory=memory, memory_mask=memory_mask
            )
            if cache is not None:
                cache.encoded, cache.memory_mask = True, memory_mask
        else:
            if input_ids is None:
                raise ValueError("input_ids is required")
            if cache is not None and self.decoder is None:
                raise ValueError("an encoder-only model has no KV cache: it attends to the whole input at once")
            stack = self.decoder if self.decoder is not None else self.encoder
            mask, T = attention_mask, input_ids.shape[1]
            hidden = self._run(
                stack, input_ids, _key_mask(mask, T), segment_ids, prefix_lengths, position_ids, cache=cache
            )
        out = self._heads(hidden, None if mask is None else mask[:, -T:], logits_to_keep)
        out.cache, out.encoder_hidden = cache, encoder_hidden
        return out

    def _run(
        self,
        stack: Stack,
        ids: torch.Tensor,
        key_mask: torch.Tensor | None,
        segment_ids: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed `ids` (B, T) and run `stack`; key_mask (B, T) from `_key_mask`, or None."""
        T = ids.shape[1]
        if position_ids is None:
            start = 0 if cache is None else cache.length
            self._check_positions(start + T, stack)
            position_ids = torch.arange(start, start + T, device=ids.device)[None]  # (1, T)
        elif self._position_table(stack) is not None and position_ids.numel():
            self._check_positions(int(position_ids.max()) + 1, stack)
        x = self._embed(ids, position_ids, segment_ids, stack)  # (B, T, d)
        return stack(
            x,
            position_ids,
            key_mask=key_mask,
            prefix_lengths=prefix_lengths,
            cache=cache,
            memory=memory,
            memory_mask=memory_mask,
        )

    def _position_table(self, stack: Stack | None) -> nn.Embedding | None:
        """The learned position table `stack` reads: its own (BART), else the model's shared one."""
        own = None if stack is None else stack.pos_embed
        return own if own is not None else self.pos_embed

    def _check_positions(self, n: int, stack: Stack | None = None) -> None:
        """Learned positions stop at the context; other kinds extrapolate (well or badly)."""
        table = self._position_table(stack if stack is not None else self.decoder)
        if table is not None and n > table.num_embeddings - self.position_offset:
            raise ValueError(
                f"{n} positions do not fit the learned position table "
                f"({table.num_embeddings - self.position_offset} positions, the model's context)"
            )

    def _embed(
        self, ids: torch.Tensor, positions: torch.Tensor, segment_ids: torch.Tensor | None, stack: Stack | None = None
    ) -> torch.Tensor:
        x = self.embed(ids)  # (B, T, d)
        if self.embed_scale != 1.0:
            # the scale rounded to the activations' dtype first, as Gemma's reference code and
            # transformers do (in bfloat16 sqrt(3584) = 59.87 becomes 60.0); float32 is unchanged
            x = x * x.new_tensor(self.embed_scale)
        table = self._position_table(stack)
        if table is not None:
            if self.position_offset:  # a new index tensor, which the lookup keeps for backward
                positions = positions + self.position_offset
            x = x + table(positions)  # (B|1, T, d) broadcast over the batch
        elif self.sinusoidal:
            x = x + sinusoidal_positions(positions, x.shape[-1], x.dtype)
        if self.segment_embed is not None:
            if segment_ids is None:
                segment_ids = torch.zeros_like(ids)  # everything in segment 0, as BERT
            x = x + self.segment_embed(segment_ids)
        norm = stack.embed_norm if stack is not None and stack.embed_norm is not None else self.embed_norm
        if norm is not None:
            x = norm(x)
        return self.drop(x)

    def _heads(self, hidden: torch.Tensor, mask: torch.Tensor | None, logits_to_keep: int) -> ModelOutput:
        out = ModelOutput(hidden=hidden)
        last = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        if self.lm_head is not None:
            out.logits = self.lm_head(last * self.tied_head_scale if self.tied_head_scale != 1.0 else last)
        elif self.mlm_head is not None:
            out.logits = self.mlm_head(last)
        pooled = self.pooler(hidden) if self.pooler is not None else None  # (B, d)
        if self.nsp_head is not None:
            out.nsp_logits = self.nsp_head(pool(hidden, "first", mask, pooled))  # (B, 2)
        if self.classifier is not None:
            out.class_logits = self.classifier(pool(hidden, self.class_pool, mask, pooled))  # (B, classes)
        if self.score is not None:
            out.scores = self.score(pool(hidden, self.score_pool, mask, pooled)).squeeze(-1)  # (B,)
        return out

    # ---- incremental decoding ------------------------------------------------------------

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch` sequences of up to `max_len` tokens (default: the
        model's context) on the decoder side. Tensors are allocated on first use, in the
        dtype and on the device of the model's activations; a sliding-window layer keeps only
        its window of keys (a ring buffer, see kv_cache.py)."""
        if self.decoder is None:
            raise ValueError("an encoder-only model has no KV cache")
        windows = [layer.attn.window if layer.attn.kind == "sliding" else None for layer in self.decoder.layers]
        return KVCache(batch, max_len or self.context, len(windows), windows)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        attention_mask: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        decoder_start_id: int | None = None,
        on_token=None,
    ) -> torch.Tensor:
        """Sample up to `max_new_tokens` with the KV cache; greedy when temperature == 0.

        Decoder: input_ids (B, T) are prompts, padded on the left (attention_mask False there);
        returns (B, T + new) prompts and continuations. Prefix-LM decoders treat the whole
        prompt as the prefix unless prefix_lengths says otherwise. Encoder-decoder: input_ids
        go to the encoder; returns (B, 1 + new) decoder tokens starting with `decoder_start_id`
        (default: the model's own, as BART's 2, else pad_id, else 0, as T5). After `eos_id` a
        row is filled with pad_id (else eos_id); generation stops once every row has finished.
        `on_token`, if given, is called with each step's new ids (B,) as they are sampled (for
        streaming).
        """
        if self.decoder is None:
            raise ValueError("generate needs a decoder; this model is encoder-only")
        B = input_ids.shape[0]
        was_training = self.training
        self.eval()
        try:
            positions = None
            if self.encoder is not None:
                start_id = next((i for i in (decoder_start_id, self.decoder_start_id, self.pad_id) if i is not None), 0)
                tokens = torch.full((B, 1), start_id, dtype=torch.long, device=input_ids.device)
                cache = self.new_cache(B, 1 + max_new_tokens)
                out = self(
                    input_ids, attention_mask=attention_mask, decoder_input_ids=tokens, cache=cache, logits_to_keep=1
                )
            else:
                tokens, T = input_ids, input_ids.shape[1]
                if attention_mask is not None and not bool(attention_mask.bool().all()):
                    real = attention_mask.bool()
                    if bool((real[:, 1:] < real[:, :-1]).any()):
                        raise ValueError("generate needs prompts padded on the left (padding before the prompt)")
                    positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)  # real tokens count from 0
                # fail now rather than after generating: the last new token is never fed back
                last = T if positions is None else int(positions[:, -1].max()) + 1
                self._check_positions(last + max_new_tokens - 1)
                if prefix_lengths is None and any(layer.attn.kind == "prefix" for layer in self.decoder.layers):
                    prefix_lengths = torch.full((B,), T, dtype=torch.long, device=input_ids.device)
                cache = self.new_cache(B, T + max_new_tokens)
                out = self(
                    input_ids,
                    attention_mask=attention_mask,
                    prefix_lengths=prefix_lengths,
                    position_ids=positions,
                    cache=cache,
                    logits_to_keep=1,
                )
            fill_id = self.pad_id if self.pad_id is not None else eos_id
            finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
            new_tokens = []
            for step in range(max_new_tokens):
                next_ids = sample_next(
                    out.logits[:, -1], temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
                )  # (B,)
                if eos_id is not None:
                    next_ids = torch.where(finished, fill_id, next_ids)
                    finished |= next_ids == eos_id
                new_tokens.append(next_ids)
                if on_token is not None:
                    on_token(next_ids)
                if step + 1 == max_new_tokens or (eos_id is not None and bool(finished.all())):
                    break
                if self.encoder is not None:
                    out = self(decoder_input_ids=next_ids[:, None], cache=cache, logits_to_keep=1)
                elif cache.length in self._rope_restarts():
                    # longrope switches to its long factors here: re-read the whole sequence so that
                    # every cached key is rotated with them, as transformers' Phi-3 drops its cache
                    tokens_so_far = torch.cat([tokens, torch.stack(new_tokens, dim=1)], dim=1)
                    mask = None if attention_mask is None else torch.cat(
                        [attention_mask.bool(), torch.ones_like(tokens_so_far[:, T:], dtype=torch.bool)], dim=1)
                    if positions is not None:
                        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
                    cache = self.new_cache(B, T + max_new_tokens)
                    out = self(tokens_so_far, attention_mask=mask, prefix_lengths=prefix_lengths,
                               position_ids=positions, cache=cache, logits_to_keep=1)
                else:
                    if positions is not None:
                        positions = positions[:, -1:] + 1
                    out = self(
                        next_ids[:, None],
                        prefix_lengths=prefix_lengths,
                        position_ids=positions,
                        cache=cache,
                        logits_to_keep=1,
                    )
            if not new_tokens:
                return tokens
            return torch.cat([tokens, torch.stack(new_tokens, dim=1)], dim=1)
        finally:
            self.train(was_training)

    def _rope_restarts(self) -> set[int]:
        """The cache lengths at which generation re-reads the sequence: the original context of
        each longrope layer, past which its frequencies change for every position."""
        rotaries = [layer.attn.rotary for layer in self.decoder.layers if layer.attn.rotary is not None]
        return {n for n in map(rope_switch_length, rotaries) if n is not None}


def _key_mask(attention_mask: torch.Tensor | None, T: int) -> torch.Tensor | None:
    """(B, T) bool, False at padding; None when there is no padding (enables fast paths)."""
    if attention_mask is None:
        return None
    mask = attention_mask[:, -T:].bool()
    return None if bool(mask.all()) else mask


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row from logits (B, V): argmax when temperature == 0, otherwise a
    sample from softmax(logits / temperature) restricted to the top_k / top_p nucleus."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest set reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

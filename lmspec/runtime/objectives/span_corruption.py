"""Span corruption (T5): drop random spans of a window; the model writes them back.

The noise mask is T5's `random_spans_noise_mask` and the inputs and targets are its
`noise_span_to_unique_sentinel` / `nonnoise_span_to_unique_sentinel` (t5/data/preprocessors.py):

    window    a b c d e f g h          noise: c d, g
    input     a b <X0> e f <X1> h EOS
    target    <X0> c d <X1> g EOS

Every window has the same numbers of noise tokens and spans, so every row has the same input
and target lengths: the shapes `lmspec check` prices (costs._decoder_len) are the real ones.
"""

from __future__ import annotations

import torch

from .base import IGNORE, Objective, Reads, right_pad, token_loss_sum

__all__ = ["SpanCorruption", "noise_counts", "random_spans_noise_mask"]


def noise_counts(length: int, noise: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a window of `length` tokens, as T5 computes them:
    round(length * noise) clamped to [1, length - 1], and round(that / mean_span), at least 1.
    Python's round, like numpy's and TensorFlow's, rounds halves to even. One step T5 lacks:
    the spans are at most the non-noise tokens, each span needing one before it (T5 fails
    there, e.g. 8 tokens at 100% noise in spans of 3: 7 noise tokens, 2 spans, 1 other)."""
    num_noise = min(max(round(length * noise), 1), length - 1)
    return num_noise, min(max(round(num_noise / mean_span), 1), length - num_noise)


def _random_segmentation(num_items: int, num_segments: int, gen: torch.Generator) -> torch.Tensor:
    """`num_items` split at random into `num_segments` non-empty runs: their lengths (S,).
    A shuffled 0/1 list of num_items - 1 gaps, S - 1 of them a cut, as T5."""
    first_in_segment = (torch.arange(num_items - 1) < num_segments - 1).long()
    first_in_segment = first_in_segment[torch.randperm(num_items - 1, generator=gen)]
    segment_id = torch.cat([torch.zeros(1, dtype=torch.long), first_in_segment.cumsum(0)])  # (num_items,)
    return torch.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(length: int, noise: float, mean_span: float, gen: torch.Generator) -> torch.Tensor:
    """(length,) bool, True on noise: spans alternate non-noise, noise, ..., starting with
    non-noise and ending with noise; given the counts, every such mask is equally likely."""
    orig_length, length = length, max(length, 2)  # T5: "increase length to avoid degeneracy"
    num_noise, num_spans = noise_counts(length, noise, mean_span)
    noise_lengths = _random_segmentation(num_noise, num_spans, gen)  # (S,)
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, gen)  # (S,)
    interleaved = torch.stack([nonnoise_lengths, noise_lengths], dim=1).reshape(-1)  # (2S,)
    span_starts = interleaved.cumsum(0)[:-1]
    span_num = torch.zeros(length, dtype=torch.long).index_add_(0, span_starts, torch.ones_like(span_starts)).cumsum(0)
    return (span_num % 2 == 1)[:orig_length]


def _unique_sentinels(tokens: torch.Tensor, noise: torch.Tensor, sentinels: torch.Tensor) -> torch.Tensor:
    """T5's noise_span_to_unique_sentinel: each run of noise becomes one sentinel, the i-th run
    sentinels[i]; everything else is kept. tokens, noise (T,) -> (T',)."""
    prev_noise = torch.cat([noise.new_zeros(1), noise[:-1]])
    first = noise & ~prev_noise
    span_index = first.long().cumsum(0) - 1  # (T,) which run each first token opens
    out = torch.where(first, sentinels[span_index.clamp(min=0)], tokens)
    return out[~(noise & prev_noise)]


class SpanCorruption(Objective):
    """Encoder-decoder: the encoder reads the corrupted window, the decoder writes the target
    after the start token (targets shifted right). A prefix-LM decoder (`ctx.arch ==
    "decoder"`) reads input and target as one sequence, the input being its prefix, and is
    trained on the target part only."""

    kind = "span_corruption"

    def __init__(self, spec, ctx):
        super().__init__(spec, ctx)
        self.eos_id = ctx.special("eos")
        self.prefix_decoder = ctx.arch == "decoder"
        self.window = self._window_length()
        self.num_noise, self.num_spans = noise_counts(max(self.window, 2), spec.noise, spec.mean_span)
        if len(ctx.sentinels) < self.num_spans:
            raise ValueError(f"span_corruption cuts {self.num_spans} spans from {self.window} tokens, but the "
                             f"tokenizer has {len(ctx.sentinels)} sentinels; give it {self.num_spans} or more")
        self.sentinels = torch.tensor(ctx.sentinels[:self.num_spans], dtype=torch.long)
        self.target_len = self.num_noise + self.num_spans + 1  # sentinels + noise + EOS

    def _window_length(self) -> int:
        """The longest window whose batch fits seq_len. For an encoder-decoder the encoder input
        is window - noise + spans + 1 tokens, so a window of seq_len fits unless every span is
        one token (mean_span near 1); a prefix decoder reads input and target together."""
        T, noise, mean = self.ctx.seq_len, self.spec.noise, self.spec.mean_span
        for window in range(T, 0, -1):
            n, s = noise_counts(max(window, 2), noise, mean)
            used = window + 2 * s + 1 if self.prefix_decoder else window - n + s + 1
            if used <= T:
                return window
        raise ValueError(f"span_corruption cannot fit a corrupted window in seq_len {T}")

    @property
    def reads(self) -> Reads:
        return Reads("windows", length=self.window)

    @property
    def decoder_length(self) -> int | None:
        """The decoder's sequence length (costs._decoder_len's figure), or None for a decoder."""
        return None if self.prefix_decoder else self.target_len

    def build(self, examples, gen):
        inputs, targets = [], []
        for e in examples:
            tokens = e["tokens"].long()  # (W,)
            noise = random_spans_noise_mask(len(tokens), self.spec.noise, self.spec.mean_span, gen)
            eos = tokens.new_tensor([self.eos_id])
            inputs.append(torch.cat([_unique_sentinels(tokens, noise, self.sentinels), eos]))
            targets.append(torch.cat([_unique_sentinels(tokens, ~noise, self.sentinels), eos]))
        if self.prefix_decoder:
            return self._prefix_batch(inputs, targets)
        input_ids, attention_mask = right_pad(inputs, self.ctx.pad_id, self.ctx.seq_len)  # (B, seq_len)
        target_ids, target_mask = right_pad(targets, self.ctx.pad_id, self.target_len)  # (B, T_dec)
        start = target_ids.new_full((len(targets), 1), self.ctx.decoder_start_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "decoder_input_ids": torch.cat([start, target_ids[:, :-1]], dim=1),  # (B, T_dec) shifted right
            "decoder_attention_mask": torch.cat([start.new_ones(len(targets), 1, dtype=torch.bool),
                                                 target_mask[:, :-1]], dim=1),
            "labels": target_ids.masked_fill(~target_mask, IGNORE),
        }

    def _prefix_batch(self, inputs, targets):
        """One sequence input + target per row; position i predicts token i + 1, and only
        positions from the last input token on do (the earlier ones see their targets)."""
        seqs = [torch.cat([i, t]) for i, t in zip(inputs, targets)]
        ids, real = right_pad([s[:-1] for s in seqs], self.ctx.pad_id, self.ctx.seq_len)  # (B, seq_len)
        labels, _ = right_pad([s[1:] for s in seqs], IGNORE, self.ctx.seq_len)
        prefix = torch.tensor([len(i) for i in inputs], dtype=torch.long)  # (B,)
        labels[torch.arange(labels.shape[1])[None] < prefix[:, None] - 1] = IGNORE
        return {"input_ids": ids, "attention_mask": real, "prefix_lengths": prefix, "labels": labels}

    def count(self, batch):
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, out, batch):
        return token_loss_sum(out.logits, batch["labels"])

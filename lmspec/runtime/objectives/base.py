"""The objective protocol: how examples become a batch, and a batch a loss.

An objective reads examples of one shape (`reads`), builds the tensors of a micro-batch
(`build`), counts the units its loss is averaged over (`count`: target tokens, pairs or
sequences) and returns the *sum* of its loss over those units (`loss`). The engine divides by
the count over the whole optimizer step, so that `batch: 8` in one micro-batch and
`batch: 8, grad_accum: 4` give the same gradients however many loss tokens each sequence holds.

A weighted sum of objectives (`mlm + 0.5 * nsp`) runs the model once per micro-batch: the term
that `builds` comes first (see `compose`), the others `augment` its tensors (mlm masks the
pairs nsp built) or read the same tensors.

Batch keys: model inputs use the names of `Transformer.forward` (`input_ids`,
`attention_mask`, `segment_ids`, `prefix_lengths`, `decoder_input_ids`,
`decoder_attention_mask`); targets use their own names (`labels`, `nsp_labels`, ...). The
value -100 in a label tensor means "no loss here", as in PyTorch and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import torch

__all__ = ["IGNORE", "Reads", "Context", "Example", "Objective", "MODEL_INPUTS", "model_inputs", "token_loss_sum",
           "right_pad"]

IGNORE = -100  # a target that carries no loss

MODEL_INPUTS = ("input_ids", "attention_mask", "segment_ids", "prefix_lengths", "decoder_input_ids",
                "decoder_attention_mask")


@dataclass(frozen=True)
class Reads:
    """What an objective reads from its data.

    windows: `length` consecutive tokens of the packed token stream (documents joined with EOS);
    documents: one whole document (its tokens, EOS excluded) per example;
    records: the token fields named in `fields` of one record, plus its `label` if it has one;
    pairs: one preference pair of a feedback stage: {"prompt", "a", "b": ids, "p": P(a > b)}.
    """

    kind: Literal["windows", "documents", "records", "pairs"]
    length: int | None = None  # windows
    fields: tuple[str, ...] = ()  # records: data-block field names, e.g. ("prompt", "response")
    label: str | None = None  # records: the label field, e.g. "sentiment"


# One example as the loader gives it: {"tokens": LongTensor (T,)} for windows and documents;
# {field: LongTensor (T_field,) ..., "label": int} for records.
Example = dict[str, Any]


@dataclass
class Context:
    """What an objective may know besides its examples."""

    seq_len: int  # the longest input the stage feeds the model
    vocab_size: int  # ids the tokenizer produces (random replacement tokens are drawn below it)
    specials: dict[str, int]  # the tokenizer's special tokens: "pad", "eos", "mask", "cls", "sep", ...
    sentinels: list[int] = field(default_factory=list)  # ids of <extra_id_0>, <extra_id_1>, ... in order
    # nsp's "random next sentence": a document drawn from the split, (generator) -> LongTensor
    random_document: Callable[[torch.Generator], torch.Tensor] | None = None
    decoder_start_id: int = 0  # encoder-decoders: the token the decoder starts from (T5: pad)
    # the model's ArchConfig.arch: span_corruption lays out its batch for a prefix-LM decoder
    # when it is "decoder", for an encoder-decoder otherwise
    arch: Literal["decoder", "encoder", "encoder_decoder"] | None = None

    def special(self, name: str) -> int:
        if name not in self.specials:
            raise ValueError(f"the tokenizer has no '{name}' token; add it to the tokenizer's specials")
        return self.specials[name]

    @property
    def pad_id(self) -> int:
        return self.specials.get("pad", self.specials.get("eos", 0))


class Objective:
    """One term of a stage's objective. Subclasses set `kind`, `unit` and `reads`, and
    implement `build` (when they can shape a batch), `count` and `loss`."""

    kind: str = ""
    unit: str = "tokens"  # what `count` counts, for the metrics: tokens | pairs | sequences
    token_level: bool = True  # a loss per token: perplexity and bits per byte make sense
    augments: tuple[str, ...] = ()  # the kinds whose batches this term can `augment` (mlm: nsp)

    def __init__(self, spec: Any, ctx: Context):
        self.spec, self.ctx = spec, ctx

    @property
    def reads(self) -> Reads:
        raise NotImplementedError

    def needed_length(self, lengths: dict[str, np.ndarray]) -> np.ndarray:
        """Per example, the number of input positions it needs, from the token count of each of
        its fields (`lengths["prompt"]`, ... each (N,)); the engine rejects, before the first
        step, examples that need more than `ctx.seq_len`. Windows are cut to fit: constant."""
        if self.reads.kind != "windows":
            raise NotImplementedError(f"objective '{self.kind}' reads {self.reads.kind} and must say how long they are")
        n = len(next(iter(lengths.values()))) if lengths else 0
        return np.full(n, self.ctx.seq_len, dtype=np.int64)

    def build(self, examples: list[Example], gen: torch.Generator) -> dict[str, torch.Tensor]:
        """The tensors of one micro-batch from `examples` (random choices from `gen` only)."""
        raise NotImplementedError(f"objective '{self.kind}' cannot shape a batch of its own")

    def augment(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Add this term's targets to a batch another term built (default: nothing to add)."""
        return batch

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """The number of units this term's loss averages over in `batch`."""
        raise NotImplementedError

    def loss(self, out, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss summed over this term's units in `batch` (a 0-d tensor); `out` is the
        model's `ModelOutput`."""
        raise NotImplementedError

    def metrics(self, out, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Extra evaluation figures as sums over units (accuracy as correct counts, say):
        the engine divides each by the summed `count`."""
        return {}


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments of `Transformer.forward` in `batch`."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over every position whose label is not IGNORE.
    logits (B, T, V); labels (B, T)."""
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE, reduction="sum")


def right_pad(rows: list[torch.Tensor], value: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths as one (B, T) tensor padded on the right with `value`, and
    its (B, T) bool mask, True on real tokens; T = `length`, else the longest row."""
    T = length if length is not None else max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), T), value, dtype=rows[0].dtype if rows else torch.long)
    real = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, :len(r)], real[i, :len(r)] = r, True
    return out, real

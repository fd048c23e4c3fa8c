"""Forward and training FLOPs from an `ArchConfig`, and what a training stage costs.

Convention (the one `torch.utils.flop_counter.FlopCounterMode` uses, so the figures can be
checked against a real forward):

- only matrix products count, at 2 FLOPs per multiply-add: the linear projections, the
  attention scores (q k^T) and the weighted values (p v), and the heads;
- attention costs the full T x S score matrix, as a fused attention kernel computes it:
  causal, prefix and sliding-window masks hide scores but do not skip them, so no discount;
- element-wise work (norms, activations, softmax, rotary embeddings, residual adds,
  biases) and embedding lookups are free: together they are a few percent at most;
- a mixture of experts counts what runs: the router, each token's top_k experts and the shared
  ones (any routing gives the same figure, since every token reaches exactly top_k experts);
- training = 3 x forward: the backward pass computes a gradient for each matrix product's
  input and one for its weight, each as large as the forward product.

"Per token" divides the cost of one example by its `seq_len` positions. For an
encoder-decoder, an example is `seq_len` encoder positions plus `decoder_seq_len` decoder
positions (default `seq_len`), and its cost is still divided by `seq_len`, the input tokens
a training stage counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmspec.compiler.arch import GATED_ACTIVATIONS, ArchConfig, LayerConfig, StackConfig

__all__ = ["FlopCount", "StageCost", "flops_per_token", "forward_flops", "stage_cost"]


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one example of `seq_len` positions (`*_per_sequence`, exact integers) and per
    position (`forward`, `training`). `breakdown` splits the forward FLOPs per token by
    component (`decoder.attention`, `decoder.attention_scores`, `decoder.mlp`, `lm_head`, ...)."""

    seq_len: int
    decoder_seq_len: int | None
    forward_per_sequence: int
    training_per_sequence: int
    forward: float
    training: float
    breakdown: dict[str, float]


@dataclass(frozen=True)
class StageCost:
    """A training stage: the tokens it reads (steps x batch x seq_len) and its FLOPs."""

    tokens: int
    flops: int


def _layer_flops(layer: LayerConfig, T: int, S: int) -> dict[str, int]:
    """Forward FLOPs of one block over T query positions; S = memory (encoder) positions."""
    d, hd = layer.d_model, layer.head_dim
    q_dim, kv_dim = layer.heads * hd, layer.kv_heads * hd
    out = {
        "attention": 2 * T * d * (q_dim + 2 * kv_dim) + 2 * T * q_dim * d,  # qkv_proj + o_proj
        # q k^T and p v, one (T x T x head_dim) product each per query head: grouped-query
        # attention shares k and v between heads but still scores every query head
        "attention_scores": 4 * T * T * q_dim,
    }
    matrices = 3 if layer.activation in GATED_ACTIVATIONS else 2
    moe = layer.moe
    if moe is None:
        out["mlp"] = 2 * T * d * layer.d_ff * matrices
    else:  # each token runs the router, its top_k experts and the shared ones: the other experts are idle
        out["router"] = 2 * T * d * moe.experts
        out["experts"] = 2 * T * moe.top_k * d * layer.d_ff * matrices
        if moe.shared_experts:
            out["mlp"] = 2 * T * d * moe.shared_experts * layer.d_ff * matrices
    if layer.cross_attention:
        # q and o over the T decoder positions, k and v over the S encoder positions
        out["cross_attention"] = 2 * T * d * q_dim + 2 * S * d * 2 * kv_dim + 2 * T * q_dim * d
        out["cross_attention_scores"] = 4 * T * S * q_dim
    return out


def _stack_flops(name: str, stack: StackConfig, T: int, S: int, into: dict[str, int]) -> None:
    for layer in stack.layers:
        for component, flops in _layer_flops(layer, T, S).items():
            key = f"{name}.{component}"
            into[key] = into.get(key, 0) + flops


def forward_flops(arch: ArchConfig, seq_len: int, *, decoder_seq_len: int | None = None) -> dict[str, int]:
    """Forward FLOPs of one example by component (exact integers); see `flops_per_token`."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    if decoder_seq_len is not None and arch.arch != "encoder_decoder":
        raise ValueError("decoder_seq_len applies to encoder_decoder models only")
    d, V = arch.d_model, arch.vocab
    out: dict[str, int] = {}
    T_out = seq_len  # positions the heads read
    if arch.arch == "encoder_decoder":
        assert arch.encoder is not None and arch.decoder is not None
        T_dec = seq_len if decoder_seq_len is None else decoder_seq_len
        _stack_flops("encoder", arch.encoder, seq_len, seq_len, out)
        _stack_flops("decoder", arch.decoder, T_dec, seq_len, out)
        T_out = T_dec
    else:
        for name, stack in (("encoder", arch.encoder), ("decoder", arch.decoder)):
            if stack is not None:
                _stack_flops(name, stack, seq_len, seq_len, out)
    # token-level heads run on every position; pooled heads once per example
    if arch.pooler:
        out["pooler"] = 2 * d * d
    for head in arch.heads:
        if head.kind == "lm":
            out["lm_head"] = 2 * T_out * d * V
        elif head.kind == "mlm" and arch.head("lm") is None:  # the model runs one vocabulary head: lm first
            out["mlm_head"] = 2 * T_out * d * V + (2 * T_out * d * d if head.transform else 0)
        elif head.kind == "nsp":
            out["nsp"] = 2 * d * 2
        elif head.kind == "classifier":
            out["classifier"] = 2 * d * head.classes
        elif head.kind == "scalar":
            out["score"] = 2 * d
    return out


def flops_per_token(arch: ArchConfig, seq_len: int, *, decoder_seq_len: int | None = None) -> FlopCount:
    """Forward and training (3 x forward) matmul FLOPs per token at a given sequence length."""
    by_component = forward_flops(arch, seq_len, decoder_seq_len=decoder_seq_len)
    forward = sum(by_component.values())
    return FlopCount(
        seq_len=seq_len,
        decoder_seq_len=decoder_seq_len,
        forward_per_sequence=forward,
        training_per_sequence=3 * forward,
        forward=forward / seq_len,
        training=3 * forward / seq_len,
        breakdown={k: v / seq_len for k, v in by_component.items()},
    )


def stage_cost(
    arch: ArchConfig, *, steps: int, batch: int, seq_len: int, decoder_seq_len: int | None = None
) -> StageCost:
    """Tokens (steps x batch x seq_len) and training FLOPs (tokens x training FLOPs per token)
    of a training stage; exact integers."""
    if steps < 0 or batch < 1:
        raise ValueError(f"steps must be >= 0 and batch >= 1, got steps={steps}, batch={batch}")
    per_example = flops_per_token(arch, seq_len, decoder_seq_len=decoder_seq_len).training_per_sequence
    return StageCost(tokens=steps * batch * seq_len, flops=steps * batch * per_example)

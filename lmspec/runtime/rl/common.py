"""What every RL algorithm shares: the rollout batch, log-probs under the sampling temperature,
masked reductions and whitening, the per-token KL estimators, and the placement of a sequence's
reward on its last real token.

Conventions (docs/rl/ppo.md#shapes-and-masks):
- B sequences, T response positions. `response_mask` (B, T) is True on the real tokens of a
  response (its EOS included) and False on padding; the real tokens of a row are contiguous, and
  the padding may sit on either side.
- A log-prob at position t is log pi(response_tokens[t] | query, response_tokens[:t]) under the
  temperature the sampler used; padding positions hold 0.
- Reductions run in float32 (float64 stays float64): bf16 sums over thousands of tokens lose
  the digits the advantages live in.
- With several processes each rank holds a share of the batch (whole prompt groups). The
  statistics an algorithm takes over the whole batch (PPO's whitening, GRPO's batch std, RLOO's
  normalised advantages) are then summed across the ranks by `reduce` (a `Reduce`); `loss`
  stays a function of one rank's rows, and the stage rescales it by the share of the units its
  mean is over (`Algorithm.loss_units`) that this rank holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

import torch

__all__ = ["RolloutBatch", "Advantages", "Algorithm", "KLEstimator", "upcast", "sequence_logprobs", "entropy",
           "masked_sum", "masked_mean", "masked_var", "masked_whiten", "kl_estimate", "last_token_index",
           "reward_at_last_token", "detached", "nanstd", "clipped_surrogate", "Reduce", "batch_moments"]

Tensor = torch.Tensor
KLEstimator = Literal["k1", "k2", "k3"]
#: sums a 1-d float64 tensor over the ranks that hold the rest of the batch (an all-reduce);
#: None where the whole batch is in this process
Reduce = Callable[[Tensor], Tensor]
LossUnits = Literal["tokens", "sequences"]


def upcast(x: Tensor) -> Tensor:
    """`x` in float32, or float64 when it already is: the dtype every reduction here runs in."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@dataclass(frozen=True)
class RolloutBatch:
    """One batch of sampled responses and what was measured on them before any update.

    GRPO and RLOO read the rows as consecutive groups of `group_size` responses to one prompt
    (rows 0..G-1 answer prompt 0, rows G..2G-1 prompt 1, ...)."""

    query_tokens: Tensor  # (B, Tq) long, the prompts (their padding is the sampler's business)
    query_mask: Tensor  # (B, Tq) bool, True on real prompt tokens
    response_tokens: Tensor  # (B, T) long
    response_mask: Tensor  # (B, T) bool, True on real response tokens (EOS included)
    old_logprobs: Tensor  # (B, T) log pi_old of each response token, sampling temperature, 0 at padding
    scores: Tensor  # (B,) one reward per sequence (reward model or judge); NaN = unscorable (GRPO, RLOO)
    ref_logprobs: Tensor | None = None  # (B, T) log pi_ref, same temperature; needed when a KL term is on
    values: Tensor | None = None  # (B, T) V(s_t): the value of the state before response token t (PPO)

    def __post_init__(self) -> None:
        problems = []
        if self.response_tokens.dim() != 2:
            problems.append(f"response_tokens must be (B, T), got shape {tuple(self.response_tokens.shape)}")
        shape = tuple(self.response_tokens.shape)
        for name in ("response_mask", "old_logprobs", "ref_logprobs", "values"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != shape:
                problems.append(f"{name} has shape {tuple(t.shape)}, response_tokens {shape}")
        if self.response_mask.dtype != torch.bool:
            problems.append(f"response_mask must be bool, got {self.response_mask.dtype}")
        if tuple(self.scores.shape) != shape[:1]:
            problems.append(f"scores must be (B,) = {shape[:1]}, got {tuple(self.scores.shape)}")
        if tuple(self.query_mask.shape) != tuple(self.query_tokens.shape) or self.query_tokens.shape[:1] != shape[:1]:
            problems.append(f"query_tokens {tuple(self.query_tokens.shape)} and query_mask "
                            f"{tuple(self.query_mask.shape)} must be (B, Tq) with B = {shape[0]}")
        if problems:
            raise ValueError("malformed rollout batch:\n  " + "\n  ".join(problems))

    @property
    def batch_size(self) -> int:
        return int(self.response_tokens.shape[0])


@dataclass(frozen=True)
class Advantages:
    """What `advantages` computes once per rollout batch and `loss` reads on every update."""

    per_token: Tensor  # (B, T) A_t, 0 at padding
    returns: Tensor | None = None  # (B, T) value targets A_t + V(s_t) (PPO)
    per_sequence: Tensor | None = None  # (B,) one advantage per response (GRPO, RLOO)
    rewards: Tensor | None = None  # (B, T) per-token rewards (PPO) or (B,) per-sequence rewards (RLOO)
    metrics: dict[str, Tensor] = field(default_factory=dict)  # detached 0-d tensors


class Algorithm(Protocol):
    """An on-policy RL algorithm, as the rl stage drives it: once per rollout batch
    `advantages`, then `loss` on each optimisation pass over (a minibatch of) that batch.
    Neither loops over steps, logs, nor keeps state: the stage does."""

    name: str

    def advantages(self, batch: RolloutBatch, cfg: Any, *, reduce: Reduce | None = None) -> Advantages: ...

    def loss(self, new_logprobs: Tensor, new_values: Tensor | None, batch: RolloutBatch, adv: Advantages, cfg: Any,
             *, entropy: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]: ...

    def loss_units(self, cfg: Any) -> LossUnits:
        """What `loss` is a mean over, the real response tokens or the responses of its rows: a
        data-parallel stage divides by their count on every rank instead."""
        ...


def detached(metrics: dict[str, Tensor]) -> dict[str, Tensor]:
    """Metrics as detached float32 0-d tensors: no host sync here, the stage calls .item() when it logs."""
    return {k: v.detach().float() for k, v in metrics.items()}


# ----------------------------------------------------------------------------- log-probs and entropy


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    if not temperature > 0:
        raise ValueError(f"log-probs need a temperature > 0, got {temperature}: greedy decoding (temperature 0) "
                         "has no sampling distribution to take a ratio against; sample with temperature > 0")
    logits = upcast(logits)
    return logits / temperature if temperature != 1.0 else logits


def sequence_logprobs(logits: Tensor, tokens: Tensor, mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) at the taken tokens: logits (B, T, V) where logits[:, t]
    scores tokens[:, t] (the caller shifts: a decoder's logits at position j predict token j + 1);
    tokens (B, T) long; mask (B, T) bool. Returns (B, T) float32, 0 where mask is False.

    The temperature must be the sampler's, for old and new log-probs alike: the importance ratio
    of the first update is then exactly 1; one side at temperature 1 and the other at the
    sampling temperature gave TRL first-token ratios of 2 at T = 0.6 (TRL #4159).
    top-k / top-p truncation is not applied: old and new log-probs both come from here, so their
    ratio is still exact."""
    logp = torch.log_softmax(_scaled(logits, temperature), dim=-1)  # (B, T, V)
    out = logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)  # (B, T)
    return out if mask is None else out.masked_fill(~mask, 0.0)


def entropy(logits: Tensor, mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """Entropy (nats) of softmax(logits / temperature) per position: logits (B, T, V) -> (B, T),
    0 where mask is False."""
    logp = torch.log_softmax(_scaled(logits, temperature), dim=-1)  # (B, T, V)
    p = logp.exp()
    out = -(p * torch.where(p > 0, logp, 0.0)).sum(-1)  # (B, T); a -inf logit (top-k) adds 0, not NaN
    return out if mask is None else out.masked_fill(~mask, 0.0)


# ----------------------------------------------------------------------------- masked reductions


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of x where mask is True (over `dim`, else everything)."""
    x = upcast(x).masked_fill(~mask, 0.0)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over its True positions; 0 (not NaN) where a row has none."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of x over all its True positions (Bessel-corrected when `unbiased`, as TRL)."""
    n = int(mask.sum())
    if n < (2 if unbiased else 1):
        raise ValueError(f"a variance over {n} masked value(s) is undefined; whitening needs at least 2 real tokens "
                         "in the batch (use a larger rollout batch)")
    mean = masked_mean(x, mask)
    var = masked_mean((upcast(x) - mean) ** 2, mask)
    return var * (n / (n - 1)) if unbiased else var


def batch_moments(x: Tensor, mask: Tensor, reduce: Reduce) -> tuple[Tensor, Tensor]:
    """(mean, Bessel-corrected variance) of x over the True positions of `mask` on every rank,
    in two passes as in one process (the sum and count, then the squared deviations from the
    global mean); the variance is NaN when fewer than two values are True on all ranks."""
    x64 = x.double()
    sums = reduce(torch.stack([masked_sum(x64, mask), mask.sum().double()]))
    n = float(sums[1])
    mean = sums[0] / max(n, 1.0)
    squares = reduce(masked_sum((x64 - mean) ** 2, mask).reshape(1))[0]
    var = squares / (n - 1) if n >= 2 else torch.full_like(squares, float("nan"))
    dtype = upcast(x).dtype
    return mean.to(dtype), var.to(dtype)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  reduce: Reduce | None = None) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the True positions (unbiased var, as TRL's masked_whiten);
    with shift_mean=False the mean is added back: unit variance, mean kept. Padding positions are
    whitened too: the caller zeroes them if it reads them. With `reduce`, mean and var are those
    of the True positions on every rank."""
    if reduce is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        mean, var = batch_moments(x, mask, reduce)
        if not bool(torch.isfinite(var)):
            raise ValueError("a variance over fewer than 2 real tokens in the batch (on all ranks) is undefined; "
                             "whitening needs at least 2 (use a larger rollout batch)")
    white = (upcast(x) - mean) * torch.rsqrt(var + eps)
    return white if shift_mean else white + mean


def nanstd(x: Tensor, dim: int | None = None) -> Tensor:
    """Bessel-corrected standard deviation ignoring NaNs (TRL's nanstd): NaN where fewer than two
    values are finite. x (B,) or (N, G) -> a 0-d tensor, or (N,) over `dim`."""
    x = upcast(x)
    finite = ~torch.isnan(x)
    count = finite.sum() if dim is None else finite.sum(dim, keepdim=True)
    mean = torch.nanmean(x, dim=dim, keepdim=dim is not None)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=dim is not None) * count / (count - 1)
    var = torch.where(count > 1, var, torch.full_like(var, float("nan")))
    return var.sqrt() if dim is None else var.sqrt().squeeze(dim)


def clipped_surrogate(ratio: Tensor, adv: Tensor, clip_low: float, clip_high: float) -> tuple[Tensor, Tensor]:
    """PPO's pessimistic objective as a loss, elementwise (ratio and adv broadcast):
        -min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A)
    and where the clipped term is the one taken (rho > 1 + clip_high with A > 0, or
    rho < 1 - clip_low with A < 0): there the gradient is zero."""
    ratio, adv = upcast(ratio), upcast(adv)
    unclipped, clipped = ratio * adv, ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    was_clipped = ((ratio > 1.0 + clip_high) & (adv > 0)) | ((ratio < 1.0 - clip_low) & (adv < 0))
    return -torch.minimum(unclipped, clipped), was_clipped


# ----------------------------------------------------------------------------- KL


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman, "Approximating
    KL divergence", 2020), with log r = log pi_ref - log pi:
        k1 = -log r                 unbiased, can be negative
        k2 = (log r)^2 / 2          biased, low variance, >= 0
        k3 = (r - 1) - log r        unbiased, low variance, >= 0
    Shapes (B, T) -> (B, T); padding positions (0 and 0) give 0 for all three."""
    log_r = upcast(ref_logprobs) - upcast(logprobs)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator '{estimator}': use k1, k2 or k3")


# ----------------------------------------------------------------------------- reward placement


def last_token_index(mask: Tensor) -> Tensor:
    """The position of the last True of each row: mask (B, T) bool -> (B,) long. Right padding
    gives length - 1, left padding T - 1; a row without a real token raises ValueError."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).max(dim=-1).values  # (B,)
    if bool((last < 0).any()):
        rows = torch.nonzero(last < 0).flatten().tolist()
        raise ValueError(f"rows {rows} of the response mask have no real token: a response needs at least its EOS")
    return last


def reward_at_last_token(scores: Tensor, response_mask: Tensor) -> Tensor:
    """scores (B,) as per-token rewards (B, T): each row's score on its last real response token
    and 0 elsewhere, never on padding whichever side it is on (TRL #3750, #2778)."""
    rewards = torch.zeros(response_mask.shape, dtype=upcast(scores).dtype, device=scores.device)
    return rewards.scatter(-1, last_token_index(response_mask).unsqueeze(-1), upcast(scores).unsqueeze(-1))

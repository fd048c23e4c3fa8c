"""GRPO (Shao et al. 2024, DeepSeekMath): no value model; each response's advantage is its score
relative to the other responses to the same prompt, (r - mean_group) / (std + eps), spread over
its tokens; a clipped surrogate plus an optional per-token KL to the reference, aggregated per
token, per sequence, or by a constant (Dr. GRPO). TRL's GRPOTrainer semantics; every formula is
in docs/rl/grpo.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .common import (Advantages, KLEstimator, LossUnits, Reduce, RolloutBatch, Tensor, batch_moments,
                     clipped_surrogate, detached, kl_estimate, masked_mean, masked_sum, nanstd, upcast)

__all__ = ["GRPOConfig", "GRPO", "group_advantages", "advantages", "aggregate", "loss"]

Aggregation = Literal["token_mean", "sequence_mean", "dr_grpo"]


@dataclass(frozen=True)
class GRPOConfig:
    group_size: int = 8  # responses per prompt, consecutive rows of the batch (spec `group`)
    clip: float = 0.2  # epsilon_low: the ratio's lower clip is 1 - clip (spec `clip`)
    clip_high: float | None = None  # epsilon_high: upper clip 1 + clip_high; None = clip (DAPO uses 0.28)
    kl_coef: float = 0.04  # beta of the per-token KL added to the loss (spec `kl`; TRL's default is 0)
    kl_estimator: KLEstimator = "k3"  # TRL's: exp(ref - new) - (ref - new) - 1
    scale_rewards: Literal["group", "batch", "none"] = "group"  # divide by the group's std, the batch's, or not
    eps: float = 1e-4  # added to the std (TRL's constant)
    aggregation: Aggregation = "token_mean"  # how per-token losses become one number (docs/rl/grpo.md)
    max_completion_length: int | None = None  # dr_grpo's constant: the sampler's max_new_tokens

    def __post_init__(self) -> None:
        problems = [f"{name} must be {rule}, got {getattr(self, name)!r}" for name, ok, rule in [
            ("group_size", self.group_size >= 2, ">= 2 (one response has nothing to be relative to)"),
            ("clip", 0 < self.clip < 1, "in (0, 1)"),
            ("clip_high", self.clip_high is None or self.clip_high > 0, "> 0 or None"),
            ("kl_coef", self.kl_coef >= 0, ">= 0"), ("eps", self.eps >= 0, ">= 0"),
            ("kl_estimator", self.kl_estimator in ("k1", "k2", "k3"), "k1, k2 or k3"),
            ("scale_rewards", self.scale_rewards in ("group", "batch", "none"), "group, batch or none"),
            ("aggregation", self.aggregation in ("token_mean", "sequence_mean", "dr_grpo"),
             "token_mean, sequence_mean or dr_grpo"),
            ("max_completion_length", self.aggregation != "dr_grpo" or (self.max_completion_length or 0) >= 1,
             "set (>= 1) for aggregation dr_grpo")] if not ok]
        if problems:
            raise ValueError("invalid GRPO config: " + "; ".join(problems))

    @property
    def clip_upper(self) -> float:
        return self.clip if self.clip_high is None else self.clip_high


def group_advantages(scores: Tensor, group_size: int, scale_rewards: str = "group",
                     eps: float = 1e-4, reduce: Reduce | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """scores (B,), B = prompts * group_size, a prompt's responses consecutive -> advantages (B,):
        A_i = (r_i - mean_group(r)) / (std + eps)
    std: the group's (scale_rewards "group"), the whole batch's ("batch"; with `reduce`, of the
    scores on every rank), or no division ("none"); both Bessel-corrected. A NaN score
    (unscorable) is left out of its group's mean and std and gets advantage 0. The metrics are
    of these scores."""
    r = upcast(scores)
    if r.dim() != 1 or r.shape[0] % group_size:
        raise ValueError(f"{tuple(r.shape)} scores do not split into groups of {group_size}: a rollout batch holds "
                         "group_size consecutive responses per prompt")
    grouped = r.view(-1, group_size)  # (N, G)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size)  # (B,)
    group_std = nanstd(grouped, dim=1).repeat_interleave(group_size)  # (B,)
    if scale_rewards == "batch":
        std = (nanstd(r) if reduce is None else batch_moments(r, ~torch.isnan(r), reduce)[1].sqrt()).expand_as(r)
    else:
        std = group_std
    adv = r - mean
    if scale_rewards != "none":
        adv = adv / (std + eps)
    metrics = {"score": torch.nanmean(r), "score_std": nanstd(r),
               "zero_std_fraction": torch.isclose(group_std[::group_size], torch.zeros_like(mean[::group_size]))
               .float().mean()}
    return torch.nan_to_num(adv, nan=0.0), metrics


def advantages(batch: RolloutBatch, cfg: GRPOConfig, *, reduce: Reduce | None = None) -> Advantages:
    """Group-relative advantages of one rollout batch: per_sequence (B,), and per_token (B, T)
    the same value on every real token of the response. `reduce`: this batch is one rank's share
    (whole groups), for scale_rewards "batch"."""
    adv, metrics = group_advantages(batch.scores, cfg.group_size, cfg.scale_rewards, cfg.eps, reduce)
    per_token = adv.unsqueeze(1) * batch.response_mask  # (B, T)
    return Advantages(per_token=per_token, per_sequence=adv, metrics=detached(metrics))


def aggregate(per_token: Tensor, mask: Tensor, how: Aggregation, max_completion_length: int | None = None,
              total_tokens: int | Tensor | None = None) -> Tensor:
    """One loss from per-token losses l (B, T) over real tokens m:
        token_mean     sum_{b,t} m l / sum_{b,t} m       (TRL "bnpo"; "dapo" when total_tokens is the
                                                          whole accumulated step's token count)
        sequence_mean  mean_b (sum_t m l / sum_t m)      (TRL "grpo", the paper's)
        dr_grpo        sum_{b,t} m l / (B * L)           (L = max_completion_length, a constant)"""
    if how == "token_mean":
        denom = mask.sum().clamp(min=1) if total_tokens is None else total_tokens
        return masked_sum(per_token, mask) / denom
    if how == "sequence_mean":
        return masked_mean(per_token, mask, dim=1).mean()
    if how == "dr_grpo":
        if max_completion_length is None or per_token.shape[1] > max_completion_length:
            raise ValueError(f"dr_grpo divides by max_completion_length ({max_completion_length}), which must be at "
                             f"least the response length {per_token.shape[1]}: set it to the sampler's max_new_tokens")
        return masked_sum(per_token, mask) / (per_token.shape[0] * max_completion_length)
    raise ValueError(f"unknown aggregation '{how}': use token_mean, sequence_mean or dr_grpo")


def loss(new_logprobs: Tensor, new_values: Tensor | None, batch: RolloutBatch, adv: Advantages, cfg: GRPOConfig, *,
         entropy: Tensor | None = None, total_tokens: int | Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Per token l_t = -min(rho_t A, clip(rho_t, 1 - clip, 1 + clip_high) A) + kl_coef * KL_t, with
    rho_t = exp(log pi_new - log pi_old) and KL_t the estimator of log pi_new vs log pi_ref (it
    carries gradient), aggregated by cfg.aggregation. new_values is unused (no value model).
    metrics: policy_loss (the surrogate alone), clip_fraction, approx_kl (mean (log rho)^2 / 2),
    kl (mean KL_t to the reference, when kl_coef > 0), entropy (when given)."""
    if adv.per_sequence is None:
        raise ValueError("GRPO's loss needs the per-sequence advantages of grpo.advantages")
    mask = batch.response_mask
    log_ratio = (upcast(new_logprobs) - upcast(batch.old_logprobs)).masked_fill(~mask, 0.0)
    per_token, was_clipped = clipped_surrogate(log_ratio.exp(), adv.per_sequence.unsqueeze(1), cfg.clip,
                                               cfg.clip_upper)  # (B, T)
    metrics = {"policy_loss": aggregate(per_token, mask, cfg.aggregation, cfg.max_completion_length, total_tokens),
               "clip_fraction": masked_mean(was_clipped.float(), mask),
               "approx_kl": masked_mean(0.5 * log_ratio**2, mask)}
    if cfg.kl_coef != 0:
        if batch.ref_logprobs is None:
            raise ValueError("GRPO's KL term needs ref_logprobs in the rollout batch (or kl_coef 0)")
        kl = kl_estimate(new_logprobs, batch.ref_logprobs, cfg.kl_estimator).masked_fill(~mask, 0.0)
        per_token = per_token + cfg.kl_coef * kl
        metrics["kl"] = masked_mean(kl, mask)
    if entropy is not None:
        metrics["entropy"] = masked_mean(entropy, mask)
    return aggregate(per_token, mask, cfg.aggregation, cfg.max_completion_length, total_tokens), detached(metrics)


class GRPO:
    """The Algorithm protocol over this module's functions."""

    name = "grpo"
    config = GRPOConfig
    advantages = staticmethod(advantages)
    loss = staticmethod(loss)

    @staticmethod
    def loss_units(cfg: GRPOConfig) -> LossUnits:
        # sequence_mean averages per-response means; dr_grpo divides by B x a constant length
        return "tokens" if cfg.aggregation == "token_mean" else "sequences"

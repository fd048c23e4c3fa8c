"""RLOO (Ahmadian et al. 2024, "Back to basics"; Kool et al. 2019): REINFORCE on whole responses
with a leave-one-out baseline, the mean score of the other k - 1 responses to the same prompt;
the KL to the reference is a penalty in the sequence's reward. TRL's RLOOTrainer semantics,
including its clipped sequence-level ratio; every formula is in docs/rl/rloo.md."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import (Advantages, KLEstimator, LossUnits, Reduce, RolloutBatch, Tensor, batch_moments,
                     clipped_surrogate, detached, kl_estimate, masked_mean, masked_sum, nanstd, upcast)

__all__ = ["RLOOConfig", "RLOO", "leave_one_out", "advantages", "loss"]


@dataclass(frozen=True)
class RLOOConfig:
    group_size: int = 4  # k responses per prompt, consecutive rows of the batch (spec `k`)
    kl_coef: float = 0.05  # beta: the reward is score - beta * sum_t KL_t (spec `kl`; TRL's beta)
    kl_estimator: KLEstimator = "k1"  # TRL's: log pi_old - log pi_ref, summed over the response
    clip: float = 0.2  # lower clip of the sequence ratio, 1 - clip
    clip_high: float | None = None  # upper clip 1 + clip_high; None = clip
    normalize_advantages: bool = False  # TRL's: whiten the advantages over the batch
    eps: float = 1e-4  # added to the std when normalising (TRL's constant)

    def __post_init__(self) -> None:
        problems = [f"{name} must be {rule}, got {getattr(self, name)!r}" for name, ok, rule in [
            ("group_size", self.group_size >= 2, ">= 2 (a leave-one-out baseline needs another response)"),
            ("kl_coef", self.kl_coef >= 0, ">= 0"), ("clip", 0 < self.clip < 1, "in (0, 1)"),
            ("clip_high", self.clip_high is None or self.clip_high > 0, "> 0 or None"),
            ("eps", self.eps >= 0, ">= 0"),
            ("kl_estimator", self.kl_estimator in ("k1", "k2", "k3"), "k1, k2 or k3")] if not ok]
        if problems:
            raise ValueError("invalid RLOO config: " + "; ".join(problems))

    @property
    def clip_upper(self) -> float:
        return self.clip if self.clip_high is None else self.clip_high


def leave_one_out(rewards: Tensor, group_size: int) -> Tensor:
    """rewards (B,), a prompt's k responses consecutive -> advantages (B,):
        A_i = r_i - mean_{j != i} r_j = r_i - (sum_j r_j - r_i) / (k - 1)
    A NaN reward (unscorable) is left out of its siblings' baselines; its own advantage, and that
    of a response with no scorable sibling, is 0."""
    return torch.nan_to_num(_leave_one_out(rewards, group_size), nan=0.0)


def _leave_one_out(rewards: Tensor, group_size: int) -> Tensor:
    """leave_one_out with NaN where it gives 0, so that normalising can leave those out."""
    r = upcast(rewards)
    if r.dim() != 1 or r.shape[0] % group_size:
        raise ValueError(f"{tuple(r.shape)} rewards do not split into groups of {group_size}: a rollout batch holds "
                         "group_size consecutive responses per prompt")
    grouped = r.view(-1, group_size)  # (N, k)
    scorable = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)  # (N, 1)
    baseline = (torch.nansum(grouped, dim=1, keepdim=True) - grouped) / (scorable - 1)  # (N, k); 0/0 when alone
    return r - baseline.view(-1)


def advantages(batch: RolloutBatch, cfg: RLOOConfig, *, reduce: Reduce | None = None) -> Advantages:
    """Sequence rewards r_i = score_i - kl_coef * sum_t KL_t(old vs ref), leave-one-out
    advantages, optionally whitened over the batch ((A - mean) / (std + eps), Bessel-corrected;
    with `reduce`, over the advantages of every rank). per_sequence (B,); per_token (B, T)
    repeats it on the real tokens; rewards (B,). The metrics are of this batch."""
    mask = batch.response_mask
    rewards = upcast(batch.scores)
    metrics = {"score": torch.nanmean(rewards)}
    if cfg.kl_coef != 0:
        if batch.ref_logprobs is None:
            raise ValueError("RLOO's KL penalty needs ref_logprobs in the rollout batch (or kl_coef 0)")
        kl = masked_sum(kl_estimate(batch.old_logprobs, batch.ref_logprobs, cfg.kl_estimator), mask, dim=1)  # (B,)
        rewards = rewards - cfg.kl_coef * kl
        metrics["kl"] = kl.mean()
    adv = _leave_one_out(rewards, cfg.group_size)  # NaN: no learning signal, left out of the normalisation
    if cfg.normalize_advantages:
        if reduce is None:
            adv = (adv - torch.nanmean(adv)) / (nanstd(adv) + cfg.eps)
        else:
            mean, var = batch_moments(adv, ~torch.isnan(adv), reduce)
            adv = (adv - mean) / (var.sqrt() + cfg.eps)
    adv = torch.nan_to_num(adv, nan=0.0)
    return Advantages(per_token=adv.unsqueeze(1) * mask, per_sequence=adv, rewards=rewards,
                      metrics=detached(metrics))


def loss(new_logprobs: Tensor, new_values: Tensor | None, batch: RolloutBatch, adv: Advantages, cfg: RLOOConfig, *,
         entropy: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """One action per response: rho_i = exp(sum_t log pi_new - sum_t log pi_old) over its real
    tokens, l_i = -min(rho_i A_i, clip(rho_i, 1 - clip, 1 + clip_high) A_i), loss = mean_i l_i.
    new_values is unused. metrics: clip_fraction (of sequences), approx_kl (mean over sequences of
    (log rho)^2 / 2), entropy (mean over real tokens, when given)."""
    if adv.per_sequence is None:
        raise ValueError("RLOO's loss needs the per-sequence advantages of rloo.advantages")
    mask = batch.response_mask
    log_ratio = masked_sum(new_logprobs, mask, dim=1) - masked_sum(batch.old_logprobs, mask, dim=1)  # (B,)
    per_sequence, was_clipped = clipped_surrogate(log_ratio.exp(), adv.per_sequence, cfg.clip, cfg.clip_upper)
    metrics = {"clip_fraction": was_clipped.float().mean(), "approx_kl": (0.5 * log_ratio**2).mean()}
    if entropy is not None:
        metrics["entropy"] = masked_mean(entropy, mask)
    return per_sequence.mean(), detached(metrics)


class RLOO:
    """The Algorithm protocol over this module's functions."""

    name = "rloo"
    config = RLOOConfig
    advantages = staticmethod(advantages)
    loss = staticmethod(loss)

    @staticmethod
    def loss_units(cfg: RLOOConfig) -> LossUnits:
        return "sequences"  # one action per response

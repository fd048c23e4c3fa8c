"""PPO with a learned value function, as in Ziegler et al. 2019 ("Fine-tuning language models
from human preferences") and TRL's PPOTrainer: a per-token KL penalty in the reward, the score on
the last real response token, GAE(gamma, lambda), whitened advantages, clipped policy and value
losses, and a fixed or adaptive KL coefficient. Every formula is in docs/rl/ppo.md."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import (Advantages, KLEstimator, LossUnits, Reduce, RolloutBatch, Tensor, clipped_surrogate, detached,
                     kl_estimate, masked_mean, masked_sum, masked_whiten, reward_at_last_token, upcast)

__all__ = ["PPOConfig", "PPO", "token_rewards", "gae", "advantages", "policy_loss", "value_loss", "loss",
           "FixedKLController", "AdaptiveKLController", "kl_controller", "adaptive_kl_update"]


@dataclass(frozen=True)
class PPOConfig:
    clip: float = 0.2  # epsilon: the ratio stops pushing outside [1 - clip, 1 + clip] (spec `clip`)
    value_clip: float = 0.2  # a new value moves at most this far from the rollout's value (TRL cliprange_value)
    kl_coef: float = 0.05  # beta of the per-token KL penalty (spec `kl`); an adaptive controller's current value
    kl_estimator: KLEstimator = "k1"  # per-token KL in the reward (TRL's default)
    gamma: float = 1.0  # discount over response tokens (spec `gamma`)
    gae_lambda: float = 0.95  # GAE's bias-variance trade-off (spec `gae_lambda`)
    value_coef: float = 0.5  # weight of the value loss (spec `value_coef`; TRL's vf_coef defaults to 0.1)
    entropy_coef: float = 0.0  # weight of an entropy bonus; needs `entropy` passed to `loss`
    whiten_advantages: bool = True  # zero mean, unit variance over the batch's real tokens
    whiten_rewards: bool = False  # TRL's whiten_rewards: per-token rewards to unit variance, their mean kept
    kl_target: float | None = None  # adaptive KL: target per-sequence KL; None keeps kl_coef fixed
    kl_horizon: int = 10000  # adaptive KL: sequences over which a 20% error moves beta by 20%

    def __post_init__(self) -> None:
        problems = [f"{name} must be {rule}, got {getattr(self, name)}" for name, ok, rule in [
            ("clip", 0 < self.clip < 1, "in (0, 1)"), ("value_clip", self.value_clip > 0, "> 0"),
            ("kl_coef", self.kl_coef >= 0, ">= 0"), ("gamma", 0 <= self.gamma <= 1, "in [0, 1]"),
            ("gae_lambda", 0 <= self.gae_lambda <= 1, "in [0, 1]"), ("value_coef", self.value_coef >= 0, ">= 0"),
            ("entropy_coef", self.entropy_coef >= 0, ">= 0"), ("kl_horizon", self.kl_horizon >= 1, ">= 1"),
            ("kl_target", self.kl_target is None or self.kl_target > 0, "> 0 or None"),
            ("kl_estimator", self.kl_estimator in ("k1", "k2", "k3"), "k1, k2 or k3")] if not ok]
        if problems:
            raise ValueError("invalid PPO config: " + "; ".join(problems))


# ----------------------------------------------------------------------------- advantages


def token_rewards(batch: RolloutBatch, cfg: PPOConfig, reduce: Reduce | None = None) -> tuple[Tensor, Tensor]:
    """(rewards, kl), both (B, T): kl_t = KL estimate of log pi_old vs log pi_ref at token t, and
    r_t = -kl_coef * kl_t + score * [t is the row's last real token]; 0 at padding. `reduce`: the
    whitening's statistics are the whole batch's, on every rank."""
    mask = batch.response_mask
    if batch.ref_logprobs is None:
        if cfg.kl_coef != 0:
            raise ValueError("PPO's KL penalty needs ref_logprobs in the rollout batch (or kl_coef 0)")
        kl = torch.zeros(mask.shape, dtype=upcast(batch.old_logprobs).dtype, device=mask.device)
    else:
        kl = kl_estimate(batch.old_logprobs, batch.ref_logprobs, cfg.kl_estimator).masked_fill(~mask, 0.0)
    rewards = -cfg.kl_coef * kl + reward_at_last_token(batch.scores, mask)  # (B, T)
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False, reduce=reduce).masked_fill(~mask, 0.0)
    return rewards, kl


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over each row's real tokens; the episode ends after its
    last one (V = 0 beyond it). rewards, values, mask (B, T) -> (advantages, returns) (B, T), 0 at
    padding:
        delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t
        A_t     = delta_t + gamma * lam * m_{t+1} * A_{t+1}
        R_t     = A_t + V_t"""
    m = mask.to(upcast(rewards).dtype)
    rewards, values = upcast(rewards) * m, upcast(values) * m  # padding contributes nothing
    next_m = torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], dim=1)  # (B, T) is token t + 1 in the episode?
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1) * next_m
    deltas = rewards + gamma * next_values - values  # (B, T)
    adv = torch.zeros_like(deltas)
    running = torch.zeros_like(deltas[:, 0])  # (B,)
    for t in reversed(range(deltas.shape[1])):  # a recursion over positions, not over training steps
        running = deltas[:, t] + gamma * lam * next_m[:, t] * running
        adv[:, t] = running
    adv = adv * m
    return adv, (adv + values) * m


def advantages(batch: RolloutBatch, cfg: PPOConfig, *, reduce: Reduce | None = None) -> Advantages:
    """Per-token rewards, GAE and (by default) whitened advantages of one rollout batch. metrics:
    `kl` (mean over sequences of the summed per-token KL: what an adaptive controller reads),
    `non_score_reward` (the same for -kl_coef * kl), `score`, `returns`, `advantages` (means
    before whitening). With `reduce` (one rank's share of the batch) the whitening is over the
    real tokens of every rank; the metrics stay this rank's."""
    if batch.values is None:
        raise ValueError("PPO needs the value model's values in the rollout batch")
    mask = batch.response_mask
    rewards, kl = token_rewards(batch, cfg, reduce)
    adv, returns = gae(rewards, batch.values, mask, cfg.gamma, cfg.gae_lambda)
    kl_per_sequence = masked_sum(kl, mask, dim=1)  # (B,)
    metrics = {"kl": kl_per_sequence.mean(), "non_score_reward": -cfg.kl_coef * kl_per_sequence.mean(),
               "score": upcast(batch.scores).mean(), "returns": masked_mean(returns, mask),
               "advantages": masked_mean(adv, mask)}
    if cfg.whiten_advantages:
        adv = masked_whiten(adv, mask, reduce=reduce).masked_fill(~mask, 0.0)
    return Advantages(per_token=adv, returns=returns, rewards=rewards, metrics=detached(metrics))


# ----------------------------------------------------------------------------- losses


def policy_loss(new_logprobs: Tensor, old_logprobs: Tensor, adv: Tensor, mask: Tensor,
                clip: float) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped surrogate, averaged over real tokens (all (B, T)):
        rho_t = exp(log pi_new - log pi_old)
        L     = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - clip, 1 + clip))
    metrics: clip_fraction (tokens where the clipped term is the larger), approx_kl
    (mean (log rho)^2 / 2, TRL's), ratio (mean rho)."""
    log_ratio = (upcast(new_logprobs) - upcast(old_logprobs)).masked_fill(~mask, 0.0)
    ratio = log_ratio.exp()
    per_token, was_clipped = clipped_surrogate(ratio, adv, clip, clip)  # (B, T)
    return masked_mean(per_token, mask), {"clip_fraction": masked_mean(was_clipped.float(), mask),
                                          "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
                                          "ratio": masked_mean(ratio, mask)}


def value_loss(new_values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip: float) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped value loss, averaged over real tokens (all (B, T)):
        V_clip = clip(V_new, V_old - clip, V_old + clip)
        L      = 0.5 * mean_t max((V_new - R_t)^2, (V_clip - R_t)^2)"""
    v, v_old, ret = upcast(new_values), upcast(old_values), upcast(returns)
    v_clip = torch.clamp(v, v_old - clip, v_old + clip)
    unclipped, clipped = (v - ret) ** 2, (v_clip - ret) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, {"value_clip_fraction": masked_mean((clipped > unclipped).float(), mask)}


def loss(new_logprobs: Tensor, new_values: Tensor | None, batch: RolloutBatch, adv: Advantages, cfg: PPOConfig, *,
         entropy: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """policy_loss + value_coef * value_loss - entropy_coef * mean entropy. new_logprobs and
    new_values (B, T) from the model being updated (same temperature as the rollout); entropy
    (B, T) optional. metrics: policy_loss, value_loss, clip_fraction, value_clip_fraction,
    approx_kl, ratio, entropy (when given)."""
    mask = batch.response_mask
    pg, metrics = policy_loss(new_logprobs, batch.old_logprobs, adv.per_token, mask, cfg.clip)
    total, metrics["policy_loss"] = pg, pg
    if new_values is None:
        if cfg.value_coef != 0:
            raise ValueError("PPO trains a value model: pass new_values (or set value_coef 0)")
    else:
        if batch.values is None or adv.returns is None:
            raise ValueError("the value loss needs the rollout's values and the returns of `advantages`")
        vf, vf_metrics = value_loss(new_values, batch.values, adv.returns, mask, cfg.value_clip)
        total = total + cfg.value_coef * vf
        metrics.update(vf_metrics, value_loss=vf)
    if entropy is not None:
        metrics["entropy"] = masked_mean(entropy, mask)
        total = total - cfg.entropy_coef * metrics["entropy"]
    elif cfg.entropy_coef != 0:
        raise ValueError("entropy_coef is set: pass the per-token entropy to `loss`")
    return total, detached(metrics)


class PPO:
    """The Algorithm protocol over this module's functions."""

    name = "ppo"
    config = PPOConfig
    advantages = staticmethod(advantages)
    loss = staticmethod(loss)

    @staticmethod
    def loss_units(cfg: PPOConfig) -> LossUnits:
        return "tokens"  # the policy, value and entropy terms are all means over real tokens


# ----------------------------------------------------------------------------- KL coefficient


def adaptive_kl_update(value: float, current: float, target: float, horizon: int, n_steps: int) -> float:
    """Ziegler et al. 2019, eq. (2), with TRL's AdaptiveKLController semantics:
        e    = clip(current / target - 1, -0.2, 0.2)
        beta <- beta * (1 + e * n_steps / horizon)
    `current` is the batch's mean per-sequence KL, `n_steps` the sequences in the batch."""
    error = min(max(current / target - 1.0, -0.2), 0.2)
    return value * (1.0 + error * n_steps / horizon)


@dataclass
class FixedKLController:
    """A constant KL coefficient (TRL's FixedKLController)."""

    value: float

    def update(self, current: float, n_steps: int) -> float:
        return self.value


@dataclass
class AdaptiveKLController:
    """A KL coefficient that rises while the policy's KL is above target and falls while below
    (TRL's AdaptiveKLController). Its state is `value`: the stage checkpoints it."""

    value: float
    target: float
    horizon: int

    def update(self, current: float, n_steps: int) -> float:
        self.value = adaptive_kl_update(self.value, current, self.target, self.horizon, n_steps)
        return self.value


def kl_controller(cfg: PPOConfig) -> FixedKLController | AdaptiveKLController:
    """The controller a config asks for: adaptive when kl_target is set, starting at kl_coef."""
    if cfg.kl_target is None:
        return FixedKLController(cfg.kl_coef)
    return AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)


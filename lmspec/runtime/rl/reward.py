"""Reward models from preference pairs: the Bradley-Terry loss with soft labels (a judge's
probability that the first response is the better one), an optional margin, TRL's optional
reward centring, and pair accuracy. Every formula is in docs/rl/reward-models.md."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import Tensor, detached, upcast

__all__ = ["bradley_terry_loss", "pair_accuracy"]


def _labels(p: Tensor | float | None, like: Tensor) -> Tensor:
    """p as a (B,) float tensor: 1 (the first response is preferred) when not given."""
    p = torch.ones_like(like) if p is None else torch.as_tensor(p, dtype=like.dtype, device=like.device).expand_as(like)
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError("a preference probability p must lie in [0, 1]: it is P(first response is the better one)")
    return p


def bradley_terry_loss(reward_first: Tensor, reward_second: Tensor, p: Tensor | float | None = None,
                       margin: Tensor | float | None = None,
                       center_coef: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The mean over B pairs of the Bradley-Terry negative log-likelihood; reward_first and
    reward_second (B,) are the reward model's scalars, p (B,) or a float the probability that the
    first is preferred (default 1: hard labels, the first is the chosen), margin (B,) or a float
    >= 0 the gap the preferred one should win by (Llama 2):
        d = r_first - r_second
        L = -[p log sigma(d - m) + (1 - p) log sigma(-d - m)]  (+ c * mean (r_first + r_second)^2)
    p = 1 is TRL's RewardTrainer loss -log sigma(r_chosen - r_rejected - m); p = 0.5 pulls d to 0
    (zero gradient at d = 0). center_coef c is TRL's center_rewards_coefficient, which keeps the
    rewards near 0. metrics: accuracy (pair_accuracy), margin (mean d)."""
    r1, r2 = upcast(reward_first), upcast(reward_second)
    p = _labels(p, r1)
    m = torch.zeros_like(r1) if margin is None else torch.as_tensor(margin, dtype=r1.dtype, device=r1.device)
    d = r1 - r2  # (B,)
    losses = -(p * F.logsigmoid(d - m) + (1 - p) * F.logsigmoid(-d - m))
    loss = losses.mean()
    if center_coef is not None:
        loss = loss + center_coef * ((r1 + r2) ** 2).mean()
    return loss, detached({"accuracy": pair_accuracy(r1, r2, p), "margin": d.mean()})


def pair_accuracy(reward_first: Tensor, reward_second: Tensor, p: Tensor | float | None = None) -> Tensor:
    """The fraction of pairs whose reward order agrees with the label: r_first > r_second where
    p > 0.5, r_second > r_first where p < 0.5 (a tie in reward counts as wrong, as in TRL); pairs
    with p = 0.5 have no order and are left out (NaN when every pair has p = 0.5)."""
    r1, r2 = upcast(reward_first), upcast(reward_second)
    p = _labels(p, r1)
    ordered = p != 0.5
    right = torch.where(p > 0.5, r1 > r2, r2 > r1) & ordered
    return right.sum().to(r1.dtype) / ordered.sum().to(r1.dtype)  # 0 / 0 = NaN when nothing is ordered

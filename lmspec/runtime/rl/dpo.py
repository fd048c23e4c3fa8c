"""DPO (Rafailov et al. 2023) and IPO (Azar et al. 2023): preference losses on the policy's and a
frozen reference's log-probs of a chosen and a rejected response, with no reward model and no
sampling. DPO's sigmoid loss takes cDPO label smoothing; IPO averages log-probs over tokens, as
TRL does. Every formula is in docs/rl/dpo.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F

from .common import Tensor, detached, masked_mean, masked_sum

__all__ = ["DPOConfig", "dpo_loss"]


@dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1  # inverse temperature of the implicit reward (spec `dpo(beta)`); IPO's tau
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    label_smoothing: float = 0.0  # cDPO: the probability that a label is flipped, in [0, 0.5); sigmoid only

    def __post_init__(self) -> None:
        problems = [f"{name} must be {rule}, got {getattr(self, name)!r}" for name, ok, rule in [
            ("beta", self.beta > 0, "> 0"), ("loss_type", self.loss_type in ("sigmoid", "ipo"), "sigmoid or ipo"),
            ("label_smoothing", 0 <= self.label_smoothing < 0.5, "in [0, 0.5)"),
            ("label_smoothing", self.loss_type == "sigmoid" or self.label_smoothing == 0,
             "0 for ipo (IPO's squared loss has no label smoothing)")] if not ok]
        if problems:
            raise ValueError("invalid DPO config: " + "; ".join(problems))


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             chosen_mask: Tensor, rejected_mask: Tensor, cfg: DPOConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """The mean loss over B pairs from per-token log-probs of the response tokens: policy_chosen,
    ref_chosen, chosen_mask (B, Tc); policy_rejected, ref_rejected, rejected_mask (B, Tr); the
    masks True on real response tokens (prompt and padding False). With
    log-ratio_y = log pi(y) - log pi_ref(y):
        sigmoid  h = sum_t log-ratio_chosen - sum_t log-ratio_rejected
                 L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)
        ipo      h = mean_t log-ratio_chosen - mean_t log-ratio_rejected
                 L = (h - 1 / (2 beta))^2
    metrics (TRL's): rewards_chosen, rewards_rejected (mean beta * summed log-ratio),
    reward_accuracy (chosen's implicit reward above the rejected's), reward_margin."""
    chosen_ratio = policy_chosen - ref_chosen  # (B, Tc)
    rejected_ratio = policy_rejected - ref_rejected  # (B, Tr)
    chosen_sum = masked_sum(chosen_ratio, chosen_mask, dim=1)  # (B,)
    rejected_sum = masked_sum(rejected_ratio, rejected_mask, dim=1)  # (B,)
    if cfg.loss_type == "sigmoid":
        h = chosen_sum - rejected_sum  # (B,)
        eps = cfg.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(cfg.beta * h) - eps * F.logsigmoid(-cfg.beta * h)
    else:
        h = masked_mean(chosen_ratio, chosen_mask, dim=1) - masked_mean(rejected_ratio, rejected_mask, dim=1)
        losses = (h - 1 / (2 * cfg.beta)) ** 2
    rewards_chosen, rewards_rejected = cfg.beta * chosen_sum.detach(), cfg.beta * rejected_sum.detach()
    metrics = {"rewards_chosen": rewards_chosen.mean(), "rewards_rejected": rewards_rejected.mean(),
               "reward_accuracy": (rewards_chosen > rewards_rejected).float().mean(),
               "reward_margin": (rewards_chosen - rewards_rejected).mean()}
    return losses.mean(), detached(metrics)

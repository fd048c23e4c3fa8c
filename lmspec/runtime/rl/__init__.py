"""The computations of RL from (AI) feedback, as pure functions of tensors: no loops over steps,
no I/O, no logging, no state beyond an adaptive KL coefficient. The rl stage samples, scores and
steps the optimiser; it calls these.

    on-policy (the Algorithm protocol in `common`):
        adv = ALGORITHMS[kind].advantages(batch, cfg[, reduce=])  once per RolloutBatch (reduce: the
                                                                    ranks' sums, when each holds a share)
        loss, metrics = ALGORITHMS[kind].loss(new_logprobs, new_values, batch, adv, cfg)
                                                                    each optimisation pass
        ppo   value model, per-token KL in the reward, GAE        docs/rl/ppo.md
        grpo  group-normalised scores, KL in the loss             docs/rl/grpo.md
        rloo  leave-one-out baseline, KL in the reward            docs/rl/rloo.md
    offline, from preference pairs:
        dpo.dpo_loss            DPO (sigmoid, cDPO) and IPO          docs/rl/dpo.md
        reward.bradley_terry_loss, reward.pair_accuracy              docs/rl/reward-models.md

Every formula is checked against TRL 1.16 in tests/test_rl_vs_trl.py.
"""

from __future__ import annotations

from .common import (Advantages, Algorithm, Reduce, RolloutBatch, batch_moments, entropy, kl_estimate,
                     last_token_index, masked_mean, masked_sum, masked_var, masked_whiten, reward_at_last_token,
                     sequence_logprobs)
from .dpo import DPOConfig, dpo_loss
from .grpo import GRPO, GRPOConfig
from .ppo import PPO, AdaptiveKLController, FixedKLController, PPOConfig, kl_controller
from .reward import bradley_terry_loss, pair_accuracy
from .rloo import RLOO, RLOOConfig

__all__ = ["RolloutBatch", "Advantages", "Algorithm", "ALGORITHMS", "Reduce", "sequence_logprobs", "entropy",
           "masked_sum", "masked_mean", "masked_var", "masked_whiten", "batch_moments", "kl_estimate",
           "last_token_index", "reward_at_last_token",
           "PPO", "PPOConfig", "GRPO", "GRPOConfig", "RLOO", "RLOOConfig", "FixedKLController",
           "AdaptiveKLController", "kl_controller", "DPOConfig", "dpo_loss", "bradley_terry_loss", "pair_accuracy"]

# a closed table: the spec's `algorithm: ppo | grpo | rloo` names one of these, never a class or module
ALGORITHMS: dict[str, Algorithm] = {"ppo": PPO(), "grpo": GRPO(), "rloo": RLOO()}

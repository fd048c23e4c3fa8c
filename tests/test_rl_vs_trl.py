"""lmspec.runtime.rl against TRL on the same random float64 tensors, to 1e-6.

TRL is a test-only peer (`pip install trl==1.16.0`). It is imported inside each test; a test
skips only when TRL is not installed at all (`pytest.importorskip("trl")`): with TRL present,
every difference fails.

How each comparison reaches TRL 1.16 without a model or a dataset:
- DPO / IPO, GRPO's loss, RLOO's loss, the Bradley-Terry loss: the trainers' own `_compute_loss`
  (`compute_loss` for RewardTrainer) on a bare instance (`object.__new__`) given the attributes
  it reads, a one-process accelerator, and a model stub whose output carries the per-token
  log-probs (TRL's fused LM head returns exactly those, 0 where the label is -100).
- GRPO and RLOO advantages are computed inline in `_generate_and_score_completions`, between a
  rollout and a reward call: the test executes TRL's own lines, cut from the installed source
  by `inspect`, on the scores (a marker that no longer matches fails the test loudly).
- Log-probs and entropy: `trl.trainer.utils.selective_log_softmax` / `entropy_from_logits`.

What TRL 1.16 no longer has, compared against the last TRL code that had it, copied below with
its origin: PPO (`trl/experimental/ppo`, gone from the 1.16 wheel; copied from v1.9.0) for
masked_whiten, GAE and the clipped policy and value losses; AdaptiveKLController (removed in
v0.14, huggingface/trl#2480). cDPO's label smoothing left TRL's `sigmoid` loss in v0.29; TRL
1.16 keeps the same formula in its `aot` loss, which on a batch of one pair is exactly cDPO.

Where lmspec differs from TRL on purpose, the test says so and compares on inputs where the
difference cannot show: TRL's PPO puts the score on the first padding token after EOS
(huggingface/trl#3750); lmspec puts it on the last real token, which `test_rl_math` checks.
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from lmspec.runtime.rl import dpo, grpo, ppo, reward, rloo
from lmspec.runtime.rl.common import (RolloutBatch, entropy, kl_estimate, masked_mean, masked_var, masked_whiten,
                                      sequence_logprobs)

F64 = torch.float64


def close(got, want):
    torch.testing.assert_close(torch.as_tensor(got, dtype=F64), torch.as_tensor(want, dtype=F64), rtol=0, atol=1e-6)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def right_padded_mask(lengths: list[int], T: int) -> torch.Tensor:
    return torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # (B, T)


def accelerator() -> SimpleNamespace:
    """A one-process accelerator: gathering and reducing change nothing."""
    same = lambda x, *a, **k: x  # noqa: E731
    return SimpleNamespace(device=torch.device("cpu"), gather=same, gather_for_metrics=same, reduce=same,
                           num_processes=1, process_index=0, sync_gradients=True)


def bare(cls, **attributes):
    """A TRL trainer without __init__: no model, no dataset, just what the method under test reads."""
    trainer = object.__new__(cls)
    trainer.__dict__.update(model=SimpleNamespace(training=False), accelerator=accelerator(),
                            _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0,
                            **attributes)
    return trainer


def trl_lines(method, first: str, last: str) -> str:
    """The installed TRL's source of `method` from the line holding `first` to the line holding
    `last`, dedented: TRL's own code, run by the test rather than copied into it."""
    lines = inspect.getsource(method).splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if first in line)
        end = next(i for i in range(start, len(lines)) if last in lines[i])
    except StopIteration:
        pytest.fail(f"TRL's {method.__qualname__} no longer holds {first!r} ... {last!r}: its code changed; "
                    "update the markers of this test to the new lines")
    return textwrap.dedent("\n".join(lines[start:end + 1]))


# ----------------------------------------------------------------------------- log-probs, entropy, KL


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
def test_logprobs_and_entropy_match_trl_at_the_sampling_temperature(temperature):
    pytest.importorskip("trl")
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    logits = 3 * torch.randn(3, 7, 11, generator=gen(1), dtype=F64)
    tokens = torch.randint(0, 11, (3, 7), generator=gen(2))
    close(sequence_logprobs(logits, tokens, temperature=temperature),
          selective_log_softmax(logits, tokens, temperature=temperature))
    # GRPOTrainer divides the logits by its temperature before taking the entropy
    close(entropy(logits, temperature=temperature), entropy_from_logits(logits / temperature))


def test_kl_estimators_match_trl():
    """k3 is GRPOTrainer's per-token KL (trl 1.16 grpo_trainer.py, `per_token_kl = exp(ref - new) -
    (ref - new) - 1`); k1 RLOOTrainer's (`old - ref`); both and k2 are also PPOTrainer v1.9.0's
    (`kl = -logr` / `(logr.exp() - 1) - logr`, approxkl `0.5 * logprobs_diff**2`). TRL has no
    function for them: the lines are written out here."""
    pytest.importorskip("trl")
    new = torch.randn(4, 9, generator=gen(3), dtype=F64) - 2
    ref = torch.randn(4, 9, generator=gen(4), dtype=F64) - 2
    close(kl_estimate(new, ref, "k3"), torch.exp(ref - new) - (ref - new) - 1)
    close(kl_estimate(new, ref, "k1"), new - ref)
    logr = ref - new
    close(kl_estimate(new, ref, "k2"), 0.5 * logr**2)
    close(kl_estimate(new, ref, "k3"), (logr.exp() - 1) - logr)


# ----------------------------------------------------------------------------- DPO and IPO


def dpo_pairs(B: int = 5, L: int = 12, seed: int = 0):
    """B preference pairs laid out as DPOTrainer's batch: rows 0..B-1 chosen, B..2B-1 rejected;
    completion_mask (2B, L) on the completion tokens after a prompt of >= 1 token. Returns the
    TRL inputs, the per-token log-probs as the fused head gives them (2B, L - 1), the reference's
    (2B, L - 1), and the shifted mask."""
    g = gen(seed)
    prompt = torch.randint(1, 4, (2 * B,), generator=g)
    completion = torch.randint(1, L - 4, (2 * B,), generator=g)
    pos = torch.arange(L).unsqueeze(0)
    completion_mask = ((pos >= prompt.unsqueeze(1)) & (pos < (prompt + completion).unsqueeze(1))).long()
    attention_mask = (pos < (prompt + completion).unsqueeze(1)).long()
    shift = completion_mask[:, 1:].bool()
    logps = (-3 * torch.rand(2 * B, L - 1, generator=g, dtype=F64)).masked_fill(~shift, 0.0)
    ref = (-3 * torch.rand(2 * B, L - 1, generator=g, dtype=F64)).masked_fill(~shift, 0.0)
    inputs = {"input_ids": torch.randint(0, 50, (2 * B, L), generator=g), "attention_mask": attention_mask,
              "completion_mask": completion_mask, "ref_chosen_logps": ref[:B].sum(1),
              "ref_rejected_logps": ref[B:].sum(1)}
    return inputs, logps, ref, shift


def trl_dpo(inputs, logps, loss_type: str, beta: float, label_smoothing: float = 0.0):
    """DPOTrainer._compute_loss on these pairs: (loss, the metrics it logged)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    class FusedHead:  # what the model returns with fused_lm_head=True: per-token fields, 0 off the completion
        training = False

        def __call__(self, **kwargs):
            zeros = torch.zeros_like(logps)
            return SimpleNamespace(log_probs=logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    trainer = bare(DPOTrainer, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
                   f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
                   label_smoothing=label_smoothing, use_weighting=False)
    return trainer._compute_loss(FusedHead(), inputs, return_outputs=False), trainer._metrics["eval"]


def ours_dpo(logps, ref, shift, cfg, rows=None):
    B = logps.shape[0] // 2
    rows = slice(None) if rows is None else rows
    c, r = slice(0, B), slice(B, 2 * B)
    return dpo.dpo_loss(logps[c][rows], logps[r][rows], ref[c][rows], ref[r][rows], shift[c][rows], shift[r][rows],
                        cfg)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_sigmoid_loss_matches_trl(beta):
    pytest.importorskip("trl")
    inputs, logps, ref, shift = dpo_pairs()
    loss, _ = ours_dpo(logps, ref, shift, dpo.DPOConfig(beta=beta))
    close(loss, trl_dpo(inputs, logps, "sigmoid", beta)[0])


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_loss_matches_trl_and_averages_logprobs_over_tokens(beta):
    pytest.importorskip("trl")
    inputs, logps, ref, shift = dpo_pairs(seed=1)
    loss, _ = ours_dpo(logps, ref, shift, dpo.DPOConfig(beta=beta, loss_type="ipo"))
    close(loss, trl_dpo(inputs, logps, "ipo", beta)[0])
    # the same pairs with summed log-ratios would give another loss: the averaging is real
    B = logps.shape[0] // 2
    h_sum = ((logps - ref)[:B].sum(1) - (logps - ref)[B:].sum(1))
    assert abs(float(loss) - float(((h_sum - 1 / (2 * beta)) ** 2).mean())) > 1e-3


def test_cdpo_label_smoothing_matches_trl():
    """TRL 1.16's `sigmoid` ignores label_smoothing (cDPO left it in v0.29); its `aot` loss is
    -(1 - eps) log sigma(beta h) - eps log sigma(-beta h) on sorted log-ratios, which for one
    pair is cDPO: compare pair by pair."""
    pytest.importorskip("trl")
    inputs, logps, ref, shift = dpo_pairs(seed=2)
    B = logps.shape[0] // 2
    cfg = dpo.DPOConfig(beta=0.3, label_smoothing=0.2)
    for i in range(B):
        rows = torch.tensor([i, B + i])
        one = {k: v[rows] if v.shape[0] == 2 * B else v[i:i + 1] for k, v in inputs.items()}
        close(ours_dpo(logps, ref, shift, cfg, rows=slice(i, i + 1))[0],
              trl_dpo(one, logps[rows], "aot", cfg.beta, cfg.label_smoothing)[0])
    smoothed, plain = ours_dpo(logps, ref, shift, cfg)[0], ours_dpo(logps, ref, shift, dpo.DPOConfig(beta=0.3))[0]
    assert abs(float(smoothed) - float(plain)) > 1e-3


def test_dpo_metrics_match_trl():
    pytest.importorskip("trl")
    inputs, logps, ref, shift = dpo_pairs(seed=3)
    _, metrics = ours_dpo(logps, ref, shift, dpo.DPOConfig(beta=0.2))
    _, logged = trl_dpo(inputs, logps, "sigmoid", 0.2)
    for ours, theirs in [("rewards_chosen", "rewards/chosen"), ("rewards_rejected", "rewards/rejected"),
                         ("reward_accuracy", "rewards/accuracies"), ("reward_margin", "rewards/margins")]:
        close(metrics[ours].double(), logged[theirs][0])
    assert 0 < float(metrics["reward_accuracy"]) < 1


# ----------------------------------------------------------------------------- GRPO


def grpo_scores(B: int = 12, seed: int = 5) -> torch.Tensor:
    scores = torch.randn(B, generator=gen(seed), dtype=F64)
    scores[4:8] = 0.5  # a group whose responses all score the same: std 0
    scores[9] = float("nan")  # an unscorable response
    return scores


def trl_grpo_advantages(scores: torch.Tensor, group_size: int, scale_rewards: str) -> torch.Tensor:
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import nanstd

    code = trl_lines(GRPOTrainer._generate_and_score_completions,
                     "unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)",
                     "advantages = torch.nan_to_num(advantages, nan=0.0)")
    scope = {"torch": torch, "nanstd": nanstd, "rewards_per_func": scores.unsqueeze(1), "device": "cpu",
             "num_generations": group_size,
             "self": SimpleNamespace(multi_objective_aggregation="sum_then_normalize", scale_rewards=scale_rewards,
                                     reward_weights=torch.ones(1, dtype=F64))}
    exec(code, scope)
    return scope["advantages"]


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_grpo_advantages_match_trl(scale_rewards):
    pytest.importorskip("trl")
    scores = grpo_scores()
    ours, _ = grpo.group_advantages(scores, 4, scale_rewards, eps=1e-4)
    close(ours, trl_grpo_advantages(scores, 4, scale_rewards))


def rollout(B: int = 8, T: int = 7, seed: int = 0, scores=None, values: bool = False) -> RolloutBatch:
    g = gen(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g).tolist()
    lengths[0] = T  # one response fills the whole length
    mask = right_padded_mask(lengths, T)
    old = (-2 * torch.rand(B, T, generator=g, dtype=F64)).masked_fill(~mask, 0.0)
    ref = (old + 0.3 * torch.randn(B, T, generator=g, dtype=F64)).masked_fill(~mask, 0.0)
    return RolloutBatch(query_tokens=torch.zeros(B, 2, dtype=torch.long), query_mask=torch.ones(B, 2, dtype=torch.bool),
                        response_tokens=torch.randint(0, 30, (B, T), generator=g), response_mask=mask,
                        old_logprobs=old, ref_logprobs=ref,
                        scores=torch.randn(B, generator=g, dtype=F64) if scores is None else scores,
                        values=torch.randn(B, T, generator=g, dtype=F64) if values else None)


def updated_logprobs(batch: RolloutBatch, seed: int = 9, spread: float = 0.3) -> torch.Tensor:
    """Log-probs after an update: moved enough that some ratios leave [0.8, 1.2]."""
    noise = spread * torch.randn(batch.old_logprobs.shape, generator=gen(seed), dtype=F64)
    return (batch.old_logprobs + noise).masked_fill(~batch.response_mask, 0.0)


@pytest.mark.parametrize("aggregation,trl_loss_type", [("sequence_mean", "grpo"), ("token_mean", "bnpo"),
                                                        ("dr_grpo", "dr_grpo")])
@pytest.mark.parametrize("kl_coef", [0.0, 0.04])
def test_grpo_loss_matches_trl(aggregation, trl_loss_type, kl_coef):
    pytest.importorskip("trl")
    from trl.trainer.grpo_trainer import GRPOTrainer

    batch = rollout(seed=1)
    cfg = grpo.GRPOConfig(group_size=4, clip=0.2, clip_high=0.28, kl_coef=kl_coef, aggregation=aggregation,
                          max_completion_length=10)
    adv = grpo.advantages(batch, cfg)
    new = updated_logprobs(batch)
    ent = torch.rand(batch.old_logprobs.shape, generator=gen(11), dtype=F64)
    loss, metrics = grpo.loss(new, None, batch, adv, cfg, entropy=ent)

    mask = batch.response_mask.long()
    trainer = bare(GRPOTrainer, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
                   importance_sampling_level="token", beta=kl_coef, loss_type=trl_loss_type, epsilon_low=0.2,
                   epsilon_high=0.28, max_completion_length=10, use_vllm=False, aux_loss_enabled=False,
                   _entropy_bonus_enabled=False, args=SimpleNamespace(use_bias_correction_kl=False, delta=None))
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (new, ent, None)
    inputs = {"prompt_ids": batch.query_tokens, "prompt_mask": batch.query_mask.long(),
              "completion_ids": batch.response_tokens, "completion_mask": mask, "advantages": adv.per_sequence,
              "old_per_token_logps": batch.old_logprobs, "ref_per_token_logps": batch.ref_logprobs}
    close(loss, trainer._compute_loss(None, inputs))
    logged = trainer._metrics["eval"]
    close(metrics["clip_fraction"].double(), logged["clip_ratio/region_mean"][0])
    close(metrics["entropy"].double(), logged["entropy"][0])
    if kl_coef:
        close(metrics["kl"].double(), logged["kl"][0])
    assert 0 < float(metrics["clip_fraction"]) < 1  # the comparison covered clipped and unclipped tokens


# ----------------------------------------------------------------------------- RLOO


def trl_rloo_advantages(batch: RolloutBatch, group_size: int, beta: float, normalize: bool) -> torch.Tensor:
    from trl.trainer.rloo_trainer import RLOOTrainer
    from trl.trainer.utils import nanstd

    code = trl_lines(RLOOTrainer._generate_and_score_completions,
                     "unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)",
                     "advantages = torch.nan_to_num(advantages, nan=0.0)")
    scope = {"torch": torch, "nanstd": nanstd, "gather": lambda x: x, "device": "cpu",
             "rewards_per_func": batch.scores.unsqueeze(1), "num_generations": group_size,
             "old_per_token_logps": batch.old_logprobs, "ref_per_token_logps": batch.ref_logprobs,
             "completion_mask": batch.response_mask.long(),
             "self": SimpleNamespace(reward_weights=torch.ones(1, dtype=F64), reward_clip_range=None, beta=beta,
                                     normalize_advantages=normalize)}
    exec(code, scope)
    return scope["advantages"]


@pytest.mark.parametrize("beta", [0.0, 0.05])
@pytest.mark.parametrize("normalize", [False, True])
def test_rloo_leave_one_out_advantages_match_trl(beta, normalize):
    pytest.importorskip("trl")
    scores = torch.randn(12, generator=gen(7), dtype=F64)
    scores[5] = float("nan")  # unscorable: out of its siblings' baselines
    scores[8:11] = float("nan")  # a group with one scorable response: no baseline at all
    batch = rollout(B=12, seed=2, scores=scores)
    cfg = rloo.RLOOConfig(group_size=4, kl_coef=beta, normalize_advantages=normalize)
    close(rloo.advantages(batch, cfg).per_sequence, trl_rloo_advantages(batch, 4, beta, normalize))


def test_rloo_loss_matches_trl():
    pytest.importorskip("trl")
    from trl.trainer.rloo_trainer import RLOOTrainer

    batch = rollout(B=12, seed=3)
    cfg = rloo.RLOOConfig(group_size=4, clip=0.2, clip_high=0.28)
    adv = rloo.advantages(batch, cfg)
    new = updated_logprobs(batch, spread=0.15)
    ent = torch.rand(batch.old_logprobs.shape, generator=gen(12), dtype=F64)
    loss, metrics = rloo.loss(new, None, batch, adv, cfg, entropy=ent)
    mask = batch.response_mask.long()
    trainer = bare(RLOOTrainer, epsilon_low=0.2, epsilon_high=0.28, aux_loss_enabled=False)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (new, ent, None)
    inputs = {"prompt_ids": batch.query_tokens, "prompt_mask": batch.query_mask.long(),
              "completion_ids": batch.response_tokens, "completion_mask": mask, "advantages": adv.per_sequence,
              "old_logps": (batch.old_logprobs * mask).sum(1)}
    close(loss, trainer._compute_loss(None, inputs))
    close(metrics["clip_fraction"].double(), trainer._metrics["eval"]["clip_ratio/region_mean"][0])
    close(metrics["entropy"].double(), trainer._metrics["eval"]["entropy"][0])
    assert 0 < float(metrics["clip_fraction"]) < 1


# ----------------------------------------------------------------------------- PPO (gone from TRL 1.16)
# Copied from trl v1.9.0, trl/experimental/ppo/ppo_trainer.py (lines 237-270, 786-798, 826-846),
# the last release that shipped PPOTrainer; names and order kept, only the trainer's state removed.


def trl_masked_mean(values, mask, axis=None):
    if axis is not None:
        return (values * mask).sum(axis=axis) / mask.sum(axis=axis)
    return (values * mask).sum() / mask.sum()


def trl_masked_var(values, mask, unbiased=True):
    mean = trl_masked_mean(values, mask)
    centered_values = values - mean
    variance = trl_masked_mean(centered_values**2, mask)
    if unbiased:
        mask_sum = mask.sum()
        bessel_correction = mask_sum / (mask_sum - 1)
        variance = variance * bessel_correction
    return variance


def trl_masked_whiten(values, mask, shift_mean=True):
    mean, var = trl_masked_mean(values, mask), trl_masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened += mean
    return whitened


def trl_gae(rewards, values, gamma, lam):
    lastgaelam = 0
    advantages_reversed = []
    gen_length = rewards.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], axis=1)
    returns = advantages + values
    return advantages, returns


def trl_ppo_losses(new_logprobs, mb_logprobs, mb_advantage, vpred, mb_values, mb_return, padding_mask, cliprange,
                   cliprange_value):
    vpredclipped = torch.clamp(vpred, mb_values - cliprange_value, mb_values + cliprange_value)
    vf_losses1 = torch.square(vpred - mb_return)
    vf_losses2 = torch.square(vpredclipped - mb_return)
    vf_loss_max = torch.max(vf_losses1, vf_losses2)
    vf_loss = 0.5 * trl_masked_mean(vf_loss_max, ~padding_mask)
    vf_clipfrac = trl_masked_mean((vf_losses2 > vf_losses1).float(), ~padding_mask)
    logprobs_diff = new_logprobs - mb_logprobs
    ratio = torch.exp(logprobs_diff)
    pg_losses = -mb_advantage * ratio
    pg_losses2 = -mb_advantage * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss_max = torch.max(pg_losses, pg_losses2)
    pg_loss = trl_masked_mean(pg_loss_max, ~padding_mask)
    pg_clipfrac = trl_masked_mean((pg_losses2 > pg_losses).float(), ~padding_mask)
    return pg_loss, vf_loss, pg_clipfrac, vf_clipfrac


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_trl(shift_mean):
    x = 5 * torch.randn(6, 9, generator=gen(4), dtype=F64) + 2
    mask = right_padded_mask([9, 3, 5, 1, 8, 7], 9)
    white = masked_whiten(x, mask, shift_mean=shift_mean)
    close(white[mask], trl_masked_whiten(x, mask, shift_mean=shift_mean)[mask])
    close(masked_var(x, mask), trl_masked_var(x, mask))
    close(masked_mean(x, mask, dim=1), trl_masked_mean(x, mask, axis=1))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_and_whitened_advantages_match_trl(gamma, lam):
    """TRL's loop runs over every position and bootstraps from values[:, t + 1] whatever it is;
    its trainer zeroes the values and rewards after the episode first. Given those zeros, the
    loop is GAE over each row's real tokens, which lmspec computes from the mask alone."""
    batch = rollout(seed=5, values=True)
    cfg = ppo.PPOConfig(gamma=gamma, gae_lambda=lam, kl_coef=0.1)
    adv = ppo.advantages(batch, cfg)
    mask = batch.response_mask
    rewards = adv.rewards.masked_fill(~mask, 0.0)
    values = batch.values.masked_fill(~mask, 0.0)
    want_adv, want_ret = trl_gae(rewards, values, gamma, lam)
    close(adv.returns[mask], want_ret[mask])
    want = trl_masked_whiten(want_adv, mask).masked_fill(~mask, 0.0)
    close(adv.per_token, want)
    # the per-token reward is TRL's: -kl_coef * k1 everywhere, plus the score on the last real token
    last = mask.sum(1) - 1
    kl = -(batch.ref_logprobs - batch.old_logprobs)
    want_rewards = (-0.1 * kl).masked_fill(~mask, 0.0)
    want_rewards[torch.arange(len(last)), last] += batch.scores
    close(adv.rewards, want_rewards)
    # garbage where the batch is padded changes nothing
    noisy = dataclasses.replace(batch, values=batch.values + 100 * (~mask))
    close(ppo.advantages(noisy, cfg).per_token, adv.per_token)


def test_ppo_whitened_rewards_match_trl():
    batch = rollout(seed=6, values=True)
    cfg = ppo.PPOConfig(kl_coef=0.2, whiten_rewards=True)
    rewards, _ = ppo.token_rewards(batch, cfg)
    raw, _ = ppo.token_rewards(batch, ppo.PPOConfig(kl_coef=0.2))
    mask = batch.response_mask
    close(rewards, trl_masked_whiten(raw, mask, shift_mean=False).masked_fill(~mask, 0.0))


def test_ppo_policy_and_value_losses_match_trl():
    batch = rollout(seed=7, values=True)
    cfg = ppo.PPOConfig(clip=0.2, value_clip=0.2, value_coef=0.1)
    adv = ppo.advantages(batch, cfg)
    new = updated_logprobs(batch)
    new_values = (batch.values + 0.5 * torch.randn(batch.values.shape, generator=gen(8), dtype=F64))
    loss, metrics = ppo.loss(new, new_values, batch, adv, cfg)
    pg, vf, pg_clip, vf_clip = trl_ppo_losses(new, batch.old_logprobs, adv.per_token, new_values, batch.values,
                                              adv.returns, ~batch.response_mask, 0.2, 0.2)
    close(loss, pg + 0.1 * vf)
    close(metrics["policy_loss"].double(), pg)
    close(metrics["value_loss"].double(), vf)
    close(metrics["clip_fraction"].double(), pg_clip)
    close(metrics["value_clip_fraction"].double(), vf_clip)
    assert 0 < float(pg_clip) < 1 and 0 < float(vf_clip) < 1


# ----------------------------------------------------------------------------- KL controller (removed in TRL 0.14)


class TRLAdaptiveKLController:
    """trl v0.13.0, trl/trainer/utils.py (removed by huggingface/trl#2480)."""

    def __init__(self, init_kl_coef, target, horizon):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current, n_steps):
        import numpy as np

        target = self.target
        proportional_error = np.clip(current / target - 1, -0.2, 0.2)
        mult = 1 + proportional_error * n_steps / self.horizon
        self.value *= mult


def test_adaptive_kl_controller_matches_trl():
    ours, theirs = ppo.AdaptiveKLController(0.2, target=6.0, horizon=10000), TRLAdaptiveKLController(0.2, 6.0, 10000)
    for current in [1.0, 5.5, 6.0, 7.0, 30.0, 0.0, 6.6]:
        ours.update(current, 256)
        theirs.update(current, 256)
        close(ours.value, float(theirs.value))


# ----------------------------------------------------------------------------- Bradley-Terry


@pytest.mark.parametrize("margin,center", [(False, None), (True, None), (True, 0.01)])
def test_bradley_terry_loss_matches_trl_reward_trainer(margin, center):
    """Hard labels (p = 1) are RewardTrainer's: -log sigma(r_chosen - r_rejected [- margin]),
    plus center_rewards_coefficient * mean (r_chosen + r_rejected)^2; its accuracy and margin
    metrics too."""
    pytest.importorskip("trl")
    from trl.trainer.reward_trainer import RewardTrainer

    g = gen(13)
    chosen, rejected = 2 * torch.randn(9, generator=g, dtype=F64), 2 * torch.randn(9, generator=g, dtype=F64)
    m = torch.rand(9, generator=g, dtype=F64) if margin else None
    loss, metrics = reward.bradley_terry_loss(chosen, rejected, margin=m, center_coef=center)
    trainer = bare(RewardTrainer, args=SimpleNamespace(center_rewards_coefficient=center))
    inputs = {"input_ids": torch.zeros(18, 3, dtype=torch.long), "attention_mask": torch.ones(18, 3)}
    if margin:
        inputs["margin"] = m
    out = SimpleNamespace(logits=torch.cat([chosen, rejected]).unsqueeze(-1))
    close(loss, trainer.compute_loss(lambda **kw: out, inputs))
    close(metrics["accuracy"].double(), trainer._metrics["eval"]["accuracy"][0])
    close(metrics["margin"].double(), trainer._metrics["eval"]["margin"][0])

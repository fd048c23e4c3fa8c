"""The RL computations where TRL has nothing to compare with: masks and padding on either side,
the importance ratio before the first update at a temperature other than 1, clipping at its
boundaries, the adaptive KL coefficient, GRPO's aggregations, RLOO's baseline, DPO/IPO and
Bradley-Terry properties, dtypes, and the checks made up front."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lmspec.compiler.modules.model import sample_next
from lmspec.runtime.rl import ALGORITHMS, dpo, grpo, ppo, reward, rloo
from lmspec.runtime.rl.common import (Advantages, RolloutBatch, clipped_surrogate, entropy, kl_estimate,
                                      last_token_index, masked_mean, masked_var, masked_whiten, reward_at_last_token,
                                      sequence_logprobs)

F64 = torch.float64
V, EOS, PAD = 13, 1, 0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch_of(mask: torch.Tensor, seed: int = 0, scores=None, values: bool = True, dtype=F64) -> RolloutBatch:
    g = gen(seed)
    B, T = mask.shape
    old = (-2 * torch.rand(B, T, generator=g, dtype=F64)).masked_fill(~mask, 0.0)
    ref = (old + 0.3 * torch.randn(B, T, generator=g, dtype=F64)).masked_fill(~mask, 0.0)
    return RolloutBatch(query_tokens=torch.zeros(B, 2, dtype=torch.long), query_mask=torch.ones(B, 2, dtype=torch.bool),
                        response_tokens=torch.randint(2, V, (B, T), generator=g), response_mask=mask,
                        old_logprobs=old.to(dtype), ref_logprobs=ref.to(dtype),
                        scores=(torch.randn(B, generator=g, dtype=F64) if scores is None else scores).to(dtype),
                        values=torch.randn(B, T, generator=g, dtype=F64).to(dtype) if values else None)


def right_mask(lengths: list[int], T: int) -> torch.Tensor:
    return torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def to_left_padding(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """A right-padded (B, T) tensor with its real tokens moved to the end of each row."""
    return torch.stack([torch.roll(row, x.shape[1] - n) for row, n in zip(x, lengths)])


# ----------------------------------------------------------------------------- log-probs at the sampling temperature


class Bigram(torch.nn.Module):
    """A tiny policy: the next token's logits from the current token."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.out = torch.nn.Embedding(V, 16), torch.nn.Linear(16, V)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return 4 * self.out(self.emb(ids))  # (B, T, V), sharp enough that temperature matters


def roll_out(policy: Bigram, query: torch.Tensor, steps: int, temperature: float):
    """Sample with the project's sampler; stop a row at EOS (kept, then PAD). -> tokens, mask."""
    ids, done, new, real = query, torch.zeros(len(query), dtype=torch.bool), [], []
    g = gen(3)
    with torch.no_grad():
        for _ in range(steps):
            nxt = sample_next(policy(ids)[:, -1], temperature=temperature, generator=g)  # (B,)
            real.append(~done)
            nxt = torch.where(done, PAD, nxt)
            done = done | (nxt == EOS)
            new.append(nxt)
            ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
    return torch.stack(new, 1), torch.stack(real, 1)  # (B, T) each


def response_logits(policy: Bigram, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """logits[:, t] scoring response token t: the decoder's output one position earlier."""
    return policy(torch.cat([query, tokens], dim=1))[:, query.shape[1] - 1:-1]


def test_importance_ratio_is_exactly_one_before_the_first_update_at_temperature_07():
    policy, T = Bigram(), 0.7
    query = torch.randint(2, V, (8, 3), generator=gen(1))
    tokens, mask = roll_out(policy, query, 10, T)
    with torch.no_grad():
        old = sequence_logprobs(response_logits(policy, query, tokens), tokens, mask, temperature=T)
    new = sequence_logprobs(response_logits(policy, query, tokens), tokens, mask, temperature=T)
    ratio = torch.exp(new - old)
    assert torch.equal(ratio[mask], torch.ones_like(ratio[mask]))
    # the log-probs are those of the distribution the sampler drew from: softmax(logits / T)
    with torch.no_grad():
        logits = response_logits(policy, query, tokens)
        sampler = torch.softmax(logits.float() / T, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(old[mask].exp(), sampler[mask])
    # recomputing at temperature 1 (TRL #4159) would start every update off-policy
    with torch.no_grad():
        at_one = sequence_logprobs(response_logits(policy, query, tokens), tokens, mask, temperature=1.0)
    assert float((torch.exp(at_one - old)[mask] - 1).abs().max()) > 0.3


@pytest.mark.parametrize("kind", ["ppo", "grpo", "rloo"])
def test_first_update_at_temperature_07_clips_nothing_and_moves_the_policy(kind):
    policy, T = Bigram(), 0.7
    query = torch.randint(2, V, (8, 3), generator=gen(2))
    tokens, mask = roll_out(policy, query, 10, T)
    with torch.no_grad():
        old = sequence_logprobs(response_logits(policy, query, tokens), tokens, mask, temperature=T)
    scores = (tokens == 5).float().sum(1)  # a reward: how often the response says 5
    batch = RolloutBatch(query, torch.ones_like(query, dtype=torch.bool), tokens, mask, old, scores,
                         ref_logprobs=old.clone(), values=torch.zeros(mask.shape))
    cfg = {"ppo": ppo.PPOConfig(), "grpo": grpo.GRPOConfig(group_size=4), "rloo": rloo.RLOOConfig()}[kind]
    algo = ALGORITHMS[kind]
    adv = algo.advantages(batch, cfg)
    logits = response_logits(policy, query, tokens)
    new = sequence_logprobs(logits, tokens, mask, temperature=T)
    values = torch.zeros(mask.shape, requires_grad=True) if kind == "ppo" else None
    loss, metrics = algo.loss(new, values, batch, adv, cfg, entropy=entropy(logits, mask, temperature=T))
    assert algo.name == kind
    assert float(metrics["clip_fraction"]) == 0.0 and float(metrics["approx_kl"]) == 0.0
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in policy.parameters()])
    assert torch.isfinite(grads).all() and float(grads.abs().sum()) > 0


def test_logprobs_need_a_positive_temperature():
    with pytest.raises(ValueError, match="temperature > 0"):
        sequence_logprobs(torch.zeros(1, 2, V), torch.zeros(1, 2, dtype=torch.long), temperature=0.0)


def test_logprobs_and_entropy_are_zero_on_padding_and_float32_from_bfloat16():
    logits = torch.randn(2, 5, V, generator=gen(4))
    tokens = torch.randint(0, V, (2, 5), generator=gen(5))
    mask = right_mask([5, 2], 5)
    lp = sequence_logprobs(logits.bfloat16(), tokens, mask, temperature=0.7)
    assert lp.dtype == torch.float32 and torch.equal(lp[~mask], torch.zeros_like(lp[~mask]))
    want = sequence_logprobs(logits.bfloat16().double(), tokens, mask, temperature=0.7)
    torch.testing.assert_close(lp.double(), want, atol=1e-5, rtol=0)
    ent = entropy(logits, mask)
    assert torch.equal(ent[~mask], torch.zeros_like(ent[~mask]))


def test_entropy_of_uniform_and_of_top_k_truncated_logits():
    assert entropy(torch.zeros(1, 1, V)).item() == pytest.approx(math.log(V))
    truncated = torch.zeros(1, 1, V).masked_fill(torch.arange(V) >= 4, float("-inf"))  # top-4 of equal logits
    assert entropy(truncated).item() == pytest.approx(math.log(4))


# ----------------------------------------------------------------------------- masked reductions


def test_masked_reductions_ignore_whatever_padding_holds():
    x = torch.randn(3, 6, generator=gen(6), dtype=F64)
    mask = right_mask([6, 2, 4], 6)
    noisy = x + 1e6 * (~mask)
    assert masked_mean(noisy, mask) == pytest.approx(float(x[mask].mean()))
    assert masked_var(noisy, mask) == pytest.approx(float(x[mask].var(unbiased=True)))
    white = masked_whiten(noisy, mask)[mask]
    assert float(white.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(white.var(unbiased=True)) == pytest.approx(1.0, abs=1e-6)
    scaled = masked_whiten(noisy, mask, shift_mean=False)[mask]
    assert float(scaled.mean()) == pytest.approx(float(x[mask].mean()), rel=1e-9)  # the mean is kept
    assert float(scaled.var(unbiased=True)) == pytest.approx(1.0, abs=1e-6)


def test_masked_mean_of_an_empty_row_is_zero_and_whitening_one_token_is_refused():
    mask = right_mask([3, 0], 3)
    assert masked_mean(torch.ones(2, 3), mask, dim=1).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="at least 2 real tokens"):
        masked_whiten(torch.ones(2, 3), right_mask([1, 0], 3))


# ----------------------------------------------------------------------------- KL estimators


def test_k1_and_k3_are_unbiased_and_k2_k3_non_negative():
    p = torch.softmax(torch.randn(V, generator=gen(7), dtype=F64), 0)
    q = torch.softmax(torch.randn(V, generator=gen(8), dtype=F64), 0)
    exact = float((p * (p.log() - q.log())).sum())  # KL(p || q), tokens drawn from p
    for est in ("k1", "k3"):
        assert float((p * kl_estimate(p.log(), q.log(), est)).sum()) == pytest.approx(exact, rel=1e-12)
    k2 = float((p * kl_estimate(p.log(), q.log(), "k2")).sum())
    assert k2 != pytest.approx(exact, rel=1e-3)
    for est in ("k2", "k3"):
        assert bool((kl_estimate(p.log(), q.log(), est) >= 0).all())
    assert bool((kl_estimate(p.log(), q.log(), "k1") < 0).any())  # per token, k1 can be negative
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_estimate(p, q, "k4")


# ----------------------------------------------------------------------------- the reward on the last real token


def test_last_token_index_for_right_and_left_padding():
    right = right_mask([4, 1, 3], 4)
    assert last_token_index(right).tolist() == [3, 0, 2]
    assert last_token_index(to_left_padding(right, [4, 1, 3])).tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        last_token_index(right_mask([2, 0], 3))


def test_reward_lands_on_the_last_real_token_for_left_and_right_padding():
    lengths, scores = [5, 2, 4], torch.tensor([1.5, -2.0, 0.25])
    right = right_mask(lengths, 5)
    left = to_left_padding(right, lengths)
    r_right, r_left = reward_at_last_token(scores, right), reward_at_last_token(scores, left)
    assert torch.equal(r_right[~right], torch.zeros_like(r_right[~right]))
    assert torch.equal(r_left[~left], torch.zeros_like(r_left[~left]))
    assert torch.equal(to_left_padding(r_right, lengths), r_left)  # the same rewards once aligned
    assert r_right[1].tolist() == [0.0, -2.0, 0.0, 0.0, 0.0]


def test_ppo_advantages_are_the_same_for_left_and_right_padded_responses():
    lengths = [6, 2, 4, 5]
    right = batch_of(right_mask(lengths, 6), seed=9)
    left = dataclasses.replace(
        right, response_mask=to_left_padding(right.response_mask, lengths),
        **{k: to_left_padding(getattr(right, k), lengths) for k in ("response_tokens", "old_logprobs",
                                                                   "ref_logprobs", "values")})
    cfg = ppo.PPOConfig(gamma=0.95, kl_coef=0.1)
    a_right, a_left = ppo.advantages(right, cfg), ppo.advantages(left, cfg)
    for field in ("per_token", "returns", "rewards"):
        torch.testing.assert_close(to_left_padding(getattr(a_right, field), lengths), getattr(a_left, field))


def test_gae_of_a_one_token_response_is_its_reward_minus_its_value():
    mask = right_mask([1, 3], 3)
    rewards = torch.tensor([[2.0, 9.0, 9.0], [0.0, 0.0, 1.0]], dtype=F64)
    values = torch.tensor([[0.5, 7.0, 7.0], [0.1, 0.2, 0.3]], dtype=F64)
    adv, ret = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert adv[0].tolist() == [1.5, 0.0, 0.0]  # nothing after the episode's last token leaks back
    d = [0.0 + 0.9 * 0.2 - 0.1, 0.0 + 0.9 * 0.3 - 0.2, 1.0 - 0.3]
    want = [d[0] + 0.45 * (d[1] + 0.45 * d[2]), d[1] + 0.45 * d[2], d[2]]
    assert adv[1].tolist() == pytest.approx(want)
    assert ret[1].tolist() == pytest.approx([w + v for w, v in zip(want, [0.1, 0.2, 0.3])])


# ----------------------------------------------------------------------------- clipping at its boundaries


@pytest.mark.parametrize("low,high", [(0.2, 0.2), (0.2, 0.28)])
def test_clipping_stops_the_gradient_only_beyond_the_boundary_on_the_side_of_the_advantage(low, high):
    lo, hi = 1.0 - low, 1.0 + high  # the boundaries exactly as the clamp computes them
    ratio = torch.tensor([lo - 0.01, lo, lo + 0.01, hi - 0.01, hi, hi + 0.01], dtype=F64)
    for sign in (1.0, -1.0):
        r = ratio.clone().requires_grad_()
        loss, clipped = clipped_surrogate(r, torch.full_like(ratio, sign), low, high)
        loss.sum().backward()
        stopped = r.grad == 0
        assert torch.equal(stopped, clipped)  # clip_fraction counts exactly the tokens without gradient
        want = [False] * 5 + [True] if sign > 0 else [True] + [False] * 5
        assert stopped.tolist() == want, sign
        assert torch.equal(r.grad[~stopped], torch.full_like(r.grad[~stopped], -sign))  # d(-rho A)/d rho = -A


def test_ppo_clip_fraction_counts_real_tokens_only():
    mask = right_mask([3, 1], 3)
    batch = batch_of(mask)
    adv = Advantages(per_token=torch.ones(2, 3, dtype=F64) * mask)
    new = batch.old_logprobs + torch.tensor([[1.0, 0.0, 0.0], [1.0, 5.0, 5.0]], dtype=F64)  # ratio e > 1.2
    _, metrics = ppo.policy_loss(new, batch.old_logprobs, adv.per_token, mask, clip=0.2)
    assert float(metrics["clip_fraction"]) == pytest.approx(2 / 4)


def test_value_clipping_stops_a_value_that_overshoots_toward_the_return():
    mask = torch.ones(1, 2, dtype=torch.bool)
    old, ret = torch.zeros(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64)
    new = torch.tensor([[0.5, -0.5]], dtype=F64, requires_grad=True)  # toward the return / away from it
    loss, metrics = ppo.value_loss(new, old, ret, mask, clip=0.2)
    loss.backward()
    assert new.grad[0, 0] == 0 and new.grad[0, 1] != 0
    assert float(metrics["value_clip_fraction"]) == 0.5
    assert float(loss.detach()) == pytest.approx(0.5 * ((0.2 - 1) ** 2 + (-0.5 - 1) ** 2) / 2)


# ----------------------------------------------------------------------------- adaptive KL coefficient


def test_adaptive_kl_coefficient_rises_above_target_falls_below_and_moves_at_most_20_percent():
    start, target, horizon, n = 0.1, 6.0, 1000, 100
    up = ppo.AdaptiveKLController(start, target, horizon)
    assert up.update(9.0, n) > start  # KL above target: a stronger penalty
    down = ppo.AdaptiveKLController(start, target, horizon)
    assert down.update(3.0, n) < start
    on_target = ppo.AdaptiveKLController(start, target, horizon)
    assert on_target.update(6.0, n) == start
    far = ppo.adaptive_kl_update(start, 600.0, target, horizon, n)
    assert far == pytest.approx(start * (1 + 0.2 * n / horizon))  # the error is clipped at +20%
    assert ppo.adaptive_kl_update(start, 0.0, target, horizon, n) == pytest.approx(start * (1 - 0.2 * n / horizon))
    fixed = ppo.kl_controller(ppo.PPOConfig(kl_coef=0.3))
    assert isinstance(fixed, ppo.FixedKLController) and fixed.update(100.0, n) == 0.3
    adaptive = ppo.kl_controller(ppo.PPOConfig(kl_coef=0.3, kl_target=6.0, kl_horizon=500))
    assert adaptive == ppo.AdaptiveKLController(0.3, 6.0, 500)


def test_ppo_reports_the_per_sequence_kl_an_adaptive_controller_reads():
    batch = batch_of(right_mask([4, 2], 4), seed=10)
    adv = ppo.advantages(batch, ppo.PPOConfig(kl_coef=0.1))
    k1 = (batch.old_logprobs - batch.ref_logprobs)  # 0 on padding
    assert float(adv.metrics["kl"]) == pytest.approx(float(k1.sum(1).mean()), rel=1e-6)


# ----------------------------------------------------------------------------- GRPO


def test_grpo_advantages_are_relative_to_the_group():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0], dtype=F64)
    adv, metrics = grpo.group_advantages(scores, 4, "group", eps=0.0)
    std = float(torch.tensor([1.0, 2.0, 3.0, 4.0]).std())
    assert adv[:4].tolist() == pytest.approx([(s - 2.5) / std for s in (1, 2, 3, 4)])
    assert adv[4:].tolist() == [0.0] * 4  # all equal: no signal, and no division by zero with eps 0
    assert float(metrics["zero_std_fraction"]) == 0.5
    shifted, _ = grpo.group_advantages(scores + torch.tensor([5.0] * 4 + [-3.0] * 4, dtype=F64), 4, "group", 0.0)
    torch.testing.assert_close(shifted, adv)
    unscaled, _ = grpo.group_advantages(scores, 4, "none")
    assert unscaled[:4].tolist() == [-1.5, -0.5, 0.5, 1.5]
    with pytest.raises(ValueError, match="groups of 3"):
        grpo.group_advantages(scores, 3)


def test_grpo_aggregations():
    mask = right_mask([4, 1], 4)
    l = torch.tensor([[1.0, 2.0, 3.0, 4.0], [8.0, 99.0, 99.0, 99.0]], dtype=F64)
    assert float(grpo.aggregate(l, mask, "token_mean")) == pytest.approx(18 / 5)
    assert float(grpo.aggregate(l, mask, "token_mean", total_tokens=10)) == pytest.approx(18 / 10)
    assert float(grpo.aggregate(l, mask, "sequence_mean")) == pytest.approx((10 / 4 + 8) / 2)
    assert float(grpo.aggregate(l, mask, "dr_grpo", max_completion_length=6)) == pytest.approx(18 / (2 * 6))
    # dr_grpo's denominator is a constant: padding the batch further changes nothing
    wider = torch.cat([l, torch.full((2, 2), 7.0, dtype=F64)], dim=1)
    wider_mask = torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], dim=1)
    assert grpo.aggregate(wider, wider_mask, "dr_grpo", 6) == grpo.aggregate(l, mask, "dr_grpo", 6)
    with pytest.raises(ValueError, match="at least the response length 4"):
        grpo.aggregate(l, mask, "dr_grpo", max_completion_length=3)


def test_grpo_kl_term_pulls_toward_the_reference_and_is_zero_when_equal():
    batch = batch_of(right_mask([3, 3, 2, 1], 3), seed=11, values=False)
    cfg = grpo.GRPOConfig(group_size=2, kl_coef=0.5)
    adv = grpo.advantages(batch, cfg)
    with_kl, metrics = grpo.loss(batch.old_logprobs, None, batch, adv, cfg)
    without, _ = grpo.loss(batch.old_logprobs, None, batch, adv, dataclasses.replace(cfg, kl_coef=0.0))
    assert float(metrics["kl"]) > 0 and float(with_kl) == pytest.approx(float(without) + 0.5 * float(metrics["kl"]))
    at_ref = dataclasses.replace(batch, old_logprobs=batch.ref_logprobs)
    _, metrics = grpo.loss(batch.ref_logprobs, None, at_ref, grpo.advantages(at_ref, cfg), cfg)
    assert float(metrics["kl"]) == 0.0


# ----------------------------------------------------------------------------- RLOO


def test_rloo_baseline_leaves_each_response_out():
    adv = rloo.leave_one_out(torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 4.0, 0.0, 4.0], dtype=F64), 4)
    assert adv[:4].tolist() == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 3 - 3, 6 - 2])
    assert adv[4:].tolist() == pytest.approx([-8 / 3, 8 / 3, -8 / 3, 8 / 3])
    assert float(adv[:4].sum()) == pytest.approx(0.0, abs=1e-12)  # a group's advantages sum to 0


def test_rloo_kl_penalty_is_summed_over_the_real_tokens_into_the_reward():
    batch = batch_of(right_mask([3, 1, 2, 3], 3), seed=12, values=False)
    adv = rloo.advantages(batch, rloo.RLOOConfig(group_size=2, kl_coef=0.5))
    k1 = (batch.old_logprobs - batch.ref_logprobs).sum(1)
    torch.testing.assert_close(adv.rewards, batch.scores - 0.5 * k1)


# ----------------------------------------------------------------------------- DPO and IPO


def pair(chosen: list[float], rejected: list[float]):
    c, r = torch.tensor([chosen], dtype=F64), torch.tensor([rejected], dtype=F64)
    return c, r, torch.zeros_like(c), torch.zeros_like(r), torch.ones_like(c, dtype=torch.bool), \
        torch.ones_like(r, dtype=torch.bool)


def test_dpo_at_equal_logratios_is_log_2_and_its_gradient_favours_the_chosen():
    c, r, rc, rr, mc, mr = pair([-1.0, -2.0], [-1.5, -1.5])
    c.requires_grad_(), r.requires_grad_()
    loss, metrics = dpo.dpo_loss(c, r, rc, rr, mc, mr, dpo.DPOConfig(beta=0.1))
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    assert bool((c.grad < 0).all()) and bool((r.grad > 0).all())  # descent raises chosen, lowers rejected
    assert float(metrics["reward_accuracy"]) == 0.0  # a tie is not a win


def test_cdpo_label_smoothing_bounds_how_far_the_margin_is_pushed():
    """With eps > 0 the loss has a minimum at beta h = log((1 - eps) / eps): no more pushing."""
    eps, beta = 0.1, 0.5
    h_star = math.log((1 - eps) / eps) / beta
    c, r, rc, rr, mc, mr = pair([h_star], [0.0])
    c.requires_grad_()
    loss, _ = dpo.dpo_loss(c, r, rc, rr, mc, mr, dpo.DPOConfig(beta=beta, label_smoothing=eps))
    loss.backward()
    assert float(c.grad) == pytest.approx(0.0, abs=1e-12)


def test_ipo_is_zero_at_its_target_margin_and_length_normalised():
    beta = 0.25
    c, r, rc, rr, mc, mr = pair([1 / (2 * beta), 1 / (2 * beta)], [0.0, 0.0])
    assert float(dpo.dpo_loss(c, r, rc, rr, mc, mr, dpo.DPOConfig(beta=beta, loss_type="ipo"))[0]) == 0.0
    short = pair([0.3], [-0.2])
    long = pair([0.3] * 4, [-0.2] * 4)  # the same per-token log-ratios, four times as many tokens
    ipo, sigmoid = dpo.DPOConfig(beta=beta, loss_type="ipo"), dpo.DPOConfig(beta=beta)
    assert dpo.dpo_loss(*short, ipo)[0] == pytest.approx(float(dpo.dpo_loss(*long, ipo)[0]))
    assert float(dpo.dpo_loss(*short, sigmoid)[0]) != pytest.approx(float(dpo.dpo_loss(*long, sigmoid)[0]))


def test_dpo_ignores_prompt_and_padding_positions():
    c, r, rc, rr, mc, mr = pair([-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0])
    mc[0, 0] = mr[0, 2] = False
    garbage = c.clone()
    garbage[0, 0] = 1e3
    cfg = dpo.DPOConfig(beta=0.2)
    assert dpo.dpo_loss(garbage, r, rc, rr, mc, mr, cfg)[0] == dpo.dpo_loss(c, r, rc, rr, mc, mr, cfg)[0]


# ----------------------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_with_p_one_half_and_equal_rewards_has_zero_gradient():
    r1 = torch.tensor([0.7, -1.0], dtype=F64, requires_grad=True)
    r2 = torch.tensor([0.7, -1.0], dtype=F64, requires_grad=True)
    loss, _ = reward.bradley_terry_loss(r1, r2, p=0.5)
    loss.backward()
    assert r1.grad.tolist() == [0.0, 0.0] and r2.grad.tolist() == [0.0, 0.0]
    assert loss.item() == pytest.approx(math.log(2))


def test_bradley_terry_soft_labels():
    r1 = torch.tensor([2.0], dtype=F64, requires_grad=True)
    r2 = torch.tensor([0.0], dtype=F64)
    loss, _ = reward.bradley_terry_loss(r1, r2, p=0.5)
    loss.backward()
    assert float(r1.grad) > 0  # a judge unsure which is better pulls a confident gap back toward 0
    r1, p = r1.detach(), torch.tensor([0.8], dtype=F64)
    d = 2.0
    want = -(0.8 * math.log(1 / (1 + math.exp(-d))) + 0.2 * math.log(1 / (1 + math.exp(d))))
    assert float(reward.bradley_terry_loss(r1, r2, p)[0]) == pytest.approx(want)
    assert reward.bradley_terry_loss(r1, r2, p)[0] == reward.bradley_terry_loss(r2, r1, 1 - p)[0]  # order-free
    hard = reward.bradley_terry_loss(r1, r2, margin=0.5)[0]
    assert float(hard) == pytest.approx(math.log(1 + math.exp(-(d - 0.5))))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        reward.bradley_terry_loss(r1, r2, p=1.5)


def test_pair_accuracy_follows_the_label_and_skips_undecided_pairs():
    r1 = torch.tensor([1.0, 1.0, 0.0, 2.0, 3.0])
    r2 = torch.tensor([0.0, 2.0, 1.0, 2.0, 0.0])
    p = torch.tensor([0.9, 0.9, 0.2, 0.7, 0.5])  # right, wrong, right, tie (wrong), undecided
    assert float(reward.pair_accuracy(r1, r2, p)) == pytest.approx(2 / 4)
    assert math.isnan(float(reward.pair_accuracy(r1, r2, 0.5)))


# ----------------------------------------------------------------------------- dtypes and checks up front


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_give_float32_results_close_to_float64(dtype):
    mask = right_mask([6, 3, 5, 2, 6, 4, 1, 5], 6)
    exact = batch_of(mask, seed=13)
    low = batch_of(mask, seed=13, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 0.1
    for kind, cfg in [("ppo", ppo.PPOConfig()), ("grpo", grpo.GRPOConfig(group_size=4)),
                      ("rloo", rloo.RLOOConfig(group_size=4))]:
        a_low, a_exact = ALGORITHMS[kind].advantages(low, cfg), ALGORITHMS[kind].advantages(exact, cfg)
        assert a_low.per_token.dtype == torch.float32, kind
        torch.testing.assert_close(a_low.per_token.double(), a_exact.per_token, atol=tol, rtol=tol)
        values = low.values if kind == "ppo" else None
        loss, metrics = ALGORITHMS[kind].loss(low.old_logprobs, values, low, a_low, cfg)
        assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in metrics.values())


def test_a_malformed_rollout_batch_lists_every_problem():
    good = batch_of(right_mask([2, 2], 2))
    with pytest.raises(ValueError) as err:
        dataclasses.replace(good, response_mask=good.response_mask.long(), scores=torch.zeros(3),
                            values=torch.zeros(2, 5))
    text = str(err.value)
    assert "values has shape (2, 5)" in text and "response_mask must be bool" in text and "scores must be (B,)" in text


def test_configs_refuse_values_that_cannot_work():
    with pytest.raises(ValueError, match="clip must be in"):
        ppo.PPOConfig(clip=1.5)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        grpo.GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match="max_completion_length must be set"):
        grpo.GRPOConfig(aggregation="dr_grpo")
    with pytest.raises(ValueError, match="0 for ipo"):
        dpo.DPOConfig(loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="leave-one-out"):
        rloo.RLOOConfig(group_size=1)


def test_a_kl_term_without_reference_logprobs_is_refused():
    batch = dataclasses.replace(batch_of(right_mask([2, 2], 2)), ref_logprobs=None)
    with pytest.raises(ValueError, match="ref_logprobs"):
        ppo.advantages(batch, ppo.PPOConfig(kl_coef=0.1))
    assert ppo.advantages(batch, ppo.PPOConfig(kl_coef=0.0)).per_token.shape == (2, 2)

"""RL and feedback stages on several processes (DDP, 2 gloo processes on the CPU): each rank
samples and scores its share of a step's prompt groups; the logged reward, KL and lengths are
those of the global batch, each rank's loss is its share of the global mean, the replicas stay
identical after every update, a rank SIGKILLed mid-stage resumes to the uninterrupted weights,
and a world size the rollouts do not split over is a located error before anything runs."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch

from lmspec.diagnostics import LmspecError
from lmspec.runtime import distributed
from lmspec.runtime.api import open_run, run
from lmspec.runtime.errors import RunError
from lmspec.runtime.progress import Progress
from run_support import cli as run_cli
from run_support import env
from conftest import gloo_group, spawn


# `long` scores a response by its length in characters: a reward that varies within a group
SPEC = """lmspec 1
tokenizer tok { kind: bytes }
data stories { source: builtin("tiny-stories") }
model gpt { vocab: tok.vocab_size, context: 48, layers: 1, d_model: 32, heads: 2 }
train pre { model: gpt, objective: clm, data: stories, steps: 2, batch: 4, seq_len: 32, samples: 0 }
judge long { score: length }
feedback prefs { policy: gpt from pre, prompts: stories.prefixes(tokens: 8, count: 7), samples: 3,
                 max_new_tokens: 6, batch: 4, judge: long, debias: swap }
rl align {
  policy: gpt from pre
  reward: long
  algorithm: grpo(group: 4)
  rollouts { prompts: stories.prefixes(tokens: 8, count: 40), per_step: 16, max_new_tokens: 10 }
  minibatch: 8
  steps: 4, eval_prompts: 4, log_every: 1, checkpoint_every: 2, optimizer: adamw(lr: 3e-3), samples: 1
}
"""

# one update per step (its forward pass reused), sequence-level loss: the other path
SINGLE_UPDATE = """rl single {
  policy: gpt from pre
  reward: long
  algorithm: rloo(k: 2)
  rollouts { prompts: stories.prefixes(tokens: 8, count: 40), per_step: 8, max_new_tokens: 8 }
  steps: 2, eval_prompts: 4, log_every: 1, optimizer: adamw(lr: 3e-3), samples: 0
}
"""


def _env(project: Path, **extra) -> dict:
    return env(project, **{"OMP_NUM_THREADS": "1", **extra})


def cli(project: Path, *args, **extra):
    return run_cli(project, *args, timeout=300, **{"OMP_NUM_THREADS": "1", **extra})


def _digest(model: torch.nn.Module) -> str:
    return hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())).hexdigest()


def _worker(rank: int, project: str) -> None:
    """One of two ranks of `lmspec run` in this process group, recording what its rank saw:
    every rollout batch, every update's share of the loss, the weights after every update."""

    from lmspec.runtime.rl.grpo import GRPO
    from lmspec.runtime.rl.rloo import RLOO
    from lmspec.runtime.stages.rl import RLStage

    torch.set_num_threads(1)  # as the launcher gives each of 2 workers on 2 cores (OMP_NUM_THREADS=1 above)
    os.environ["LMSPEC_CACHE"] = str(Path(project) / "cache")
    os.chdir(project)
    seen: dict[str, list] = {"batches": [], "updates": [], "weights": []}

    def recording(real):
        def advantages(batch, cfg, *, reduce=None):
            kl = ((batch.old_logprobs - batch.ref_logprobs) * batch.response_mask).sum(dim=1)
            seen["batches"].append({"scores": batch.scores.tolist(), "kl": kl.tolist(),
                                    "tokens": int(batch.response_mask.sum())})
            return real(batch, cfg, reduce=reduce)
        return staticmethod(advantages)

    GRPO.advantages, RLOO.advantages = recording(GRPO.advantages), recording(RLOO.advantages)
    update, apply = RLStage._update, RLStage._apply

    def recorded_update(self, batch, adv, full, mask, positions, idx, share, *, live=None):
        seen["updates"].append({"stage": self.name, "share": share, "tokens": int(batch.response_mask[idx].sum())})
        return update(self, batch, adv, full, mask, positions, idx, share, live=live)

    def recorded_apply(self, loss, metrics):
        out = apply(self, loss, metrics)
        seen["weights"].append([self.name, _digest(self.policy)])
        return out

    RLStage._update, RLStage._apply = recorded_update, recorded_apply
    with gloo_group(rank, f"{project}/rendezvous"):
        try:
            run("spec.lmspec", out="spawned", progress=Progress(quiet=True))
        finally:
            Path(project, f"rank-{rank}.json").write_text(json.dumps(seen))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    path = tmp_path_factory.mktemp("rl-ddp")
    (path / "spec.lmspec").write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def spawned(project):
    """The spec (plus a single-update rloo stage) run by 2 ranks in a process group of this
    test's own: the run directory, and what each rank recorded."""
    (project / "spec.lmspec").write_text(SPEC + SINGLE_UPDATE)
    try:
        spawn(_worker, str(project))
    finally:
        (project / "spec.lmspec").write_text(SPEC)
    ranks = [json.loads((project / f"rank-{r}.json").read_text()) for r in range(2)]
    return open_run(project / "spawned"), ranks


@pytest.fixture(scope="module")
def killed(project):
    """`lmspec run --nproc 2` whose rank 1 was SIGKILLed right after step 3 of align (checkpoint at 2)."""
    out = project / "killed"
    done = cli(project, "run", "spec.lmspec", "--nproc", "2", "--out", str(out), "--plain",
               LMSPEC_KILL_AT_STEP="align:3", LMSPEC_KILL_RANK="1")
    return out, done


def _std(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


# ----------------------------------------------------------------------------- the global batch


def test_the_logged_figures_are_those_of_every_rank_s_rollouts(spawned):
    r, ranks = spawned
    metrics = r.metrics("align")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and r.status("align")["world_size"] == 2
    shares = [[b for b in rank["batches"][:4]] for rank in ranks]  # align's 4 steps come first
    assert all(len(b["scores"]) == 8 for rank in shares for b in rank)  # 16 rollouts, 8 a rank
    apart = 0.0
    for m, mine, theirs in zip(metrics, *shares):
        scores, kl = mine["scores"] + theirs["scores"], mine["kl"] + theirs["kl"]
        assert m["reward"] == pytest.approx(sum(scores) / 16, abs=1e-9)
        assert m["reward_std"] == pytest.approx(_std(scores), abs=1e-9)
        assert m["kl"] == pytest.approx(sum(kl) / 16, abs=1e-9)
        assert m["response_length"] == pytest.approx((mine["tokens"] + theirs["tokens"]) / 16, abs=1e-12)
        apart = max(apart, abs(sum(mine["scores"]) / 8 - m["reward"]), abs(_std(mine["scores"]) - m["reward_std"]))
    assert apart > 0.1  # rank 0's own figures are not the ones logged
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6) and abs(metrics[-1]["kl"]) > 1e-4  # the policy moved
    # tokens count both ranks' rollouts; rank 0 alone wrote the samples of the one evaluation
    assert metrics[-1]["tokens"] == sum(a["tokens"] + b["tokens"] for a, b in zip(*shares))
    assert [s["step"] for s in r.samples("align")] == [4] and "eval_reward" in metrics[-1]


def test_each_rank_s_loss_is_its_share_of_the_global_mean(spawned):
    """token_mean (align): a rank's share of an update is its real tokens over both ranks';
    rloo's sequence mean (single): its responses over both ranks', one half."""
    _, ranks = spawned
    mine, theirs = ranks[0]["updates"], ranks[1]["updates"]
    assert [u["stage"] for u in mine] == ["align"] * 8 + ["single"] * 2  # 4 steps x 2 minibatches; 2 x 1
    for a, b in zip(mine, theirs):
        if a["stage"] == "align":
            assert a["share"] == pytest.approx(a["tokens"] / (a["tokens"] + b["tokens"]), abs=1e-12)
        else:
            assert a["share"] == b["share"] == 0.5
        assert a["share"] + b["share"] == pytest.approx(1.0, abs=1e-12)


def test_the_replicas_stay_identical_after_every_update(spawned):
    r, ranks = spawned
    assert ranks[0]["weights"] == ranks[1]["weights"]
    digests = [d for _, d in ranks[0]["weights"]]
    assert len(digests) == 10 and len(set(digests)) == 10  # every update moved the weights
    from safetensors.torch import load_file

    from lmspec.runtime.checkpoint import load_model_state

    final = load_file(str(r.path / "stages" / "align" / "final" / "model.safetensors"))
    model = r.model("pre")
    load_model_state(model, final, "align's final weights")
    assert _digest(model) == ranks[0]["weights"][7][1]  # what rank 0 wrote is the last update's replica


def test_feedback_splits_its_prompts_and_rank_0_judges_every_pair_once(spawned):
    r, _ = spawned
    prefs = [json.loads(x) for x in (r.path / "stages" / "prefs" / "final" / "preferences.jsonl").read_text()
             .splitlines()]
    assert [p["prompt_index"] for p in prefs] == [n for n in range(7) for _ in range(3)]  # 3 pairs a prompt
    cache = [json.loads(x) for x in (r.path / "judgments" / "long.jsonl").read_text().splitlines()]
    keys = [c["key"] for c in cache]
    assert len(keys) == len(set(keys))  # one writer: no judgment asked twice, no torn line
    texts = {(p["prompt"], x) for p in prefs for x in (p["a"], p["b"])}
    assert len(texts) <= len(keys)


def _twice(t: torch.Tensor) -> torch.Tensor:
    """The all-reduce of two ranks that hold the same share of the batch."""
    return t * 2


@pytest.mark.parametrize("whiten_rewards", [False, True])
def test_ppo_whitens_over_the_tokens_of_every_rank(whiten_rewards):
    """Two ranks holding the same 4 rollouts whiten as one process whitens the 8 together (not
    as each would alone: the Bessel correction counts every rank's tokens)."""
    from lmspec.runtime.rl import PPOConfig, RolloutBatch, ppo

    g = torch.Generator().manual_seed(0)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:], mask[3, 2:] = False, False
    share = RolloutBatch(torch.ones(4, 2, dtype=torch.long), torch.ones(4, 2, dtype=torch.bool),
                         torch.ones(4, 6, dtype=torch.long), mask, torch.randn(4, 6, generator=g) * mask,
                         torch.randn(4, generator=g), ref_logprobs=torch.randn(4, 6, generator=g) * mask,
                         values=torch.randn(4, 6, generator=g))
    both = RolloutBatch(*(torch.cat([getattr(share, f)] * 2) for f in ("query_tokens", "query_mask",
                                                                         "response_tokens", "response_mask",
                                                                         "old_logprobs", "scores")),
                        ref_logprobs=torch.cat([share.ref_logprobs] * 2), values=torch.cat([share.values] * 2))
    cfg = PPOConfig(whiten_rewards=whiten_rewards)
    ranked, whole, alone = ppo.advantages(share, cfg, reduce=_twice), ppo.advantages(both, cfg), \
        ppo.advantages(share, cfg)
    assert torch.allclose(ranked.per_token, whole.per_token[:4], atol=1e-6)
    assert torch.allclose(ranked.returns, whole.returns[:4], atol=1e-6)
    assert (ranked.per_token - alone.per_token).abs().max() > 1e-3


def test_the_batch_statistics_of_grpo_and_rloo_are_global_too():
    from lmspec.runtime.rl import RLOOConfig, RolloutBatch, rloo
    from lmspec.runtime.rl.grpo import group_advantages

    scores = torch.tensor([1.0, 2.0, 4.0, float("nan"), 0.5, 3.0, 2.0, 1.0])
    ranked, _ = group_advantages(scores, 4, "batch", reduce=_twice)
    whole, _ = group_advantages(torch.cat([scores, scores]), 4, "batch")
    assert torch.allclose(ranked, whole[:8], atol=1e-6)
    mask = torch.ones(8, 3, dtype=torch.bool)
    batch = RolloutBatch(torch.ones(8, 1, dtype=torch.long), mask[:, :1], torch.ones(8, 3, dtype=torch.long), mask,
                         torch.zeros(8, 3), scores, ref_logprobs=torch.zeros(8, 3))
    both = RolloutBatch(*(torch.cat([x, x]) for x in (batch.query_tokens, batch.query_mask, batch.response_tokens,
                                                      mask, batch.old_logprobs, scores)),
                        ref_logprobs=torch.zeros(16, 3))
    cfg = RLOOConfig(group_size=4, normalize_advantages=True)
    assert torch.allclose(rloo.advantages(batch, cfg, reduce=_twice).per_sequence,
                          rloo.advantages(both, cfg).per_sequence[:8], atol=1e-6)


# ----------------------------------------------------------------------------- kill and resume


def test_a_killed_rank_resumes_to_the_uninterrupted_weights(project, killed, spawned):
    out, done = killed
    assert done.returncode == 1 and "rank 1 of 2 was killed by SIGKILL" in done.stderr, done.stderr
    assert (out / "stages" / "align" / "checkpoints" / "step-0000002").is_dir()
    assert not (out / "stages" / "align" / "final").exists()
    policy = open_run(out).model("align")  # an unfinished rl stage's policy, from its checkpoint
    assert sum(p.numel() for p in policy.parameters()) > 0
    resumed = cli(project, "run", "--resume", str(out), "--nproc", "2", "--plain")
    assert resumed.returncode == 0, resumed.stderr
    assert "stage align: resuming from checkpoint step-0000002" in resumed.stdout
    weights = "stages/align/final/model.safetensors"
    assert (out / weights).read_bytes() == (spawned[0].path / weights).read_bytes()  # bit for bit

    def same(metrics):  # everything but the wall-clock rate
        return [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in metrics]

    assert same(open_run(out).metrics("align")) == same(spawned[0].metrics("align"))
    assert open_run(out).manifest["world_sizes"] == [2, 2]


# ----------------------------------------------------------------------------- said before anything runs


def test_rollouts_that_do_not_split_over_the_world_are_located_errors(project, monkeypatch):
    monkeypatch.setenv("LMSPEC_CACHE", str(project / "cache"))
    monkeypatch.chdir(project)
    with pytest.raises(LmspecError) as err:
        run("spec.lmspec", nproc=3, out="never", progress=Progress(quiet=True))
    batch, groups, minibatch = err.value.diagnostics  # the train stage's batch is LMS089 too
    assert "batch (4) of stage 'pre'" in batch.message
    assert groups.code == minibatch.code == "LMS089"
    assert (groups.span.line, groups.span.col) == (13, 73)
    assert groups.message == ("per_step (16) of stage 'align' does not split over 3 processes: 16 rollouts are 4 "
                              "prompts x grpo's group (4), and the samples of one prompt never split across processes")
    assert groups.help.startswith("use per_step: 12 or per_step: 24 (a multiple of 4 x 3), or run with "
                                  "--nproc 1, 2, 4;")
    assert (minibatch.span.line, minibatch.span.col) == (14, 14)
    assert minibatch.message == ("minibatch (8) of stage 'align' does not split over 3 processes: every update takes "
                                 "minibatch / 3 rollouts on each process")
    assert minibatch.help.startswith("run with --nproc 1, 2, 4;")  # no multiple of 3 divides per_step
    assert not (project / "never").exists()


def test_the_stage_says_it_too_when_no_check_saw_the_world_size():
    from lmspec.compiler.api import check_text

    spec = check_text(SPEC, "spec.lmspec").spec.blocks["align"]
    assert distributed.split_rollouts("align", spec, 2) == (8, 4)
    assert distributed.split_rollouts("align", spec, 4) == (4, 2)
    with pytest.raises(RunError, match=r"per_step \(16\) of stage 'align' does not split over 8 processes") as err:
        distributed.split_rollouts("align", spec, 8)
    assert "run with --nproc 1, 2, 4" in err.value.help

    # 3 prompt groups do not split over 2 processes; a per_step that does keeps minibatch (6) dividing it
    odd = check_text(SPEC.replace("per_step: 16", "per_step: 12").replace("minibatch: 8", "minibatch: 6"),
                     "spec.lmspec").spec.blocks["align"]
    with pytest.raises(RunError) as err:
        distributed.split_rollouts("align", odd, 2)
    assert err.value.help.startswith("use per_step: 24 (a multiple of 4 x 2 and of minibatch (6)), or run with "
                                     "--nproc 1, 3;")

"""RL from AI feedback end to end on tiny models: a judge trained in the spec labels the policy's
samples (feedback), a reward model learns the labels (bradley_terry), PPO / GRPO / RLOO optimise
the policy against it or against the judge directly; resume after SIGKILL, mid-collection and
mid-rl; the clear errors (NaN reward, KL explosion, a reward model at chance)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest
import torch

from lmspec.runtime.api import resume, run
from lmspec.runtime.errors import RunError
from lmspec.runtime.progress import Progress

ROOT = Path(__file__).resolve().parent.parent

BASE = """lmspec 1
tokenizer tok { kind: bytes }
data stories { source: builtin("tiny-stories"), validation: 2% }
data reviews { source: builtin("tiny-reviews"), label: "sentiment" }
model gpt { vocab: tok.vocab_size, context: 64, layers: 1, d_model: 32, heads: 2 }
train pretrain { model: gpt, objective: clm, data: stories, steps: 4, batch: 4, seq_len: 32, samples: 0 }
model critic { arch: encoder, vocab: tok.vocab_size, context: 128, layers: 1, d_model: 32, heads: 2,
               head: classifier(classes: 2) }
train judge_fit { model: critic, objective: classify(label: "sentiment"), data: reviews, steps: 4, batch: 4 }
judge sentiment { model: critic from judge_fit, score: probability(class: 1) }
feedback prefs {
  policy: gpt from pretrain
  prompts: stories.prefixes(tokens: 8, count: 12)
  samples: 3, max_new_tokens: 12, batch: 5, validation: 25%
  judge: sentiment
  debias: swap
}
train reward { model: gpt with head scalar, init: pretrain, objective: bradley_terry, data: prefs, steps: 3,
               batch: 4, samples: 0 }
"""

PPO = """rl align {
  policy: gpt from pretrain
  reward: REWARD
  algorithm: ALGORITHM
  rollouts { prompts: stories.prefixes(tokens: 8, count: 40), per_step: 8, max_new_tokens: 12 }
  MINIBATCH
  steps: 3, eval_prompts: 4, log_every: 1, checkpoint_every: 1, optimizer: adamw(lr: 1e-3), eval_judges: [sentiment]
}
"""


def rl_block(algorithm="ppo(epochs: 2)", reward="reward", minibatch="minibatch: 4"):
    return PPO.replace("ALGORITHM", algorithm).replace("REWARD", reward).replace("MINIBATCH", minibatch)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSPEC_CACHE", str(tmp_path.parent / "rlaif-cache"))  # built-in data tokenised once

    def write(text: str) -> Path:
        (tmp_path / "spec.lmspec").write_text(text)
        return tmp_path / "spec.lmspec"

    return write


def go(spec: Path, out: Path, **kwargs):
    return run(spec, out=out, progress=Progress(quiet=True), **kwargs)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- feedback


def test_feedback_labels_every_pair_and_caches_each_judgment_once(project, tmp_path):
    r = go(project(BASE.split("train reward")[0]), tmp_path / "run")
    prefs = lines(r.path / "stages" / "prefs" / "final" / "preferences.jsonl")
    assert len(prefs) == 12 * len(list(combinations(range(3), 2)))  # every pair of every prompt's samples
    assert {p["split"] for p in prefs} == {"train", "validation"}
    assert sum(p["split"] == "validation" for p in prefs) == 3 * 3  # the last 25% of 12 prompts, 3 pairs each
    for p in prefs:
        assert 0 <= p["p"] <= 1 and p["judge"] == "sentiment"
        # a pointwise judge has no position bias: both orders agree exactly, and the label is
        # sigmoid of the score difference (the Bradley-Terry link)
        assert p["p_ab"] == pytest.approx(1 - p["p_ba"], abs=1e-12)
        assert p["p"] == pytest.approx(torch.sigmoid(torch.tensor(p["scores"][0] - p["scores"][1],
                                                                  dtype=torch.float64)).item(), abs=1e-12)
    texts = {(p["prompt"], x) for p in prefs for x in (p["a"], p["b"])}
    assert len(lines(r.path / "judgments" / "sentiment.jsonl")) == len(texts)  # one judgment per text
    agreement = json.loads((r.path / "stages" / "prefs" / "final" / "agreement.json").read_text())
    assert agreement["pairs"] == len(prefs) and agreement["swap_consistency"] == 1.0
    assert sum(agreement["histogram"].values()) == len(prefs)
    step = r.metrics("prefs")[0]
    assert step["pairs"] == 5 * 3 and 0 <= step["judge_positive"] <= 1


def _env(extra: dict) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def test_a_collection_killed_mid_way_resumes_to_the_same_preference_set(project, tmp_path):
    spec = project(BASE.split("train reward")[0])
    whole = go(spec, tmp_path / "whole")
    env = _env({"LMSPEC_KILL_AT_STEP": "prefs:2", "LMSPEC_CACHE": os.environ["LMSPEC_CACHE"]})
    killed = subprocess.run([sys.executable, "-m", "lmspec", "run", str(spec), "--out", str(tmp_path / "cut"),
                             "--plain"], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    asked = len(lines(tmp_path / "cut" / "judgments" / "sentiment.jsonl"))
    done = resume(tmp_path / "cut", progress=Progress(quiet=True))
    final = "stages/prefs/final/preferences.jsonl"
    assert (done.path / final).read_text() == (whole.path / final).read_text()
    after = len(lines(done.path / "judgments" / "sentiment.jsonl"))
    assert after == len(lines(whole.path / "judgments" / "sentiment.jsonl"))  # nothing judged twice
    assert asked < after  # ... and the first session's judgments were kept


# ----------------------------------------------------------------------------- reward model


def test_the_reward_model_learns_from_the_pairs_and_reports_pair_accuracy(project, tmp_path):
    r = go(project(BASE), tmp_path / "run")
    last = r.metrics("reward")[-1]
    assert {"loss", "eval_loss", "accuracy"} <= last.keys() and 0 <= last["accuracy"] <= 1
    assert r.status("reward")["status"] == "finished"
    assert r.model("reward").score is not None  # the scalar head the rl stage reads


def test_a_reward_model_at_chance_stops_the_loop(project, tmp_path):
    text = BASE.replace("count: 12)", "count: 40)").replace("validation: 25%", "validation: 50%")
    text = text.replace("objective: bradley_terry, data: prefs, steps: 3,",
                        "objective: bradley_terry, data: prefs, steps: 1, optimizer: sgd(lr: 1e-9), "
                        "eval_batches: 15,")  # 15 x 4 pairs: every one of the 60 held out
    with pytest.raises(RunError, match=r"reward model 'reward' is at chance: held-out pair accuracy 0\.\d+ on 60 pairs"):
        go(project(text + rl_block()), tmp_path / "run")


# ----------------------------------------------------------------------------- rl


@pytest.mark.parametrize("algorithm, reward", [("ppo(epochs: 2)", "reward"), ("grpo(group: 4)", "reward"),
                                               ("rloo(k: 4)", "reward"), ("ppo(epochs: 1)", "sentiment")])
def test_each_algorithm_runs_and_logs_the_documented_metrics(project, tmp_path, algorithm, reward):
    r = go(project(BASE + rl_block(algorithm, reward)), tmp_path / "run")
    m = r.metrics("align")
    assert [x["step"] for x in m] == [1, 2, 3]
    assert {"reward", "reward_std", "kl", "entropy", "response_length", "clip_fraction", "approx_kl", "loss",
            "tokens"} <= m[0].keys()
    if algorithm.startswith("ppo"):
        assert "value_loss" in m[0]
    assert {"eval_reward", "before_eval_reward"} <= m[-1].keys()
    assert m[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as its reference
    assert r.samples("align") and "reward" in r.samples("align")[0]
    assert r.status("align")["status"] == "finished"
    assert 0 <= m[-1]["eval_sentiment_share"] <= 1 and "before_eval_sentiment_share" in m[-1]


def test_the_summary_shows_before_and_after_and_the_reward_and_kl_plot(project, tmp_path):
    import io

    from lmspec.runtime.progress import render_summary

    r = go(project(BASE + rl_block()), tmp_path / "run")
    out = io.StringIO()
    render_summary(r, out, live=False)
    text = out.getvalue()
    last = r.metrics("align")[-1]
    assert "align: before and after, on held-out prompts" in text
    share = f"{100 * last['before_eval_sentiment_share']:.1f}%"
    assert any(line.split()[:5] == ["sentiment:", "share", "judged", "positive", share] for line in text.splitlines())
    assert (r.path / "stages" / "align" / "rl.png").stat().st_size > 1000 and "rl.png" in text
    # the judge's agreement statistics of the feedback stage (also what `lmspec show` prints)
    assert "prefs: 36 pairs; mean label " in text and "  labels  0.0-0.1: " in text
    assert "both orders agree on the winner: 100.0%; position bias +0.000" in text


def test_until_prompts_end_with_their_marker(project, tmp_path):
    text = BASE.split("train reward")[0].replace("stories.prefixes(tokens: 8, count: 12)",
                                                 'stories.until("In the end,", tokens: 40, count: 6)')
    r = go(project(text), tmp_path / "run")
    prompts = {p["prompt"] for p in lines(r.path / "stages" / "prefs" / "final" / "preferences.jsonl")}
    assert len(prompts) == 6
    assert all(p.endswith("In the end,") and len(p.encode()) <= 40 for p in prompts)


def test_the_importance_ratio_of_the_first_update_is_exactly_one(project, tmp_path, monkeypatch):
    """The rollout's log-probs (no gradients, before any update) and the first update's (with
    gradients) are the same function of the same weights at the sampling temperature, 0.7 here:
    their ratio is exactly 1 (TRL #4159 found ~2 at temperature != 1)."""
    from lmspec.runtime.stages.rl import RLStage

    firsts = []
    real = RLStage._apply

    def record(self, loss, metrics):
        if not getattr(self, "_seen", False):
            self._seen = True
            firsts.append({k: float(v) for k, v in metrics.items()})
        return real(self, loss, metrics)

    monkeypatch.setattr(RLStage, "_apply", record)
    text = BASE + rl_block("ppo(epochs: 2)", minibatch="").replace("max_new_tokens: 12 }",
                                                                    "max_new_tokens: 12, temperature: 0.7 }")
    go(project(text), tmp_path / "run")
    assert firsts[0]["ratio"] == pytest.approx(1.0, abs=1e-6) and firsts[0]["clip_fraction"] == 0.0
    assert firsts[0]["approx_kl"] == pytest.approx(0.0, abs=1e-9)


def test_a_single_update_per_step_reuses_its_forward_pass(project, tmp_path):
    """epochs 1 without minibatches: the update's own log-probs stand in for the rollout's (one
    forward pass fewer, as TRL's GRPO); the ratio is 1 (nothing clipped, no approximate KL) and
    the policy still learns."""
    r = go(project(BASE + rl_block("grpo(group: 4)", minibatch="")), tmp_path / "run")
    m = r.metrics("align")
    assert all(x["approx_kl"] == pytest.approx(0.0, abs=1e-9) and x["clip_fraction"] == 0.0 for x in m)
    assert m[-1]["kl"] > 0  # the updates moved the policy away from its reference


def test_an_rl_stage_killed_mid_way_resumes_bit_identically(project, tmp_path):
    spec = project(BASE + rl_block())
    whole = go(spec, tmp_path / "whole")
    env = _env({"LMSPEC_KILL_AT_STEP": "align:2", "LMSPEC_CACHE": os.environ["LMSPEC_CACHE"]})
    killed = subprocess.run([sys.executable, "-m", "lmspec", "run", str(spec), "--out", str(tmp_path / "cut"),
                             "--plain"], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    done = resume(tmp_path / "cut", progress=Progress(quiet=True))
    weights = "stages/align/final/model.safetensors"
    assert (done.path / weights).read_bytes() == (whole.path / weights).read_bytes()
    def same(metrics):  # everything but the wall-clock rate
        return [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in metrics]

    assert same(done.metrics("align")) == same(whole.metrics("align"))


def test_a_non_finite_reward_stops_with_stage_and_step(project, tmp_path, monkeypatch):
    from lmspec.runtime.judges.model import ModelJudge

    spec = project(BASE + rl_block())
    real = ModelJudge.score

    def nan_for_rl(self, prompts, responses):
        out = real(self, prompts, responses)
        return out * float("nan") if self.name == "reward" else out

    monkeypatch.setattr(ModelJudge, "score", nan_for_rl)
    with pytest.raises(RunError, match=r"stage 'align', step 1: the reward 'reward' is not finite for 8 of 8"):
        go(spec, tmp_path / "run")


def test_an_exploding_kl_stops_and_keeps_the_last_good_checkpoint(project, tmp_path, monkeypatch):
    from lmspec.runtime.stages import rl

    monkeypatch.setattr(rl, "KL_LIMIT", 1e-12)  # any update moves the policy past it
    with pytest.raises(RunError, match=r"stage 'align', step 2: the KL to the reference exploded") as err:
        go(project(BASE + rl_block()), tmp_path / "run")
    assert "--resume" in err.value.help
    assert (tmp_path / "run" / "stages" / "align" / "checkpoints" / "step-0000001").is_dir()
    assert json.loads((tmp_path / "run" / "stages" / "align" / "status.json").read_text())["status"] == "failed"


# ----------------------------------------------------------------------------- dpo


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_the_dpo_objective_is_the_checked_dpo_loss(loss):
    """With hard labels (p = 1) the objective's summed loss is B times rl.dpo.dpo_loss (which
    tests/test_rl_vs_trl.py compares with TRL); prompt tokens and padding never count."""
    from lmspec.compiler.schema import DPO as DPOSpec
    from lmspec.runtime.objectives import Context
    from lmspec.runtime.objectives.dpo import DPO
    from lmspec.runtime.rl import DPOConfig, dpo_loss

    g = torch.Generator().manual_seed(0)
    obj = DPO(DPOSpec(beta=0.2, loss=loss), Context(seq_len=32, vocab_size=11, specials={"pad": 0}))
    examples = [{"prompt": torch.randint(1, 11, (n,), generator=g), "a": torch.randint(1, 11, (m,), generator=g),
                 "b": torch.randint(1, 11, (k,), generator=g), "p": 1.0} for n, m, k in [(3, 4, 6), (5, 2, 3)]]
    batch = obj.build(examples, g)
    logits, ref_logits = torch.randn(4, batch["input_ids"].shape[1], 11, generator=g), torch.randn(4, 1, 11)
    ref_logits = ref_logits.expand_as(logits)
    batch["ref_logprobs"] = obj.token_logprobs(ref_logits, batch)

    class Out:
        pass

    out = Out()
    out.logits = logits
    ours = obj.loss(out, batch)

    B = 2
    pol, ref = obj.token_logprobs(logits, batch), batch["ref_logprobs"]
    mask = batch["response_targets"]
    assert mask.sum(dim=1).tolist() == [4, 2, 6, 3]  # the response tokens of a rows, then of b rows
    theirs, _ = dpo_loss(pol[:B], pol[B:], ref[:B], ref[B:], mask[:B], mask[B:], DPOConfig(beta=0.2, loss_type=loss))
    assert float(ours) == pytest.approx(B * float(theirs), rel=1e-5)


def test_dpo_trains_a_policy_on_the_preference_set(project, tmp_path):
    text = BASE.split("train reward")[0] + """
train dpo_align { model: gpt, init: pretrain, objective: dpo(beta: 0.1), data: prefs, steps: 3, batch: 4,
                  samples: 1, sample_tokens: 8 }
"""
    r = go(project(text), tmp_path / "run")
    last = r.metrics("dpo_align")[-1]
    assert {"loss", "eval_loss", "accuracy"} <= last.keys()
    first = r.metrics("dpo_align")[0]
    assert first["loss"] == pytest.approx(0.6931, abs=2e-3)  # log 2: the policy starts as its reference


def test_a_changed_judge_or_reward_reruns_its_stages_under_force():
    """`--resume --force` reruns the stages whose blocks changed: the blocks of a feedback stage
    include its judge and prompt data, those of an rl stage its reward, reference and eval judges."""
    from lmspec.compiler.api import check_text
    from lmspec.compiler.compile import compile_spec
    from lmspec.runtime.api import _blocks_of

    schedule = compile_spec(check_text(BASE + rl_block(), "s.lmspec"))
    assert {"sentiment", "stories", "gpt"} <= _blocks_of(schedule["prefs"])
    assert {"reward", "sentiment", "stories", "gpt"} <= _blocks_of(schedule["align"])

"""Every example spec runs as written, a few steps each (tiny batches through `--set`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmspec.runtime.api import run
from lmspec.runtime.progress import Progress

SPECS = Path(__file__).resolve().parent.parent / "specs"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # the built-in corpora are tokenised once for the module


def few_steps(*stages: str, batch: int = 2, seq_len: int | None = 64) -> list[str]:
    """Two steps of tiny batches, the models as written (only the stages' keys change)."""
    extra = [f"{s}.seq_len={seq_len}" for s in stages] if seq_len else []
    return [o for s in stages for o in (f"{s}.steps=2", f"{s}.batch={batch}", f"{s}.eval_batches=1",
                                         f"{s}.eval_every=2", f"{s}.sample_tokens=16")] + extra


def go(name: str, overrides: list[str], tmp_path, cache):
    return run(SPECS / name, overrides=overrides, out=tmp_path / "run", progress=Progress(quiet=True),
               cache_dir=cache)


def last_eval(r, stage: str) -> dict:
    return [m for m in r.metrics(stage) if "eval_loss" in m][-1]


def test_quickstart(tmp_path, cache):
    r = go("quickstart.lmspec", few_steps("pretrain"), tmp_path, cache)
    assert r.status("pretrain")["status"] == "finished"
    assert last_eval(r, "pretrain")["bits_per_byte"] > 0
    assert r.samples("pretrain")  # the decoder wrote a few samples at its evaluation


def test_gpt_as_written(tmp_path, cache):
    r = go("gpt.lmspec", few_steps("pretrain"), tmp_path, cache)  # precision: bf16 autocasts on the CPU too
    assert r.status("pretrain")["status"] == "finished" and r.metrics("pretrain")[-1]["loss"] > 0


def test_bert_and_t5(tmp_path, cache):
    r = go("bert_t5.lmspec", few_steps("bert_pretrain", "t5_pretrain"), tmp_path, cache)
    bert = last_eval(r, "bert_pretrain")
    assert {"eval_loss_mlm", "eval_loss_nsp", "nsp_accuracy"} <= bert.keys()
    assert {"loss_mlm", "loss_nsp"} <= r.metrics("bert_pretrain")[-1].keys()
    assert last_eval(r, "t5_pretrain")["eval_loss"] > 0


def test_sft_starts_from_the_pretrained_weights(tmp_path, cache):
    r = go("sft.lmspec", few_steps("pretrain") + few_steps("instruct", seq_len=None), tmp_path, cache)
    assert r.status("instruct")["status"] == "finished"
    assert r.manifest["stages"] == ["pretrain", "instruct"]


def test_classifier_reports_accuracy(tmp_path, cache):
    r = go("classifier.lmspec", few_steps("judge_fit", batch=4, seq_len=None), tmp_path, cache)
    assert 0.0 <= last_eval(r, "judge_fit")["accuracy"] <= 1.0
    assert "perplexity" not in last_eval(r, "judge_fit")


UNTIL = 'stories.until("In the end,", tokens: 120, count: 16)'


def rlaif_few_steps(*, prefs: bool = True, reward: bool = True, rl: bool = True) -> list[str]:
    """The RLAIF specs' stages as written, each cut to two tiny steps."""
    out = few_steps("pretrain") + few_steps("judge_fit", seq_len=None)
    if prefs:
        out += [f"prefs.prompts={UNTIL}", "prefs.max_new_tokens=8", "prefs.batch=4"]
    if reward:
        out += ["reward.steps=2", "reward.batch=2", "reward.eval_batches=1", "reward.eval_every=2"]
    if rl:
        out += ["align.steps=2", "align.rollouts.per_step=8", "align.rollouts.max_new_tokens=8", "align.eval_prompts=2",
                f"align.rollouts.prompts={UNTIL}", "align.eval_every=2", "align.log_every=1"]
    return out


@pytest.mark.parametrize("name", ["rlaif.lmspec", "rlaif_grpo.lmspec", "rlaif_rloo.lmspec"])
def test_rlaif_and_its_variants_run_every_stage(tmp_path, cache, name):
    """The whole loop as written — pretrain, critic, AI-labelled preferences, reward model, policy
    optimisation — each stage cut to a few steps."""
    minibatch = ["align.minibatch=4"] if name == "rlaif.lmspec" else []  # check: it must divide per_step
    r = go(name, rlaif_few_steps() + minibatch, tmp_path, cache)
    assert r.manifest["status"] == "finished"
    assert r.manifest["stages"] == ["pretrain", "judge_fit", "prefs", "reward", "align"]
    pairs = (r.path / "stages" / "prefs" / "final" / "preferences.jsonl").read_text().splitlines()
    assert len(pairs) == 16 and all('In the end,"' in p for p in pairs)  # every prompt stops at the marker
    last = r.metrics("align")[-1]
    assert {"reward", "kl", "eval_reward", "before_eval_reward"} <= last.keys()
    if name == "rlaif.lmspec":
        assert "value_loss" in last and "eval_sentiment_share" in last


def test_direct_rlaif_uses_the_judge_as_the_reward(tmp_path, cache):
    r = go("rlaif_direct.lmspec", rlaif_few_steps(prefs=False, reward=False) + ["align.minibatch=4"], tmp_path, cache)
    assert r.manifest["stages"] == ["pretrain", "judge_fit", "align"]
    assert (r.path / "judgments" / "sentiment.jsonl").is_file()  # the judge's scores are the rewards, cached


def test_dpo_learns_from_the_ai_labelled_pairs(tmp_path, cache):
    r = go("rlaif_dpo.lmspec", rlaif_few_steps(reward=False, rl=False) + few_steps("dpo_align", seq_len=None),
           tmp_path, cache)
    assert r.manifest["stages"] == ["pretrain", "judge_fit", "prefs", "dpo_align"]
    assert {"eval_loss", "accuracy"} <= last_eval(r, "dpo_align").keys()


def test_an_encoder_decoder_samples_with_its_encoder_reading_the_prompt(tmp_path, cache):
    from lmspec.runtime.sample import sample_texts

    r = go("bert_t5.lmspec", few_steps("t5_pretrain") + ["bert_pretrain.steps=1", "bert_pretrain.batch=2"],
           tmp_path, cache)
    model, tok = r.model("t5_pretrain"), r.tokenizer("t5_pretrain")
    streamed = []
    out = sample_texts(model, tok, ["Once upon a time"], max_tokens=12, seed=1, on_text=streamed.append)
    assert out[0]["prompt"] == "Once upon a time" and "".join(streamed) == out[0]["text"]
    again = sample_texts(model, tok, ["Once upon a time"], max_tokens=12, seed=1)
    assert again == out
    # the decoder starts from what training started it from: the tokenizer's pad, not the model's pad_id
    starts = []
    real = model.generate

    def spy(*args, **kwargs):
        starts.append(kwargs.get("decoder_start_id"))
        return real(*args, **kwargs)

    model.generate = spy
    sample_texts(model, tok, ["Once upon a time"], max_tokens=2, seed=1)
    assert starts == [tok.pad_id if tok.pad_id is not None else 0]
    from lmspec.runtime.errors import RunError

    with pytest.raises(RunError, match="encoder-only model, which cannot generate"):
        sample_texts(r.model("bert_pretrain"), tok, ["x"])


def test_tensorboard_gets_every_metric(tmp_path, cache, monkeypatch):
    import sys
    import types

    scalars = []

    class SummaryWriter:  # the interface of torch.utils.tensorboard.SummaryWriter the runtime uses
        def __init__(self, logdir, purge_step=None):
            self.logdir = logdir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def close(self):
            scalars.append(("closed", 0))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    run(SPECS / "quickstart.lmspec", overrides=few_steps("pretrain"), out=tmp_path / "run",
        progress=Progress(quiet=True), cache_dir=cache, tensorboard=True)
    assert ("pretrain/loss", 2) in scalars and ("pretrain/eval_loss", 2) in scalars
    assert ("pretrain/lr", 1) in scalars and scalars[-1] == ("closed", 0)

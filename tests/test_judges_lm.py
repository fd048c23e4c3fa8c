"""The LM labeller over a local checkpoint (lmspec.runtime.judges.lm and .local): soft labels
from the answer tokens' probabilities, checked against transformers computing the same
numbers by hand; ratings with "10" read from one token or two; batching, principles, swap
debiasing, and the errors for a checkpoint or an output that cannot serve as a judge."""

from __future__ import annotations

import functools
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")  # a test extra: builds and runs the tiny checkpoints

from judge_server import WORDS, tiny_bpe_checkpoint, tiny_checkpoint  # noqa: E402

from lmspec.runtime.judges import JudgeError, swap_debiased  # noqa: E402
from lmspec.runtime.judges.lm import LMJudge  # noqa: E402
from lmspec.runtime.judges.local import _leading_specials, from_options, local_judge  # noqa: E402
from lmspec.runtime.judges.templates import COMPARE, RATE, render  # noqa: E402

PROMPTS = ["good story", "bad story", "story", "good", "bad", "Response story"]
A = ["good good", "bad", "good story 1", "story story", "Response good", "good 2"]
B = ["bad bad", "good", "story 2 10", "bad", "Answer bad bad", "bad 1"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("judge") / "words")


@pytest.fixture(scope="module")
def judge(ckpt):
    return local_judge(ckpt, name="critic")


@pytest.fixture(scope="module")
def rater(ckpt):
    return local_judge(ckpt, name="rater", task="rate")


@functools.lru_cache(maxsize=4)
def _transformers_model(ckpt):
    from tokenizers import Tokenizer

    return transformers.GPT2LMHeadModel.from_pretrained(ckpt).eval(), Tokenizer.from_file(str(ckpt / "tokenizer.json"))


@torch.no_grad()
def next_token_probs(ckpt, text: str) -> torch.Tensor:
    """P(next token) after `text`, computed by transformers on the tokenizer's ids: (V,) float64."""
    model, tok = _transformers_model(ckpt)
    ids = tok.encode(text).ids
    return torch.softmax(model(torch.tensor([ids])).logits[0, -1].double(), dim=-1)


def test_compare_sums_both_bpe_spellings_of_each_answer(tmp_path):
    ckpt = tiny_bpe_checkpoint(tmp_path / "bpe")
    judge = local_judge(ckpt)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    spellings = {a: [tok.token_to_id(a), tok.token_to_id("Ġ" + a)] for a in "12"}
    assert None not in spellings["1"] + spellings["2"] and len(set(spellings["1"] + spellings["2"])) == 4
    got = judge.compare(PROMPTS[:3], A[:3], B[:3])
    for i in range(3):
        text = render(COMPARE, {"principle": judge.principles[0], "prompt": PROMPTS[i], "a": A[i], "b": B[i]})
        p = next_token_probs(ckpt, text)
        p1, p2 = p[spellings["1"]].sum(), p[spellings["2"]].sum()
        assert abs(float(got[i]) - float(p1 / (p1 + p2))) < 1e-6
        assert p[spellings["1"][1]] > 1e-4  # the " 1" spelling carries mass: summing it is not a no-op


def test_rating_is_the_expectation_with_ten_read_from_one_token_or_two(ckpt, rater):
    got = rater.score(PROMPTS, A)
    one, zero, ten = WORDS.index("1"), WORDS.index("0"), WORDS.index("10")
    for i in range(len(PROMPTS)):
        text = render(RATE, {"principle": rater.principles[0], "prompt": PROMPTS[i], "response": A[i]})
        p = next_token_probs(ckpt, text)
        p0_after_1 = next_token_probs(ckpt, text + "1")[zero]
        dist = torch.stack([p[WORDS.index(str(k))] for k in range(1, 11)])
        dist[0] = p[one] * (1 - p0_after_1)  # "1" then "0" is a 10
        dist[9] = p[ten] + p[one] * p0_after_1
        expected = float((dist * torch.arange(1, 11)).sum() / dist.sum())
        assert abs(float(got[i]) - expected) < 1e-6
        first_token_only = torch.stack([p[WORDS.index(str(k))] for k in range(1, 11)])
        naive = float((first_token_only * torch.arange(1, 11)).sum() / first_token_only.sum())
        assert abs(naive - expected) > 1e-3  # the second query is not a no-op here
    assert got.min() >= 1 and got.max() <= 10 and got.max() - got.min() > 0.1
    # a rating judge compares pointwise: sigmoid of the difference of the two ratings
    expected = torch.sigmoid(rater.score(PROMPTS, A) - rater.score(PROMPTS, B))
    assert torch.allclose(rater.compare(PROMPTS, A, B), expected, atol=1e-12)
    assert not rater.pairwise


def test_batches_and_left_padding_do_not_change_the_labels(ckpt, judge):
    labels = judge.compare(PROMPTS, A, B)
    assert judge.pairwise and labels.dtype == torch.float64 and labels.shape == (len(PROMPTS),)
    one_by_one = local_judge(ckpt, batch_size=1).compare(PROMPTS, A, B)
    assert torch.allclose(labels, one_by_one, atol=1e-6)
    assert torch.equal(labels, judge.compare(PROMPTS, A, B))  # no sampling: the same call, the same labels
    assert labels.max() - labels.min() > 0.2  # the labels depend on what is judged
    assert judge.compare([], [], []).shape == (0,)


def test_swap_debiasing_averages_out_a_position_bias(tmp_path):
    # a judge that answers "1" whatever it reads: it prefers whichever response comes first
    biased = local_judge(tiny_checkpoint(tmp_path / "biased", logit_offsets={"1": 2.0}))
    p, p_ab, p_ba = swap_debiased(biased, PROMPTS, A, B)
    assert (p_ab > 0.75).all() and (p_ba > 0.75).all()
    assert ((p_ab - (1 - p_ba)).abs() > 0.5).all()  # a position-free judge has p_ab = 1 - p_ba
    low, high = torch.minimum(p_ab, 1 - p_ba), torch.maximum(p_ab, 1 - p_ba)
    assert ((low <= p) & (p <= high)).all()
    assert ((p - 0.5).abs() < (p_ab - 0.5).abs()).all()


PRINCIPLES = ["good", "bad story", "Response good Answer"]  # words the tiny model reads, not <unk>


def test_sampled_principles_are_one_per_pair_by_hash_and_the_ensemble_averages(ckpt, judge):
    model = judge.model  # one loaded checkpoint under several labellers
    sample = LMJudge(model, principles=PRINCIPLES)
    ensemble = LMJudge(model, principles=PRINCIPLES, principles_mode="ensemble")
    single = {p: LMJudge(model, principles=[p]).compare(PROMPTS, A, B) for p in PRINCIPLES}
    assert (single["good"] - single["bad story"]).abs().max() > 1e-3  # the principle changes the label
    chosen = [sample.principles_for(p, a, b) for p, a, b in zip(PROMPTS, A, B)]
    assert all(len(c) == 1 for c in chosen) and len({c[0] for c in chosen}) > 1
    assert chosen == [local_judge(ckpt, principles=PRINCIPLES).principles_for(p, a, b)
                      for p, a, b in zip(PROMPTS, A, B)]  # a new judge (a resumed run) chooses the same
    assert chosen == [sample.principles_for(p, b, a) for p, a, b in zip(PROMPTS, A, B)]  # both swap orders
    labels = sample.compare(PROMPTS, A, B)
    for i, (principle,) in enumerate(chosen):
        assert abs(float(labels[i]) - float(single[principle][i])) < 1e-6  # padding differs: float32 noise
    mean = torch.stack(list(single.values())).mean(0)
    assert torch.allclose(ensemble.compare(PROMPTS, A, B), mean, atol=1e-6)
    assert ensemble.principles_for(PROMPTS[0], A[0], B[0]) == PRINCIPLES


def test_a_rating_samples_one_principle_per_prompt(judge):
    rater = LMJudge(judge.model, task="rate", principles=PRINCIPLES)
    assert rater.principles_for("good story", "good") == rater.principles_for("good story", "bad bad")
    chosen = rater.principles_for("good story", "good")[0]
    alone = LMJudge(judge.model, task="rate", principles=[chosen])
    assert torch.allclose(rater.score(["good story"] * 2, ["good", "bad"]),
                          alone.score(["good story"] * 2, ["good", "bad"]), atol=1e-6)


def test_fingerprint_names_the_weights_the_template_and_the_principles(ckpt, judge, tmp_path):
    assert local_judge(ckpt, name="other").fingerprint == judge.fingerprint
    other_weights = local_judge(tiny_checkpoint(tmp_path / "seed1", seed=1))
    assert len({judge.fingerprint, other_weights.fingerprint, LMJudge(judge.model, principles=["good"]).fingerprint,
                LMJudge(judge.model, template=COMPARE + " ").fingerprint,
                LMJudge(judge.model, task="rate").fingerprint}) == 5


def test_an_output_that_is_not_a_label_is_an_error(tmp_path):
    mute = local_judge(tiny_checkpoint(tmp_path / "mute", logit_offsets={"1": -40.0, "2": -40.0}), name="mute")
    with pytest.raises(JudgeError, match="the judge's output cannot be read as a label") as err:
        mute.compare(PROMPTS[:2], A[:2], B[:2])
    message = str(err.value)
    assert "judge 'mute'" in message and "Answer:'" in message  # the rendered prompt's tail
    assert 'P("1") + P("2")' in message and "2 of 2 queries have no readable label" in message
    assert "end the template where the answer goes" in err.value.help


def test_a_checkpoint_that_is_not_a_causal_lm_is_refused_by_path(tmp_path, ckpt):
    bert = tmp_path / "bert"
    config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(bert)
    with pytest.raises(JudgeError, match="not a causal language model") as err:
        local_judge(bert, name="j")
    assert str(bert) in str(err.value) and "BertModel" in str(err.value) and "judge 'j'" in str(err.value)
    with pytest.raises(JudgeError, match=f"no such directory {tmp_path / 'nowhere'}"):
        local_judge(tmp_path / "nowhere")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((ckpt / "config.json").read_text())
    (bare / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes())
    with pytest.raises(JudgeError, match=f"{bare} has no tokenizer.json"):
        local_judge(bare)


def test_templates_are_checked_when_the_judge_is_made(judge):
    model = judge.model
    with pytest.raises(JudgeError, match=r"has no \{b\}"):
        LMJudge(model, template="Which is better? 1: {a} Answer:")
    with pytest.raises(JudgeError, match=r"\{respnse\} that nothing fills; did you mean \{response\}"):
        LMJudge(model, task="rate", template="{prompt} {respnse} Rating:")
    with pytest.raises(JudgeError, match=r"no \{principle\} to put them in"):
        LMJudge(model, template="{a} or {b}? Answer:", principles=["be kind"])
    with pytest.raises(JudgeError, match="task 'grade' is not one of compare, rate"):
        LMJudge(model, task="grade")
    with pytest.raises(JudgeError, match="compares pairs"):
        judge.score(PROMPTS, A)
    # braces that are not placeholders stay as written
    literal = LMJudge(model, template='{"format": 1} {a} vs {b} Answer:')
    assert literal.compare(PROMPTS[:1], A[:1], B[:1]).shape == (1,)


def test_from_options_builds_the_judge_and_refuses_unknown_keys(ckpt, rater):
    built = from_options({"path": ckpt.name, "task": "rate", "batch_size": 2}, name="rater", root=ckpt.parent)
    assert built.fingerprint == rater.fingerprint and built.model.batch_size == 2
    assert torch.allclose(built.score(PROMPTS, A), rater.score(PROMPTS, A), atol=1e-6)
    assert from_options({"path": str(ckpt), "principles": "good"}).principles == ["good"]
    with pytest.raises(JudgeError, match="unknown option 'principle'; did you mean 'principles'"):
        from_options({"path": str(ckpt), "principle": "good"})
    with pytest.raises(JudgeError, match="needs the checkpoint's `path`"):
        from_options({"task": "rate"})


def test_the_tokenizer_template_specials_lead_every_query():
    from tokenizers import Tokenizer, models, processors

    tok = Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "hi": 2}, unk_token="<s>"))
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)]),
    ])
    assert _leading_specials(json.loads(tok.to_str())["post_processor"]) == [0]  # not the trailing </s>
    assert _leading_specials(None) == []

"""Every kind of judge a spec can declare, checked before launch and run by a feedback stage:
a model trained in the spec, the rules (length, contains, regex), weighted sums of judges, an LM
labeller on a local Hugging Face checkpoint and on an OpenAI-compatible server. Bad input is a
located diagnostic from `check` (docs/judges.md, docs/validation.md); good input runs on tiny
models and labels pairs the way the judge itself does when asked directly."""

from __future__ import annotations

import json
import math
import struct
import textwrap
from pathlib import Path

import pytest
import torch

from lmspec.compiler.api import check_file, check_text
from lmspec.runtime.api import run
from lmspec.runtime.errors import RunError
from lmspec.runtime.progress import Progress

# ----------------------------------------------------------------------------- check

PRELUDE = """lmspec 1
tokenizer tok { kind: bytes }
data reviews { source: builtin("tiny-reviews"), label: "sentiment" }
model critic { arch: encoder, vocab: tok.vocab_size, context: 128, layers: 1, d_model: 32, heads: 2,
               head: classifier(classes: 2) }
train judge_fit { model: critic, objective: classify(label: "sentiment"), data: reviews, steps: 4, batch: 4 }
judge sentiment { model: critic from judge_fit, score: probability(class: 1) }
"""
LINE = PRELUDE.count("\n") + 1  # the line of the first block after the prelude
SERVER = 'openai(url: "http://127.0.0.1:8000/v1", model: "m")'


def check(body: str, path: str = "t.lmspec"):
    return check_text(PRELUDE + textwrap.dedent(body).lstrip("\n"), path)


def one(body: str, code: str, path: str = "t.lmspec"):
    """The one diagnostic `code` of the spec (asserting that it is the only one of its code)."""
    found = [d for d in check(body, path).diagnostics if d.code == code]
    assert len(found) == 1, [f"{d.code} {d.message}" for d in check(body, path).diagnostics]
    assert found[0].help, found[0].message
    return found[0]


def span(d) -> tuple[int, int, int]:
    return d.span.line, d.span.col, d.span.end_col


def where(body: str, text: str, nth: int = 0) -> tuple[int, int, int]:
    """(line, col, end col) in the whole spec of the nth `text` written in `body`."""
    lines = (PRELUDE + textwrap.dedent(body).lstrip("\n")).splitlines()
    hits = [(i + 1, j + 1) for i, line in enumerate(lines) if i >= LINE - 1
            for j in range(len(line)) if line.startswith(text, j)]
    line, col = hits[nth]
    return line, col, col + len(text)


def errors(body: str, path: str = "t.lmspec") -> list[str]:
    return [d.code for d in check(body, path).diagnostics if d.is_error]


def test_every_kind_of_judge_checks():
    report = check(f"""
        judge short {{ score: length }}
        judge happy {{ score: contains("happy") }}
        judge loved {{ score: regex("lov(ed|ely)") }}
        judge total {{ score: sentiment + 0.1 * happy - 0.01 * length + 2 * regex("!$") }}
        judge local {{ model: hf("no_such_dir") }}
        judge remote {{ model: {SERVER}, task: rate, principles: ["be kind"], principles_mode: ensemble,
                       prompt: "{{principle}} {{prompt}} -> {{response}}. Rating:" }}
    """)
    judges = report.spec.of_kind("judge")
    assert judges["short"].score.kind == "length" and judges["happy"].score.text == "happy"
    terms = [(t.weight, t.judge if isinstance(t.judge, str) else t.judge.kind) for t in judges["total"].score.terms]
    assert terms == [(1.0, "sentiment"), (0.1, "happy"), (-0.01, "length"), (2.0, "regex")]
    remote = judges["remote"]
    assert (remote.model.url, remote.model.model, remote.model.api, remote.task) == (
        "http://127.0.0.1:8000/v1", "m", "completions", "rate")
    assert [d.code for d in report.diagnostics if d.is_error] == ["LMS052"]  # only the missing checkpoint


def test_a_model_judge_stays_as_it_was():
    report = check("judge j { model: critic from judge_fit }")
    assert not report.errors and report.spec.blocks["j"].score.kind == "probability"


def test_a_regex_that_does_not_compile_is_an_error_at_its_string():
    body = 'judge r { score: regex("lov(ed") }'
    d = one(body, "LMS051")
    assert span(d) == where(body, '"lov(ed"') and d.message == (
        "regex(\"lov(ed\") of judge 'r' does not compile: missing ), unterminated subpattern at position 3")
    body = 'judge r { score: length + 0.5 * regex("a[b") }'
    d = one(body, "LMS051")
    assert span(d) == where(body, '"a[b"') and "unterminated character set at position 1" in d.message


def test_a_model_with_a_rule_score_is_an_error():
    body = 'judge j { model: critic from judge_fit, score: contains("happy") }'
    d = one(body, "LMS098")
    assert span(d) == where(body, "critic from judge_fit") and d.message == (
        "judge 'j' scores with the rule contains, which reads the response alone, so its model 'critic' would be "
        "ignored")
    assert span(d.labels[0]) == where(body, 'contains("happy")')
    d = one("judge j { model: critic from judge_fit, score: sentiment + length }", "LMS098")
    assert "adds the scores of other judges, so its model 'critic' would be ignored" in d.message


def test_a_score_that_reads_a_model_needs_one():
    body = "judge j { score: scalar }"
    d = one(body, "LMS045")
    assert span(d) == where(body, "scalar") and d.message == (
        "judge 'j' needs 'model': it scores with scalar, which reads a model's head")
    d = one("judge j { }", "LMS045")
    assert span(d) == where("judge j { }", "j", nth=1) and "has neither a model nor a rule" in d.message


def test_keys_of_an_lm_judge_on_another_judge_and_score_on_an_lm_judge_are_errors():
    body = 'judge j { model: critic from judge_fit, prompt: "{a} or {b}?" }'
    d = one(body, "LMS098")
    assert span(d) == where(body, "prompt") and d.message == (
        "'prompt' is read by LM judges only, and judge 'j' is a model judge")
    d = one('judge j { score: length, principles: ["be kind"] }', "LMS098")
    assert "judge 'j' is a rule (length)" in d.message
    body = f"judge j {{ model: {SERVER}, score: scalar }}"
    d = one(body, "LMS098")
    assert span(d) == where(body, "score") and d.message.startswith(
        "judge 'j' is an LM judge (openai(...)): its label comes from the answer tokens, so 'score' would be ignored")


def test_a_sum_of_judges_names_judges_and_rules():
    assert errors("judge j { score: sentimnt + length }") == ["LMS023"]
    assert errors("judge j { score: critic + length }") == ["LMS047"]
    d = one("judge j { score: probability + length }", "LMS044")
    assert "probability reads a model, so it cannot be a term of a sum" in d.message


def test_a_pairwise_judge_cannot_be_a_term_of_a_sum_or_an_rl_reward():
    body = f"""
        judge labeller {{ model: {SERVER} }}
        judge total {{ score: sentiment + 0.5 * labeller }}
    """
    d = one(body, "LMS054")
    assert span(d) == where(body, "labeller", nth=1) and d.message == (
        "judge 'total' adds the score of judge 'labeller', which compares two responses (task: compare) and gives "
        "no score to one")
    assert "task: rate" in d.help and span(d.labels[0]) == where(body, SERVER)
    assert errors(f"judge labeller {{ model: {SERVER}, task: rate }}\n"
                  "judge total { score: sentiment + 0.5 * labeller }") == []
    rl = f"""
        data stories {{ source: builtin("tiny-stories") }}
        model gpt {{ vocab: tok.vocab_size, context: 64, layers: 1, d_model: 32, heads: 2 }}
        train pre {{ model: gpt, objective: clm, data: stories }}
        judge labeller {{ model: {SERVER} }}
        rl r {{ policy: gpt from pre, reward: labeller, eval_judges: [sentiment, labeller],
               rollouts {{ prompts: stories.prefixes(tokens: 8) }} }}
    """
    found = [d for d in check(rl).diagnostics if d.code == "LMS054"]
    assert [span(d) for d in found] == [where(rl, "labeller", nth=1), where(rl, "labeller", nth=2)]
    assert found[0].message.startswith("the reward of rl 'r' is judge 'labeller', which compares two responses")


def test_judges_that_add_each_other_are_a_cycle():
    report = check("judge a { score: b + length }\njudge b { score: 0.5 * a }")
    cycles = [d for d in report.diagnostics if d.code == "LMS079"]
    assert len(cycles) == 1 and "a -> b -> a" in cycles[0].message


def test_an_lm_template_has_the_placeholders_of_its_task():
    body = f'judge j {{ model: {SERVER}, task: rate, prompt: "Rate {{respons}} for {{prompt}}" }}'
    found = [d for d in check(body).diagnostics if d.code == "LMS051"]
    assert [d.message for d in found] == [
        "the rate template of judge 'j' has a placeholder {respons} that nothing fills; did you mean {response}?",
        "the rate template of judge 'j' has no {response}, so the judge would never see what it judges"]
    assert span(found[0]) == where(body, "{respons}")  # the placeholder itself, inside the string
    assert span(found[1]) == where(body, '"Rate {respons} for {prompt}"')
    assert found[0].help == ("a rate template may use {principle}, {prompt}, {response}; other braces are kept as "
                             "written")
    body = f'judge j {{ model: {SERVER}, prompt: "Say \\"{{a}}\\" or {{c}}: {{b}}" }}'  # escapes count as written
    d = one(body, "LMS051")
    assert span(d) == where(body, "{c}") and "placeholder {c}" in d.message
    d = one(f'judge j {{ model: {SERVER}, prompt: "{{a}} or {{b}}", principles: ["be kind"] }}', "LMS051")
    assert "has 1 principle, and its template has no {principle}" in d.message and d.labels


def _checkpoint(directory: Path, config: dict, tokenizer: bool = True) -> Path:
    """A checkpoint directory as `check` reads it: config.json, a safetensors header, tokenizer.json."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    header = b"{}"
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    if tokenizer:
        (directory / "tokenizer.json").write_text("{}")
    return directory


GPT2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 32, "n_layer": 1, "n_head": 2,
        "vocab_size": 20, "n_positions": 64}


@pytest.mark.parametrize("setup, said", [
    (None, 'hf("judge") does not exist'),
    (lambda d: _checkpoint(d, {**GPT2, "model_type": "bert", "architectures": ["BertModel"], "hidden_size": 32,
                               "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                               "max_position_embeddings": 64}),
     'hf("judge") holds an encoder (BertModel), not a causal language model'),
    (lambda d: _checkpoint(d, {**GPT2, "architectures": ["GPT2Model"]}),
     'hf("judge") holds a decoder without an LM head (GPT2Model)'),
    (lambda d: _checkpoint(d, {"model_type": "rwkv"}), "hf(\"judge\") cannot be read as a checkpoint: model_type "
                                                       "'rwkv' is not supported"),
    (lambda d: _checkpoint(d, GPT2, tokenizer=False), 'hf("judge") has no tokenizer.json'),
])
def test_an_hf_judge_is_a_causal_lm_checkpoint_with_a_tokenizer(tmp_path, setup, said):
    if setup is not None:
        setup(tmp_path / "judge")
    spec = tmp_path / "spec.lmspec"
    spec.write_text(PRELUDE + 'judge j { model: hf("judge") }\n')  # relative to the spec's folder
    found = [d for d in check_file(spec).diagnostics if d.code == "LMS052"]
    assert len(found) == 1 and found[0].message.startswith(f"judge 'j': {said}") and found[0].help
    assert span(found[0]) == (LINE, 18, 29)  # hf("judge")
    if setup is None:
        assert str(tmp_path / "judge") in found[0].help  # where it looked


def test_a_causal_lm_checkpoint_with_a_tokenizer_passes(tmp_path):
    _checkpoint(tmp_path / "judge", GPT2)
    (tmp_path / "spec.lmspec").write_text(PRELUDE + 'judge j { model: hf("judge") }\n')
    assert [d.code for d in check_file(tmp_path / "spec.lmspec").diagnostics if d.is_error] == []


@pytest.mark.parametrize("args, value, said", [
    ('url: "127.0.0.1:8000/v1", model: "m"', '"127.0.0.1:8000/v1"',
     'url "127.0.0.1:8000/v1" is not an http:// or https:// address'),
    ('url: "ftp://host/v1", model: "m"', '"ftp://host/v1"',
     'url "ftp://host/v1" is not an http:// or https:// address'),
    ('url: "http://h/v1/chat/completions", model: "m"', '"http://h/v1/chat/completions"',
     "names the endpoint /chat/completions"),
    ('url: "http://h/v1", model: "m", api_key_env: "sk-test-0123456789abcdef"', '"sk-test-0123456789abcdef"',
     '"sk-t..." looks like a key'),
    ('url: "http://h/v1", model: "m", api_key_env: "JUDGE KEY"', '"JUDGE KEY"',
     'api_key_env "JUDGE KEY" is not the name of an environment variable'),
])
def test_an_http_judge_has_an_api_root_and_a_variable_name_for_its_key(args, value, said):
    body = f"judge j {{ model: openai({args}) }}"
    d = one(body, "LMS053")
    assert said in d.message and span(d) == where(body, value)
    assert "0123456789abcdef" not in d.message + d.help  # a key written by mistake is not repeated


def test_a_key_written_in_the_spec_is_told_to_go_to_the_environment():
    d = one('judge j { model: openai(url: "https://h/v1", model: "m", api_key_env: "sk-abc") }', "LMS053")
    assert "export JUDGE_API_KEY=..." in d.help and 'api_key_env: "JUDGE_API_KEY"' in d.help
    assert errors('judge j { model: openai(url: "https://h/v1", model: "m", api_key_env: "JUDGE_API_KEY") }') == []


def test_swap_with_a_pointwise_judge_is_a_warning():
    feedback = """
        data stories {{ source: builtin("tiny-stories") }}
        model gpt {{ vocab: tok.vocab_size, context: 64, layers: 1, d_model: 32, heads: 2 }}
        train pre {{ model: gpt, objective: clm, data: stories }}
        {judge}
        feedback f {{ policy: gpt from pre, prompts: stories.prefixes(tokens: 8), judge: j, debias: swap }}
    """
    body = feedback.format(judge="judge j { score: length }")
    d = one(body, "LMS099")
    assert d.severity == "warning" and span(d) == where(body, "swap") and d.message == (
        "feedback 'f' asks judge 'j' about both orders of each pair (debias: swap), but a rule scores each response "
        "alone: both orders get the same label")
    assert "a model judge scores" in one(feedback.format(judge="judge j { model: critic from judge_fit }"),
                                         "LMS099").message
    pairwise = check(feedback.format(judge=f"judge j {{ model: {SERVER} }}"))
    assert not pairwise.errors and "LMS099" not in {d.code for d in pairwise.diagnostics}  # what swap is for


def test_placeholders_agree_with_the_runtime_templates():
    from lmspec.compiler import rules_judges
    from lmspec.runtime.judges import templates

    assert rules_judges.PLACEHOLDERS == templates.PLACEHOLDERS and rules_judges.REQUIRED == templates.REQUIRED


# ----------------------------------------------------------------------------- run

BASE = """lmspec 1
tokenizer tok { kind: bytes }
data stories { source: builtin("tiny-stories"), validation: 2% }
model gpt { vocab: tok.vocab_size, context: 64, layers: 1, d_model: 32, heads: 2 }
train pretrain { model: gpt, objective: clm, data: stories, steps: 2, batch: 4, seq_len: 32, samples: 0 }
"""
FEEDBACK = """feedback NAME {
  policy: gpt from pretrain
  prompts: stories.prefixes(tokens: 8, count: 4)
  samples: 3, max_new_tokens: 8, batch: 4, validation: 0
  judge: JUDGE
  MORE
}
"""


def feedback(name: str, judge: str, more: str = "") -> str:
    return FEEDBACK.replace("NAME", name).replace("JUDGE", judge).replace("MORE", more)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSPEC_CACHE", str(tmp_path.parent / "judges-spec-cache"))  # built-in data tokenised once

    def write(text: str) -> Path:
        (tmp_path / "spec.lmspec").write_text(text)
        return tmp_path / "spec.lmspec"

    return write


def go(spec: Path, out: Path):
    return run(spec, out=out, progress=Progress(quiet=True))


def preferences(r, stage: str) -> list[dict]:
    return [json.loads(x) for x in (r.path / "stages" / stage / "final" / "preferences.jsonl").read_text().splitlines()]


def test_rule_judges_and_a_weighted_sum_label_pairs_in_a_run(project, tmp_path):
    critic = PRELUDE.split("\n", 2)[2]  # the critic, its stage and the sentiment judge, without header and tokenizer
    spec = project(BASE + critic + 'judge has_e { score: contains("e") }\n'
                   'judge e_and_length { score: has_e - 0.25 * length }\n'  # has_e is reached twice from total
                   'judge total { score: sentiment + 0.5 * has_e + e_and_length + 2 * regex("[.!?]$") }\n'
                   + feedback("by_rule", "has_e") + feedback("by_sum", "total", "seed: 1"))  # other samples
    r = go(spec, tmp_path / "run")
    rule = preferences(r, "by_rule")
    assert len(rule) == 4 * 3  # every pair of every prompt's three samples
    for p in rule:
        s_a, s_b = float("e" in p["a"]), float("e" in p["b"])
        assert p["judge"] == "has_e" and p["scores"] == [s_a, s_b]
        assert p["p"] == pytest.approx(1 / (1 + math.exp(s_b - s_a)), abs=1e-12)  # the Bradley-Terry link
    # the sum, term by term: the critic's log-odds (recomputed from its stage's weights) and the rules
    from lmspec.runtime.judges.model import ModelJudge

    sentiment = ModelJudge("sentiment", r.model("judge_fit"), r.tokenizer("judge_fit"), score="probability", cls=1,
                           context=128)
    summed = preferences(r, "by_sum")
    prompts = [p["prompt"] for p in summed for _ in (0, 1)]
    texts = [x for p in summed for x in (p["a"], p["b"])]
    model_part = sentiment.score(prompts, texts).tolist()
    expected = [m + 1.5 * ("e" in t) - 0.25 * len(t) + 2 * (t[-1:] in ".!?") for m, t in zip(model_part, texts)]
    got = [s for p in summed for s in p["scores"]]
    assert got == pytest.approx(expected, abs=1e-6)  # float32 logits, batched another way
    assert len({round(s, 6) for s in got}) > 2  # the terms do vary across the samples
    cached = {name: len((r.path / "judgments" / f"{name}.jsonl").read_text().splitlines())
              for name in ("total", "e_and_length", "sentiment", "has_e")}
    distinct = len({(p["prompt"], x) for p in summed for x in (p["a"], p["b"])})
    assert cached["total"] == cached["e_and_length"] == cached["sentiment"] == distinct  # once per text, own file
    # ... has_e too, though two terms of total reach it, and another stage asked it first
    assert cached["has_e"] == len({(p["prompt"], x) for p in rule + summed for x in (p["a"], p["b"])})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    pytest.importorskip("transformers")  # a test extra: it builds the LM judges' tiny checkpoint
    from judge_server import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("judge") / "words")


TEMPLATE = "Principle: {principle} Prompt: {prompt} Response 1: {a} Response 2: {b} Which? 1 or 2. Answer:"
PRINCIPLES = ["good", "bad story"]  # words the tiny model knows


def lm_judge(model: str) -> str:
    return (f'judge labeller {{ model: {model}, principles: ["good", "bad story"], principles_mode: ensemble,\n'
            f'  prompt: "{TEMPLATE}" }}\n')


def _expected_labels(ckpt, prefs) -> tuple[torch.Tensor, torch.Tensor]:
    """P(a > b) with a first and P(b > a) with b first, from the checkpoint asked directly."""
    from lmspec.runtime.judges.local import local_judge

    judge = local_judge(ckpt, template=TEMPLATE, principles=PRINCIPLES, principles_mode="ensemble")
    prompts, a, b = [p["prompt"] for p in prefs], [p["a"] for p in prefs], [p["b"] for p in prefs]
    return judge.compare(prompts, a, b), judge.compare(prompts, b, a)


def test_a_local_lm_labeller_gives_soft_swap_debiased_labels_in_a_run(project, tmp_path, ckpt):
    (tmp_path / "judges").mkdir()
    (tmp_path / "judges" / "words").symlink_to(ckpt)  # hf("...") is relative to the spec's folder
    spec = project(BASE + lm_judge('hf("judges/words")') + feedback("prefs", "labeller", "debias: swap"))
    assert not [d for d in check_file(spec).diagnostics if d.is_error]
    r = go(spec, tmp_path / "run")
    prefs = preferences(r, "prefs")
    assert len(prefs) == 12 and all(p["scores"] is None for p in prefs)  # a pairwise judge gives no scores
    p_ab, p_ba = _expected_labels(ckpt, prefs)
    for p, ab, ba in zip(prefs, p_ab.tolist(), p_ba.tolist()):
        assert 0 < p["p"] < 1 and p["p_ab"] == pytest.approx(ab, abs=1e-6) and p["p_ba"] == pytest.approx(ba, abs=1e-6)
        assert p["p"] == pytest.approx((p["p_ab"] + 1 - p["p_ba"]) / 2, abs=1e-12)
    assert max(abs(p["p_ab"] - (1 - p["p_ba"])) for p in prefs) > 1e-3  # a real pairwise judge: the orders differ
    asked = (r.path / "judgments" / "labeller.jsonl").read_text().splitlines()
    assert len(asked) == len({(p["prompt"], x, y) for p in prefs for x, y in ((p["a"], p["b"]), (p["b"], p["a"]))})


def test_an_http_labeller_gives_the_local_labels_in_a_run_with_its_key_from_the_environment(
        project, tmp_path, ckpt, monkeypatch):
    from judge_server import JudgeServer

    key = "sk-judge-spec-0123456789"
    server_spec = 'openai(url: "URL", model: "tiny-judge", api_key_env: "LMSPEC_TEST_JUDGE_KEY", concurrency: 2)'
    with JudgeServer(ckpt, api_key=key) as server:
        spec = project(BASE + lm_judge(server_spec.replace("URL", server.url))
                       + feedback("prefs", "labeller", "debias: swap"))
        monkeypatch.delenv("LMSPEC_TEST_JUDGE_KEY", raising=False)
        with pytest.raises(RunError, match="LMSPEC_TEST_JUDGE_KEY, which is not set") as unset:
            go(spec, tmp_path / "unset")
        assert "export LMSPEC_TEST_JUDGE_KEY=" in unset.value.help
        assert not server.requests and not (tmp_path / "unset" / "stages" / "prefs" / "final").exists()
        monkeypatch.setenv("LMSPEC_TEST_JUDGE_KEY", key)
        r = go(spec, tmp_path / "run")
        assert server.requests  # the labels came over HTTP
    prefs = preferences(r, "prefs")
    p_ab, p_ba = _expected_labels(ckpt, prefs)
    assert max(abs(p["p_ab"] - ab) for p, ab in zip(prefs, p_ab.tolist())) < 1e-5
    assert max(abs(p["p_ba"] - ba) for p, ba in zip(prefs, p_ba.tolist())) < 1e-5
    assert all(0 < p["p"] < 1 for p in prefs)
    for file in r.path.rglob("*"):
        if file.is_file():
            assert key.encode() not in file.read_bytes(), file  # the key never reaches the run directory

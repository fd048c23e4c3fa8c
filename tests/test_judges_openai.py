"""The HTTP judge (lmspec.runtime.judges.openai) against a loopback OpenAI-compatible server
that runs a tiny GPT-2 with transformers (tests/judge_server.py): the same labels as the local
judge on the same checkpoint, and clear errors for a server that is down, slow, failing, or
silent about log-probs. The API key stays in its environment variable."""

from __future__ import annotations

import logging
import time

import pytest

pytest.importorskip("transformers")  # a test extra: the server runs the tiny model with it

from judge_server import JudgeServer, closed_port, tiny_checkpoint  # noqa: E402

from lmspec.runtime.judges import JudgeError, swap_debiased  # noqa: E402
from lmspec.runtime.judges.local import local_judge  # noqa: E402
from lmspec.runtime.judges.openai import from_options, openai_judge  # noqa: E402

PROMPTS = ["good story", "bad story", "story", "good", "bad", "Response story"]
A = ["good good", "bad", "good story 1", "story story", "Response good", "good 2"]
B = ["bad bad", "good", "story 2 10", "bad", "Answer bad bad", "bad 1"]
PRINCIPLES = ["good", "bad story", "Response good Answer"]
MODEL = "tiny-judge"
# The server computes in float32 with transformers, the local judge in float32 with lmspec's
# modules: the logits differ in the last bits (~1e-7), and the log-probs travel as JSON doubles,
# unrounded. 1e-5 keeps a hundredfold margin over that noise; a server that rounds its log-probs
# (to 4 decimals, say) would need 1e-4.
TOL = 1e-5
KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("judge") / "words")


@pytest.fixture(scope="module")
def running(ckpt):
    with JudgeServer(ckpt, model_name=MODEL) as server:
        yield server


@pytest.fixture
def server(running):
    """The module's server with every failure switched off and its request log emptied."""
    running.settle()  # a request an earlier test timed out on may still be sleeping
    running.fail, running.drop_logprobs, running.delay, running.hide = [], False, 0.0, set()
    running.api_key, running.requests, running.max_in_flight = None, [], 0
    return running


def http(server, **options):
    return openai_judge(server.url, MODEL, backoff=0.01, **options)


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_local_and_http_judges_give_the_same_labels(ckpt, server, api):
    local = local_judge(ckpt)
    remote = http(server, api=api)
    assert (local.compare(PROMPTS, A, B) - remote.compare(PROMPTS, A, B)).abs().max() < TOL
    local_rate, remote_rate = local_judge(ckpt, task="rate"), http(server, api=api, task="rate")
    assert (local_rate.score(PROMPTS, A) - remote_rate.score(PROMPTS, A)).abs().max() < TOL
    ensemble = {"principles": PRINCIPLES, "principles_mode": "ensemble"}
    assert (LMJudgeLike(local, **ensemble).compare(PROMPTS, A, B)
            - http(server, api=api, **ensemble).compare(PROMPTS, A, B)).abs().max() < TOL
    p_local, p_remote = swap_debiased(local, PROMPTS, A, B)[0], swap_debiased(remote, PROMPTS, A, B)[0]
    assert (p_local - p_remote).abs().max() < TOL


def LMJudgeLike(judge, **labeller):
    """Another labeller over the same loaded model."""
    from lmspec.runtime.judges.lm import LMJudge

    return LMJudge(judge.model, **labeller)


def test_requests_ask_for_one_token_and_its_top_logprobs(server):
    http(server).compare(PROMPTS[:1], A[:1], B[:1])
    http(server, api="chat", task="rate").score(PROMPTS[:1], A[:1])
    completion, chat, *follow = server.requests
    assert completion["max_tokens"] == 1 and completion["logprobs"] == 20 and completion["prompt"].endswith("Answer:")
    assert chat["max_tokens"] == 1 and chat["logprobs"] is True and chat["top_logprobs"] == 20
    assert chat["messages"] == [{"role": "user", "content": chat["messages"][0]["content"]}]
    # the rating's second query continues an assistant message "1": is the rating 10?
    assert [m["role"] for m in follow[0]["messages"]] == ["user", "assistant"]
    assert follow[0]["messages"][1]["content"] == "1" and follow[0]["continue_final_message"] is True


def test_a_server_that_is_down_is_named_with_what_to_do():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    judge = openai_judge(url, MODEL, retries=1, backoff=0.01, name="critic")
    with pytest.raises(JudgeError) as err:
        judge.compare(PROMPTS[:1], A[:1], B[:1])
    assert str(err.value) == (f"judge 'critic': cannot reach {url}/completions: connection refused; "
                              "start the server or fix `url` (2 tries)")
    assert "vllm serve" in err.value.help


def test_no_logprobs_in_the_answer_is_an_error_that_says_how_to_get_them(server):
    server.drop_logprobs = True
    with pytest.raises(JudgeError, match="returned no logprobs") as err:
        http(server).compare(PROMPTS[:1], A[:1], B[:1])
    assert "vLLM" in err.value.help and "llama.cpp" in err.value.help and "--max-logprobs" in err.value.help


def test_5xx_and_429_are_retried_with_backoff_then_answered(server, ckpt, caplog):
    expected = local_judge(ckpt).compare(PROMPTS[:1], A[:1], B[:1])
    server.fail = [500, 429, 503]
    with caplog.at_level(logging.WARNING, logger="lmspec.runtime.judges.openai"):
        got = http(server, retries=3).compare(PROMPTS[:1], A[:1], B[:1])
    assert (got - expected).abs().max() < TOL
    assert len(server.requests) == 4  # three failures, then the answer
    assert [r.getMessage().split(" answered ")[1][:3] for r in caplog.records] == ["500", "429", "503"]


def test_5xx_past_the_retries_fails_with_the_servers_message(server):
    server.fail = [500] * 3
    with pytest.raises(JudgeError, match=r"answered 500 .*: injected failure 500 \(3 tries\)"):
        http(server, retries=2).compare(PROMPTS[:1], A[:1], B[:1])
    assert len(server.requests) == 3


def test_4xx_is_not_retried(server):
    judge = openai_judge(server.url, "no-such-model", retries=3, backoff=0.01)
    with pytest.raises(JudgeError, match="refused the request with 404 .*The model `no-such-model` does not") as e:
        judge.compare(PROMPTS[:1], A[:1], B[:1])
    assert len(server.requests) == 1 and "/models" in e.value.help
    with pytest.raises(JudgeError, match="greater than max allowed: 20") as e:
        http(server, top_logprobs=21).compare(PROMPTS[:1], A[:1], B[:1])
    assert "--max-logprobs" in e.value.help


def test_a_server_slower_than_the_timeout_is_an_error(server):
    server.delay = 1.0
    start = time.perf_counter()
    with pytest.raises(JudgeError, match=r"no answer from .*/completions within 0.1 s \(2 tries\)") as err:
        http(server, timeout=0.1, retries=1).compare(PROMPTS[:1], A[:1], B[:1])
    assert time.perf_counter() - start < 0.9  # the judge gave up; it did not wait for the server
    assert "timeout" in err.value.help


def test_an_answer_token_outside_the_top_logprobs_counts_as_zero(server):
    server.hide = {"2"}
    assert http(server).compare(PROMPTS[:2], A[:2], B[:2]).tolist() == [1.0, 1.0]
    server.hide = {"1"}
    assert http(server).compare(PROMPTS[:2], A[:2], B[:2]).tolist() == [0.0, 0.0]
    server.hide = {"1", "2"}
    with pytest.raises(JudgeError, match="cannot be read as a label.*only its top 20 next tokens"):
        http(server).compare(PROMPTS[:2], A[:2], B[:2])


def test_concurrency_is_bounded(server):
    server.delay = 0.05
    http(server, concurrency=2).compare(PROMPTS, A, B)
    assert len(server.requests) == len(PROMPTS) and server.max_in_flight == 2


def test_the_api_key_comes_from_the_environment_and_goes_nowhere_else(server, ckpt, monkeypatch, caplog):
    monkeypatch.delenv("JUDGE_API_KEY", raising=False)
    with pytest.raises(JudgeError, match="environment variable JUDGE_API_KEY, which is not set"):
        http(server, api_key_env="JUDGE_API_KEY")
    server.api_key = KEY
    with pytest.raises(JudgeError, match="401") as refused:  # no key sent
        http(server).compare(PROMPTS[:1], A[:1], B[:1])
    monkeypatch.setenv("JUDGE_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    judge = http(server, api_key_env="JUDGE_API_KEY", retries=1)
    expected = local_judge(ckpt).compare(PROMPTS[:2], A[:2], B[:2])
    server.fail = [500]  # a retry, and its log line
    assert (judge.compare(PROMPTS[:2], A[:2], B[:2]) - expected).abs().max() < TOL
    errors = [refused.value]
    server.fail = [502, 502]
    with pytest.raises(JudgeError) as failed:
        judge.compare(PROMPTS[:1], A[:1], B[:1])
    errors.append(failed.value)
    down = openai_judge(f"http://127.0.0.1:{closed_port()}/v1", MODEL, api_key_env="JUDGE_API_KEY", retries=0)
    with pytest.raises(JudgeError) as unreachable:
        down.compare(PROMPTS[:1], A[:1], B[:1])
    errors.append(unreachable.value)
    seen = [judge.fingerprint, judge.model.fingerprint, repr(judge), repr(judge.model), repr(vars(judge.model)),
            caplog.text] + [f"{e} {e.help}" for e in errors]
    assert caplog.records and all(KEY not in text for text in seen)
    assert "JUDGE_API_KEY" in repr(judge.model)  # the variable's name is shown, its value never


def test_options_are_checked(server):
    judge = from_options({"url": server.url, "model": MODEL, "api": "chat", "concurrency": 2, "task": "rate"},
                         name="remote")
    assert judge.name == "remote" and judge.model.api == "chat" and judge.model.concurrency == 2
    assert judge.score(PROMPTS[:1], A[:1]).shape == (1,)
    with pytest.raises(JudgeError, match="unknown option 'retry'; did you mean 'retries'"):
        from_options({"url": server.url, "model": MODEL, "retry": 2})
    with pytest.raises(JudgeError, match="needs model"):
        from_options({"url": server.url})
    with pytest.raises(JudgeError, match="api 'responses' is not one of completions, chat"):
        from_options({"url": server.url, "model": MODEL, "api": "responses"})
    with pytest.raises(JudgeError, match="url '127.0.0.1:8000' is not an http:// or https:// address"):
        from_options({"url": "127.0.0.1:8000", "model": MODEL})
    # the fingerprint names the served model and the question, not the transport settings
    a = from_options({"url": server.url, "model": MODEL, "concurrency": 1, "timeout": 5})
    b = from_options({"url": server.url, "model": MODEL})
    c = from_options({"url": server.url, "model": "other"})
    assert a.fingerprint == b.fingerprint != c.fingerprint

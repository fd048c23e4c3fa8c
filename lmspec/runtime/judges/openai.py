"""An OpenAI-compatible HTTP server as the labeller's next-token model: `openai(url, model)`.

The way big judges are served: vLLM, llama.cpp's llama-server, Ollama. Each query is one
request for one token with the top log-probs of the position after the prompt:

    api: completions   POST {url}/completions       {prompt, max_tokens: 1, logprobs: K}
                       -> choices[0].logprobs.top_logprobs[0]          {token: logprob, ...}
    api: chat          POST {url}/chat/completions  {messages, max_tokens: 1, logprobs: true, top_logprobs: K}
                       -> choices[0].logprobs.content[0].top_logprobs   [{token, logprob}, ...]

(a completions answer in the chat shape, as some llama.cpp builds send, is read too). Requests
use temperature 1, so that no server rescales the log-probs it reports, and the sampled token
itself is never read. A chat query with an answer prefix (the rating's "is "0" next?") sends
the prefix as a final assistant message to continue (vLLM: continue_final_message; llama.cpp
and Ollama continue a final assistant message by themselves).

Only the top K tokens are visible; an answer token outside them counts as probability 0.
Requests run `concurrency` at a time, each with a `timeout`; a refused connection, a timeout,
a 429 or a 5xx is retried `retries` times with exponential backoff (a 429's Retry-After is
honoured), any other 4xx is not. The API key is read from the environment variable named by
`api_key_env` when a request is sent, and is kept in no attribute, message or log.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import math
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch

from .base import JudgeError
from .lm import LABELLER_OPTIONS, LMJudge, NextTokens, check_options, labeller_options, surface

__all__ = ["OpenAIEndpoint", "openai_judge", "from_options", "OPENAI_OPTIONS"]

log = logging.getLogger(__name__)

APIS = ("completions", "chat")
MAX_BACKOFF = 8.0  # seconds: the longest wait between two tries of our own
MAX_RETRY_AFTER = 60.0  # seconds: the longest a 429's Retry-After is followed
NO_LOGPROBS_HELP = ("vLLM returns them when asked, up to its --max-logprobs (default 20: keep top_logprobs at "
                    "or under it); llama.cpp's llama-server returns them on /v1/chat/completions (use "
                    "`api: chat`: older builds send `logprobs: null` on /v1/completions); Ollama returns them "
                    "only in its recent versions, with `api: chat`")


class OpenAIEndpoint:
    """Next-token probabilities from an OpenAI-compatible server.

    url: the API root, e.g. http://127.0.0.1:8000/v1; model: the served model's name; api:
    completions (the prompt as it is) or chat (the prompt as the user's message, under the
    server's chat template); api_key_env: the environment variable holding the API key, if the
    server needs one; concurrency: requests in flight at once; timeout: seconds per request;
    retries: tries after the first; top_logprobs: K, the tokens visible per position; backoff:
    seconds before the first retry, doubled on each. `judge` names the judge in messages."""

    def __init__(self, url: str, model: str, *, api: str = "completions", api_key_env: str | None = None,
                 concurrency: int = 8, timeout: float = 30.0, retries: int = 3, top_logprobs: int = 20,
                 backoff: float = 0.5, judge: str = "judge"):
        at = f"judge '{judge}': openai({url!r})"
        problems = []
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            problems.append((f"url {url!r} is not an http:// or https:// address", 'e.g. "http://127.0.0.1:8000/v1"'))
        if api not in APIS:
            problems.append((f"api {api!r} is not one of {', '.join(APIS)}",
                             "completions sends the prompt as it is; chat wraps it in the server's chat template"))
        whole = (("concurrency", concurrency, 1), ("retries", retries, 0), ("top_logprobs", top_logprobs, 1))
        for key, value, low in whole:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                problems.append((f"{key} must be a whole number >= {low}, got {value!r}", f"e.g. {key}: {max(low, 3)}"))
        for key, value in (("timeout", timeout), ("backoff", backoff)):
            if not isinstance(value, (int, float)) or not value >= 0 or (key == "timeout" and value == 0):
                problems.append((f"{key} must be a positive number of seconds, got {value!r}", f"e.g. {key}: 30"))
        if not model:
            problems.append(("the served model's name is missing", 'write model: "NAME", the name the server lists '
                                                                   "at /v1/models"))
        if problems:
            raise JudgeError(f"{at}: " + "; ".join(p for p, _ in problems), help="; ".join(h for _, h in problems))
        self.url, self.model, self.api, self.api_key_env = url.rstrip("/"), model, api, api_key_env
        self.concurrency, self.timeout, self.retries = concurrency, float(timeout), retries
        self.top_logprobs, self.backoff, self.judge = top_logprobs, float(backoff), judge
        self.endpoint = self.url + ("/completions" if api == "completions" else "/chat/completions")
        self.where = self.url
        self.visibility = (f"the server shows only its top {top_logprobs} next tokens, and an answer token "
                           "outside them counts as probability 0")
        self._api_key()  # an unset variable is an error now, not at the first request
        # the URL is part of the identity: a different server may serve a different model under one name
        self.fingerprint = _sha256({"backend": "openai", "url": self.url, "model": model, "api": api,
                                    "top_logprobs": top_logprobs})

    def __repr__(self) -> str:
        key = f", api_key_env={self.api_key_env!r}" if self.api_key_env else ""
        return f"OpenAIEndpoint(url={self.url!r}, model={self.model!r}, api={self.api!r}{key})"

    # ---- the protocol -------------------------------------------------------------------

    def next_tokens(self, queries: Sequence[tuple[str, str]], candidates: Sequence[str]) -> NextTokens:
        probs = torch.zeros(len(queries), len(candidates), dtype=torch.float64)
        top: list[list[tuple[str, float]]] = [[] for _ in queries]
        if not queries:
            return NextTokens(probs, top)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(queries))) as pool:
            futures = [pool.submit(self._query, prompt, prefix) for prompt, prefix in queries]
            try:
                for q, future in enumerate(futures):
                    seen = future.result()  # {surface text: p}
                    for c, text in enumerate(candidates):
                        probs[q, c] = seen.get(text, 0.0)
                    top[q] = sorted(seen.items(), key=lambda item: -item[1])[:5]
            except BaseException:
                for future in futures:  # one failure fails the batch: stop paying for the rest
                    future.cancel()
                raise
        return NextTokens(probs, top)

    def _query(self, prompt: str, prefix: str) -> dict[str, float]:
        if self.api == "completions":
            body = {"model": self.model, "prompt": prompt + prefix, "max_tokens": 1, "temperature": 1.0,
                    "logprobs": self.top_logprobs}
        else:
            messages = [{"role": "user", "content": prompt}]
            body = {"model": self.model, "messages": messages, "max_tokens": 1, "temperature": 1.0,
                    "logprobs": True, "top_logprobs": self.top_logprobs}
            if prefix:
                messages.append({"role": "assistant", "content": prefix})
                body.update(continue_final_message=True, add_generation_prompt=False)
        return self._top_logprobs(self._post(body))

    # ---- one request, with retries ------------------------------------------------------

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode("utf-8")
        at = f"judge '{self.judge}'"
        for attempt in range(self.retries + 1):
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            key = self._api_key()
            if key:
                headers["Authorization"] = f"Bearer {key}"
            request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
            wait = min(self.backoff * 2 ** attempt, MAX_BACKOFF)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as err:
                detail = self._redact(_server_message(err))
                if err.code == 429 or err.code >= 500:
                    retry_after = err.headers.get("Retry-After") if err.headers else None
                    if err.code == 429 and retry_after and retry_after.strip().isdigit():
                        wait = max(wait, min(float(retry_after), MAX_RETRY_AFTER))
                    failure = f"{self.endpoint} answered {err.code} {err.reason}: {detail}"
                else:
                    raise JudgeError(f"{at}: {self.endpoint} refused the request with {err.code} {err.reason}: "
                                     f"{detail}", help=_client_error_help(err.code, self)) from None
            except (TimeoutError, socket.timeout):
                failure = f"no answer from {self.endpoint} within {self.timeout:g} s"
            except urllib.error.URLError as err:
                reason = err.reason
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    failure = f"no answer from {self.endpoint} within {self.timeout:g} s"
                elif isinstance(reason, ConnectionRefusedError):
                    failure = f"cannot reach {self.endpoint}: connection refused"
                else:
                    failure = f"cannot reach {self.endpoint}: {self._redact(str(reason))}"
            except (ConnectionError, http.client.HTTPException) as err:  # reset or closed mid-answer
                failure = f"{self.endpoint} dropped the connection ({type(err).__name__})"
            if attempt < self.retries:
                log.warning("%s: %s; retry %d of %d in %.2g s", at, failure, attempt + 1, self.retries, wait)
                time.sleep(wait)
        else:
            tries = f"{self.retries + 1} tries" if self.retries else "1 try"
            if "connection refused" in failure:
                raise JudgeError(f"{at}: {failure}; start the server or fix `url` ({tries})",
                                 help="an OpenAI-compatible server must listen there: `vllm serve MODEL` (port 8000), "
                                      "`llama-server -m MODEL.gguf` (port 8080) or `ollama serve` (port 11434); "
                                      "`url` is the API root, ending in /v1")
            if "no answer" in failure:
                raise JudgeError(f"{at}: {failure} ({tries})",
                                 help="raise `timeout`, lower `concurrency`, or check the server's load")
            raise JudgeError(f"{at}: {failure} ({tries})",
                             help="the server failed on its side; its log says why; raise `retries` for a busy server")
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise JudgeError(f"{at}: {self.endpoint} answered with something that is not JSON: "
                             f"{self._redact(raw[:200].decode('utf-8', 'replace'))!r}",
                             help="`url` must be an OpenAI-compatible API root, ending in /v1") from None

    def _top_logprobs(self, body: dict) -> dict[str, float]:
        """{token text: probability} of the first generated position, spellings merged."""
        at = f"judge '{self.judge}'"
        choices = body.get("choices") if isinstance(body, dict) else None
        if not choices or not isinstance(choices[0], dict):
            raise JudgeError(f"{at}: {self.endpoint} answered without `choices`: {self._redact(str(body)[:200])}",
                             help="`url` must be an OpenAI-compatible API root, ending in /v1")
        logprobs = choices[0].get("logprobs") or {}
        first = None
        if isinstance(logprobs.get("top_logprobs"), list) and logprobs["top_logprobs"]:
            first = logprobs["top_logprobs"][0]  # completions: [{token: logprob}, ...], one per position
        elif isinstance(logprobs.get("content"), list) and logprobs["content"]:
            first = logprobs["content"][0].get("top_logprobs")  # chat: [{token, logprob, top_logprobs}, ...]
        if isinstance(first, list):
            first = [(e.get("token"), e.get("logprob")) for e in first if isinstance(e, dict)]
        elif isinstance(first, dict):
            first = list(first.items())
        if not first:
            raise JudgeError(f"{at}: the server at {self.endpoint} returned no logprobs, and the judge reads its "
                             "label from them", help=NO_LOGPROBS_HELP)
        seen: dict[str, float] = {}
        for token, logprob in first:
            if isinstance(token, str) and isinstance(logprob, (int, float)) and not math.isnan(logprob):
                text = surface(token)
                seen[text] = seen.get(text, 0.0) + math.exp(logprob)  # two ids with one text are one answer
        return seen

    # ---- the key --------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise JudgeError(f"judge '{self.judge}': api_key_env names the environment variable "
                             f"{self.api_key_env}, which is not set",
                             help=f"export {self.api_key_env}=... before the run (the key is read from there "
                                  "only, and never written to the run directory), or drop api_key_env")
        return key

    def _redact(self, text: str) -> str:
        """A server's text with the key blanked out, should it echo the request's headers."""
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return text.replace(key, "***") if key else text


def openai_judge(url: str, model: str, *, name: str = "judge", api: str = "completions",
                 api_key_env: str | None = None, concurrency: int = 8, timeout: float = 30.0, retries: int = 3,
                 top_logprobs: int = 20, backoff: float = 0.5, **labeller) -> LMJudge:
    """An `LMJudge` over an OpenAI-compatible server; `labeller` holds LMJudge's keywords (task,
    template, principles, principles_mode, min_answer_mass)."""
    endpoint = OpenAIEndpoint(url, model, api=api, api_key_env=api_key_env, concurrency=concurrency,
                              timeout=timeout, retries=retries, top_logprobs=top_logprobs, backoff=backoff,
                              judge=name)
    return LMJudge(endpoint, name=name, **labeller)


OPENAI_OPTIONS = ("url", "model", "api", "api_key_env", "concurrency", "timeout", "retries", "top_logprobs",
                  "backoff") + LABELLER_OPTIONS


def from_options(options: dict, *, name: str = "judge") -> LMJudge:
    """An HTTP judge from its options (OPENAI_OPTIONS; `url` and `model` are required)."""
    where = f"judge '{name}'"
    check_options(options, OPENAI_OPTIONS, where)
    missing = [k for k in ("url", "model") if k not in options]
    if missing:
        raise JudgeError(f"{where}: openai(...) needs {' and '.join(missing)}",
                         help='write openai(url: "http://127.0.0.1:8000/v1", model: "NAME")')
    endpoint = {k: options[k] for k in OPENAI_OPTIONS if k in options and k not in LABELLER_OPTIONS}
    return openai_judge(name=name, **endpoint, **labeller_options(options))


# ----------------------------------------------------------------------------- helpers


def _server_message(err: urllib.error.HTTPError) -> str:
    """The error message of a server's answer: OpenAI's {"error": {"message": ...}}, else its text."""
    try:
        raw = err.read()
    except Exception:  # the body may be gone with the connection
        return "(no body)"
    try:
        body = json.loads(raw)
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message", error) if isinstance(error, dict) else error
        return str(message)[:300]
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return raw[:300].decode("utf-8", "replace") or "(no body)"


def _client_error_help(code: int, endpoint: OpenAIEndpoint) -> str:
    if code in (401, 403):
        where = f"the variable {endpoint.api_key_env}" if endpoint.api_key_env else "`api_key_env` (none is set)"
        return f"the server wants an API key: check {where}"
    if code == 404:
        return (f"check `model` ({endpoint.model!r} must be a name the server lists at {endpoint.url}/models) and "
                f"`api` ({endpoint.api}: {endpoint.endpoint} must exist)")
    if code == 400:
        return ("the server refused the request body; if its message is about logprobs, lower `top_logprobs` to "
                "what it allows (vLLM: --max-logprobs, default 20)")
    return "the server refused the request itself (not a passing failure), so it was not retried"


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()

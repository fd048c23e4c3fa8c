"""A loopback OpenAI-compatible server that really runs a tiny model, and the tiny checkpoints
the judge tests read.

    path = tiny_checkpoint(tmp / "ckpt")          # GPT-2 (transformers) + a word-level tokenizer.json
    with JudgeServer(path) as server:             # 127.0.0.1, a port the OS picks
        server.url                                # http://127.0.0.1:PORT/v1
        server.fail = [500, 500]                  # the next two requests fail, then it answers
        server.drop_logprobs = True               # answers without logprobs (as some servers do)
        server.delay = 1.0                        # waits before answering (past a client's timeout)
        server.hide = {"2"}                       # leaves these tokens out of the top log-probs

It answers /v1/completions and /v1/chat/completions the way vLLM does, with the top log-probs
of the next-token distribution that transformers' GPT2LMHeadModel computes for the prompt:
an implementation independent of lmspec's, so a test that gets the same labels from the local
judge (lmspec's modules) and the HTTP judge (this server) checks both. Its chat template is the
messages' text run together, so a chat query reads the same ids as the completions one.

The word-level vocabulary has 20 tokens, as many as a request's top log-probs may hold
(vLLM's default --max-logprobs): the server shows every token's probability, and a local and
an HTTP judge see the same distribution.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = ["WORDS", "tiny_checkpoint", "tiny_bpe_checkpoint", "JudgeServer", "closed_port"]

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

WORDS = ("<unk>", "<|endoftext|>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", ":",
         "good", "bad", "story", "Answer", "Rating", "Response")
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs


def _gpt2(vocab: int, seed: int, **config) -> transformers.GPT2LMHeadModel:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        # initializer_range 0.2, not GPT-2's 0.02: a random model with opinions, whose labels vary with the text
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=512, n_embd=32, n_layer=2, n_head=4,
                                      initializer_range=0.2, bos_token_id=1, eos_token_id=1, **config)
        return transformers.GPT2LMHeadModel(cfg).eval()


@torch.no_grad()
def tiny_checkpoint(directory: Path, *, seed: int = 0, logit_offsets: dict[str, float] | None = None) -> Path:
    """A random GPT-2 (d_model 32, 2 layers) over WORDS, saved by transformers with its tokenizer.json.

    logit_offsets: {word: c} adds c to that word's logit at every position (and nothing to any
    other word's) through the final norm's bias: with 20 words in 32 dimensions the bias that
    does exactly this exists. {"1": 4.0} makes a judge that answers "1" whatever it reads, the
    way a position-biased labeller favours the first response."""
    directory = Path(directory)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    model = _gpt2(len(WORDS), seed)
    if logit_offsets:
        wte = model.transformer.wte.weight.double()  # (V, d), tied to the LM head
        target = torch.zeros(len(WORDS), dtype=torch.float64)
        for word, c in logit_offsets.items():
            target[WORDS.index(word)] = c
        shift = torch.linalg.lstsq(wte, target[:, None]).solution[:, 0]  # wte @ shift = target: (d,)
        model.transformer.ln_f.bias += shift.float()
    model.save_pretrained(directory)
    tok.save(str(directory / "tokenizer.json"))
    return directory


@torch.no_grad()
def tiny_bpe_checkpoint(directory: Path, *, seed: int = 1) -> Path:
    """A random GPT-2 over a byte-level BPE that has both "1" and " 1" ("Ġ1") as tokens, as
    GPT-2's own tokenizer does."""
    directory = Path(directory)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], min_frequency=0,
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["Answer: 1", "Answer: 2", "Response 1 is good", "Response 2 is bad", "a good story"] * 20
    tok.train_from_iterator(corpus, trainer=trainer)
    _gpt2(tok.get_vocab_size(), seed).save_pretrained(directory)
    tok.save(str(directory / "tokenizer.json"))
    return directory


def closed_port() -> int:
    """A loopback port nothing listens on (the OS just handed it out and it was closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JudgeServer:
    """The server; see the module docstring. `requests` holds every request body received,
    `max_in_flight` the most requests it was answering at once."""

    def __init__(self, checkpoint: Path, *, model_name: str = "tiny-judge", api_key: str | None = None):
        self.model = transformers.GPT2LMHeadModel.from_pretrained(checkpoint).eval()
        self.tokenizer = Tokenizer.from_file(str(Path(checkpoint) / "tokenizer.json"))
        self.model_name, self.api_key = model_name, api_key
        self.fail: list[int] = []
        self.drop_logprobs = False
        self.delay = 0.0
        self.hide: set[str] = set()
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()  # guards the counters and the knobs above
        self._model_lock = threading.Lock()  # one forward pass at a time: the tests share 2 cores
        self._http: ThreadingHTTPServer | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> "JudgeServer":
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._http.daemon_threads = True  # a handler still sleeping past a client's timeout does not block stop()
        self._http.judge = self  # type: ignore[attr-defined]
        threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until no request is being answered (a delayed one the client gave up on included)."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)

    @property
    def url(self) -> str:
        assert self._http is not None, "start the server first"
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1"

    # ---- the model ----------------------------------------------------------------------

    @torch.no_grad()
    def next_token_logprobs(self, text: str) -> list[tuple[str, float]]:
        """Every token's text and log-prob after `text`, likeliest first (float32, as servers compute)."""
        ids = self.tokenizer.encode(text).ids
        with self._model_lock:
            logits = self.model(torch.tensor([ids])).logits[0, -1]  # (V,)
        logp = torch.log_softmax(logits.float(), dim=-1)
        order = torch.argsort(logp, descending=True).tolist()
        return [(self.tokenizer.decode([i], skip_special_tokens=False), float(logp[i])) for i in order]

    def answer(self, path: str, body: dict, headers) -> tuple[int, dict]:
        with self._lock:
            failure = self.fail.pop(0) if self.fail else None
            drop, hide = self.drop_logprobs, set(self.hide)
        if failure is not None:
            return failure, _error(f"injected failure {failure}", failure)
        if self.api_key is not None and headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, _error("invalid API key", 401)
        if path not in ("/v1/completions", "/v1/chat/completions"):
            return 404, _error(f"no route {path}", 404)
        if body.get("model") != self.model_name:
            return 404, _error(f"The model `{body.get('model')}` does not exist.", 404)
        chat = path.endswith("/chat/completions")
        if chat:
            text = "".join(m["content"] for m in body["messages"])
            k = body.get("top_logprobs") if body.get("logprobs") else None
        else:
            text = body["prompt"]
            k = body.get("logprobs")
        if k is not None and k > MAX_LOGPROBS:
            return 400, _error(f"Requested logprobs of {k}, which is greater than max allowed: {MAX_LOGPROBS}", 400)
        ranked = self.next_token_logprobs(text)
        token, logprob = ranked[0]  # greedy: the sampled token is never what a judge reads
        top = [(t, lp) for t, lp in ranked if t not in hide][:k or 0]
        if chat:
            entry = {"token": token, "logprob": logprob, "bytes": list(token.encode()),
                     "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top]}
            choice = {"index": 0, "message": {"role": "assistant", "content": token},
                      "logprobs": None if drop or k is None else {"content": [entry]}, "finish_reason": "length"}
        else:
            logprobs = {"tokens": [token], "token_logprobs": [logprob], "top_logprobs": [dict(top)],
                        "text_offset": [len(text)]}
            choice = {"index": 0, "text": token, "logprobs": None if drop or k is None else logprobs,
                      "finish_reason": "length"}
        return 200, {"id": "cmpl-test", "object": "chat.completion" if chat else "text_completion",
                     "created": int(time.time()), "model": self.model_name, "choices": [choice]}


def _error(message: str, code: int) -> dict:
    return {"error": {"message": message, "type": "BadRequestError" if code < 500 else "InternalServerError",
                      "code": code}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        judge: JudgeServer = self.server.judge  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with judge._lock:
            judge.requests.append(body)
            judge.in_flight += 1
            judge.max_in_flight = max(judge.max_in_flight, judge.in_flight)
        try:
            if judge.delay:
                time.sleep(judge.delay)
            status, answer = judge.answer(self.path, body, self.headers)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): nothing to answer
        finally:
            with judge._lock:
                judge.in_flight -= 1

    def log_message(self, format, *args) -> None:  # noqa: A002
        pass  # quiet: the tests read the counters, not a request log

"""Design rules about judges: what each kind of judge needs to answer, checked before launch.

    LMS051  a rule's regex that does not compile, or an LM judge's template whose placeholders are
            unknown, missing, or leave its principles nowhere to go
    LMS052  an hf("dir") judge that is not a local causal LM checkpoint with a tokenizer.json
    LMS053  an openai(...) judge whose url is not an API root, or whose api_key_env is no variable
            name (or is the key itself)
    LMS054  a pairwise judge (an LM judge with task: compare) where responses are scored one at a
            time: a term of a sum, an rl reward, an rl eval judge
    LMS099  debias: swap with a judge that scores each response alone (warning)

Which keys each kind of judge takes (LMS045, LMS098) is the schema's check
(`compiler.schema_check`); a cycle of sums of judges is LMS079, found in the experiment graph.
Nothing here imports torch: an hf judge's config.json and safetensors headers are read as JSON,
and whether the API key's variable is set is left to the run (`runtime.judges.build`).
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Iterator

from lmspec.compiler import schema as S
from lmspec.compiler.compile import spec_relative
from lmspec.diagnostics import CODES, Diagnostic, Label, Span, closest
from lmspec.grammar.parser import _unescape

__all__ = ["JUDGE_RULES", "judge_kind", "pairwise", "PLACEHOLDERS", "REQUIRED"]

CODES.setdefault("LMS051", "a judge's regex or template that cannot be read")
CODES.setdefault("LMS052", "an hf(...) judge that is not a local causal LM checkpoint with a tokenizer.json")
CODES.setdefault("LMS053", "an openai(...) judge whose url or api_key_env cannot be right")
CODES.setdefault("LMS054", "a pairwise judge where responses are scored one at a time")
CODES.setdefault("LMS099", "debias: swap with a judge that scores each response alone (warning)")

# The placeholders of an LM judge's template, as lmspec.runtime.judges.templates fills them (the
# compiler does not import the runtime; a test holds the two tables together).
PLACEHOLDERS = {"compare": ("principle", "prompt", "a", "b"), "rate": ("principle", "prompt", "response")}
REQUIRED = {"compare": ("a", "b"), "rate": ("response",)}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_PREFIXES = ("sk-", "sk_", "hf_", "gsk_", "ghp_", "github_pat_", "xai-", "Bearer ")
_STRING = re.compile(r'"([^"\\\n]|\\[^\n])*"')  # the lexer's STRING


def _err(code: str, message: str, span, help: str, labels: list[Label] | None = None) -> Diagnostic:
    return Diagnostic("error", code, message, span, labels or [], help)


def judge_kind(judge: S.JudgeSpec) -> str:
    """model (trained in the spec) | hf | openai (LM judges) | rule | sum."""
    if isinstance(judge.model, S.ModelUse):
        return "model"
    if judge.model is not None:
        return judge.model.kind
    return "sum" if isinstance(judge.score, S.ScoreSum) else "rule"


def pairwise(judge: S.JudgeSpec) -> bool:
    """Whether the judge compares pairs and gives no score to a single response."""
    return judge_kind(judge) in ("hf", "openai") and judge.task == "compare"


# ------------------------------------------------------------------------------- spans inside values


def _source(x, span: Span) -> str:
    return x.validated.resolved.sources.get(span.file, "")


def _sub_span(x, span: Span, start: int, end: int) -> Span:
    """The span of characters [start, end) of the text at `span` (offsets into that text)."""
    text, a, b = _source(x, span), span.start + start, span.start + end

    def line_col(offset: int) -> tuple[int, int]:
        return text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)

    return Span(span.file, *line_col(a), *line_col(b), a, b)


def _raw_offsets(raw: str) -> list[int]:
    """The offset in a string literal as written (`"..."`, quotes and escapes included) of each
    character of its value, and of its closing quote: lmspec.grammar.parser's unescaping, in
    which \\n \\t \\" \\\\ are one character and any other backslash stays as written."""
    out, i, end = [], 1, len(raw) - 1
    while i < end:
        if raw[i] == "\\" and i + 1 < end:
            out += [i] if raw[i + 1] in 'nt"\\' else [i, i + 1]
            i += 2
        else:
            out.append(i)
            i += 1
    return out + [i]


def _in_string(x, span: Span, start: int, end: int) -> Span:
    """The span of characters [start, end) of the value of the string literal at `span`."""
    raw = _source(x, span)[span.start:span.end]
    if not raw.startswith('"'):
        return span
    offsets = _raw_offsets(raw)
    return _sub_span(x, span, offsets[start], offsets[end])


def _term_span(x, span: Span, name: str | None = None, string: str | None = None) -> Span:
    """Where a term of a sum is written inside the expression at `span`: the bare `name`, or the
    string literal whose value is `string`; the whole expression when it cannot be told."""
    raw = _source(x, span)[span.start:span.end]
    if string is not None:
        hit = next((m for m in _STRING.finditer(raw) if _unescape(m.group(0)) == string), None)
    else:
        blanked = _STRING.sub(lambda m: " " * len(m.group(0)), raw)  # a name inside a string is no term
        hit = re.search(rf"(?<![\w.]){re.escape(name)}(?![\w(])", blanked)
    return _sub_span(x, span, hit.start(), hit.end()) if hit else span


def _regexes(judge: S.JudgeSpec) -> Iterator[tuple[str, bool]]:
    """(pattern, inside a sum) of every regex rule of the judge's score."""
    if isinstance(judge.score, S.RegexScore):
        yield judge.score.pattern, False
    elif isinstance(judge.score, S.ScoreSum):
        for term in judge.score.terms:
            if isinstance(term.judge, S.RegexScore):
                yield term.judge.pattern, True


# ------------------------------------------------------------------------------- rules


def text_rule(x) -> Iterator[Diagnostic]:
    """LMS051: a regex rule compiles; an LM judge's template has the placeholders of its task."""
    for name, judge in x.of_kind("judge").items():
        block = x.block(name)
        for pattern, in_sum in _regexes(judge):
            try:
                re.compile(pattern)
            except re.error as err:
                span = (_term_span(x, block.span_of(("score",)), string=pattern) if in_sum
                        else block.span_of(("score", "pattern")))
                yield _err("LMS051", f"regex(\"{pattern}\") of judge '{name}' does not compile: {err.msg} at "
                           f"position {err.pos}", span,
                           help="write a Python regular expression (the syntax of the `re` module): a literal "
                                "bracket or parenthesis is escaped, `\\(`")
        if judge_kind(judge) not in ("hf", "openai") or judge.prompt is None:
            continue
        yield from _template(x, name, judge)


def _template(x, name: str, judge: S.JudgeSpec) -> Iterator[Diagnostic]:
    block, task, template = x.block(name), judge.task, judge.prompt
    span = block.span_of(("prompt",))
    known = PLACEHOLDERS[task]
    may_use = ", ".join("{" + k + "}" for k in known)
    found = [(m.group(1), m.start(), m.end()) for m in _PLACEHOLDER.finditer(template)]
    for key, start, end in found:
        if key not in known:
            near = closest(key, known)
            yield _err("LMS051", f"the {task} template of judge '{name}' has a placeholder {{{key}}} that nothing "
                       "fills" + (f"; did you mean {{{near}}}?" if near else ""), _in_string(x, span, start, end),
                       help=f"a {task} template may use {may_use}; other braces are kept as written")
    names = {key for key, _, _ in found}
    missing = [k for k in REQUIRED[task] if k not in names]
    if missing:
        shown = " and ".join("{" + k + "}" for k in missing)
        yield _err("LMS051", f"the {task} template of judge '{name}' has no {shown}, so the judge would never "
                   "see what it judges", span, help=f"place {shown} in the template (a {task} template may use "
                   f"{may_use})")
    if judge.principles and "principle" not in names:
        yield _err("LMS051", f"judge '{name}' has {len(judge.principles)} principle"
                   f"{'s' * (len(judge.principles) != 1)}, and its template has no {{principle}} to put them in",
                   block.span_of(("principles",)), labels=[Label(span, "the template")],
                   help="add {principle} to the template, or drop `principles`")


def hf_rule(x) -> Iterator[Diagnostic]:
    """LMS052: an hf("dir") judge's directory holds a causal LM that lmspec imports (its
    config.json and its safetensors headers, read without torch) and a tokenizer.json."""
    for name, judge in x.of_kind("judge").items():
        if judge_kind(judge) != "hf":
            continue
        block = x.block(name)
        path = spec_relative(judge.model.path, block.span.file)
        problem = _hf_problem(path)
        if problem is not None:
            what, help = problem
            yield _err("LMS052", f"judge '{name}': hf(\"{judge.model.path}\") {what}", block.span_of(("model",)),
                       help=help)


def _hf_problem(path: Path) -> tuple[str, str] | None:
    from lmspec.compiler.hf import HFError, arch_from_hf_config, read_hf_config
    from lmspec.compiler.hf.files import tensor_shapes

    where = f"paths are relative to the spec's folder; looked for {path}"
    if not path.exists():
        return "does not exist", f"give a local Hugging Face checkpoint directory (config.json, model.safetensors, " \
                                 f"tokenizer.json); nothing is downloaded; {where}"
    if not path.is_dir():
        return "is not a directory", f"give the checkpoint's directory, not a file in it; {where}"
    try:
        config = read_hf_config(path)
        arch = arch_from_hf_config(config, "judge", tensor_names=tensor_shapes(path).keys())
    except HFError as err:
        first = str(err).splitlines()[0].removeprefix(f"{path}: ")
        return f"cannot be read as a checkpoint: {first}", "an LM judge needs a causal LM that lmspec imports " \
                                                          "(gpt2, llama or mistral), saved with safetensors"
    if arch.encoder is not None or arch.decoder is None or arch.head("lm") is None:
        shape = ("an encoder-decoder" if arch.encoder is not None and arch.decoder is not None else
                 "an encoder" if arch.decoder is None else "a decoder without an LM head")
        saved = (config.get("architectures") or [config.get("model_type")])[0]
        return (f"holds {shape} ({saved}), not a causal language model: an LM judge reads the next token a "
                "decoder writes after the prompt", "use a causal LM checkpoint saved with its LM head "
                "(GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM)")
    if not (path / "tokenizer.json").is_file():
        return ("has no tokenizer.json, so the judge cannot read text", "lmspec reads fast (Rust) tokenizers; "
                "`AutoTokenizer.from_pretrained(dir).save_pretrained(dir)` with transformers writes one")
    return None


def openai_rule(x) -> Iterator[Diagnostic]:
    """LMS053: an openai(...) judge's url is an http(s) API root; api_key_env names an
    environment variable, and is not the key itself. (Whether it is set is known at run time.)"""
    for name, judge in x.of_kind("judge").items():
        if judge_kind(judge) != "openai":
            continue
        block, server = x.block(name), judge.model

        def at(key: str) -> Span:
            return block.span_of(("model", key))

        url = urllib.parse.urlsplit(server.url)
        if url.scheme not in ("http", "https") or not url.netloc:
            guess = f"http://{server.url}" if not url.scheme or not url.netloc else None
            yield _err("LMS053", f"judge '{name}': url \"{server.url}\" is not an http:// or https:// address",
                       at("url"), help=f'write url: "{guess}"' if guess and "://" not in server.url
                       else 'write the server\'s API root, e.g. url: "http://127.0.0.1:8000/v1"')
        else:
            endpoint = next((e for e in ("/chat/completions", "/completions") if url.path.rstrip("/").endswith(e)),
                            None)
            if endpoint:
                root = server.url.rstrip("/")[:-len(endpoint)]
                yield _err("LMS053", f"judge '{name}': url \"{server.url}\" names the endpoint {endpoint}; the "
                           "judge adds it to the API root itself", at("url"),
                           help=f'write url: "{root}" (`api: chat` asks /chat/completions)')
        key_env = server.api_key_env
        if key_env is None:
            continue
        if key_env.startswith(_KEY_PREFIXES) or (len(key_env) >= 24 and any(c.isdigit() for c in key_env)
                                                 and any(c.islower() for c in key_env)):
            yield _err("LMS053", f"judge '{name}': api_key_env holds the name of the environment variable with "
                       f"the API key, and \"{key_env[:4]}...\" looks like a key itself", at("api_key_env"),
                       help="never write a key in a spec: `export JUDGE_API_KEY=...` in the shell that runs "
                            "lmspec, write `api_key_env: \"JUDGE_API_KEY\"`, and revoke the key written here")
        elif not _ENV_NAME.fullmatch(key_env):
            yield _err("LMS053", f"judge '{name}': api_key_env \"{key_env}\" is not the name of an environment "
                       "variable (letters, digits and _, not starting with a digit)", at("api_key_env"),
                       help='e.g. api_key_env: "JUDGE_API_KEY"')


def pairwise_rule(x) -> Iterator[Diagnostic]:
    """LMS054: a judge with task: compare answers only "which of two is better": it cannot be a
    term of a sum, an rl reward or an rl eval judge, which score responses one at a time."""
    judges = x.of_kind("judge")

    def compares(ref: str) -> bool:
        return ref in judges and pairwise(judges[ref])

    def fix(ref: str) -> str:
        return f"write `task: rate` in judge '{ref}' (its 1-10 rating is a score of one response)"

    def label(ref: str) -> list[Label]:
        return [Label(x.block(ref).span_of(("model",)), f"'{ref}' compares pairs")]

    for name, judge in judges.items():
        if not isinstance(judge.score, S.ScoreSum):
            continue
        span = x.block(name).span_of(("score",))
        for term in judge.score.terms:
            if isinstance(term.judge, str) and compares(term.judge):
                yield _err("LMS054", f"judge '{name}' adds the score of judge '{term.judge}', which compares two "
                           "responses (task: compare) and gives no score to one",
                           _term_span(x, span, name=term.judge), help=f"{fix(term.judge)}, or leave it out of the "
                           "sum", labels=label(term.judge))
    for name, rl in x.of_kind("rl").items():
        block = x.block(name)
        if compares(rl.reward):
            yield _err("LMS054", f"the reward of rl '{name}' is judge '{rl.reward}', which compares two responses "
                       "(task: compare) and gives no reward to one", block.span_of(("reward",)),
                       help=f"{fix(rl.reward)}; or label pairs with it in a feedback block and train a reward model "
                            "on them", labels=label(rl.reward))
        for i, ref in enumerate(rl.eval_judges):
            if compares(ref):
                yield _err("LMS054", f"eval judge '{ref}' of rl '{name}' compares two responses (task: compare) and "
                           "gives no score to one held-out sample", block.span_of(("eval_judges", i)),
                           help=f"{fix(ref)}, or leave it out of eval_judges", labels=label(ref))


def swap_rule(x) -> Iterator[Diagnostic]:
    """LMS099 (warning): `debias: swap` asks the judge about both orders of each pair, which
    removes the position bias of a judge that compares; one that scores each response alone
    answers the two orders alike, so swapping changes no label."""
    judges = x.of_kind("judge")
    for name, feedback in x.of_kind("feedback").items():
        judge = judges.get(feedback.judge)
        if feedback.debias != "swap" or judge is None or pairwise(judge):
            continue
        kinds = {"model": "a model judge", "rule": "a rule", "sum": "a sum of judges"}
        kind = kinds.get(judge_kind(judge), "an LM judge with task: rate")
        yield Diagnostic("warning", "LMS099", f"feedback '{name}' asks judge '{feedback.judge}' about both orders of "
                         f"each pair (debias: swap), but {kind} scores each response alone: both orders get the same "
                         "label", x.block(name).span_of(("debias",)),
                         [Label(x.block(feedback.judge).name_span, f"'{feedback.judge}' is {kind}")],
                         help="remove `debias: swap`; it is for an LM judge that compares two responses "
                              "(task: compare)")


JUDGE_RULES = [text_rule, hf_rule, openai_rule, pairwise_rule, swap_rule]

"""Design rules about tokenizers: how many ids each produces, and the models that read them.

    LMS073  a model whose vocabulary is smaller than its tokenizer's
    LMS074  a stage that does not say which of several tokenizers it uses
    LMS092  `tok.vocab_size` of a tokenizer whose size cannot be known when the spec is read
    LMS101  a bpe tokenizer that cannot be learned as written: no data to learn from, a vocab
            below its fixed tokens, or above what its built-in corpus yields
    LMS071  special tokens an objective needs besides mask (eos for sft and span_corruption,
            cls and sep for nsp; mask and sentinels are checked with the objective's fit)

A tokenizer's size is known without running anything: `bytes` has 256 ids and its specials and
sentinels, `bpe(vocab: N)` has N, and `hf("dir")` has what its tokenizer.json lists (read here
with `json`: the compiler does not import the runtime).

A bpe tokenizer learns merges until its vocabulary is full or its text has no pair left to
merge. The built-in corpora are generated deterministically, so how many merges each yields is
a constant of the corpus version (`BUILTIN_BPE_MERGES`, measured with the runtime's trainer: a
test retrains and compares); for text and jsonl files it is known only once the tokenizer is
trained, at run time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from lmspec.compiler import schema as S
from lmspec.compiler.compile import spec_relative
from lmspec.compiler.resolve import ResolvedBlock, ResolvedSpec
from lmspec.compiler.values import CallValue
from lmspec.diagnostics import CODES, Diagnostic, Label, Span

__all__ = ["TOKEN_RULES", "tokenizer_vocab_size", "hf_tokenizer_file", "hf_vocab_size", "unknown_value_rule"]

CODES.update({
    "LMS101": "a bpe tokenizer that cannot be learned as written (its data, or a vocab it cannot fill)",
    "LMS073": "the model's vocabulary is smaller than its tokenizer's",
    "LMS074": "a stage does not say which of several tokenizers it uses",
    "LMS092": "a value that cannot be known when the spec is read (an unknown tokenizer's vocab_size)",
})


def _err(code: str, message: str, span, help: str | None = None, labels: list[Label] | None = None) -> Diagnostic:
    return Diagnostic("error", code, message, span, labels=labels or [], help=help)


# ------------------------------------------------------------------------------- tokenizer sizes


def hf_tokenizer_file(path: str, spec_file: str) -> Path:
    """The tokenizer.json that `hf("path")` names, as the runtime finds it: the path itself
    when it is a .json file, else the file tokenizer.json in that directory."""
    target = spec_relative(path, spec_file)
    return target if target.suffix == ".json" and target.is_file() else target / "tokenizer.json"


def hf_vocab_size(file: Path) -> int | None:
    """How many ids a tokenizer.json can produce: its largest id + 1, counting added tokens
    (the runtime's `max(get_vocab(with_added_tokens=True).values()) + 1`); None when the file
    is missing or not a tokenizer.json."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    ids: list[int] = []
    vocab = data.get("model", {}).get("vocab") if isinstance(data.get("model"), dict) else None
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel: token -> id
        ids += [i for i in vocab.values() if isinstance(i, int)]
    elif isinstance(vocab, list) and vocab:  # Unigram: [token, score] pairs, the id is the position
        ids.append(len(vocab) - 1)
    ids += [t["id"] for t in data.get("added_tokens") or [] if isinstance(t, dict) and isinstance(t.get("id"), int)]
    return max(ids) + 1 if ids else None


def tokenizer_vocab_size(spec: S.TokenizerSpec, spec_file: str = "<string>") -> int | None:
    """How many ids a tokenizer produces (what `tok.vocab_size` reads); None for an hf(...)
    whose tokenizer.json is missing or unreadable. `spec_file` anchors a relative hf path."""
    if spec.kind.kind == "bytes":
        return 256 + len(spec.specials) + spec.sentinels
    if spec.kind.kind == "bpe":
        return spec.kind.vocab
    return hf_vocab_size(hf_tokenizer_file(spec.kind.path, spec_file))


# ------------------------------------------------------------------------------- unknown values


_VOCAB_SIZE = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\.\s*vocab_size\b")


def _unknown_paths(block: ResolvedBlock) -> Iterator[tuple]:
    """Paths of the values resolution left without a value (None) in a block."""
    def walk(value: Any, path: tuple) -> Iterator[tuple]:
        if value is None:
            yield path
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from walk(item, path + (i,))
        elif isinstance(value, CallValue):  # bpe(vocab: ...)
            for i, arg in enumerate(value.args):
                yield from walk(arg, path + (i,))
            for key, arg in value.kw.items():
                yield from walk(arg, path + (key,))

    for key, value in block.fields.items():
        yield from walk(value, (key,))
    for name, nested in block.nested.items():
        for key, value in nested.fields.items():
            yield from walk(value, (name, key))
    for i, layer in enumerate(block.layers):
        for key, value in layer.fields.items():
            yield from walk(value, ("layer", i, key))


def _sub_span(span: Span, text: str, start: int, end: int) -> Span:
    """The span of text[start:end] (offsets into the whole source)."""
    line = text.count("\n", 0, start) + 1
    col = start - (text.rfind("\n", 0, start) + 1) + 1
    end_line = text.count("\n", 0, end) + 1
    end_col = end - (text.rfind("\n", 0, end) + 1) + 1
    return Span(span.file, line, col, end_line, end_col, start, end)


def _vocab_size_references(span: Span, resolved: ResolvedSpec) -> Iterator[tuple[str, Span]]:
    """Every `NAME.vocab_size` written inside `span`, NAME a tokenizer block."""
    text = resolved.sources.get(span.file)
    if text is None or not (0 <= span.start < span.end <= len(text)):
        return
    for m in _VOCAB_SIZE.finditer(text, span.start, span.end):
        block = resolved.blocks.get(m.group(1))
        if block is not None and block.kind == "tokenizer":
            yield m.group(1), _sub_span(span, text, m.start(), m.end())


def _unknown_vocab_size(tok: str, where: Span, validated) -> Diagnostic | None:
    spec = validated.blocks.get(tok)
    if spec is None:
        return None  # the tokenizer block has errors of its own, reported there
    block = validated.resolved.blocks[tok]
    label = [Label(block.span_of(("kind",)), f"tokenizer '{tok}'")]
    if spec.kind.kind == "hf":
        file = hf_tokenizer_file(spec.kind.path, block.span.file)
        size = hf_vocab_size(file)
        if size is None:
            reason = ("has no tokenizer.json to read it from" if not file.is_file()
                      else f"names {file}, which is not a tokenizer.json lmspec can read")
            return _err("LMS092", f"the vocab_size of '{tok}' is unknown: hf(\"{spec.kind.path}\") {reason}", where,
                        help="write the number (`vocab: N`), or point hf(...) at a directory with tokenizer.json",
                        labels=label)
        help = f"write the number: `vocab: {size}`, the ids of {file}"
    elif spec.kind.kind == "bpe":
        help = f"give bpe(vocab: N) or a number (`vocab: {spec.kind.vocab}`)"
    else:
        help = f"write the number: `vocab: {tokenizer_vocab_size(spec)}`"
    return _err("LMS092", f"the vocab_size of '{tok}' is unknown when the spec is read", where, help=help,
                labels=label)


def unknown_value_rule(validated) -> Iterator[Diagnostic]:
    """LMS092: a block whose value resolution could not compute is never skipped in silence.
    Such a block does not validate; without this rule a model reading `tok.vocab_size` of a
    tokenizer of unknown size would vanish from every later check, figure and graph."""
    resolved = validated.resolved
    quiet = not any(d.is_error for d in validated.diagnostics)  # nothing else explains a missing value
    for name, block in resolved.blocks.items():
        if name in validated.blocks:
            continue
        for path in _unknown_paths(block):
            span = block.span_of(path)
            found = [d for tok, where in _vocab_size_references(span, resolved)
                     if (d := _unknown_vocab_size(tok, where, validated)) is not None]
            yield from found
            if not found and quiet:
                key = ".".join(str(p) for p in path)
                yield _err("LMS092", f"the value of '{key}' in {block.kind} '{name}' cannot be computed", span,
                           help="write the value as a number or a name")


# ------------------------------------------------------------------------------- vocabulary


def vocab_rule(x) -> Iterator[Diagnostic]:
    """LMS073: the model's embedding has a row for every id its tokenizer produces.
    LMS074: with several tokenizers, a train stage must name one."""
    tokenizers = list(x.of_kind("tokenizer"))
    seen = set()
    for name, stage in x.of_kind("train").items():
        block = x.block(name)
        if stage.tokenizer is None and len(tokenizers) > 1:
            yield _err("LMS074", f"train '{name}' does not say which tokenizer it uses; the spec has "
                       f"{len(tokenizers)}: {', '.join(tokenizers)}", block.name_span,
                       help=f"add `tokenizer: {tokenizers[0]}` (or another) to '{name}'")
            continue
        arch = x.arch_of(stage.model)
        tok = x.tokenizer_of(stage)
        tok_spec = x.validated.blocks.get(tok) if tok else None
        if arch is None or tok_spec is None:
            continue
        size = tokenizer_vocab_size(tok_spec, x.block(tok).span.file)
        if size is None or arch.vocab >= size or (stage.model.model, tok) in seen:
            continue
        seen.add((stage.model.model, tok))
        model_block = x.block(stage.model.model)
        span = block.span_of(("tokenizer",)) if stage.tokenizer is not None else block.span_of(("model",))
        yield _err("LMS073", f"model '{stage.model.model}' has vocab {arch.vocab}, but tokenizer '{tok}' produces "
                   f"{size} ids", model_block.span_of(("vocab",)),
                   help=f"write `vocab: {tok}.vocab_size` (or any number >= {size})",
                   labels=[Label(span, f"train '{name}' pairs them here")])


# ------------------------------------------------------------------------------- bpe training

#: the version of the built-in corpora the figures below were measured on (runtime.data.builtin.VERSION)
BUILTIN_VERSION = 1
#: merges the runtime's byte-level BPE trainer learns from each whole built-in corpus read with
#: its default fields (the text; tiny-instructions: prompt and response) before no pair is left;
#: a bpe tokenizer learned from it holds at most 256 bytes + specials + sentinels + these
BUILTIN_BPE_MERGES = {"tiny-stories": 1590, "tiny-reviews": 632, "tiny-instructions": 1681}


def _bpe_corpus(x, name: str, spec: S.TokenizerSpec) -> tuple[str | None, str | None]:
    """(the data block a bpe tokenizer learns from, why there is none) as the runtime chooses it:
    `train_on`, else the spec's only data block."""
    if spec.kind.train_on is not None:
        return spec.kind.train_on, None
    data = list(x.validated.resolved.of_kind("data"))
    if len(data) == 1:
        return data[0].name, None
    return None, f"the spec has {len(data) or 'no'} data blocks" + (f" ({', '.join(d.name for d in data)})" if data
                                                                    else "")


def _builtin_yield(spec: S.DataSpec) -> int | None:
    """Merges a built-in corpus yields, when the block reads it with the default fields."""
    src = spec.source
    if src.kind != "builtin" or BUILTIN_BPE_MERGES.get(src.name) is None:
        return None
    defaults = {k: S.DataSpec.model_fields[k].default for k in ("text", "prompt", "response")}
    if any(getattr(spec, k) != v for k, v in defaults.items()):
        return None  # another field: another text, whose merges are not recorded
    return BUILTIN_BPE_MERGES[src.name]


def bpe_rule(x) -> Iterator[Diagnostic]:
    """LMS101: a bpe tokenizer learns its merges from one data block and holds 256 byte symbols,
    its specials and sentinels; from a built-in corpus it learns no more merges than the corpus
    yields. The runtime raises on each of these at setup, after the run directory exists."""
    for name, spec in x.of_kind("tokenizer").items():
        if spec.kind.kind != "bpe":
            continue
        block = x.block(name)
        where = block.span_of(("kind", "vocab")) if ("kind", "vocab") in block.value_spans else block.span_of(("kind",))
        vocab, fixed = spec.kind.vocab, 256 + len(spec.specials) + spec.sentinels
        if vocab < fixed:
            yield _err("LMS101", f"bpe(vocab: {vocab}) of tokenizer '{name}' cannot hold its 256 byte symbols, "
                       f"{len(spec.specials)} specials and {spec.sentinels} sentinels ({fixed} ids)", where,
                       help=f"use bpe(vocab: {fixed}) or more")
            continue
        data, why = _bpe_corpus(x, name, spec)
        if data is None:
            yield _err("LMS101", f"tokenizer '{name}' does not say which data its merges are learned from, and {why}",
                       block.span_of(("kind",)), help=f"write `kind: bpe(vocab: {vocab}, train_on: NAME)`, NAME a "
                       "data block")
            continue
        data_spec = x.validated.blocks.get(data)
        merges = _builtin_yield(data_spec) if isinstance(data_spec, S.DataSpec) else None
        if merges is None or vocab <= fixed + merges:
            continue
        most = fixed + merges
        yield _err("LMS101", f"bpe(vocab: {vocab}) cannot be learned from data '{data}': "
                   f"builtin(\"{data_spec.source.name}\") yields at most {most} tokens ({merges} merges, 256 bytes, "
                   f"{len(spec.specials)} specials, {spec.sentinels} sentinels)", where,
                   help=f"use bpe(vocab: {most}) or less, or kind: bytes",
                   labels=[Label(x.block(data).span_of(("source",)), f"'{data}' is read here")])


# ------------------------------------------------------------------------------- specials

#: specials each objective's batches are built with (mask and sentinels: rules.objective_rule)
NEEDS_SPECIALS = {"sft": ("eos",), "span_corruption": ("eos",), "nsp": ("cls", "sep")}
_WHY = {"sft": "it ends each response with one", "span_corruption": "it ends each target with one",
        "nsp": "it writes each pair as cls A sep B sep"}


def specials_rule(x) -> Iterator[Diagnostic]:
    """LMS071: the specials sft, span_corruption and nsp build their batches with are in the
    stage's tokenizer (the runtime raises at setup without them)."""
    for name, stage in x.of_kind("train").items():
        tok = x.tokenizer_of(stage)
        tok_spec = x.validated.blocks.get(tok) if tok else None
        if tok_spec is None:
            continue  # the default bytes tokenizer has every special; several tokenizers: LMS074
        block, tok_block = x.block(name), x.block(tok)
        for kind in dict.fromkeys(t.objective.kind for t in stage.objective):
            missing = [s for s in NEEDS_SPECIALS.get(kind, ()) if s not in tok_spec.specials]
            if not missing:
                continue
            tokens = " and ".join(missing)
            label_span = tok_block.span_of(("specials",)) if "specials" in tok_block.fields else tok_block.name_span
            needs = f"{tokens} tokens" if len(missing) > 1 else f"{'an' if tokens == 'eos' else 'a'} {tokens} token"
            has = "neither" if len(missing) > 1 else "none"
            yield _err("LMS071", f"objective '{kind}' needs {needs} ({_WHY[kind]}), but tokenizer '{tok}' has {has}",
                       block.span_of(("objective",)),
                       help=f"add {tokens} to `specials:` of tokenizer '{tok}'" + _and_vocab(x, stage, tok_spec,
                                                                                             len(missing)),
                       labels=[Label(label_span, f"specials of '{tok}'")])


def _and_vocab(x, stage, tok_spec: S.TokenizerSpec, added: int) -> str:
    """More ids in a bytes tokenizer need as many more rows in a model whose vocab is a number."""
    arch = x.arch_of(stage.model)
    if arch is None or tok_spec.kind.kind != "bytes":
        return ""
    vocab_span = x.block(stage.model.model).span_of(("vocab",))
    if ".vocab_size" in x.validated.resolved.sources.get(vocab_span.file, "")[vocab_span.start:vocab_span.end]:
        return ""
    size = tokenizer_vocab_size(tok_spec) + added
    return f", and a vocab of at least {size} in model '{stage.model.model}'" if arch.vocab < size else ""


#: rules on the whole experiment (they read an `Experiment`, see compiler.rules)
TOKEN_RULES = [vocab_rule, bpe_rule, specials_rule]

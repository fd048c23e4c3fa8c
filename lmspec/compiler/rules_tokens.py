"""Design rules about tokenizers: how many ids each produces, and the models that read them.

    LMS073  a model whose vocabulary is smaller than its tokenizer's
    LMS074  a stage that does not say which of several tokenizers it uses
    LMS092  `tok.vocab_size` of a tokenizer whose size cannot be known when the spec is read

A tokenizer's size is known without running anything: `bytes` has 256 ids and its specials and
sentinels, `bpe(vocab: N)` has N, and `hf("dir")` has what its tokenizer.json lists (read here
with `json`: the compiler does not import the runtime).
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


#: rules on the whole experiment (they read an `Experiment`, see compiler.rules)
TOKEN_RULES = [vocab_rule]

"""Design rules about tokenizers: how many ids each produces, and the models that read them.

    LMS073  a model whose vocabulary is smaller than its tokenizer's
    LMS074  a stage that does not say which of several tokenizers it uses
    LMS092  `tok.vocab_size` of a tokenizer whose size cannot be known when the spec is read
    LMS101  a bpe tokenizer that cannot be learned as written: no data to learn from, a vocab
            below its fixed tokens, or above what its built-in corpus yields
    LMS071  special tokens an objective needs besides mask (eos for sft and span_corruption,
            cls and sep for nsp; mask and sentinels are checked with the objective's fit), and
            the sentinels of span_corruption in a spec without a tokenizer block
    LMS114  an hf(...) tokenizer whose tokenizer.json lacks specials or sentinels its block lists

A tokenizer's size is known without running anything: `bytes` has 256 ids and its specials and
sentinels, `bpe(vocab: N)` has N, and `hf("dir")` has what its tokenizer.json lists (read here
with `json`: the compiler does not import the runtime). So are the ids of its specials: bytes
puts them at 256.., bpe at 0.., and hf finds them in tokenizer.json by the names its config
files give and by their usual spellings, as the runtime does (`hf_specials`).

A stage that names no tokenizer uses the spec's only tokenizer block; in a spec without one it
uses the default `bytes` tokenizer (256 bytes and the six default specials: 262 ids, no
sentinels), which these rules check like any other (`runtime_tokenizer`).

A bpe tokenizer learns merges until its vocabulary is full or its text has no pair left to
merge. The built-in corpora are generated deterministically, so how many merges each yields is
a constant of the corpus version (`BUILTIN_BPE_MERGES`, measured with the runtime's trainer: a
test retrains and compares); for text and jsonl files it is known only once the tokenizer is
trained, at run time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from lmspec.compiler import schema as S
from lmspec.compiler.compile import spec_relative
from lmspec.compiler.resolve import ResolvedBlock, ResolvedSpec
from lmspec.compiler.values import CallValue
from lmspec.diagnostics import CODES, Diagnostic, Label, Span

__all__ = ["TOKEN_RULES", "tokenizer_vocab_size", "hf_tokenizer_file", "hf_vocab_size", "hf_specials", "special_ids",
           "runtime_tokenizer", "DEFAULT_TOKENIZER", "span_counts", "unknown_value_rule"]

CODES.update({
    "LMS101": "a bpe tokenizer that cannot be learned as written (its data, or a vocab it cannot fill)",
    "LMS073": "the model's vocabulary is smaller than its tokenizer's",
    "LMS074": "a stage does not say which of several tokenizers it uses",
    "LMS092": "a value that cannot be known when the spec is read (an unknown tokenizer's vocab_size)",
})
CODES.setdefault("LMS114", "an hf tokenizer without the specials or sentinels its block lists")

#: what a stage tokenizes with when it names no tokenizer and the spec has none (or several:
#: then LMS074 asks which): runtime.stages.base.RunContext.tokenizer
DEFAULT_TOKENIZER = "bytes"
DEFAULT_TOKENIZER_SPEC = S.TokenizerSpec(kind=S.BytesTokenizer())


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


def runtime_tokenizer(x, name: str | None) -> tuple[str, S.TokenizerSpec | None]:
    """(name, spec) of the tokenizer a stage naming `name` (or none) is given at run time: that
    block, else the spec's only one, else the default bytes tokenizer (RunContext.tokenizer).
    The spec is None for a block with errors of its own."""
    blocks = x.validated.resolved.of_kind("tokenizer")
    if name is None:
        name = blocks[0].name if len(blocks) == 1 else DEFAULT_TOKENIZER
    if name in x.validated.resolved.blocks:
        return name, x.validated.blocks.get(name)
    return name, DEFAULT_TOKENIZER_SPEC


# ------------------------------------------------------------------------------- special ids

SPECIAL_NAMES = ("pad", "bos", "eos", "mask", "sep", "cls", "unk")
#: the usual spellings of each special in an hf tokenizer.json, likeliest first: the table
#: runtime.tokenizers.SPELLINGS looks them up by (a test keeps the two equal)
HF_SPELLINGS = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "bos": ("<s>", "<bos>", "[BOS]", "<|begin_of_text|>", "<|startoftext|>"),
    "eos": ("</s>", "<eos>", "[EOS]", "<|end_of_text|>", "<|endoftext|>"),
    "mask": ("[MASK]", "<mask>", "<|mask|>"),
    "sep": ("[SEP]", "<sep>", "</s>"),
    "cls": ("[CLS]", "<cls>", "<s>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
}


@dataclass
class HFSpecials:
    """What the runtime finds in an hf tokenizer.json: every special of SPECIAL_NAMES it has
    ({name: id}), how many sentinels <extra_id_0>, <extra_id_1>, ... it holds in a row, and
    the contents of its special added tokens (for messages)."""

    found: dict[str, int]
    sentinels: int
    special_tokens: list[str]


def _json_file(path: Path) -> tuple[bool, Any]:
    """(readable, content) of a JSON file; (True, None) when it does not exist."""
    if not path.is_file():
        return True, None
    try:
        return True, json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False, None


def hf_specials(file: Path) -> HFSpecials | str | None:
    """The specials and sentinels of a tokenizer.json, found as `runtime.tokenizers.find_specials`
    finds them: the token its directory's tokenizer_config.json or special_tokens_map.json
    names (the later file winning), else the first usual spelling among the added tokens, else
    in the model's vocabulary. A str names a config file that is not valid JSON (a RunError at
    setup); None when tokenizer.json cannot be read (LMS087 and LMS092 say so)."""
    ok, data = _json_file(file)
    if not ok or not isinstance(data, dict):
        return None
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    vocab = model.get("vocab")
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel: token -> id
        in_model = {t: i for t, i in vocab.items() if isinstance(i, int)}
    elif isinstance(vocab, list):  # Unigram: [token, score] pairs, the id is the position
        in_model = {item[0]: i for i, item in enumerate(vocab) if isinstance(item, list) and item
                    and isinstance(item[0], str)}
    else:
        in_model = {}
    added_tokens = [t for t in data.get("added_tokens") or [] if isinstance(t, dict) and isinstance(t.get("id"), int)]
    added = {t["content"]: t["id"] for t in added_tokens if isinstance(t.get("content"), str)}

    def token_to_id(token: str) -> int | None:  # the added vocabulary first, then the model's
        return added.get(token, in_model.get(token))

    configured: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        ok, config = _json_file(file.parent / name)
        if not ok:
            return f"{file.parent / name} is not valid JSON"
        for special in SPECIAL_NAMES if isinstance(config, dict) else ():
            value = config.get(f"{special}_token")
            if isinstance(value, dict):  # {"content": "</s>", "lstrip": false, ...}
                value = value.get("content")
            if isinstance(value, str):
                configured[special] = value
    found: dict[str, int] = {}
    for special in SPECIAL_NAMES:
        if special in configured and token_to_id(configured[special]) is not None:
            found[special] = token_to_id(configured[special])
            continue
        ids = [added.get(s) for s in HF_SPELLINGS[special]] + [token_to_id(s) for s in HF_SPELLINGS[special]]
        found_id = next((i for i in ids if i is not None), None)
        if found_id is not None:
            found[special] = found_id
    sentinels = 0
    while token_to_id(f"<extra_id_{sentinels}>") is not None:
        sentinels += 1
    special_tokens = sorted(t["content"] for t in added_tokens
                            if t.get("special") and isinstance(t.get("content"), str))
    return HFSpecials(found, sentinels, special_tokens)


def special_ids(spec: S.TokenizerSpec, spec_file: str = "<string>") -> dict[str, int] | None:
    """{special: id} of the specials a tokenizer declares, as the runtime numbers them: bytes
    after the 256 bytes, bpe from 0, hf where its tokenizer.json has them; None for an hf
    tokenizer whose file cannot be read or lacks one of them (LMS114)."""
    if spec.kind.kind == "bytes":
        return {s: 256 + i for i, s in enumerate(spec.specials)}  # a name listed twice: its later id
    if spec.kind.kind == "bpe":  # the trainer adds a name listed twice once
        return {s: i for i, s in enumerate(dict.fromkeys(spec.specials))}
    found = hf_specials(hf_tokenizer_file(spec.kind.path, spec_file))
    if not isinstance(found, HFSpecials) or any(s not in found.found for s in spec.specials):
        return None
    return {s: found.found[s] for s in spec.specials}


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


def _tokenizer_file(x, name: str) -> str:
    """The spec file a tokenizer's relative paths start from (the default one has none)."""
    block = x.validated.resolved.blocks.get(name)
    return block.span.file if block is not None else "<string>"


def _tokenizer_words(x, name: str) -> str:
    block = x.validated.resolved.blocks.get(name)
    return f"tokenizer '{name}'" if block is not None else "the default bytes tokenizer"


def vocab_rule(x) -> Iterator[Diagnostic]:
    """LMS073: the model's embedding has a row for every id its tokenizer produces: the tokenizer
    a train stage names, else the spec's only one, else the default bytes tokenizer (262 ids),
    and the same for a feedback or rl policy that comes from no stage (one that does reads its
    stage's tokenizer, checked there). LMS074: with several tokenizers, a train stage must name one."""
    tokenizers = list(x.of_kind("tokenizer"))
    seen = set()
    pairs = []  # (stage kind, stage, model use, key, tokenizer named)
    for name, stage in x.of_kind("train").items():
        block = x.block(name)
        if stage.tokenizer is None and len(tokenizers) > 1:
            yield _err("LMS074", f"train '{name}' does not say which tokenizer it uses; the spec has "
                       f"{len(tokenizers)}: {', '.join(tokenizers)}", block.name_span,
                       help=f"add `tokenizer: {tokenizers[0]}` (or another) to '{name}'")
            continue
        pairs.append(("train", name, stage.model, "tokenizer" if stage.tokenizer is not None else "model",
                      stage.tokenizer))
    for kind in ("feedback", "rl"):
        pairs += [(kind, name, spec.policy, "policy", None) for name, spec in x.of_kind(kind).items()
                  if spec.policy.stage is None]
    for kind, name, use, key, named in pairs:
        arch = x.arch_of(use)
        tok, tok_spec = runtime_tokenizer(x, named)
        if arch is None or tok_spec is None:
            continue
        size = tokenizer_vocab_size(tok_spec, _tokenizer_file(x, tok))
        if size is None or arch.vocab >= size or (use.model, tok) in seen:
            continue
        seen.add((use.model, tok))
        model_block = x.block(use.model)
        label = [Label(x.block(name).span_of((key,)), f"{kind} '{name}' pairs them here")]
        if tok in x.validated.resolved.blocks:
            yield _err("LMS073", f"model '{use.model}' has vocab {arch.vocab}, but tokenizer '{tok}' produces "
                       f"{size} ids", model_block.span_of(("vocab",)),
                       help=f"write `vocab: {tok}.vocab_size` (or any number >= {size})", labels=label)
        else:
            why = "the spec has no tokenizer block" if not tokenizers else \
                f"its policy comes from no stage, and the spec has {len(tokenizers)} tokenizers"
            yield _err("LMS073", f"model '{use.model}' has vocab {arch.vocab}, but {kind} '{name}' tokenizes with "
                       f"the default bytes tokenizer ({size} ids): {why}", model_block.span_of(("vocab",)),
                       help=f"write `vocab: {size}` (or more), or add a tokenizer block", labels=label)


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


def noise_counts(length: int, noise: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a span_corruption window of `length` tokens: T5's
    arithmetic as runtime.objectives.span_corruption.noise_counts computes it."""
    num_noise = min(max(round(length * noise), 1), length - 1)
    return num_noise, min(max(round(num_noise / mean_span), 1), length - num_noise)


def span_counts(seq_len: int, noise: float, mean_span: float, prefix_decoder: bool) -> tuple[int, int, int] | None:
    """(window, noise tokens, spans) of span_corruption in `seq_len` tokens, as the runtime's
    SpanCorruption chooses them: the longest window whose corrupted input (and, in a prefix-LM
    decoder, its target too) fits seq_len; None when no window fits (a ValueError at setup)."""
    for window in range(seq_len, 0, -1):
        n, s = noise_counts(max(window, 2), noise, mean_span)
        used = window + 2 * s + 1 if prefix_decoder else window - n + s + 1
        if used <= seq_len:
            return window, n, s
    return None


def specials_rule(x) -> Iterator[Diagnostic]:
    """LMS071: the specials sft, span_corruption and nsp build their batches with are in the
    stage's tokenizer (the runtime raises at setup without them). The default bytes tokenizer
    has every special, but no sentinels for span_corruption."""
    for name, stage in x.of_kind("train").items():
        tok = x.tokenizer_of(stage)
        tok_spec = x.validated.blocks.get(tok) if tok else None
        if tok_spec is None:
            if not x.validated.resolved.of_kind("tokenizer"):
                yield from _default_sentinels(x, name, stage)
            continue  # several tokenizers: LMS074
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


def _default_sentinels(x, name: str, stage) -> Iterator[Diagnostic]:
    """LMS071 for span_corruption in a spec without a tokenizer block: the default bytes
    tokenizer has no sentinels (rules.objective_rule checks those of a tokenizer block)."""
    arch = x.arch_of(stage.model)
    for term in stage.objective:
        if term.objective.kind != "span_corruption" or arch is None:
            continue
        o = term.objective
        counts = span_counts(stage.seq_len or arch.context, o.noise, o.mean_span, arch.arch == "decoder")
        if counts is None:
            continue  # no window fits: LMS089
        want = max(counts[2], 100)
        yield _err("LMS071", f"objective 'span_corruption' replaces each of the {counts[2]} spans it cuts with a "
                   f"sentinel token, but train '{name}' tokenizes with the default bytes tokenizer, which has none "
                   "(the spec has no tokenizer block)", x.block(name).span_of(("objective",)),
                   help=f"add `tokenizer tok {{ kind: bytes, sentinels: {want} }}` and give model "
                        f"'{stage.model.model}' `vocab: tok.vocab_size`")
        return


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


# ------------------------------------------------------------------------------- hf tokenizers


def _used_tokenizers(x) -> dict[str, str]:
    """{tokenizer: "train 'pre'"}: the tokenizers stages are given at run time (a tokenizer no
    stage uses is never built), each with the first stage that uses it."""
    used: dict[str, str] = {}
    several = len(x.of_kind("tokenizer")) > 1
    for name, stage in x.of_kind("train").items():
        if stage.tokenizer is not None or not several:  # else LMS074
            used.setdefault(runtime_tokenizer(x, stage.tokenizer)[0], f"train '{name}'")
    for kind in ("feedback", "rl"):
        for name, spec in x.of_kind(kind).items():
            if spec.policy.stage is None:
                used.setdefault(runtime_tokenizer(x, None)[0], f"{kind} '{name}'")
    return used


def hf_specials_rule(x) -> Iterator[Diagnostic]:
    """LMS114: an hf(...) tokenizer a stage uses has every special and sentinel its block lists
    (the default specials are six: GPT-2's tokenizer.json has only <|endoftext|>), found as the
    runtime finds them; without them the stage stops at setup."""
    for tok, user in _used_tokenizers(x).items():
        spec = x.validated.blocks.get(tok)
        if spec is None or spec.kind.kind != "hf":
            continue
        block = x.block(tok)
        file = hf_tokenizer_file(spec.kind.path, block.span.file)
        found = hf_specials(file)
        where = f'hf("{spec.kind.path}")'
        if isinstance(found, str):
            yield _err("LMS114", f"{where} of tokenizer '{tok}': {found}, so its specials cannot be read",
                       block.span_of(("kind",)), help="fix or delete that file")
            continue
        if found is None:
            continue  # no readable tokenizer.json: LMS087
        label = [Label(block.span_of(("kind",)), f"{user} tokenizes with it")]
        missing = [s for s in dict.fromkeys(spec.specials) if s not in found.found]
        if missing:
            written = "specials" in block.fields
            has = [s for s in SPECIAL_NAMES if s in found.found]
            shown = ", ".join(found.special_tokens[:12]) + (" ..." if len(found.special_tokens) > 12 else "")
            yield _err("LMS114", f"{where} has no {', '.join(missing)} token, which tokenizer '{tok}' lists in "
                       f"specials{'' if written else ' (the default specials)'}; its special tokens: "
                       f"{shown or 'none'}", block.span_of(("specials",)) if written else block.span_of(("kind",)),
                       help=f"write `specials: [{', '.join(has)}]`, the specials it has, or add the tokens to it"
                       if has else "write `specials: []`, or add the tokens to it", labels=label if written else [])
        if found.sentinels < spec.sentinels:
            yield _err("LMS114", f"{where} has {found.sentinels} sentinel tokens (<extra_id_N>), and tokenizer '{tok}' "
                       f"asks for {spec.sentinels}", block.span_of(("sentinels",)), help=f"use `sentinels: "
                       f"{found.sentinels}`" + (", the most it has" if found.sentinels else ""), labels=label)


#: rules on the whole experiment (they read an `Experiment`, see compiler.rules)
TOKEN_RULES = [vocab_rule, bpe_rule, specials_rule, hf_specials_rule]

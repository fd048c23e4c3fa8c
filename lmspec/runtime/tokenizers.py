"""Tokenizers: how text becomes token ids, in three kinds behind one small protocol.

    bytes        ids 0-255 are UTF-8 bytes, then the specials in the spec's order, then the
                 sentinels <extra_id_0>, <extra_id_1>, ... (exactly the vocab_size `check` assumes)
    bpe(vocab)   byte-level BPE learned with HF `tokenizers` from a data block, cached by content
    hf("dir")    a local tokenizer.json; the spec's specials are found by their usual spellings

Text is always just text: a literal "<eos>" or "</s>" in a document is encoded as characters,
never as the special token, and no kind adds specials on its own (an hf tokenizer's BOS/CLS
template is switched off) — where specials go is the objectives' business.

`save` writes JSON only and `load_tokenizer` reads it back (no pickle), so a stage's tokenizer
travels with its weights in the run directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from lmspec.compiler.compile import spec_relative
from lmspec.runtime.data.cache import write_atomically
from lmspec.runtime.data.sources import iter_texts, text_fingerprint
from lmspec.runtime.errors import RunError

__all__ = ["Tokenizer", "BytesTokenizer", "HFBackedTokenizer", "build_tokenizer", "load_tokenizer",
           "sentinel_token", "SPECIAL_NAMES"]

FORMAT = 1  # bump when a change here could change the ids a saved tokenizer gives
SPECIAL_NAMES = ("pad", "bos", "eos", "mask", "sep", "cls", "unk")


def sentinel_token(i: int) -> str:
    return f"<extra_id_{i}>"


def _special_id(name: str) -> property:
    return property(lambda self: self.specials.get(name), doc=f"the id of the {name} token, or None")


def _id_list(ids) -> list[int]:
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)  # a tensor, an array or a list


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class Tokenizer:
    """The protocol every kind implements. Subclasses set the attributes in __init__ and
    implement `encode_arrays`, `_decode_text`, `_identity_parts` and `save`."""

    kind: str  # bytes | bpe | hf
    vocab_size: int  # every id it can produce, specials and sentinels included
    specials: dict[str, int]  # the specials the spec declares: {"pad": 256, "eos": 258, ...}
    sentinels: list[int]  # ids of <extra_id_0>, <extra_id_1>, ... in order

    pad_id, bos_id, eos_id = _special_id("pad"), _special_id("bos"), _special_id("eos")
    mask_id, sep_id, cls_id, unk_id = _special_id("mask"), _special_id("sep"), _special_id("cls"), _special_id("unk")

    @property
    def identity(self) -> str:
        """sha256 of everything that determines the ids: the data caches are keyed by it."""
        if not hasattr(self, "_identity"):
            self._identity = _sha256({"format": FORMAT, "kind": self.kind, "specials": self.specials,
                                      "sentinels": self.sentinels, **self._identity_parts()})
        return self._identity

    def encode(self, text: str) -> list[int]:
        return self.encode_arrays([text])[0].tolist()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [a.tolist() for a in self.encode_arrays(texts)]

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The data layer's fast path: one integer array per text, no Python lists of ids."""
        raise NotImplementedError

    def decode(self, ids, *, skip_specials: bool = True) -> str:
        """Text of `ids` (a list, array or 1-d tensor). Specials and sentinels are dropped, or
        shown as <eos>, <extra_id_3>, ...; an id outside the vocabulary (a model's padded
        embedding rows) is dropped, or shown as <id:N>."""
        names = self._names()
        parts, run = [], []
        for i in _id_list(ids):
            if i not in names and 0 <= i < self.vocab_size:
                run.append(i)
                continue
            if skip_specials:
                continue  # invisible: the text on either side stays one run (a split UTF-8 char mends)
            if run:
                parts.append(self._decode_text(run, skip_specials))
                run = []
            parts.append(names.get(i, f"<id:{i}>"))
        if run:
            parts.append(self._decode_text(run, skip_specials))
        return "".join(parts)

    def save(self, directory: Path) -> Path:
        raise NotImplementedError

    def _names(self) -> dict[int, str]:
        if not hasattr(self, "_names_cache"):
            names = {i: sentinel_token(n) for n, i in enumerate(self.sentinels)}
            # reversed: when two specials share an id (GPT-2's bos = eos), the first one names it
            names.update({i: f"<{name}>" for name, i in reversed(self.specials.items())})
            self._names_cache = names
        return self._names_cache

    def _decode_text(self, ids: list[int], skip_specials: bool) -> str:
        raise NotImplementedError

    def _identity_parts(self) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} vocab_size={self.vocab_size} specials={self.specials}>"


# ----------------------------------------------------------------------------- bytes


class BytesTokenizer(Tokenizer):
    kind = "bytes"

    def __init__(self, specials: Sequence[str], sentinels: int = 0):
        self.specials = {name: 256 + i for i, name in enumerate(specials)}
        first = 256 + len(specials)
        self.sentinels = list(range(first, first + sentinels))
        self.vocab_size = first + sentinels

    def encode_arrays(self, texts):
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def encode(self, text):
        return list(text.encode("utf-8"))

    def _decode_text(self, ids, skip_specials):
        return bytes(ids).decode("utf-8", errors="replace")

    def _identity_parts(self):
        return {}

    def save(self, directory):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "tokenizer.json"
        path.write_text(json.dumps({"kind": "bytes", "format": FORMAT, "specials": list(self.specials),
                                    "sentinels": len(self.sentinels)}, indent=1) + "\n")
        return path


# ----------------------------------------------------------------------------- bpe and hf


class HFBackedTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (a trained bpe, or an hf directory's tokenizer.json) with the
    specials and sentinels the spec declares."""

    def __init__(self, tok, kind: str, specials: dict[str, int], sentinels: list[int]):
        tok.no_truncation()  # a tokenizer.json may carry a training-time max_length or padding;
        tok.no_padding()     # windows and batches are the data layer's and the objectives' job
        tok.encode_special_tokens = True  # see the module docstring: text is just text
        self._tok, self.kind, self.specials, self.sentinels = tok, kind, dict(specials), list(sentinels)
        self.vocab_size = max(tok.get_vocab(with_added_tokens=True).values()) + 1  # ids may have gaps

    def encode_arrays(self, texts):
        encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)  # parallel, no offsets
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def _decode_text(self, ids, skip_specials):
        return self._tok.decode(ids, skip_special_tokens=skip_specials)

    def _identity_parts(self):
        return {"tokenizer": self._tok.to_str()}

    def save(self, directory):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / "tokenizer.json"))
        meta = {"kind": self.kind, "format": FORMAT, "specials": self.specials, "sentinels": self.sentinels}
        (directory / "lmspec.json").write_text(json.dumps(meta, indent=1) + "\n")
        return directory / "tokenizer.json"


def load_tokenizer(directory: Path) -> Tokenizer:
    """The tokenizer `save` wrote into `directory`."""
    from tokenizers import Tokenizer as HFTokenizer

    directory = Path(directory)
    file, extra = directory / "tokenizer.json", directory / "lmspec.json"
    if not file.is_file():
        raise RunError(f"{directory}: no tokenizer.json here", help="load_tokenizer reads a directory that "
                       "Tokenizer.save wrote (a stage's artifacts hold one)")
    if extra.is_file():
        meta = json.loads(extra.read_text())
        return HFBackedTokenizer(HFTokenizer.from_file(str(file)), meta["kind"], meta["specials"], meta["sentinels"])
    meta = json.loads(file.read_text())
    if meta.get("kind") != "bytes":
        raise RunError(f"{file}: a tokenizer.json without lmspec.json beside it",
                       help="for a Hugging Face tokenizer write `kind: hf(\"dir\")` in the spec; load_tokenizer "
                            "reads what Tokenizer.save wrote")
    return BytesTokenizer(meta["specials"], meta["sentinels"])


def build_tokenizer(spec, *, name: str, spec_file: str, data: dict, cache_dir: Path) -> Tokenizer:
    """The tokenizer of block `name` (a schema.TokenizerSpec). `data` maps the spec's data
    blocks to their schema.DataSpec: bpe learns its merges from one of them."""
    kind = spec.kind.kind
    if kind == "bytes":
        return BytesTokenizer(spec.specials, spec.sentinels)
    if kind == "bpe":
        return _cached_bpe(spec, name=name, spec_file=spec_file, data=data, cache_dir=Path(cache_dir))
    if kind == "hf":
        return _hf_directory(spec, name=name, spec_file=spec_file)
    raise ValueError(f"unknown tokenizer kind {kind!r}")


# ----------------------------------------------------------------------------- bpe


def _train_on(spec, name: str, data: dict) -> str:
    if spec.kind.train_on is not None:
        if spec.kind.train_on not in data:  # `check` resolves the reference; a caller may pass fewer blocks
            raise RunError(f"tokenizer '{name}': train_on names data '{spec.kind.train_on}', which is not given",
                           help=f"data blocks given: {', '.join(data) or 'none'}")
        return spec.kind.train_on
    if len(data) == 1:
        return next(iter(data))
    raise RunError(f"tokenizer '{name}': bpe needs text to learn its merges from, and the spec has "
                   f"{len(data) or 'no'} data blocks" + (f" ({', '.join(data)})" if data else ""),
                   help=f"write `kind: bpe(vocab: {spec.kind.vocab}, train_on: NAME)`" if data else
                        "add a data block, or use `kind: bytes`")


def _cached_bpe(spec, *, name, spec_file, data, cache_dir) -> Tokenizer:
    """Trained once per (corpus content, tokenizer spec): the second run loads the merges."""
    import tokenizers

    data_name = _train_on(spec, name, data)
    spec_part = spec.model_dump(mode="json", exclude={"kind": {"train_on"}})  # the texts count, not their block's name
    key = _sha256({"format": FORMAT, "tokenizers": tokenizers.__version__, "spec": spec_part,
                   "texts": text_fingerprint(data[data_name], spec_file=spec_file, name=data_name)})[:16]
    path = cache_dir / "tokenizers" / key
    if (path / "lmspec.json").is_file():
        return load_tokenizer(path)
    tok = train_bpe(spec, name=name, data_name=data_name, data_spec=data[data_name], spec_file=spec_file)
    write_atomically(path, tok.save, complete="lmspec.json")  # an interrupted run leaves no half tokenizer
    return load_tokenizer(path)


def train_bpe(spec, *, name: str, data_name: str, data_spec, spec_file: str) -> HFBackedTokenizer:
    """Byte-level BPE (GPT-2's scheme: every byte is in the alphabet, so nothing is unknown and
    decode(encode(text)) == text). The specials come first (ids 0..), then the sentinels, the
    256 byte symbols and the merges. Training is deterministic for a given corpus."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    vocab = spec.kind.vocab
    names = [f"<{s}>" for s in spec.specials] + [sentinel_token(i) for i in range(spec.sentinels)]
    floor = 256 + len(names)
    if vocab < floor:
        raise RunError(f"tokenizer '{name}': bpe(vocab: {vocab}) cannot hold its 256 byte symbols, "
                       f"{len(spec.specials)} specials and {spec.sentinels} sentinels",
                       help=f"use bpe(vocab: {floor}) or more")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=names, min_frequency=0, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_batched(iter_texts(data_spec, spec_file=spec_file, name=data_name)), trainer=trainer)
    learned = tok.get_vocab_size(with_added_tokens=True)
    if learned != vocab:  # `check` sized the model's embeddings for `vocab`
        raise RunError(f"tokenizer '{name}': bpe(vocab: {vocab}) learned only {learned} tokens from data "
                       f"'{data_name}': its text has no more pairs to merge",
                       help=f"use bpe(vocab: {learned}), or train on more text")
    specials = {s: tok.token_to_id(f"<{s}>") for s in spec.specials}
    sentinels = [tok.token_to_id(sentinel_token(i)) for i in range(spec.sentinels)]
    return HFBackedTokenizer(tok, "bpe", specials, sentinels)


def _batched(texts: Iterable[str], size: int = 1000):
    """train_from_iterator takes batches of texts: fewer crossings into Rust."""
    batch = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ----------------------------------------------------------------------------- hf("dir")

# The usual spellings of each special, likeliest first. `<|endoftext|>` is GPT-2's only
# special, so it is an eos only when nothing else is.
SPELLINGS = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "bos": ("<s>", "<bos>", "[BOS]", "<|begin_of_text|>", "<|startoftext|>"),
    "eos": ("</s>", "<eos>", "[EOS]", "<|end_of_text|>", "<|endoftext|>"),
    "mask": ("[MASK]", "<mask>", "<|mask|>"),
    "sep": ("[SEP]", "<sep>", "</s>"),
    "cls": ("[CLS]", "<cls>", "<s>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
}


def _configured(directory: Path) -> dict[str, str]:
    """{special: spelling} from special_tokens_map.json and tokenizer_config.json, when present:
    what transformers itself would use, so it outranks the spelling guesses."""
    out: dict[str, str] = {}
    for file in ("tokenizer_config.json", "special_tokens_map.json"):  # the later file wins
        path = directory / file
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise RunError(f"{path}: not valid JSON ({err})", help="fix or delete the file") from None
        for name in SPECIAL_NAMES:
            value = config.get(f"{name}_token")
            if isinstance(value, dict):  # {"content": "</s>", "lstrip": false, ...}
                value = value.get("content")
            if isinstance(value, str):
                out[name] = value
    return out


def find_specials(tok, directory: Path) -> dict[str, int]:
    """Every special of SPECIAL_NAMES this tokenizer has: {name: id}, found by the config
    files' names, else by the usual spellings."""
    configured = _configured(directory)
    added = {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
    found = {}
    for name in SPECIAL_NAMES:
        if name in configured and tok.token_to_id(configured[name]) is not None:
            found[name] = tok.token_to_id(configured[name])
            continue
        # an added token first; then the model's own vocabulary (a WordLevel's or BPE's unk_token)
        ids = [added.get(s) for s in SPELLINGS[name]] + [tok.token_to_id(s) for s in SPELLINGS[name]]
        found_id = next((i for i in ids if i is not None), None)
        if found_id is not None:
            found[name] = found_id
    return found


def _hf_directory(spec, *, name: str, spec_file: str) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    where = f"tokenizer '{name}': hf(\"{spec.kind.path}\")"
    directory = spec_relative(spec.kind.path, spec_file)
    file = directory if directory.suffix == ".json" and directory.is_file() else directory / "tokenizer.json"
    if not directory.exists():
        raise RunError(f"{where}: no such directory {directory}",
                       help="the path is relative to the spec file; point it at a directory with tokenizer.json")
    if not file.is_file():
        raise RunError(f"{where}: {directory} has no tokenizer.json",
                       help="lmspec reads fast (Rust) tokenizers; `AutoTokenizer.from_pretrained(dir)"
                            ".save_pretrained(dir)` with transformers writes one")
    try:
        tok = HFTokenizer.from_file(str(file))
    except Exception as err:  # the Rust side raises a bare Exception
        raise RunError(f"{where}: {file} is not a tokenizer.json the tokenizers library can read ({err})",
                       help="save it again with a recent `tokenizers` or transformers") from None
    found = find_specials(tok, file.parent)
    missing = [s for s in spec.specials if s not in found]
    if missing:
        has = sorted(t.content for t in tok.get_added_tokens_decoder().values() if t.special)
        raise RunError(f"{where}: {file} has no {', '.join(missing)} token (its special tokens: "
                       f"{', '.join(has[:12]) or 'none'}{' ...' if len(has) > 12 else ''})",
                       help=f"write `specials: [{', '.join(s for s in SPECIAL_NAMES if s in found)}]`, "
                            "the specials this tokenizer has, or add the tokens to it")
    sentinels = [tok.token_to_id(sentinel_token(i)) for i in range(spec.sentinels)]
    if None in sentinels:
        have = sentinels.index(None)
        raise RunError(f"{where}: {file} has {have} sentinel tokens (<extra_id_N>), and the spec asks for "
                       f"{spec.sentinels}", help=f"use `sentinels: {have}`")
    return HFBackedTokenizer(tok, "hf", {s: found[s] for s in spec.specials}, sentinels)

"""Tokenizers: the ids each kind gives, the vocab sizes `check` assumed, caching, and errors."""

from __future__ import annotations

import json
import random

import pytest
import torch

from lmspec.compiler.api import check_text
from lmspec.compiler.schema import DataSpec, TokenizerSpec
from lmspec.runtime import tokenizers as T
from lmspec.runtime.errors import RunError
from lmspec.runtime.tokenizers import BytesTokenizer, build_tokenizer, load_tokenizer

UNICODE = "héllo wörld — 🙂 日本語\ttabs\n\nand <eos> as plain text"


def corpus(path, *, documents=300, seed=0):
    """Text with enough distinct words for a few hundred merges."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 8))) for _ in range(400)]
    path.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(30)) for _ in range(documents)))
    return path


def build(tmp_path, text: str = "kind: bytes", data=None, *, checked: bool = True):
    """The tokenizer of `tokenizer tok { <text> }` in tmp_path/spec.lmspec, typed through the
    real front end (checked) or by the schema alone (for inputs `check` already refuses)."""
    spec_file = str(tmp_path / "spec.lmspec")
    if checked:
        blocks = "".join(f'data {n} {{ source: text("{d.source.path}") }}\n' for n, d in (data or {}).items())
        report = check_text(f"lmspec 1\ntokenizer tok {{ {text} }}\n{blocks}", spec_file)
        assert report.ok, [d.message for d in report.diagnostics]
        spec = report.spec.blocks["tok"]
    else:
        spec = TokenizerSpec(**text)
    return build_tokenizer(spec, name="tok", spec_file=spec_file, data=data or {}, cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- bytes


def test_bytes_ids_are_utf8_bytes_and_round_trip_unicode(tmp_path):
    tok = build(tmp_path)
    assert tok.kind == "bytes"
    assert tok.encode("aé") == [97, 0xC3, 0xA9]
    assert tok.encode(UNICODE) == list(UNICODE.encode("utf-8"))
    assert tok.decode(tok.encode(UNICODE)) == UNICODE
    assert tok.encode_batch(["a", "é"]) == [[97], [0xC3, 0xA9]]
    assert tok.decode(torch.tensor(tok.encode(UNICODE))) == UNICODE  # 1-d tensors too


def test_bytes_specials_follow_the_bytes_in_spec_order_then_the_sentinels(tmp_path):
    tok = build(tmp_path, "kind: bytes, specials: [eos, pad, mask], sentinels: 3")
    assert tok.specials == {"eos": 256, "pad": 257, "mask": 258}
    assert (tok.eos_id, tok.pad_id, tok.mask_id, tok.bos_id) == (256, 257, 258, None)
    assert tok.sentinels == [259, 260, 261]
    assert tok.vocab_size == 262


def test_default_specials_get_the_ids_docs_data_md_shows():
    assert BytesTokenizer(TokenizerSpec(kind={"kind": "bytes"}).specials, sentinels=2).specials == {
        "pad": 256, "bos": 257, "eos": 258, "mask": 259, "sep": 260, "cls": 261}
    assert BytesTokenizer(TokenizerSpec(kind={"kind": "bytes"}).specials, sentinels=2).sentinels == [262, 263]


def test_decode_shows_or_skips_specials_and_out_of_vocabulary_ids(tmp_path):
    tok = build(tmp_path, "kind: bytes, specials: [eos], sentinels: 2")
    ids = tok.encode("ab") + [tok.eos_id, tok.sentinels[1], 999] + tok.encode("c")
    assert tok.decode(ids) == "abc"
    assert tok.decode(ids, skip_specials=False) == "ab<eos><extra_id_1><id:999>c"
    e_acute = tok.encode("é")  # a skipped special inside a character leaves it whole
    assert tok.decode([e_acute[0], tok.eos_id, e_acute[1]]) == "é"
    assert tok.decode([0xC3]) == "\ufffd"  # half a character: errors="replace"


@pytest.mark.parametrize("block", [
    "kind: bytes",
    "kind: bytes, specials: []",
    "kind: bytes, specials: [eos]",
    "kind: bytes, specials: [pad, eos, mask, unk], sentinels: 100",
    "kind: bytes, sentinels: 32",
])
def test_vocab_size_is_what_check_assumed(tmp_path, block):
    text = (f"lmspec 1\ntokenizer tok {{ {block} }}\n"
            "model m { vocab: tok.vocab_size, context: 16, layers: 1, d_model: 32, heads: 4 }\n")
    report = check_text(text, str(tmp_path / "spec.lmspec"))
    assert report.ok, [d.message for d in report.diagnostics]
    tok = build_tokenizer(report.spec.blocks["tok"], name="tok", spec_file=report.path, data={},
                          cache_dir=tmp_path / "cache")
    assert tok.vocab_size == report.models["m"].vocab
    assert max([255, *tok.specials.values(), *tok.sentinels]) == tok.vocab_size - 1  # no id left unused


def test_bpe_vocab_size_is_what_check_assumed(tmp_path):
    corpus(tmp_path / "c.txt")
    text = ('lmspec 1\ntokenizer tok { kind: bpe(vocab: 500, train_on: c), sentinels: 4 }\n'
            'data c { source: text("c.txt") }\n'
            "model m { vocab: tok.vocab_size, context: 16, layers: 1, d_model: 32, heads: 4 }\n")
    report = check_text(text, str(tmp_path / "spec.lmspec"))
    assert report.ok, [d.message for d in report.diagnostics]
    tok = build_tokenizer(report.spec.blocks["tok"], name="tok", spec_file=report.path,
                          data={"c": report.spec.blocks["c"]}, cache_dir=tmp_path / "cache")
    assert tok.vocab_size == report.models["m"].vocab == 500


# ----------------------------------------------------------------------------- bpe


def test_bpe_reaches_the_vocab_round_trips_and_reports_its_special_ids(tmp_path):
    corpus(tmp_path / "c.txt")
    data = {"c": DataSpec(source={"kind": "text", "path": "c.txt"})}
    tok = build(tmp_path, "kind: bpe(vocab: 600), specials: [pad, eos], sentinels: 2", data)
    assert tok.kind == "bpe" and tok.vocab_size == 600
    assert tok.specials == {"pad": 0, "eos": 1} and tok.sentinels == [2, 3]  # the trainer puts them first
    assert tok.decode(tok.encode(UNICODE)) == UNICODE  # byte-level: nothing is unknown
    assert tok.encode("<eos>") != [tok.eos_id]  # text is text
    assert tok.decode(tok.encode("ab") + [tok.eos_id, tok.sentinels[1]], skip_specials=False) == "ab<eos><extra_id_1>"
    assert len(tok.encode("abcdefgh abcdefgh")) < len("abcdefgh abcdefgh")  # it did learn merges


def test_bpe_training_is_cached_by_corpus_content_and_spec(tmp_path, monkeypatch):
    corpus(tmp_path / "c.txt")
    data = {"c": DataSpec(source={"kind": "text", "path": "c.txt"})}
    first = build(tmp_path, "kind: bpe(vocab: 400)", data)
    trained = []
    original = T.train_bpe
    monkeypatch.setattr(T, "train_bpe", lambda *a, **k: trained.append(1) or original(*a, **k))
    again = build(tmp_path, "kind: bpe(vocab: 400)", data)
    assert trained == [] and again.identity == first.identity
    assert again.encode(UNICODE) == first.encode(UNICODE)
    build(tmp_path, "kind: bpe(vocab: 401)", data)  # another spec: trained anew
    corpus(tmp_path / "c.txt", seed=1)
    build(tmp_path, "kind: bpe(vocab: 400)", data)  # another corpus: trained anew
    assert trained == [1, 1]
    assert not list((tmp_path / "cache" / "tokenizers").glob(".tmp-*"))


def test_bpe_too_small_corpus_says_how_many_tokens_it_learned(tmp_path):
    (tmp_path / "c.txt").write_text("ab ab abc\n\nab abc")
    data = {"c": DataSpec(source={"kind": "text", "path": "c.txt"})}
    with pytest.raises(RunError) as err:
        build(tmp_path, "kind: bpe(vocab: 1000), specials: [eos]", data)
    assert "learned only 260 tokens from data 'c'" in err.value.message
    assert err.value.help.startswith("use bpe(vocab: 260)")
    assert build(tmp_path, "kind: bpe(vocab: 260), specials: [eos]", data).vocab_size == 260  # the help is right


def test_bpe_needs_to_know_which_data_block_to_learn_from(tmp_path):
    two = {"a": DataSpec(source={"kind": "text", "path": "a.txt"}),
           "b": DataSpec(source={"kind": "text", "path": "b.txt"})}
    with pytest.raises(RunError, match="2 data blocks") as err:
        build(tmp_path, {"kind": {"kind": "bpe", "vocab": 400}}, two, checked=False)  # check refuses it too
    assert "train_on" in err.value.help
    with pytest.raises(RunError, match="no data blocks"):
        build(tmp_path, {"kind": {"kind": "bpe", "vocab": 400}}, checked=False)


# ----------------------------------------------------------------------------- hf("dir")


def hf_dir(directory, *, config: dict | None = None):
    """A tiny WordLevel tokenizer.json with BERT's specials, two sentinels and a template."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(["[UNK]", "the", "cat", "sat", "."])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["[PAD]", "[CLS]", "[SEP]", "[MASK]", "<extra_id_0>", "<extra_id_1>"])
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 6), ("[SEP]", 7)])
    directory.mkdir(parents=True)
    tok.save(str(directory / "tokenizer.json"))
    if config:
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def test_hf_finds_the_declared_specials_by_their_usual_spellings(tmp_path):
    hf_dir(tmp_path / "hf")
    tok = build(tmp_path, 'kind: hf("hf"), specials: [pad, cls, sep, mask, unk], sentinels: 2')
    assert tok.kind == "hf" and tok.vocab_size == 11
    assert tok.specials == {"pad": 5, "cls": 6, "sep": 7, "mask": 8, "unk": 0}
    assert tok.sentinels == [9, 10]
    assert tok.encode("the cat sat .") == [1, 2, 3, 4]  # no [CLS] ... [SEP] template: objectives place specials
    assert tok.decode([6, 1, 2, 7], skip_specials=False) == "<cls>the cat<sep>"


def test_hf_config_files_name_specials_too(tmp_path):
    hf_dir(tmp_path / "hf", config={"eos_token": {"content": "[SEP]"}, "bos_token": "[CLS]"})
    tok = build(tmp_path, 'kind: hf("hf"), specials: [bos, eos]')
    assert tok.specials == {"bos": 6, "eos": 7}


def test_hf_endoftext_is_the_eos_when_nothing_else_is(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel({"a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>"))
    tok.add_special_tokens(["<|endoftext|>"])
    (tmp_path / "gpt2").mkdir()
    tok.save(str(tmp_path / "gpt2" / "tokenizer.json"))
    assert build(tmp_path, 'kind: hf("gpt2"), specials: [eos]').eos_id == 3
    (tmp_path / "gpt2" / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    assert build(tmp_path, 'kind: hf("gpt2"), specials: [bos, eos, unk]').specials == {"bos": 3, "eos": 3, "unk": 3}


def test_hf_missing_special_names_it_and_what_the_file_has(tmp_path):
    hf_dir(tmp_path / "hf")
    with pytest.raises(RunError) as err:
        build(tmp_path, 'kind: hf("hf"), specials: [eos, pad, bos]')
    assert "has no eos, bos token" in err.value.message and "[CLS]" in err.value.message
    assert "specials: [pad, mask, sep, cls, unk]" in err.value.help
    with pytest.raises(RunError, match="has 2 sentinel tokens") as err:
        build(tmp_path, 'kind: hf("hf"), specials: [pad], sentinels: 3')
    assert err.value.help == "use `sentinels: 2`"


def test_hf_missing_directory_or_file(tmp_path):
    def hf(path: str) -> dict:  # `check` refuses these paths already; the runtime must too
        return {"kind": {"kind": "hf", "path": path}, "specials": ["pad"]}

    with pytest.raises(RunError, match="no such directory"):
        build(tmp_path, hf("nowhere"), checked=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="has no tokenizer.json"):
        build(tmp_path, hf("empty"), checked=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(RunError, match="not a tokenizer.json"):
        build(tmp_path, hf("bad"), checked=False)


# ----------------------------------------------------------------------------- save and load


def test_save_and_load_give_the_same_ids_for_every_kind(tmp_path):
    corpus(tmp_path / "c.txt")
    hf_dir(tmp_path / "hf")
    data = {"c": DataSpec(source={"kind": "text", "path": "c.txt"})}
    kinds = [build(tmp_path, "kind: bytes, specials: [eos, pad], sentinels: 2"),
             build(tmp_path, "kind: bpe(vocab: 300), specials: [eos]", data),
             build(tmp_path, 'kind: hf("hf"), specials: [pad, mask], sentinels: 1')]
    for tok in kinds:
        path = tok.save(tmp_path / "saved" / tok.kind)
        assert path.name == "tokenizer.json"
        again = load_tokenizer(path.parent)
        assert (again.kind, again.vocab_size, again.specials, again.sentinels) == \
               (tok.kind, tok.vocab_size, tok.specials, tok.sentinels)
        assert again.identity == tok.identity
        assert again.encode("the cat sat . héllo") == tok.encode("the cat sat . héllo")
    assert json.loads((tmp_path / "saved" / "bytes" / "tokenizer.json").read_text())["specials"] == ["eos", "pad"]


def test_identity_tells_tokenizers_apart():
    assert BytesTokenizer(["eos"]).identity == BytesTokenizer(["eos"]).identity
    assert BytesTokenizer(["eos"]).identity != BytesTokenizer(["pad"]).identity
    assert BytesTokenizer(["eos"]).identity != BytesTokenizer(["eos"], sentinels=1).identity


def test_load_tokenizer_of_a_directory_save_did_not_write(tmp_path):
    with pytest.raises(RunError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)

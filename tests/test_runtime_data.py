"""The data layer: sources, splits, the packed stream, windows, the resumable order, caches."""

from __future__ import annotations

import json
import pickle
import sys
import types

import numpy as np
import pytest
import torch

import lmspec.runtime.data as data_pkg
from lmspec.compiler.schema import DataSpec
from lmspec.runtime.data import ExampleStream, iter_texts, prepare, prepare_dataset
from lmspec.runtime.errors import RunError
from lmspec.runtime.objectives.base import Reads
from lmspec.runtime.tokenizers import BytesTokenizer

TOK = BytesTokenizer(["pad", "eos"])  # eos = 257


def data(kind: str, path: str, **keys) -> DataSpec:
    arg = {"name": path} if kind == "builtin" else {"path": path}
    return DataSpec(source={"kind": kind, **arg}, **{"validation": 0.0, **keys})


def prepare_in(tmp_path, spec: DataSpec, tokenizer=TOK, **kw):
    return prepare_dataset(spec, name="d", spec_file=str(tmp_path / "spec.lmspec"), tokenizer=tokenizer,
                           cache_dir=tmp_path / "cache", **kw)


def texts(split, field: str = "text") -> list[str]:
    return [TOK.decode(split.example(i)[field]) for i in range(len(split))]


def jsonl(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def numbered(tmp_path, n: int, name: str = "n.jsonl"):
    """n records whose text says which they are."""
    jsonl(tmp_path / name, [{"text": f"doc {i:04d}"} for i in range(n)])
    return name


# ----------------------------------------------------------------------------- sources


def test_text_glob_reads_sorted_files_of_blank_line_separated_documents(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "b.txt").write_text("third\n\nfourth, line one\nline two\n")
    (tmp_path / "corpus" / "a.txt").write_bytes("\ufefffirst\r\n\r\n \t \n\nsecond é\n".encode())
    (tmp_path / "corpus" / "notes.md").write_text("not matched")
    ds = prepare_in(tmp_path, data("text", "corpus/*.txt"))
    assert texts(ds.train) == ["first", "second é", "third", "fourth, line one\nline two"]
    assert len(ds.validation) == 0
    assert list(iter_texts(data("text", "corpus/*.txt"), spec_file=str(tmp_path / "spec.lmspec"))) == texts(ds.train)


def test_jsonl_fields_are_read_through_the_data_blocks_keys(tmp_path):
    jsonl(tmp_path / "r.jsonl", [{"body": "good", "stars": 1, "q": "p1", "a": "r1"},
                                 {"body": "bad", "stars": False, "q": "p2", "a": "r2"}, ""])
    spec = data("jsonl", "r.jsonl", text="body", prompt="q", response="a")
    ds = prepare_in(tmp_path, spec, fields=("text", "prompt", "response"), label="stars")
    assert texts(ds.train) == ["good", "bad"] and texts(ds.train, "response") == ["r1", "r2"]
    assert [ds.train.example(i)["label"] for i in range(2)] == [1, 0]  # a bool is a class too
    example = ds.train.example(0)
    assert set(example) == {"text", "prompt", "response", "label"} and example["prompt"].dtype == torch.long
    assert ds.train.tokens("prompt").tolist() == list(b"p1p2")  # only the text field is packed with EOS
    assert list(iter_texts(spec, spec_file=str(tmp_path / "spec.lmspec"))) == ["good", "bad"]


def test_iter_texts_of_instruction_records_gives_prompts_and_responses(tmp_path):
    jsonl(tmp_path / "i.jsonl", [{"prompt": "say hi", "response": "hi"}])
    assert list(iter_texts(data("jsonl", "i.jsonl"), spec_file=str(tmp_path / "s.lmspec"))) == ["say hi", "hi"]


BAD_JSONL = {
    "not JSON": (['{"text": "a"}', '{"text": "b",}'], "d.jsonl:2: not JSON"),
    "not an object": ([[1, 2]], "d.jsonl:1: an array where a JSON object was expected"),
    "no field": ([{"text": "a"}, {"txt": "b"}], "d.jsonl:2: no field 'text'; did you mean 'txt'?"),
    "not a string": ([{"text": 3}], "d.jsonl:1: field 'text' is a number, not a string"),
    "label missing": ([{"text": "a", "y": 1}, {"text": "b"}], "d.jsonl:2: no label field 'y'"),
    "label not a number": ([{"text": "a", "y": "pos"}], "d.jsonl:1: label 'y' is 'pos', not a class number"),
    "label a fraction": ([{"text": "a", "y": 1.5}], "d.jsonl:1: label 'y' is 1.5"),
    "label negative": ([{"text": "a", "y": -1}], "d.jsonl:1: label 'y' is -1"),
    "empty corpus": (["", " "], "holds no records"),
    "no tokens": ([{"text": ""}, {"text": ""}], "every text in jsonl(\"d.jsonl\") is empty"),
}


@pytest.mark.parametrize("case", BAD_JSONL)
def test_bad_jsonl_names_the_file_and_line(tmp_path, case):
    rows, message = BAD_JSONL[case]
    jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(RunError) as err:
        prepare_in(tmp_path, data("jsonl", "d.jsonl"), label="y" if "label" in case else None)
    assert message in err.value.message and err.value.help
    assert not (tmp_path / "cache" / "data").exists() or not list((tmp_path / "cache" / "data").iterdir())


def test_bad_text_sources(tmp_path):
    def error(path: str, **kw) -> RunError:
        with pytest.raises(RunError) as err:
            prepare_in(tmp_path, data("text", path), **kw)
        return err.value

    assert "no such file" in error("missing.txt").message
    assert "matches no file" in error("corpus/*.txt").message
    (tmp_path / "blank.txt").write_text("\n \n\n")
    assert "holds no documents" in error("blank.txt").message
    (tmp_path / "latin1.txt").write_bytes(b"fine\ncaf\xe9\n")
    e = error("latin1.txt")
    assert "latin1.txt:2: not UTF-8: byte 8 of the file is e9" in e.message and "iconv" in e.help
    (tmp_path / "dir").mkdir()
    assert 'text("dir/*.txt")' in error("dir").help
    (tmp_path / "ok.txt").write_text("a story")
    assert "a text(...) source holds documents only" in error("ok.txt", fields=("prompt",)).message


# ----------------------------------------------------------------------------- splits


def test_split_is_disjoint_complete_and_determined_by_the_seed(tmp_path):
    name = numbered(tmp_path, 400)
    first = prepare_in(tmp_path / "a", data("jsonl", str(tmp_path / name), validation=0.25, seed=3))
    again = prepare_in(tmp_path / "b", data("jsonl", str(tmp_path / name), validation=0.25, seed=3))
    other = prepare_in(tmp_path / "c", data("jsonl", str(tmp_path / name), validation=0.25, seed=4))
    train, held_out = set(texts(first.train)), set(texts(first.validation))
    assert not train & held_out and len(train | held_out) == 400
    assert 60 <= len(held_out) <= 140
    assert texts(again.validation) == texts(first.validation)
    assert set(texts(other.validation)) != held_out


def test_split_of_an_example_does_not_depend_on_how_many_follow(tmp_path):
    short = prepare_in(tmp_path, data("jsonl", numbered(tmp_path, 100, "short.jsonl"), validation=0.2))
    long = prepare_in(tmp_path, data("jsonl", numbered(tmp_path, 300, "long.jsonl"), validation=0.2))
    assert [t for t in texts(long.validation) if t < "doc 0100"] == texts(short.validation)


def test_tiny_corpora_keep_one_validation_example_and_a_train_split(tmp_path):
    (tmp_path / "two.txt").write_text("one\n\ntwo")
    ds = prepare_in(tmp_path, data("text", "two.txt", validation=0.001))
    assert (len(ds.train), len(ds.validation)) == (1, 1)
    (tmp_path / "one.txt").write_text("alone")
    ds = prepare_in(tmp_path, data("text", "one.txt", validation=0.99))
    assert (len(ds.train), len(ds.validation)) == (1, 0)


def test_max_examples_takes_the_first_n(tmp_path):
    ds = prepare_in(tmp_path, data("jsonl", numbered(tmp_path, 50), max_examples=7))
    assert texts(ds.train) == [f"doc {i:04d}" for i in range(7)]


def test_an_empty_validation_split_is_a_valid_empty_split(tmp_path):
    ds = prepare_in(tmp_path, data("jsonl", numbered(tmp_path, 5)))
    val = ds.validation
    assert len(val) == 0 and val.n_tokens() == 0 and val.tokens().shape == (0,) and val.lengths().shape == (0,)
    stream = ExampleStream(val, Reads("windows", length=4), seed=0)
    assert len(stream) == 0 and stream.take(0, 0) == []
    with pytest.raises(RunError, match="validation split is empty"):
        stream.take(0, 1)


# ----------------------------------------------------------------------------- the packed stream and windows


def test_packed_stream_has_eos_after_every_document(tmp_path):
    (tmp_path / "c.txt").write_text("ab\n\nc\n\ndéf")
    ds = prepare_in(tmp_path, data("text", "c.txt"))
    eos = TOK.eos_id
    assert ds.train.tokens().tolist() == [*b"ab", eos, *b"c", eos, *"déf".encode(), eos]
    assert ds.train.n_tokens() == 10 and ds.train.lengths().tolist() == [2, 1, 4]
    assert ds.train.example(1)["text"].tolist() == list(b"c")


def windows_of(tmp_path, n_docs=40, length=7, **kw):
    ds = prepare_in(tmp_path, data("jsonl", numbered(tmp_path, n_docs)))
    return ds, ExampleStream(ds.train, Reads("windows", length=length), seed=kw.pop("seed", 0), **kw)


def test_windows_are_non_overlapping_slices_of_the_packed_stream(tmp_path):
    ds, stream = windows_of(tmp_path, shuffle=False)
    tokens = ds.train.tokens()
    assert len(stream) == len(tokens) // 7
    got = stream.take(0, len(stream))
    assert all(w["tokens"].shape == (7,) and w["tokens"].dtype == torch.long for w in got)
    assert torch.cat([w["tokens"] for w in got]).tolist() == tokens[:len(stream) * 7].tolist()
    assert stream.take(len(stream), 1)[0]["tokens"].tolist() == got[0]["tokens"].tolist()  # epoch 2, in order


def test_take_is_a_pure_function_of_the_position(tmp_path):
    _, stream = windows_of(tmp_path, seed=5)
    n = len(stream)
    whole = [w["tokens"].tolist() for w in stream.take(0, 3 * n)]
    assert [w["tokens"].tolist() for w in stream.take(5, 3)] == whole[5:8]
    resumed = ExampleStream(stream.split, stream.reads, seed=5)  # a fresh object: a resumed run
    assert [w["tokens"].tolist() for w in resumed.take(n - 2, 5)] == whole[n - 2:n + 3]  # across an epoch


def test_each_epoch_is_a_permutation_that_covers_every_window_once(tmp_path):
    _, stream = windows_of(tmp_path, seed=1)
    n = len(stream)
    epochs = [stream.indices(e * n, n) for e in range(3)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(n))
    assert epochs[0].tolist() != epochs[1].tolist() != epochs[2].tolist()
    assert epochs[0].tolist() != list(range(n))
    assert ExampleStream(stream.split, stream.reads, seed=2).indices(0, n).tolist() != epochs[0].tolist()


def test_too_few_tokens_for_one_window(tmp_path):
    (tmp_path / "c.txt").write_text("short")
    ds = prepare_in(tmp_path, data("text", "c.txt"))
    with pytest.raises(RunError, match=r"data 'd' \(train split\) has 6 tokens, and one window needs 257"):
        ExampleStream(ds.train, Reads("windows", length=257), seed=0)


# ----------------------------------------------------------------------------- documents and records


def test_documents_records_and_random_document(tmp_path):
    jsonl(tmp_path / "r.jsonl", [{"text": f"review {i}", "y": i % 2} for i in range(10)])
    ds = prepare_in(tmp_path, data("jsonl", "r.jsonl"), label="y")
    docs = ExampleStream(ds.train, Reads("documents"), seed=0, shuffle=False)
    assert [TOK.decode(d["tokens"]) for d in docs.take(9, 2)] == ["review 9", "review 0"]
    records = ExampleStream(ds.train, Reads("records", fields=("text",), label="y"), seed=0)
    got = records.take(0, 10)
    assert sorted((TOK.decode(r["text"]), r["label"]) for r in got) == sorted(
        (f"review {i}", i % 2) for i in range(10))
    picks = [TOK.decode(docs.random_document(torch.Generator().manual_seed(s))) for s in range(20)]
    assert set(picks) <= {f"review {i}" for i in range(10)} and len(set(picks)) > 3
    again = [TOK.decode(docs.random_document(torch.Generator().manual_seed(s))) for s in range(20)]
    assert picks == again


def test_a_stream_reading_fields_the_dataset_lacks_is_a_bug_not_a_user_error(tmp_path):
    ds = prepare_in(tmp_path, data("jsonl", numbered(tmp_path, 3)))
    with pytest.raises(ValueError, match="prepared with fields"):
        ExampleStream(ds.train, Reads("records", fields=("prompt",)), seed=0)


# ----------------------------------------------------------------------------- caches


class CountingTokenizer(BytesTokenizer):
    def __init__(self, *a, fail_after: int | None = None, **k):
        super().__init__(*a, **k)
        self.calls, self.fail_after = 0, fail_after

    def encode_arrays(self, texts):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-tokenisation
        return super().encode_arrays(texts)


def test_a_second_prepare_reuses_the_cache_and_a_changed_file_does_not(tmp_path):
    tok = CountingTokenizer(["eos"])
    name = numbered(tmp_path, 20)
    first = prepare_in(tmp_path, data("jsonl", name), tokenizer=tok)
    calls, mtime = tok.calls, (first.path / "meta.json").stat().st_mtime_ns
    again = prepare_in(tmp_path, data("jsonl", name), tokenizer=tok)
    assert tok.calls == calls and again.path == first.path and (again.path / "meta.json").stat().st_mtime_ns == mtime
    numbered(tmp_path, 21)
    changed = prepare_in(tmp_path, data("jsonl", name), tokenizer=tok)
    assert tok.calls > calls and changed.path != first.path and len(changed.train) == 21
    other_tokenizer = prepare_in(tmp_path, data("jsonl", name), tokenizer=BytesTokenizer(["pad", "eos"]))
    assert other_tokenizer.path != changed.path


def test_an_interrupted_tokenisation_leaves_no_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK_EXAMPLES", 4)
    name = numbered(tmp_path, 20)
    with pytest.raises(KeyboardInterrupt):
        prepare_in(tmp_path, data("jsonl", name), tokenizer=CountingTokenizer(["eos"], fail_after=2))
    assert list((tmp_path / "cache" / "data").iterdir()) == []  # neither the entry nor its .tmp- directory
    ds = prepare_in(tmp_path, data("jsonl", name), tokenizer=CountingTokenizer(["eos"]))
    assert len(ds.train) == 20


def test_a_damaged_cache_entry_says_to_delete_it(tmp_path):
    ds = prepare_in(tmp_path, data("jsonl", numbered(tmp_path, 3)))
    (ds.path / "train.text.bin").unlink()
    with pytest.raises(RunError, match="damaged") as err:
        prepare_in(tmp_path, data("jsonl", numbered(tmp_path, 3))).train.tokens()
    assert str(ds.path) in err.value.help


class WideTokenizer(BytesTokenizer):
    """Ids past 65,535: every byte b becomes 70,000 + b."""

    def __init__(self):
        super().__init__(["eos"])
        self.vocab_size = 70_000 + 257
        self.specials = {"eos": 70_256}

    def encode_arrays(self, texts):
        return [a.astype(np.int64) + 70_000 for a in super().encode_arrays(texts)]


def test_token_files_are_uint16_up_to_65536_ids_and_uint32_beyond(tmp_path):
    name = numbered(tmp_path, 3)
    narrow = prepare_in(tmp_path, data("jsonl", name))
    wide = prepare_in(tmp_path, data("jsonl", name), tokenizer=WideTokenizer())
    assert narrow.train.tokens().dtype == np.uint16 and wide.train.tokens().dtype == np.uint32
    assert wide.train.example(0)["text"].tolist() == [70_000 + b for b in b"doc 0000"]
    assert wide.train.tokens()[8] == 70_256


def test_a_split_pickles_without_its_mapped_arrays(tmp_path):
    ds = prepare_in(tmp_path, data("jsonl", numbered(tmp_path, 3)))
    ds.train.tokens()
    copy = pickle.loads(pickle.dumps(ds.train))  # what a DataLoader worker receives
    assert copy._arrays == {} and copy.example(2)["text"].tolist() == list(b"doc 0002")


# ----------------------------------------------------------------------------- built-in corpora


@pytest.fixture
def fake_builtin(monkeypatch):
    fake = types.SimpleNamespace(VERSION=7, NAMES=("tiny-reviews",), fields=lambda name: ("text", "sentiment"),
                                 generate=lambda name, *, seed=0: [{"text": f"r{i}", "sentiment": i % 2}
                                                                   for i in range(30)])
    monkeypatch.setattr(data_pkg, "builtin", fake, raising=False)
    monkeypatch.setitem(sys.modules, "lmspec.runtime.data.builtin", fake)
    return fake


def test_builtin_records_go_through_the_same_keys(tmp_path, fake_builtin):
    ds = prepare_in(tmp_path, data("builtin", "tiny-reviews", max_examples=4), label="sentiment")
    assert texts(ds.train) == ["r0", "r1", "r2", "r3"]
    assert [ds.train.example(i)["label"] for i in range(4)] == [0, 1, 0, 1]
    with pytest.raises(RunError, match=r'builtin\("tiny-reviews"\) record 0: no field \'body\'') as err:
        prepare_in(tmp_path, data("builtin", "tiny-reviews", text="body"))
    assert "sentiment" in err.value.message


def test_builtin_version_is_part_of_the_cache_key(tmp_path, fake_builtin):
    first = prepare_in(tmp_path, data("builtin", "tiny-reviews"))
    fake_builtin.VERSION = 8
    assert prepare_in(tmp_path, data("builtin", "tiny-reviews")).path != first.path


def test_the_real_builtin_corpora(tmp_path):
    builtin = pytest.importorskip("lmspec.runtime.data.builtin")
    if not hasattr(builtin, "generate"):
        pytest.skip("lmspec.runtime.data.builtin is not written yet")
    reads = {"tiny-stories": (("text",), None), "tiny-reviews": (("text",), "sentiment"),
             "tiny-instructions": (("prompt", "response"), None)}
    for name, (fields, label) in reads.items():
        ds = prepare_in(tmp_path, data("builtin", name, max_examples=20, validation=0.1), fields=fields, label=label)
        assert len(ds.train) + len(ds.validation) == 20 and len(ds.validation) >= 1
        example = ds.train.example(0)
        assert all(len(example[f]) > 0 for f in fields)

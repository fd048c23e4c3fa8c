"""The run's pre-flight: what would fail when a stage starts and can be known before the run
directory exists (docs/keys.md, GAP 27: settings that depend on the device)."""

from __future__ import annotations

import pytest
import torch

from lmspec.runtime.api import run
from lmspec.runtime.engine import resolve_precision
from lmspec.runtime.errors import RunError
from lmspec.runtime.progress import Progress

SPEC = """lmspec 1
model m {{ vocab: 262, context: 16, layers: 1, d_model: 16, heads: 2 }}
train t {{ model: m, objective: clm, data: d, steps: 2, batch: 2, compile: {compile}, precision: {precision} }}
data d {{ source: builtin("tiny-stories") }}
"""


def _spec(tmp_path, **keys):
    path = tmp_path / "s.lmspec"
    path.write_text(SPEC.format(**{"compile": "false", "precision": "fp32", **keys}))
    return path


def test_compile_without_a_cpp_compiler_stops_before_the_run_directory(tmp_path, monkeypatch):
    from torch._inductor import cpp_builder, exc

    def missing():
        raise exc.InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.raises(RunError) as err:
        run(_spec(tmp_path, compile="true"), out=tmp_path / "run", device="cpu", progress=Progress(quiet=True))
    assert "compile: true" in str(err.value) and "C++ compiler" in str(err.value)
    assert "compile: false" in err.value.help
    assert not (tmp_path / "run").exists()


def test_compile_with_a_compiler_passes_the_preflight():
    from lmspec.runtime.engine import check_compile

    check_compile(torch.device("cpu"), "t")  # this machine has g++ (torch.compile is tested elsewhere)


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(RunError, match="Tesla T4 has no bfloat16 support") as err:
        resolve_precision("bf16", torch.device("cuda"))
    assert "fp16" in err.value.help
    assert resolve_precision("auto", torch.device("cuda")).name == "fp32"  # auto falls back quietly


def test_fp16_on_the_cpu_is_refused_before_the_run_directory(tmp_path):
    with pytest.raises(RunError, match="fp16 needs a GPU"):
        run(_spec(tmp_path, precision="fp16"), out=tmp_path / "run", device="cpu", progress=Progress(quiet=True))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- what only the data can tell


def _run_fails_before_its_directory(tmp_path, spec: str, match: str) -> RunError:
    path = tmp_path / "s.lmspec"
    path.write_text(spec)
    with pytest.raises(RunError, match=match) as err:
        run(path, out=tmp_path / "run", device="cpu", progress=Progress(quiet=True), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "run").exists()
    return err.value


def test_a_bpe_larger_than_its_file_yields_stops_before_the_run_directory(tmp_path):
    """GAP 1: the merges of a text file are known only once learned: the pre-flight learns them."""
    (tmp_path / "small.txt").write_text("the cat sat on the mat. " * 40)
    spec = """lmspec 1
data d { source: text("small.txt") }
tokenizer tok { kind: bpe(vocab: 900, train_on: d) }
model m { vocab: tok.vocab_size, context: 16, layers: 1, d_model: 16, heads: 2 }
train t { model: m, objective: clm, data: d, steps: 2, batch: 2, precision: fp32 }
"""
    _run_fails_before_its_directory(tmp_path, spec, "learned only")


def test_a_later_jsonl_record_without_a_field_stops_before_the_run_directory(tmp_path):
    """GAP 5: check reads a jsonl's first record; the pre-flight reads them all."""
    lines = ['{"prompt": "say hi", "response": "hi"}'] * 5 + ['{"prompt": "say bye"}']
    (tmp_path / "sft.jsonl").write_text("\n".join(lines) + "\n")
    spec = """lmspec 1
data d { source: jsonl("sft.jsonl"), validation: 0 }
model m { vocab: 262, context: 32, layers: 1, d_model: 16, heads: 2 }
train t { model: m, objective: sft, data: d, steps: 2, batch: 2, precision: fp32 }
"""
    err = _run_fails_before_its_directory(tmp_path, spec, "sft.jsonl:6")
    assert "response" in str(err)


def test_a_label_outside_the_classifier_stops_before_the_run_directory(tmp_path):
    """GAP 10: a file's labels are known only once read: the pre-flight compares the largest."""
    lines = [f'{{"text": "review {i}", "label": {i % 4}}}' for i in range(12)]
    (tmp_path / "reviews.jsonl").write_text("\n".join(lines) + "\n")
    spec = """lmspec 1
data d { source: jsonl("reviews.jsonl"), validation: 0, label: "label" }
model m { vocab: 262, context: 32, layers: 1, d_model: 16, heads: 2, head: classifier(classes: 2) }
train t { model: m, objective: classify, data: d, steps: 2, batch: 2, precision: fp32 }
"""
    err = _run_fails_before_its_directory(tmp_path, spec, "labelled up to 3")
    assert "2 classes" in str(err) and "classifier(classes: 4)" in err.help


def test_the_prepared_data_is_what_the_stage_reads(tmp_path):
    """The pre-flight prepares into the cache the run then reads: a run still trains."""
    lines = [f'{{"text": "review number {i} is here", "label": {i % 2}}}' for i in range(24)]
    (tmp_path / "reviews.jsonl").write_text("\n".join(lines) + "\n")
    path = tmp_path / "s.lmspec"
    path.write_text("""lmspec 1
data d { source: jsonl("reviews.jsonl"), validation: 0, label: "label" }
model m { vocab: 262, context: 32, layers: 1, d_model: 16, heads: 2, head: classifier(classes: 2) }
train t { model: m, objective: classify, data: d, steps: 2, batch: 2, precision: fp32 }
""")
    done = run(path, out=tmp_path / "run", device="cpu", progress=Progress(quiet=True), cache_dir=tmp_path / "cache")
    assert done.status("t")["status"] == "finished"
    assert len([p for p in (tmp_path / "cache").rglob("meta.json")]) == 1  # one preparation, read twice

"""Silencing warnings per block (`allow: ["LMS081"]`), and no size advice a checkpoint forbids."""

from __future__ import annotations

from lmspec.compiler.allow import allowable_codes
from lmspec.compiler.api import check_text
from lmspec.compiler.compile import check_stages
from lmspec.compiler.hf import spec_from_config

TWO_MODELS = """lmspec 1
tokenizer tok {{ kind: bytes }}
model quiet {{
  {allow}
  arch: decoder, vocab: 1100, d_model: 64, layers: 2, heads: 4, context: 128
}}
model loud {{
  arch: decoder, vocab: 1100, d_model: 64, layers: 2, heads: 4, context: 128
}}
"""


def found(report):
    return [(d.severity, d.code, str(d.span)) for d in report.diagnostics]


def test_allow_silences_a_warning_in_its_own_block_only():
    before = check_text(TWO_MODELS.format(allow=""), "s.lmspec")
    assert found(before) == [("warning", "LMS081", "s.lmspec:5:25"), ("warning", "LMS081", "s.lmspec:8:25")]
    after = check_text(TWO_MODELS.format(allow='allow: ["LMS081"]'), "s.lmspec")
    assert after.ok and found(after) == [("warning", "LMS081", "s.lmspec:8:25")]  # `loud` still warns


def test_allow_names_only_warning_codes():
    report = check_text(TWO_MODELS.format(allow='allow: ["LMS08", "LMS060", "LMS081"]'), "s.lmspec")
    errors = [(d.code, str(d.span), d.message, d.help) for d in report.errors]
    assert errors == [
        ("LMS097", "s.lmspec:4:11", "'LMS08' is not a warning code of lmspec", 'did you mean "LMS080"?'),
        ("LMS097", "s.lmspec:4:20", "LMS060 is an error (heads do not divide d_model); only warnings can be allowed",
         'fix what LMS060 reports, and remove "LMS060" from allow'),
    ]
    assert "LMS081" in allowable_codes() and "LMS060" not in allowable_codes()


def test_errors_are_never_silenced():
    text = TWO_MODELS.format(allow='allow: ["LMS081"]').replace("heads: 4, context", "heads: 5, context", 1)
    report = check_text(text, "s.lmspec")
    assert ("error", "LMS060", "s.lmspec:5:40") in found(report)


BERT = """lmspec 1
tokenizer tok { kind: bytes }
data d { source: builtin("tiny-stories") }
model enc { arch: encoder, vocab: tok.vocab_size, context: 64, layers: 1, d_model: 32, heads: 2, pooler: true,
            head: mlm }
train t { model: enc, objective: mlm, data: d, steps: 2, batch: 2, seq_len: 32 ALLOW }
"""


def test_allow_silences_the_warnings_of_the_meta_pass_too():
    """LMS096 comes from the meta-device pass that `check` and `run` add after the rules."""
    report = check_text(BERT.replace(" ALLOW", ""), "s.lmspec")
    check_stages(report, meta=True)
    assert [d.code for d in report.diagnostics] == ["LMS096"]
    report = check_text(BERT.replace(" ALLOW", ', allow: ["LMS096"]'), "s.lmspec")
    check_stages(report, meta=True)
    assert report.diagnostics == []


GPT2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257, "n_positions": 64,
        "n_embd": 32, "n_layer": 1, "n_head": 4}


def test_no_padding_advice_for_a_model_loaded_from_a_checkpoint(tmp_path):
    """Padding vocab 50257 to 50304, as LMS081 advises, would make the checkpoint unloadable
    (LMS091): a model that a stage loads with `init: hf(...)` gets no such advice."""
    model = spec_from_config(GPT2, "g").split("\n", 1)[1].replace('  allow: ["LMS081"]', "#")
    tail = f"""tokenizer tok {{ kind: bpe(vocab: 50257) }}
data d {{ source: builtin("tiny-stories") }}
train t {{ model: g, objective: clm, data: d, steps: 1, batch: 1, seq_len: 16, init: hf("{tmp_path}") }}
"""
    loaded = check_text("lmspec 1\n" + model + tail, "s.lmspec")
    assert "LMS081" not in [d.code for d in loaded.diagnostics]
    alone = check_text("lmspec 1\n" + model, "s.lmspec")  # nothing loads the weights: the advice stands
    assert [d.code for d in alone.diagnostics] == ["LMS081"]


def test_import_hf_writes_a_spec_its_own_check_accepts_without_warnings():
    text = spec_from_config(GPT2, "gpt2")
    assert '  allow: ["LMS081"]  # the checkpoint fixes these sizes' in text
    report = check_text(text, "s.lmspec")
    assert report.ok and report.diagnostics == []
    small = spec_from_config({**GPT2, "vocab_size": 1024}, "gpt2")  # a multiple of 64: nothing to allow
    assert "allow" not in small and check_text(small).diagnostics == []

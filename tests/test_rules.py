"""The design rules, one test each: a spec snippet in, the exact diagnostic out.

Every snippet is appended to the same three lines, so its first line is line 4:

    1  lmspec 1
    2  tokenizer tok { kind: bytes }
    3  data text { source: builtin("tiny-stories") }

`problems(...)` lists each diagnostic as "line:col severity[CODE] message", sorted.
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from pathlib import Path

import networkx as nx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmspec.compiler.api import check_file, check_text
from lmspec.compiler.build import build_model
from lmspec.compiler.costs import spec_figures
from lmspec.compiler.graphs import architecture_graph
from lmspec.diagnostics import CODES, render_text

SPECS = Path(__file__).resolve().parents[1] / "specs"
VALIDATION_DOC = Path(__file__).resolve().parents[1] / "docs" / "validation.md"

PRELUDE = 'lmspec 1\ntokenizer tok { kind: bytes }\ndata text { source: builtin("tiny-stories") }\n'


def report(body: str):
    return check_text(PRELUDE + textwrap.dedent(body).lstrip("\n"), "t.lmspec")


def problems(body: str) -> list[str]:
    found = sorted(report(body).diagnostics, key=lambda d: (d.span.line, d.span.col, d.code) if d.span else (0, 0, d.code))
    return [f"{d.span.line}:{d.span.col} {d.severity}[{d.code}] {d.message}" for d in found]


def only(body: str, code: str):
    """The one diagnostic with `code` (its labels and help are checked too)."""
    matching = [d for d in report(body).diagnostics if d.code == code]
    assert len(matching) == 1, [f"{d.code} {d.message}" for d in report(body).diagnostics]
    return matching[0]


GPT = "model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }"


# ------------------------------------------------------------------------------ the examples


@pytest.mark.parametrize("name", ["gpt.lmspec", "bert_t5.lmspec", "rlaif.lmspec"])
def test_the_example_specs_pass_every_rule(name):
    report = check_file(SPECS / name)
    # none of the three examples draws a warning either
    assert [f"{d.code} {d.message}" for d in report.diagnostics] == []
    assert report.ok and report.models


def test_every_rule_code_is_catalogued():
    for code in ["LMS067", "LMS068", "LMS069", "LMS084", "LMS085", "LMS070", "LMS071", "LMS072", "LMS073", "LMS074", "LMS075",
                 "LMS076", "LMS077", "LMS078", "LMS079", "LMS080", "LMS081", "LMS082", "LMS083", "LMS092", "LMS093",
                 "LMS094", "LMS095", "LMS096"]:
        assert CODES[code]


def _doc_examples() -> list[tuple[str, str, str]]:
    """(code, spec, rendered diagnostic) of every rule in docs/validation.md."""
    sections = VALIDATION_DOC.read_text().split("\n### `")[1:]
    out = []
    for section in sections:
        code = section[:6]
        spec_text = section.split("```lmspec\n", 1)[1].split("```", 1)[0]
        shown = section.split("```text\n", 1)[1].split("\n```", 1)[0]
        out.append((code, spec_text, shown))
    return out


def test_the_validation_doc_explains_every_design_rule():
    documented = [code for code, _, _ in _doc_examples()]
    # LMS090 (the meta pass fails: a bug in lmspec) and LMS091 (an hf checkpoint does not fit)
    # are explained in docs/analysis.md and docs/huggingface.md; LMS051-LMS059, LMS092-LMS099 and
    # LMS101 on are design rules too
    rule_codes = [c for c in CODES if "LMS060" <= c <= "LMS089" or "LMS092" <= c <= "LMS099"
                  or "LMS051" <= c <= "LMS059" or c >= "LMS101"] + ["LMS048"]
    assert sorted(documented) == sorted(rule_codes)


#: codes that the meta-device pass of `lmspec check` reports (compiler.costs), not `rules.check`
META_CODES = {"LMS096"}


@pytest.mark.parametrize("code, spec_text, shown", _doc_examples(), ids=lambda v: v if str(v).startswith("LMS") else "")
def test_each_example_in_the_validation_doc_prints_what_the_doc_shows(code, spec_text, shown):
    report = check_text(spec_text, "example.lmspec")
    if code in META_CODES:
        report.diagnostics += spec_figures(report)[1]
    first = next(d for d in report.diagnostics if d.code == code)
    assert render_text([first], report.sources, colour=False).rsplit("\n\n", 1)[0] == shown


# ------------------------------------------------------------------------------ model rules (existing)


def test_heads_must_divide_d_model():
    assert problems("model m { vocab: 262, context: 64, layers: 2, d_model: 100, heads: 8 }") == [
        "4:56 error[LMS060] heads (8) must divide d_model (100)"]


def test_kv_heads_must_divide_heads():
    assert problems("model m { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, kv_heads: 3 }") == [
        "4:80 error[LMS061] kv_heads (3) must divide heads (4)"]


def test_rope_needs_an_even_head_dim():
    assert problems("model m { vocab: 262, context: 64, layers: 2, d_model: 60, heads: 4, head_dim: 15, "
                    "position: rope }") == [
        "4:94 error[LMS062] RoPE rotates pairs of dimensions, but head_dim is 15 (odd)"]


def test_a_sliding_window_fits_in_the_context():
    assert problems("model m { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, "
                    "layer 1 { attention: sliding(window: 100) } }") == [
        "4:91 error[LMS063] sliding window (100) is longer than the context (64)"]


# ------------------------------------------------------------------------------ model rules (new)


def test_relative_position_layers_of_a_stack_share_one_bias_table():
    d = only("""
        model m { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, position: relative
                  layer 1 { heads: 2 } }
    """, "LMS068")
    assert (d.span.line, d.span.col) == (5, 28)  # the `2` of `heads: 2`
    assert d.message == ("the relative-position layers of the decoder share one bias table, but layer 0 has 4 heads, "
                         "32 buckets, max_distance 128 and layer 1 has 2 heads, 32 buckets, max_distance 128")
    assert [(l.span.line, l.span.col, l.message) for l in d.labels] == [(4, 80, "layer 0 is set here")]


def test_a_head_kind_may_appear_once():
    assert problems("model m { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, head: [lm, scalar, lm] }") \
        == ["4:76 error[LMS069] head 'lm' is listed twice in model 'm'"]


def test_a_head_kind_may_appear_once_in_a_stage_override_too():
    assert problems(f"""
        {GPT}
        train t {{ model: gpt with head [scalar, scalar], objective: bradley_terry, data: text }}
    """) == ["5:32 error[LMS069] head 'scalar' is listed twice in train 't'"]


def test_relative_buckets_leave_room_for_exact_distances():
    # T5 keeps half the buckets for exact distances; an encoder splits them again by direction
    assert problems("model m { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, "
                    "position: relative(buckets: 2) }") == [
        "4:95 error[LMS084] relative positions in the encoder split 2 buckets between keys before and after the "
        "query, which leaves no bucket for exact distances"]
    assert problems("model m { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, "
                    "position: relative(buckets: 32, max_distance: 16) }") == [
        "4:80 error[LMS084] max_distance (16) must be larger than the 16 distances the decoder's 32 buckets keep "
        "exact"]


def test_the_decoder_of_an_encoder_decoder_has_no_prefix_attention():
    d = only("""
        model t5 { arch: encoder_decoder, vocab: 262, context: 64, d_model: 64, heads: 4
                   encoder { layers: 2 }
                   decoder { layers: 2, layer 1 { attention: prefix } } }
    """, "LMS085")
    assert (d.span.line, d.span.col) == (6, 54)
    assert d.message == ("layer 1 of the decoder of encoder-decoder 't5' has prefix attention, but its prefix is "
                         "the encoder's input")


def test_tie_embeddings_without_a_vocabulary_head_is_a_warning():
    d = only("model m { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, head: scalar, "
             "tie_embeddings: true }", "LMS067")
    assert (d.severity, d.span.line, d.span.col) == ("warning", 4, 100)
    assert d.message == "tie_embeddings has nothing to tie: model 'm' has no lm or mlm head (heads: scalar)"
    assert d.help == "remove `tie_embeddings: true`, or add an lm or mlm head"


def test_tie_embeddings_with_an_lm_or_mlm_head_is_fine():
    assert problems("model m { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, tie_embeddings: true }") == []
    assert problems("model m { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, "
                    "tie_embeddings: true }") == []


def test_a_large_vocab_should_be_a_multiple_of_64():
    d = only("model m { vocab: 50_257, context: 64, layers: 2, d_model: 64, heads: 4 }", "LMS081")
    assert (d.severity, d.span.line, d.span.col) == ("warning", 4, 18)
    assert d.message == "vocab 50257 is not a multiple of 64; 50304 is faster on GPUs"
    assert d.help == "write `vocab: 50304`: the extra rows are never produced by the tokenizer"


def test_a_large_d_ff_should_be_a_multiple_of_64_and_small_sizes_are_exempt():
    assert problems("model m { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, d_ff: 1500 }") == [
        "4:76 warning[LMS081] d_ff 1500 is not a multiple of 64; 1536 is faster on GPUs"]
    # 262 and 100 are below 1024: their matmuls are too small for padding to pay
    assert problems("model m { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, d_ff: 100 }") == []


# ------------------------------------------------------------------------------ objective fit: LMS070


def test_clm_needs_a_decoder():
    d = only("""
        model bert { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, head: lm }
        train t { model: bert, objective: clm, data: text }
    """, "LMS070")
    assert (d.span.line, d.span.col) == (5, 35)
    assert d.message == "objective 'clm' needs a decoder, but model 'bert' is an encoder"
    assert [(l.span.line, l.span.col, l.message) for l in d.labels] == [(4, 20, "'bert' is an encoder")]
    assert d.help == "train an encoder with mlm, an encoder-decoder with span_corruption, or use `arch: decoder`"


def test_clm_needs_causal_attention_in_every_layer():
    d = only("""
        model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, layer 1 { attention: bidirectional } }
        train t { model: gpt, objective: clm, data: text }
    """, "LMS070")
    assert (d.span.line, d.span.col) == (5, 34)
    assert d.message == ("objective 'clm' needs causal attention, but layer 1 of 'gpt' has bidirectional attention "
                         "(it would see the tokens it predicts)")
    assert [(l.span.line, l.span.col) for l in d.labels] == [(4, 93)]


def test_sliding_attention_counts_as_causal_and_prefix_needs_prefix_lm():
    assert problems("""
        model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, attention: sliding(window: 16) }
        train t { model: gpt, objective: clm, data: text }
    """) == []
    assert problems("""
        model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, attention: prefix }
        train t { model: gpt, objective: clm, data: text }
        train u { model: gpt, objective: clm + prefix_lm, data: text }
    """) == ["5:34 error[LMS070] objective 'clm' needs causal attention, but layer 0 of 'gpt' has prefix attention "
             "(prefix attention is for prefix_lm)",
             "6:34 error[LMS088] objectives clm + prefix_lm of 'u' cannot be trained on one batch: 'clm' cannot share "
             "a batch with 'prefix_lm'"]


def test_clm_needs_an_lm_head():
    d = only(f"""
        {GPT}
        train t {{ model: gpt with head scalar, objective: clm, data: text }}
    """, "LMS070")
    assert d.message == "objective 'clm' needs an lm head, but 'gpt' with head scalar has heads: scalar"
    # the label points at the stage's `with head`, which replaced the model's lm head
    assert [(l.span.line, l.span.col, l.message) for l in d.labels] == [(5, 32, "the stage replaces the heads here")]


def test_mlm_needs_bidirectional_attention_and_an_mlm_head():
    assert problems(f"""
        {GPT}
        train t {{ model: gpt, objective: mlm, data: text }}
    """) == ["5:34 error[LMS070] objective 'mlm' needs bidirectional attention (an encoder), but model 'gpt' is "
             "a decoder",
             "5:34 error[LMS070] objective 'mlm' needs an mlm head, but model 'gpt' has heads: lm"]
    assert problems("""
        model bert { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, attention: causal }
        train t { model: bert, objective: mlm, data: text }
    """) == ["5:35 error[LMS070] objective 'mlm' needs bidirectional attention, but layer 0 of 'bert' has causal "
             "attention"]


def test_nsp_needs_segments_a_pooler_and_an_nsp_head():
    assert problems("""
        model bert { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }
        train t { model: bert, objective: mlm + nsp, data: text }
    """) == ["5:35 error[LMS070] objective 'nsp' needs 2 segments (token types), but model 'bert' has 0",
             "5:35 error[LMS070] objective 'nsp' needs a pooler, but model 'bert' has none",
             "5:35 error[LMS070] objective 'nsp' needs an nsp head, but model 'bert' has heads: mlm"]


def test_span_corruption_needs_an_encoder_decoder_or_a_prefix_decoder():
    assert problems("""
        tokenizer t5tok { kind: bytes, sentinels: 100 }
        model bert { arch: encoder, vocab: 400, context: 64, layers: 2, d_model: 64, heads: 4, head: lm }
        model prefix_gpt { vocab: 400, context: 64, layers: 2, d_model: 64, heads: 4, attention: prefix }
        train t { model: bert, tokenizer: t5tok, objective: span_corruption, data: text }
        train u { model: prefix_gpt, tokenizer: t5tok, objective: span_corruption, data: text }
    """)[-1:] == ["7:53 error[LMS070] objective 'span_corruption' needs an encoder-decoder or a decoder with prefix "
                  "attention, but model 'bert' is an encoder"]


def test_span_corruption_needs_a_causal_decoder_in_an_encoder_decoder():
    assert problems("""
        tokenizer t5tok { kind: bytes, sentinels: 100 }
        model t5 { arch: encoder_decoder, vocab: 400, context: 64, d_model: 64, heads: 4
                   encoder { layers: 1 }, decoder { layers: 1, attention: bidirectional } }
        train t { model: t5, tokenizer: t5tok, objective: span_corruption, data: text }
    """)[-1:] == ["7:51 error[LMS070] objective 'span_corruption' needs a causal decoder, but layer 0 of the decoder "
                  "of 't5' has bidirectional attention (it would see the tokens it predicts)"]


def test_prefix_lm_needs_a_decoder_with_prefix_attention():
    assert problems(f"""
        {GPT}
        train t {{ model: gpt, objective: prefix_lm, data: text }}
    """) == ["5:34 error[LMS070] objective 'prefix_lm' needs a decoder with prefix attention, but model 'gpt' is "
             "a decoder without it"]


def test_classify_needs_a_classifier_head():
    d = only("""
        data reviews { source: builtin("tiny-reviews"), label: "sentiment" }
        model critic { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }
        train t { model: critic, objective: classify, data: reviews }
    """, "LMS070")
    assert (d.span.line, d.span.col) == (6, 37)
    assert d.message == "objective 'classify' needs a classifier head, but model 'critic' has heads: mlm"
    assert d.labels[0].message == "'critic' has the default head (mlm)"
    assert d.help == ("add classifier(classes: N) to the model's `head:`, or write "
                      "`model: critic with head classifier`")
    # `with head classifier(...)` on the stage is the other way to give it one
    assert problems("""
        data reviews { source: builtin("tiny-reviews"), label: "sentiment" }
        model critic { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }
        train t { model: critic with head classifier(classes: 2), objective: classify(label: "sentiment"),
                  data: reviews }
    """) == ["3:6 warning[LMS080] data 'text' is not used by any stage"]


def test_bradley_terry_needs_a_scalar_head_and_dpo_a_decoder():
    assert problems(f"""
        {GPT}
        model bert {{ arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }}
        train p {{ model: gpt, objective: clm, data: text }}
        judge j {{ score: length }}
        feedback f {{ policy: gpt from p, prompts: text.prefixes(tokens: 8), judge: j }}
        train r {{ model: gpt from p, objective: bradley_terry, data: f }}
        train d {{ model: bert, objective: dpo, data: f }}
    """) == ["9:41 error[LMS070] objective 'bradley_terry' needs a scalar head, but model 'gpt' has heads: lm",
             "10:35 error[LMS070] objective 'dpo' needs a decoder, but model 'bert' is an encoder",
             "10:35 error[LMS070] objective 'dpo' needs an lm head, but model 'bert' has heads: mlm"]


def test_sft_needs_a_decoder():
    assert problems("""
        data ins { source: builtin("tiny-instructions") }
        model bert { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, head: lm }
        train t { model: bert, objective: sft, data: ins }
    """) == ["3:6 warning[LMS080] data 'text' is not used by any stage",
             "6:35 error[LMS070] objective 'sft' needs a decoder, but model 'bert' is an encoder"]


# ------------------------------------------------------------------------------ tokens: LMS071


def test_mlm_needs_a_mask_token():
    d = only("""
        tokenizer plain { kind: bytes, specials: [pad, bos, eos] }
        model bert { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }
        train t { model: bert, tokenizer: plain, objective: mlm, data: text }
    """, "LMS071")
    assert (d.span.line, d.span.col) == (6, 53)
    assert d.message == "objective 'mlm' needs a mask token, but tokenizer 'plain' has none"
    assert [(l.span.line, l.span.col, l.message) for l in d.labels] == [(4, 42, "specials of 'plain'")]
    assert d.help == "add mask to `specials:` of tokenizer 'plain'"


def test_span_corruption_needs_enough_sentinel_tokens():
    t5 = ("model t5 { arch: encoder_decoder, encoder { layers: 1 }, decoder { layers: 1 }, vocab: 400, "
          "context: 128, d_model: 64, heads: 4 }")
    assert problems(f"""
        {t5}
        train t {{ model: t5, objective: span_corruption, data: text }}
    """) == ["5:33 error[LMS071] objective 'span_corruption' needs sentinel tokens, but tokenizer 'tok' has none"]
    # 128 tokens * 15% noise = 19 noise tokens in spans of 3: about 6 spans, one sentinel each
    assert problems(f"""
        tokenizer few {{ kind: bytes, sentinels: 4 }}
        {t5}
        train t {{ model: t5, tokenizer: few, objective: span_corruption, data: text }}
    """) == ["2:11 warning[LMS080] tokenizer 'tok' is not used by any stage",
             "6:49 error[LMS071] objective 'span_corruption' cuts about 6 spans from 128 tokens, but tokenizer "
             "'few' has 4 sentinels"]


# ------------------------------------------------------------------------------ data: LMS072


def test_classify_needs_to_know_the_label_field():
    assert problems("""
        data reviews { source: builtin("tiny-reviews") }
        model critic { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, head: classifier }
        train t { model: critic, objective: classify, data: reviews }
        train u { model: critic, objective: classify(label: "sentiment"), data: reviews }
    """) == ["3:6 warning[LMS080] data 'text' is not used by any stage",
             "6:37 error[LMS072] objective 'classify' needs to know which field holds the label, but data 'reviews' "
             "names none"]


def test_classify_label_fields_must_agree():
    assert problems("""
        data reviews { source: builtin("tiny-reviews"), label: "sentiment" }
        model critic { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, head: classifier }
        train t { model: critic, objective: classify(label: "stars"), data: reviews }
    """) == ["3:6 warning[LMS080] data 'text' is not used by any stage",
             "6:37 error[LMS072] objective 'classify' reads label field 'stars', but data 'reviews' names its label "
             "'sentiment'"]


def test_preference_objectives_read_feedback_and_text_objectives_read_data():
    d = only(f"""
        {GPT}
        train t {{ model: gpt with head scalar, objective: bradley_terry, data: text }}
    """, "LMS072")
    assert (d.span.line, d.span.col) == (5, 51)
    assert d.message == "objective 'bradley_terry' learns from preference pairs, but 'text' is a data block"
    assert [(l.span.line, l.span.col, l.message) for l in d.labels] == [(5, 72, "'text' is read here")]
    assert problems(f"""
        {GPT}
        train p {{ model: gpt, objective: clm, data: text }}
        judge j {{ score: length }}
        feedback f {{ policy: gpt from p, prompts: text.prefixes(tokens: 8), judge: j }}
        train s {{ model: gpt from p, objective: sft, data: f }}
    """) == ["8:41 error[LMS072] objective 'sft' reads text, but 'f' is a feedback block (preference pairs)"]


# ------------------------------------------------------------------------------ vocabulary: LMS073, LMS074


def test_the_vocab_covers_the_tokenizer():
    d = only("""
        model gpt { vocab: 256, context: 64, layers: 2, d_model: 64, heads: 4 }
        train t { model: gpt, objective: clm, data: text }
        train u { model: gpt, objective: clm, data: text }
    """, "LMS073")  # reported once, though two stages pair them
    assert (d.span.line, d.span.col) == (4, 20)
    assert d.message == "model 'gpt' has vocab 256, but tokenizer 'tok' produces 262 ids"
    assert d.help == "write `vocab: tok.vocab_size` (or any number >= 262)"
    assert [(l.span.line, l.span.col, l.message) for l in d.labels] == [(5, 18, "train 't' pairs them here")]


def test_the_vocab_covers_a_bpe_tokenizer():
    assert problems("""
        tokenizer bpe { kind: bpe(vocab: 1024, train_on: text) }
        model gpt { vocab: 1000, context: 64, layers: 2, d_model: 64, heads: 4 }
        train t { model: gpt, tokenizer: bpe, objective: clm, data: text }
    """) == ["2:11 warning[LMS080] tokenizer 'tok' is not used by any stage",
             "5:20 error[LMS073] model 'gpt' has vocab 1000, but tokenizer 'bpe' produces 1024 ids"]


def test_with_several_tokenizers_a_stage_names_one():
    d = only(f"""
        tokenizer other {{ kind: bpe(vocab: 4096, train_on: text) }}
        {GPT}
        train t {{ model: gpt, objective: clm, data: text }}
    """, "LMS074")
    assert (d.span.line, d.span.col) == (6, 7)
    assert d.message == "train 't' does not say which tokenizer it uses; the spec has 2: tok, other"
    assert d.help == "add `tokenizer: tok` (or another) to 't'"


# ------------------------------------------------------------------------------ stage references: LMS075-LMS078


def test_from_names_a_stage_that_trained_a_model_of_the_same_shapes():
    d = only("""
        model a { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }
        model b { vocab: 262, context: 64, layers: 2, d_model: 128, heads: 4 }
        train t { model: a, objective: clm, data: text }
        train v { model: b from t, objective: clm, data: text }
    """, "LMS075")
    assert (d.span.line, d.span.col) == (7, 18)
    assert d.message == ("'b from t' needs weights for 'b', but train 't' trains 'a', whose shapes differ "
                         "(d_model: 64 vs 128)")
    assert [(l.span.line, l.span.col, l.message) for l in d.labels] == [(6, 18, "'t' trains 'a' here")]


def test_init_names_a_stage_that_trained_a_model_of_the_same_shapes():
    assert problems("""
        model base { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }
        model deep extends base { layers: 3 }
        model calm extends base { dropout: 0.1 }
        train t { model: base, objective: clm, data: text }
        train u { model: calm, init: t, objective: clm, data: text }
        train v { model: deep, init: t, objective: clm, data: text }
    """) == ["9:30 error[LMS075] init: t needs weights for 'deep', but train 't' trains 'base', whose shapes differ "
             "(decoder layers: 2 vs 3)"]


def test_an_rl_reference_is_a_stage_that_trained_the_policy():
    assert problems(f"""
        {GPT}
        model bert {{ arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }}
        train p {{ model: gpt, objective: clm, data: text }}
        train m {{ model: bert, objective: mlm, data: text }}
        judge j {{ score: length }}
        rl r {{ policy: gpt from p, reference: m, reward: j, rollouts {{ prompts: text.prefixes(tokens: 8) }} }}
    """) == ["9:39 error[LMS075] reference: m needs weights for 'gpt', but train 'm' trains 'bert', whose shapes "
             "differ (arch: encoder vs decoder)"]


def test_an_rl_reward_is_a_reward_model_or_a_judge():
    d = only(f"""
        {GPT}
        train p {{ model: gpt, objective: clm, data: text }}
        rl r {{ policy: gpt from p, reward: p, rollouts {{ prompts: text.prefixes(tokens: 8) }} }}
    """, "LMS076")
    assert (d.span.line, d.span.col) == (6, 36)
    assert d.message == "reward 'p' is not a reward model: it trains 'gpt' with heads: lm"
    assert d.help.startswith("a reward stage trains a scalar head")


def test_a_judge_score_reads_a_head_its_model_has():
    assert problems(f"""
        {GPT}
        model critic {{ arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4,
                        head: classifier(classes: 2) }}
        judge a {{ model: gpt, score: scalar }}
        judge b {{ model: critic, score: probability(class: 2) }}
        feedback f {{ policy: gpt, prompts: text.prefixes(tokens: 8), judge: a }}
        feedback g {{ policy: gpt, prompts: text.prefixes(tokens: 8), judge: b }}
    """)[:2] == ["7:30 error[LMS077] judge 'a' scores with scalar, which reads a scalar head, but model 'gpt' has "
                 "heads: lm",
                 "8:33 error[LMS077] judge 'b' reads class 2, but the classifier of 'critic' has 2 classes (0..1)"]


def test_a_judge_comes_from_a_stage_that_trained_its_head():
    assert problems("""
        model critic { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, head: [mlm] }
        train m { model: critic, objective: mlm, data: text }
        judge j { model: critic with head classifier from m }
        rl r { policy: critic with head lm from m, reward: j, rollouts { prompts: text.prefixes(tokens: 8) } }
    """)[:1] == ["6:18 error[LMS077] judge 'j' reads a classifier head, but 'm' trains 'critic' with heads: mlm, "
                 "so that head would be untrained"]


def test_a_policy_generates_text():
    assert problems("""
        model critic { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }
        model scorer { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, head: scalar }
        train m { model: critic, objective: mlm, data: text }
        train s { model: scorer with head lm, objective: clm, data: text }
        judge j { score: length }
        feedback f { policy: critic from m, prompts: text.prefixes(tokens: 8), judge: j }
        rl r { policy: scorer from s, reward: j, rollouts { prompts: text.prefixes(tokens: 8) } }
    """) == ["9:22 error[LMS078] the policy of feedback 'f' must generate text, but 'critic' is an encoder",
             "10:16 error[LMS078] the policy of rl 'r' must generate text, but 'scorer' has no lm head "
             "(heads: scalar)"]


# ------------------------------------------------------------------------------ cycles: LMS079


def test_stages_that_depend_on_each_other_are_a_cycle():
    d = only(f"""
        {GPT}
        train a {{ model: gpt, init: b, objective: clm, data: text }}
        train b {{ model: gpt from a, objective: clm, data: text }}
    """, "LMS079")
    assert (d.span.line, d.span.col) == (5, 29)  # `init: b` closes the cycle a -> b -> a
    assert d.message == "stages depend on each other in a cycle: a -> b -> a"
    assert [(l.span.line, l.span.col, l.message) for l in d.labels] == [(6, 18, "'b' reads 'a' here")]
    assert d.notes == ["'b' reads 'a' (from)", "'a' reads 'b' (init)"]


def test_a_cycle_through_feedback_and_a_judge():
    assert problems(f"""
        {GPT}
        train p {{ model: gpt, objective: clm, data: text }}
        judge j {{ model: gpt with head scalar from r, score: scalar }}
        feedback f {{ policy: gpt from p, prompts: text.prefixes(tokens: 8), judge: j }}
        train r {{ model: gpt with head scalar, init: p, objective: bradley_terry, data: f }}
    """) == ["6:18 error[LMS079] stages depend on each other in a cycle: j -> f -> r -> j"]


def test_a_stage_from_itself_is_a_cycle():
    assert problems(f"""
        {GPT}
        train t {{ model: gpt from t, objective: clm, data: text }}
    """) == ["5:18 error[LMS079] stages depend on each other in a cycle: t -> t"]


# ------------------------------------------------------------------------------ warnings


def test_blocks_no_stage_uses():
    assert problems(f"""
        data spare {{ source: builtin("tiny-reviews") }}
        {GPT}
        model base {{ vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }}
        model big extends base {{ layers: 3 }}
        model spare_model {{ vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }}
        judge spare_judge {{ score: length }}
        train t {{ model: gpt, objective: clm, data: text }}
        train u {{ model: big, objective: clm, data: text }}
    """) == ["4:6 warning[LMS080] data 'spare' is not used by any stage",
             "8:7 warning[LMS080] model 'spare_model' is not used by any stage",
             "9:7 warning[LMS080] judge 'spare_judge' is not used by any stage"]
    # a file without stages is a library of definitions: nothing is "unused"
    assert problems(GPT) == []


def test_dropout_in_an_rl_policy_is_a_warning():
    d = only("""
        model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, dropout: 0.1 }
        train p { model: gpt, objective: clm, data: text }
        judge j { score: length }
        rl r { policy: gpt from p, reward: j, rollouts { prompts: text.prefixes(tokens: 8) } }
    """, "LMS082")
    assert (d.severity, d.span.line, d.span.col) == ("warning", 7, 16)
    assert d.message.startswith("the policy of rl 'r' has dropout 0.1: ")
    assert d.help == "use a copy without dropout: `model gpt_rl extends gpt { dropout: 0 }`"
    assert [(l.span.line, l.span.col) for l in d.labels] == [(4, 81)]


def test_dropout_set_in_a_layer_override_is_labelled_there():
    d = only("""
        model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, layer 1 { dropout: 0.2 } }
        train p { model: gpt, objective: clm, data: text }
        judge j { score: length }
        rl r { policy: gpt from p, reward: j, rollouts { prompts: text.prefixes(tokens: 8) } }
    """, "LMS082")
    assert d.message.startswith("the policy of rl 'r' has dropout 0.2: ")
    assert [(l.span.line, l.span.col, l.message) for l in d.labels] == [(4, 91, "dropout is set here")]


def test_an_untrained_policy_or_judge_is_a_warning():
    assert problems("""
        model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }
        model critic { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, head: classifier }
        judge j { model: critic }
        feedback f { policy: gpt, prompts: text.prefixes(tokens: 8), judge: j }
    """) == ["6:18 warning[LMS083] judge 'j' uses model 'critic' without trained weights: its scores are noise",
             "7:22 warning[LMS083] the policy of feedback 'f' has no trained weights: 'gpt' samples random tokens"]


# ------------------------------------------------------------------------------ passed check => builds
#
# Random model blocks, many of them wrong on purpose. Whatever `check` accepts must lower,
# build and run a forward pass: the rules are complete with respect to the torch code.
# (Without LMS068 and LMS069 this test finds models that pass check and fail to build.)

_ATTENTION = st.one_of(st.sampled_from(["causal", "bidirectional", "prefix"]),
                       st.integers(1, 40).map(lambda w: f"sliding(window: {w})"))
_POSITION = st.one_of(
    st.sampled_from(["learned", "sinusoidal", "alibi", "none", "rope", "rope(theta: 500)"]),
    st.tuples(st.integers(2, 16), st.integers(2, 64)).map(lambda b: f"relative(buckets: {b[0]}, max_distance: {b[1]})"))
_HEAD = st.sampled_from(["lm", "mlm", "mlm(transform: true)", "nsp", "classifier(classes: 3)", "scalar(pool: mean)",
                         "classifier(pool: first)", "none"])


@st.composite
def _layer_keys(draw) -> dict:
    keys = {}
    if draw(st.booleans()):
        keys["heads"] = draw(st.integers(1, 8))
    if draw(st.booleans()):
        keys["kv_heads"] = draw(st.integers(1, 8))
    if draw(st.integers(0, 3)) == 0:
        keys["head_dim"] = draw(st.integers(1, 12))
    if draw(st.integers(0, 2)) == 0:
        keys["d_ff"] = draw(st.integers(1, 80))
    if draw(st.booleans()):
        keys["attention"] = draw(_ATTENTION)
    if draw(st.integers(0, 2)) == 0:
        keys["position"] = draw(_POSITION)
    if draw(st.integers(0, 3)) == 0:
        keys["activation"] = draw(st.sampled_from(["gelu", "gelu_tanh", "relu", "silu", "swiglu", "geglu", "reglu"]))
    if draw(st.integers(0, 3)) == 0:
        keys["norm"] = draw(st.sampled_from(["layernorm", "rmsnorm"]))
    if draw(st.integers(0, 3)) == 0:
        keys["bias"] = draw(st.sampled_from(["true", "false"]))
    return keys


def _fields(keys: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in keys.items())


@st.composite
def _overrides(draw, n: int) -> list[str]:
    out = []
    for _ in range(draw(st.integers(0, 2))):
        first = draw(st.integers(0, n))  # n itself is outside the stack: LMS048
        last = draw(st.integers(first, n))
        keys = draw(_layer_keys())
        if keys:
            out.append(f"layer {first}..{last} {{ {_fields(keys)} }}")
    return out


@st.composite
def random_model(draw) -> str:
    arch = draw(st.sampled_from(["decoder", "encoder", "encoder_decoder"]))
    top = {"arch": arch, "vocab": draw(st.integers(2, 300)), "context": draw(st.integers(4, 32)),
           "d_model": draw(st.sampled_from([8, 12, 16, 24, 32])), "heads": draw(st.integers(1, 8))}
    top.update(draw(_layer_keys()))
    for key, values in [("placement", ["pre", "post"]), ("tie_embeddings", ["true"]), ("segments", [0, 2, 3]),
                        ("pooler", ["true"]), ("embed_norm", ["true"]), ("final_norm", ["true", "false"]),
                        ("attention_scale", ["none"]), ("embed_scale", [2.0])]:
        if draw(st.booleans()):
            top[key] = draw(st.sampled_from(values))
    if draw(st.booleans()):
        top["head"] = "[" + ", ".join(draw(st.lists(_HEAD, min_size=1, max_size=3))) + "]"
    lines = [_fields(top)]
    if arch == "encoder_decoder":
        for part in ("encoder", "decoder"):
            n = draw(st.integers(1, 3))
            inner = [f"layers: {n}", _fields(draw(_layer_keys()))] + draw(_overrides(n))
            lines.append(f"{part} {{ " + "\n".join(x for x in inner if x) + " }")
    else:
        n = draw(st.integers(1, 3))
        lines += [f"layers: {n}"] + draw(_overrides(n))
    return "lmspec 1\nmodel m {\n" + "\n".join(lines) + "\n}\n"


def _forward(arch) -> None:
    model = build_model(arch, device="meta")
    device = "meta"
    if arch.position.kind == "learned":
        # the learned-position bound check reads a value, which meta tensors do not have:
        # these models run for real, on the CPU (they are tiny)
        model, device = build_model(arch, device="cpu"), "cpu"
    model.eval()
    T = min(arch.context, 6)
    ids = torch.randint(0, arch.vocab, (2, T)).to(device)
    kwargs = {}
    if any(layer.attention.kind == "prefix" for stack in arch.stacks for layer in stack.layers):
        kwargs["prefix_lengths"] = torch.tensor([2, 3], device=device)
    if arch.arch == "encoder_decoder":
        kwargs["decoder_input_ids"] = ids
    with torch.no_grad():
        out = model(ids, **kwargs)
    assert out.hidden.shape == (2, T, arch.d_model)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_model())
def test_a_model_that_passes_check_always_builds_runs_and_draws(text):
    report = check_text(text)
    if report.ok:
        arch = report.models["m"]
        _forward(arch)
        g = architecture_graph(arch, report.spec)
        assert nx.is_directed_acyclic_graph(g)
        assert sum(d["kind"] == "attention" for _, d in g.nodes(data=True)) == sum(s.n_layers for s in arch.stacks)
        assert all(d["span"] is not None for _, d in g.nodes(data=True))


def test_a_model_has_one_vocabulary_head():
    assert problems("model m { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, head: [lm, mlm] }") \
        == ["4:76 error[LMS086] model 'm' has both an lm and an mlm head"]


# ------------------------------------------------------------------------------ issue 9: no silent acceptance
#
# A value that would fail, be cut, be ignored or be overridden at run time is a check-time
# diagnostic; and nothing is rejected that nothing would break.


def _tokenizer_json(directory: Path, words: int = 20) -> Path:
    """A WordLevel tokenizer.json with `words` words and two added specials (ids words, words + 1)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(words)}, unk_token="w0"))
    tok.add_special_tokens(["[PAD]", "[MASK]"])
    directory.mkdir(parents=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory / "tokenizer.json"


def test_a_model_reading_an_unknown_vocab_size_is_an_error_at_the_reference():
    # before: the model vanished from every check, figure and graph, and `check` said ok
    d = only("""
        tokenizer mine { kind: hf("no/such/dir") }
        model gpt { vocab: mine.vocab_size + 64, context: 64, layers: 2, d_model: 64, heads: 4 }
    """, "LMS092")
    assert (d.span.line, d.span.col, d.span.end_col) == (5, 20, 35)  # `mine.vocab_size`
    assert d.message == "the vocab_size of 'mine' is unknown: hf(\"no/such/dir\") has no tokenizer.json to read it from"
    assert [(l.span.line, l.span.col, l.message) for l in d.labels] == [(4, 24, "tokenizer 'mine'")]
    assert d.help == "write the number (`vocab: N`), or point hf(...) at a directory with tokenizer.json"


@pytest.mark.parametrize("kind, size", [("bpe", 4096), ("bytes()", 262)])
def test_a_tokenizer_written_without_arguments_never_drops_a_model(kind, size):
    # `kind: bpe` has the schema's default vocab (4096): either `tok.vocab_size` reads it, or
    # check says where it could not; a model is never skipped in silence
    r = check_text(f"lmspec 1\ntokenizer t {{ kind: {kind} }}\n"
                   "model m { vocab: t.vocab_size, context: 64, layers: 2, d_model: 64, heads: 4 }\n", "t.lmspec")
    if "m" in r.models:
        assert r.models["m"].vocab == size
    else:
        assert [(d.code, d.span.line, d.span.col) for d in r.errors] == [("LMS092", 3, 18)]
        assert str(size) in r.errors[0].help


def test_an_hf_tokenizer_size_is_read_from_its_tokenizer_json(tmp_path):
    from lmspec.compiler.rules_tokens import hf_vocab_size
    from lmspec.runtime.tokenizers import load_tokenizer  # noqa: F401 - the runtime reads the same file

    from tokenizers import Tokenizer

    file = _tokenizer_json(tmp_path / "tok", words=20)
    expected = max(Tokenizer.from_file(str(file)).get_vocab(with_added_tokens=True).values()) + 1
    assert hf_vocab_size(file) == expected == 22
    # LMS073 now sees an hf tokenizer's size too
    spec = tmp_path / "s.lmspec"
    spec.write_text('lmspec 1\ntokenizer tok { kind: hf("tok"), specials: [pad, mask] }\n'
                    'data text { source: builtin("tiny-stories") }\n'
                    "model gpt { vocab: 16, context: 64, layers: 2, d_model: 64, heads: 4 }\n"
                    "train t { model: gpt, objective: clm, data: text }\n")
    assert [(d.code, d.message) for d in check_file(spec).errors] == [
        ("LMS073", "model 'gpt' has vocab 16, but tokenizer 'tok' produces 22 ids")]


def test_an_hf_tokenizer_may_name_its_tokenizer_json_itself(tmp_path):
    # the runtime reads hf("dir/tokenizer.json") as it reads hf("dir"); so does LMS087
    _tokenizer_json(tmp_path / "tok")
    spec = tmp_path / "s.lmspec"
    spec.write_text('lmspec 1\ntokenizer tok { kind: hf("tok/tokenizer.json"), specials: [pad, mask] }\n')
    assert check_file(spec).diagnostics == []


def test_objective_weights_are_positive():
    assert problems("""
        model bert { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, segments: 2,
                     pooler: true, head: [mlm, nsp] }
        train t { model: bert, objective: mlm + -0.5 * nsp, data: text }
        train u { model: bert, objective: mlm + 0 * nsp, data: text }
    """) == ["6:35 error[LMS093] objective 'nsp' of 't' has weight -0.5: a negative weight maximises its loss",
             "7:35 error[LMS093] objective 'nsp' of 'u' has weight 0: it trains nothing, yet its batches are built "
             "and its head runs"]


def test_pad_and_mask_ids_are_inside_the_vocabulary():
    assert problems("model m { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, pad_id: 261, "
                    "mask_id: 262 }") == [
        "4:92 error[LMS094] mask_id (262) is outside the vocabulary of model 'm' (ids 0..261)"]


def test_an_encoder_decoder_reads_no_model_level_layers():
    d = only("""
        model t5 { arch: encoder_decoder, vocab: 262, context: 64, d_model: 64, heads: 4, layers: 6
                   encoder { layers: 2 }, decoder { layers: 2 } }
    """, "LMS095")
    assert (d.span.line, d.span.col, d.span.end_col) == (4, 83, 89)  # the key `layers`
    assert d.message == "encoder-decoder 't5' does not read a model-level 'layers': each stack has its own"
    assert d.help == "write `encoder { layers: 6 }` and `decoder { layers: 6 }`"
    # without the stack blocks the model-level layers used to stand in for both; now each stack says
    assert problems("model t5 { arch: encoder_decoder, vocab: 262, context: 64, d_model: 64, heads: 4, layers: 2 }") == [
        "4:7 error[LMS064] encoder-decoder 't5' has no encoder block",
        "4:7 error[LMS064] encoder-decoder 't5' has no decoder block",
        "4:83 error[LMS095] encoder-decoder 't5' does not read a model-level 'layers': each stack has its own"]


def test_an_encoder_decoder_reads_attention_per_stack():
    t5 = ("model t5 {{ arch: encoder_decoder, vocab: 262, context: 64, d_model: 64, heads: 4, "
          "attention: sliding(window: 8), encoder {{ layers: 2{enc} }}, decoder {{ layers: 2 }} }}")
    assert problems(t5.format(enc="")) == [
        "4:83 error[LMS095] a model-level 'attention' in encoder-decoder 't5': it reaches the encoder only; the "
        "decoder stays causal"]
    assert problems(t5.format(enc=", attention: bidirectional")) == [
        "4:83 error[LMS095] a model-level 'attention' in encoder-decoder 't5': 'encoder { }' sets its own "
        "attention and the decoder never reads the model's, so it is ignored"]


def test_rollouts_and_feedback_samples_fit_the_policys_context():
    d = only(f"""
        {GPT}
        train p {{ model: gpt, objective: clm, data: text }}
        judge j {{ score: length }}
        rl r {{ policy: gpt from p, reward: j, rollouts {{ prompts: text.prefixes(tokens: 32), max_new_tokens: 40 }} }}
    """, "LMS089")
    assert (d.span.line, d.span.col) == (7, 102)  # the 40 of max_new_tokens
    assert d.message == ("the samples of rl 'r' are 32 prompt tokens + 40 new tokens = 72, longer than the context "
                         "of 'gpt' (64)")
    assert [(l.span.line, l.span.col, l.message) for l in d.labels] == [(7, 81, "32-token prompts")]
    assert d.help == "use max_new_tokens: 32 or less, or shorter prompts"
    d = only(f"""
        {GPT}
        train p {{ model: gpt, objective: clm, data: text }}
        judge j {{ score: length }}
        feedback f {{ policy: gpt from p, prompts: text.prefixes(tokens: 30), judge: j }}
    """, "LMS089")
    assert (d.span.line, d.span.col) == (7, 65)  # the 30: max_new_tokens is not written
    assert d.message == ("the samples of feedback 'f' are 30 prompt tokens + 48 new tokens (the default "
                         "max_new_tokens) = 78, longer than the context of 'gpt' (64)")
    assert d.help == "set max_new_tokens: 34 or less, or shorter prompts"


def _meta(body: str) -> list[str]:
    """The meta pass's diagnostics (`lmspec check` without --no-meta), as `problems` lists them."""
    r = report(body)
    assert r.ok, [d.message for d in r.errors]
    return [f"{d.span.line}:{d.span.col} {d.severity}[{d.code}] {d.message}" for d in spec_figures(r)[1]]


def test_a_bert_model_that_no_stage_trains_is_not_rejected():
    # import-hf writes exactly this for a Hugging Face BertModel: its pooler feeds no head
    assert _meta("model bert { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, "
                 "segments: 2, pooler: true, embed_norm: true, placement: post, head: none }") == []


def test_parameters_a_stage_does_not_train_are_a_warning_naming_the_stage():
    bert = ("model bert { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, segments: 2, "
            "pooler: true, head: [mlm, nsp] }")
    assert _meta(f"""
        {bert}
        train t {{ model: bert, objective: mlm, data: text }}
        train u {{ model: bert from t, objective: mlm + nsp, data: text }}
    """) == ["5:35 warning[LMS096] train 't' leaves pooler.dense, nsp_head (4 tensors) of 'bert' untrained: its "
             "objective (mlm) does not reach them"]


# ----------------------------------------------------------------------------- issue 9: help that goes round in circles
#
# A help line that suggests a value suggests a fix: applied, it clears the problem and breaks no
# other layer. `try d_model: 66` for `layer 1 { heads: 6 }` beside a model-level `heads: 4`
# did not: 66 fails the other layers' 4 heads.

_SHAPE_CODES = ("LMS060", "LMS061", "LMS062", "LMS068")
_FIX = re.compile(r"\b(try|add) (heads|kv_heads|head_dim|d_model): (\d+(?: or \d+)*)")


def _fixes(text: str, d, report) -> list[str]:
    """`text` with each fix that the help of `d` suggests applied: `try KEY: V` writes V over the
    value the diagnostic points at (d_model over the model's d_model); `add KEY: V here` writes
    the key beside it."""
    out = []
    for verb, key, values in _FIX.findall(d.help):
        for value in values.split(" or "):
            if verb == "add":
                out.append(text[:d.span.end] + f", {key}: {value}" + text[d.span.end:])
                continue
            span = report.spec.resolved.blocks["m"].span_of(("d_model",)) if key == "d_model" else d.span
            out.append(text[:span.start] + value + text[span.end:])
    return out


def _assert_each_fix_works(text: str, d, report) -> None:
    before = Counter(e.code for e in report.errors)
    others = {(e.code, e.message) for e in report.errors if e.code not in _SHAPE_CODES}
    fixed = _fixes(text, d, report)
    assert fixed, d.help
    for new in fixed:
        after = check_text(new)
        counts = Counter(e.code for e in after.errors)
        assert counts[d.code] < before[d.code], (d.help, new, [e.message for e in after.errors])
        assert all(counts[c] <= before[c] for c in _SHAPE_CODES[:3]), (d.help, new)
        # LMS068 shows only once a model lowers: a fix may leave one only where the note says so
        assert counts["LMS068"] == 0 or any("LMS068" in n for n in d.notes), (d.help, new)
        assert {(e.code, e.message) for e in after.errors if e.code not in _SHAPE_CODES} <= others, (d.help, new)


def test_a_layers_heads_that_do_not_divide_d_model_get_fixes_that_fit_every_layer():
    text = "lmspec 1\nmodel m { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, layer 1 { heads: 6 } }\n"
    report = check_text(text)
    (d,) = report.errors
    assert (d.code, str(d.span), d.message) == ("LMS060", "<string>:2:87", "heads (6) must divide d_model (64)")
    # 66 (the multiple of 6 nearest 64) fails the 4 heads of layer 0; 60 divides by both
    assert d.help == "try heads: 4 or 8 here, or add head_dim: 16 here; or try d_model: 60"
    _assert_each_fix_works(text, d, report)


@pytest.mark.parametrize("keys, code, help", [
    # the model's own heads: the doc's wording, with a d_model every layer's heads divide
    ("d_model: 250, heads: 8", "LMS060", "try d_model: 248, or set head_dim"),
    ("d_model: 64, heads: 5, layer 1 { heads: 2 }", "LMS060", "try d_model: 60, or set head_dim"),
    # with RoPE each head_dim must be even too: 996 / 12 = 83, 1008 / 12 = 84
    ("d_model: 1000, heads: 12, position: rope", "LMS060", "try d_model: 1008, or set head_dim"),
    ("d_model: 64, heads: 4, position: rope, layer 1 { heads: 6 }", "LMS060",
     "try heads: 4 or 8 here, or add head_dim: 16 here; or try d_model: 72"),
    # relative positions share one bias table per stack, so one number of heads: only 4 fits
    ("d_model: 64, heads: 4, position: relative, layer 1 { heads: 6 }", "LMS060", "try heads: 4 here"),
    # the layer's heads must also be a multiple of the model's kv_heads: 6 and 12, not 8 or 16
    ("d_model: 48, heads: 6, kv_heads: 3, layer 1 { heads: 9 }", "LMS060",
     "try heads: 6 or 12 here, or add head_dim: 8 here; or try d_model: 54"),
    # no divisor of 64 is a multiple of kv_heads 3
    ("d_model: 64, heads: 8, kv_heads: 3, layer 1 { heads: 6 }", "LMS060", "add head_dim: 8 here; or try d_model: 72"),
    ("d_model: 64, heads: 8, kv_heads: 3", "LMS061", "try kv_heads: 2"),
    # the model's kv_heads 4 meets a layer's heads: change those, or give the layer its own kv_heads
    ("d_model: 64, heads: 8, kv_heads: 4, layer 1 { heads: 6 }", "LMS061",
     "try heads: 4 or 8 here, or add kv_heads: 3 here"),
    ("d_model: 64, heads: 8, kv_heads: 4, layer 1 { heads: 2 }", "LMS061",
     "try heads: 4 here, or add kv_heads: 2 here"),
    # one d_model for the encoder's 6 heads in layer 1 and the decoder's 5
    ("arch: encoder_decoder, d_model: 64, heads: 4, encoder { layers: 2, layer 1 { heads: 6 } }, "
     "decoder { layers: 1, heads: 5 }", "LMS060",
     "try heads: 4 or 8 here, or add head_dim: 16 here; or try d_model: 60"),
])
def test_every_suggested_shape_fix_passes_the_shape_rules_when_applied(keys, code, help):
    layers = "" if "encoder_decoder" in keys else "layers: 2, "
    text = f"lmspec 1\nmodel m {{ vocab: 262, context: 64, {layers}{keys} }}\n"
    report = check_text(text)
    d = next(e for e in report.errors if e.code == code)
    assert d.help == help
    _assert_each_fix_works(text, d, report)


@st.composite
def _shaped_model(draw) -> str:
    """A model whose heads, kv_heads, head_dim and positions vary per stack and layer."""
    def shape_keys(top: bool) -> dict:
        keys = {"heads": draw(st.integers(1, 8))} if top or draw(st.booleans()) else {}
        if draw(st.integers(0, 2)) == 0:
            keys["kv_heads"] = draw(st.integers(1, 8))
        if draw(st.integers(0, 4)) == 0:
            keys["head_dim"] = draw(st.integers(1, 12))
        if draw(st.integers(0, 2)) == 0:
            keys["position"] = draw(st.sampled_from(["rope", "relative", "learned"]))
        return keys

    def overrides(n: int) -> list[str]:
        out = []
        for _ in range(draw(st.integers(0, 2))):
            first = draw(st.integers(0, n - 1))
            keys = shape_keys(False)
            if keys:
                out.append(f"layer {first}..{draw(st.integers(first, n - 1))} {{ {_fields(keys)} }}")
        return out

    top = {"d_model": draw(st.sampled_from([8, 12, 16, 24, 30, 32, 48, 64])), **shape_keys(True)}
    if draw(st.booleans()):
        n = draw(st.integers(1, 3))
        body = [_fields(top), f"layers: {n}"] + overrides(n)
    else:
        body = ["arch: encoder_decoder", _fields(top)]
        for part in ("encoder", "decoder"):
            n = draw(st.integers(1, 3))
            inner = [f"layers: {n}", _fields({k: v for k, v in shape_keys(False).items() if k != "position"})]
            body.append(f"{part} {{ " + ", ".join(x for x in inner if x) + " " + " ".join(overrides(n)) + " }")
    return "lmspec 1\nmodel m { vocab: 262, context: 16, " + ", ".join(body) + " }\n"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_shaped_model())
def test_no_heads_kv_heads_or_d_model_suggestion_goes_round_in_circles(text):
    report = check_text(text)
    for d in report.errors:
        if d.code in ("LMS060", "LMS061") and _FIX.search(d.help):
            _assert_each_fix_works(text, d, report)


# ------------------------------------------------------------------------------ issue 9: every code has a help line

DIAGNOSTICS_DOC = Path(__file__).resolve().parents[1] / "docs" / "diagnostics.md"
_P = PRELUDE
_M = "model m { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4"

#: a spec that draws each code that docs/validation.md does not show an example of
_SNIPPETS = {
    "LMS001": "lmspec 1\nmodel m { a: 1 2 }",
    "LMS002": "lmspec 1\nmodel m { a: 1 ; }",
    "LMS003": "lmspec 1\nmodel m { a: [1, 2 }",
    "LMS004": "lmspec 1\nmodel m { vocab 256 }",
    "LMS005": "lmspec 1\nmodel m { vocab = 256 }",
    "LMS006": "lmspec 1\nmodel m { vocab: [1, 2, ] }",
    "LMS007": 'lmspec 1\ndata d { source: text("abc }',
    "LMS008": "lmspec 1\nmodel m { vocab: 1.2.3 }",
    "LMS010": "lmspec 7\nmodel m { }",
    "LMS011": "lmspec 1\nmodel m { a: " + "[" * 70 + "]" * 70 + " }",
    "LMS012": "lmspec 1\nmodel m { vocab: }",
    "LMS013": "lmspec 1\nmodel m { vocab: 1 ] }",
    "LMS022": _P + 'data text { source: builtin("tiny-stories") }',
    "LMS023": _P + "train t { model: nope, objective: clm, data: text }",
    "LMS024": _P + "model k extends nope { }",
    "LMS025": _P + "model a extends b { }\nmodel b extends a { }",
    "LMS026": _P + "model m { vocab: context, context: vocab }",
    "LMS027": _P + 'model m { vocab: "a" + 1 }',
    "LMS028": _P + "model m { vocab: 1 / 0 }",
    "LMS029": _P + "model m { vocab: tok.nothing }",
    "LMS030": _P + "model m { vocab: 1, vocab: 2 }",
    "LMS032": _P + "model m { vocab: 1e999 }",
    "LMS034": "lmspec 1\n",
    "LMS040": "lmspec 1\nmodle m { }",
    "LMS041": _P + _M + ", bais: true }",
    "LMS042": _P + _M + ", bias: 3 }",
    "LMS043": _P + "model m { vocab: 262, context: 64, layers: 0, d_model: 64, heads: 4 }",
    "LMS044": _P + _M + ", norm: batchnorm }",
    "LMS045": _P + "model m { context: 64, layers: 2, d_model: 64, heads: 4 }",
    "LMS046": _P + _M + ", attention: sliding }",
    "LMS047": _P + _M + " }\ntrain t { model: m, objective: clm, data: m }",
    "LMS049": _P + _M + ", layer 1 { layer 0 { } } }",
    "LMS050": _P + _M + " }\ntrain none { model: m, objective: clm, data: text }\n"
                       "train t { model: m, objective: clm, data: text, init: none }",
}

#: codes that need files, flags or the meta pass: how `_drawn` makes them
_BY_HAND = {"LMS009", "LMS020", "LMS021", "LMS031", "LMS033", "LMS091", "LMS096"}

#: codes no spec can draw, and why
_UNREACHABLE = {
    "LMS090": "the meta pass of a model that passed every rule fails only through a bug in lmspec",
}


def _documented_codes() -> list[str]:
    text = DIAGNOSTICS_DOC.read_text()
    table = text.split("<!-- generated:codes:begin -->")[1].split("<!-- generated:codes:end -->")[0]
    return re.findall(r"^\| `(LMS\d{3})` \|", table, re.M)


def _drawn(code: str, tmp_path: Path) -> list:
    """Every diagnostic with `code` that its snippet draws."""
    from lmspec.compiler.compile import check_stages

    doc = {c: text for c, text, _ in _doc_examples()}
    if code in _SNIPPETS or code in doc:
        report = check_text(_SNIPPETS.get(code) or doc[code], "s.lmspec")
        if code in META_CODES:
            report.diagnostics += spec_figures(report)[1]
    elif code == "LMS009":
        (tmp_path / "s.lmspec").write_bytes(b"lmspec 1\nmodel m { \xe9 }\n")
        report = check_file(tmp_path / "s.lmspec")
    elif code in ("LMS020", "LMS021"):
        (tmp_path / "a.lmspec").write_text('lmspec 1\nimport "b.lmspec"\n')
        (tmp_path / "b.lmspec").write_text('lmspec 1\nimport "a.lmspec"\n' if code == "LMS021" else
                                           'lmspec 1\nimport "missing.lmspec"\n')
        report = check_file(tmp_path / "a.lmspec")
    elif code == "LMS031":
        report = check_file(tmp_path / "missing.lmspec")
    elif code == "LMS033":
        report = check_text(_P + _M + " }", "s.lmspec", overrides=("m.heads", "nope.heads=2"))
    elif code == "LMS091":  # a checkpoint directory that holds no checkpoint
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "s.lmspec").write_text(
            _P + "model m { vocab: tok.vocab_size, context: 64, layers: 2, d_model: 64, heads: 4 }\n"
            'train t { model: m, objective: clm, data: text, init: hf("ckpt") }\n')
        report = check_file(tmp_path / "s.lmspec")
        assert report.ok, [d.message for d in report.diagnostics]
        check_stages(report)
    return [d for d in report.diagnostics if d.code == code]


@pytest.mark.parametrize("code", _documented_codes())
def test_every_documented_code_comes_with_a_help_line(code, tmp_path):
    if code in _UNREACHABLE:
        assert code in CODES
        return
    drawn = _drawn(code, tmp_path)
    assert drawn, f"no snippet draws {code}: add one to _SNIPPETS"
    assert all(d.help and d.help.strip() for d in drawn), [(d.message, d.help) for d in drawn]

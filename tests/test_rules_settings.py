"""Settings the runtime would ignore, cut or override (docs/keys.md, its closed gaps): a spec
snippet in, the exact diagnostic out, and where the check reproduces runtime arithmetic (the
split, the learning rate, an objective's shortest sequence, an hf tokenizer's specials) the
runtime's own answer beside it.

Every snippet is appended to the same three lines, so its first line is line 4:

    1  lmspec 1
    2  tokenizer tok { kind: bytes }
    3  data text { source: builtin("tiny-stories") }
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lmspec.compiler.api import check_file, check_text
from lmspec.compiler.rules_settings import BUILTIN_RECORDS, builtin_split, held_out
from lmspec.compiler.rules_tokens import HF_SPELLINGS, SPECIAL_NAMES, hf_specials, span_counts

SPECS = Path(__file__).resolve().parents[1] / "specs"
PRELUDE = 'lmspec 1\ntokenizer tok { kind: bytes }\ndata text { source: builtin("tiny-stories") }\n'
GPT = "model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }"
BERT = "model bert { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }"
CRITIC = ("model critic { arch: encoder, vocab: 262, context: 64, layers: 1, d_model: 64, heads: 4, head: classifier }\n"
          "data reviews { source: builtin(\"tiny-reviews\") }\n"
          "train fit { model: critic, objective: classify(label: \"sentiment\"), data: reviews }\n"
          "judge happy { model: critic from fit }")
PRE = "train pre { model: gpt, objective: clm, data: text }"


def report(body: str, prelude: str = PRELUDE, file: str = "t.lmspec"):
    return check_text(prelude + textwrap.dedent(body).lstrip("\n"), file)


def problems(body: str, prelude: str = PRELUDE, file: str = "t.lmspec") -> list[str]:
    found = sorted(report(body, prelude, file).diagnostics, key=lambda d: (d.span.line, d.span.col, d.code))
    return [f"{d.span.line}:{d.span.col} {d.severity}[{d.code}] {d.message}" for d in found]


def only(body: str, code: str, prelude: str = PRELUDE, file: str = "t.lmspec"):
    """The one diagnostic with `code`; its help is checked by the caller."""
    matching = [d for d in report(body, prelude, file).diagnostics if d.code == code]
    assert len(matching) == 1, [f"{d.code} {d.message}" for d in report(body, prelude, file).diagnostics]
    return matching[0]


def _diagnostics(body: str, prelude: str = PRELUDE):
    return check_text(f"{prelude}\n{body}", "t.lmspec").diagnostics


def codes(body: str, prelude: str = PRELUDE) -> set[str]:
    return {d.code for d in report(body, prelude).diagnostics}


# ------------------------------------------------------------------------------ GAP 3: hf specials


def _hf_dir(directory: Path, tokens: list[str], added: list[str], config: dict | None = None) -> Path:
    """A WordLevel tokenizer.json with `tokens` in its vocabulary and `added` special tokens."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(tokens)}, unk_token=tokens[0]))
    tok.add_special_tokens(added)
    directory.mkdir(parents=True)
    tok.save(str(directory / "tokenizer.json"))
    if config:
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


GPT2_LIKE = (["<unk>", "a", "b"], ["<|endoftext|>"], None)
BERT_LIKE = (["[UNK]", "the", "cat"], ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "<extra_id_0>", "<extra_id_1>"], None)
CONFIGURED = (["<unk>", "x", "</s>"], ["<|im_end|>", "<pad>"], {"eos_token": {"content": "<|im_end|>"}, "bos_token": "x"})


@pytest.mark.parametrize("tokens, added, config", [GPT2_LIKE, BERT_LIKE, CONFIGURED], ids=["gpt2", "bert", "config"])
def test_check_finds_the_specials_and_sentinels_the_runtime_finds(tmp_path, tokens, added, config):
    from tokenizers import Tokenizer

    from lmspec.runtime.tokenizers import find_specials

    directory = _hf_dir(tmp_path / "hf", tokens, added, config)
    found = hf_specials(directory / "tokenizer.json")
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert found.found == find_specials(tok, directory)
    assert found.sentinels == sum(1 for i in range(8) if tok.token_to_id(f"<extra_id_{i}>") is not None)


def test_the_spellings_are_the_runtimes():
    from lmspec.runtime import tokenizers as T

    assert HF_SPELLINGS == T.SPELLINGS and SPECIAL_NAMES == T.SPECIAL_NAMES


def test_an_hf_tokenizer_without_the_default_specials(tmp_path):
    _hf_dir(tmp_path / "gpt2", *GPT2_LIKE)
    body = f'tokenizer hf2 {{ kind: hf("gpt2") }}\n{GPT}\ntrain t {{ model: gpt, tokenizer: hf2, objective: clm, data: text }}'
    d = only(body, "LMS114", file=str(tmp_path / "t.lmspec"))
    assert (d.span.line, d.span.col) == (4, 23)
    assert d.message == ('hf("gpt2") has no pad, bos, mask, sep, cls token, which tokenizer \'hf2\' lists in specials '
                         "(the default specials); its special tokens: <|endoftext|>")
    assert d.help == "write `specials: [eos, unk]`, the specials it has, or add the tokens to it"


def test_an_hf_tokenizer_without_the_sentinels_it_lists(tmp_path):
    _hf_dir(tmp_path / "bert", *BERT_LIKE)
    body = (f'tokenizer wp {{ kind: hf("bert"), specials: [pad, cls, sep, mask], sentinels: 3 }}\n{BERT}\n'
            "train t { model: bert, tokenizer: wp, objective: mlm, data: text }")
    d = only(body, "LMS114", file=str(tmp_path / "t.lmspec"))
    assert d.message == "hf(\"bert\") has 2 sentinel tokens (<extra_id_N>), and tokenizer 'wp' asks for 3"
    assert d.help == "use `sentinels: 2`, the most it has" and d.labels[0].message == "train 't' tokenizes with it"
    ok = body.replace("sentinels: 3", "sentinels: 2")
    assert "LMS114" not in codes(ok, PRELUDE)  # (the file's path is relative: only that code is looked at)


def test_an_hf_tokenizer_no_stage_uses_is_never_built_so_not_checked(tmp_path):
    _hf_dir(tmp_path / "gpt2", *GPT2_LIKE)
    r = report(f'tokenizer hf2 {{ kind: hf("gpt2") }}\n{GPT}\n{PRE.replace("data: text", "data: text, tokenizer: tok")}',
               file=str(tmp_path / "t.lmspec"))
    assert "LMS114" not in {d.code for d in r.diagnostics}


# ------------------------------------------------------------------------------ GAP 4: the default tokenizer

NO_TOKENIZER = 'lmspec 1\ndata text { source: builtin("tiny-stories") }\n'


def test_without_a_tokenizer_block_the_vocab_covers_the_default_bytes_tokenizer():
    d = only("model gpt { vocab: 200, context: 64, layers: 2, d_model: 64, heads: 4 }\n"
             "train t { model: gpt, objective: clm, data: text }", "LMS073", NO_TOKENIZER)
    assert (d.span.line, d.span.col) == (3, 20)
    assert d.message == ("model 'gpt' has vocab 200, but train 't' tokenizes with the default bytes tokenizer "
                         "(262 ids): the spec has no tokenizer block")
    assert d.help == "write `vocab: 262` (or more), or add a tokenizer block"
    assert report(f"{GPT}\n{PRE}", NO_TOKENIZER).ok


def test_the_default_tokenizer_has_no_sentinels_for_span_corruption():
    d = only("model t5 { arch: encoder_decoder, vocab: 262, context: 64, d_model: 64, heads: 4, encoder { layers: 1 }, "
             "decoder { layers: 1 } }\ntrain t { model: t5, objective: span_corruption, data: text }", "LMS071",
             NO_TOKENIZER)
    assert "the default bytes tokenizer, which has none" in d.message and "sentinels: 100" in d.help


# ------------------------------------------------------------------------------ GAP 9: warm-up


def test_a_warmup_longer_than_the_stage():
    d = only(f"{GPT}\ntrain t {{ model: gpt, objective: clm, data: text, steps: 50, schedule: cosine(warmup: 100) }}",
             "LMS105")
    assert (d.severity, d.span.line, d.span.col) == ("warning", 5, 87)
    assert d.message == ("warmup (100) is not shorter than the 50 steps of train 't': the learning rate climbs for the "
                         "whole stage and ends at 50% of its peak; the cosine decay never starts")
    assert d.help == "use a warmup below steps, e.g. warmup: 5 (a tenth of the stage)"
    assert d.labels[0].message == "steps: 50"


def test_the_warmup_figures_are_the_runtimes():
    from lmspec.compiler.schema import Constant, Cosine
    from lmspec.runtime.engine import lr_at

    assert lr_at(49, Cosine(warmup=100), 1.0, 50) == pytest.approx(0.5)  # "ends at 50% of it"
    assert lr_at(49, Constant(warmup=50), 1.0, 50) == 1.0 and lr_at(48, Constant(warmup=50), 1.0, 50) < 1.0


def test_a_warmup_as_long_as_an_rl_stage():
    d = only(f"{GPT}\n{PRE}\n{CRITIC}\nrl r {{ policy: gpt from pre, reward: happy, steps: 40, "
             "schedule: constant(warmup: 40), rollouts { prompts: text.prefixes(tokens: 8) } }", "LMS105")
    assert d.message == ("warmup (40) is not shorter than the 40 steps of rl 'r': the learning rate reaches its peak "
                         "only at the last step")


def test_a_warmup_below_steps_is_fine():
    assert "LMS105" not in codes(f"{GPT}\ntrain t {{ model: gpt, objective: clm, data: text, steps: 50, "
                                 "schedule: linear(warmup: 49) }")


# ------------------------------------------------------------------------------ GAP 17: tokenizers across stages

TWO = "tokenizer a { kind: bytes }\ntokenizer b { kind: bytes, specials: [eos, pad] }\n"
WIDE = "model gpt { vocab: 320, context: 64, layers: 2, d_model: 64, heads: 4 }"


def test_weights_continued_with_another_tokenizer():
    d = only(f"{TWO}{WIDE}\ntrain one {{ model: gpt, tokenizer: a, objective: clm, data: text }}\n"
             "train two { model: gpt from one, tokenizer: b, objective: clm, data: text }", "LMS110",
             'lmspec 1\ndata text { source: builtin("tiny-stories") }\n')
    assert (d.span.line, d.span.col) == (7, 45)
    assert d.message == ("train 'two' continues the weights of 'one' ('gpt from one'), which learned with 'a', but "
                         "tokenizes with 'b': id 256 is <pad> in 'a' but <eos> in 'b'")
    assert d.help == "use tokenizer: a" and d.labels[0].message == "'one' learned with 'a'"


def test_init_from_a_bpe_stage_with_bytes():
    text = ('lmspec 1\ndata text { source: builtin("tiny-stories") }\ntokenizer a { kind: bytes }\n'
            "tokenizer b { kind: bpe(vocab: 320) }\n")
    d = only(f"{WIDE}\ntrain one {{ model: gpt, tokenizer: b, objective: clm, data: text }}\n"
             "train two { model: gpt, init: one, tokenizer: a, objective: clm, data: text }", "LMS110", text)
    assert d.message.endswith("which learned with 'b', but tokenizes with 'a': 'b' is a bpe tokenizer and 'a' a bytes one")


def test_bytes_specials_and_sentinels_added_after_the_old_ids_keep_their_meaning():
    text = ('lmspec 1\ndata text { source: builtin("tiny-stories") }\n'
            "tokenizer a { kind: bytes, specials: [pad, bos, eos] }\n"
            "tokenizer b { kind: bytes, specials: [pad, bos, eos, mask], sentinels: 8 }\n")
    body = (f"{WIDE}\ntrain one {{ model: gpt, tokenizer: a, objective: clm, data: text }}\n"
            "train two { model: gpt from one, tokenizer: b, objective: clm, data: text }")
    assert "LMS110" not in codes(body, text)
    assert "LMS110" in codes(body.replace("tokenizer: a", "tokenizer: X").replace("tokenizer: b", "tokenizer: a")
                             .replace("tokenizer: X", "tokenizer: b"), text)  # the other way round: <mask> is lost


def test_an_rl_reference_from_another_tokenizer():
    text = 'lmspec 1\ndata text { source: builtin("tiny-stories") }\n' + TWO
    d = only(f"{WIDE}\ntrain one {{ model: gpt, tokenizer: a, objective: clm, data: text }}\n"
             "train two { model: gpt, tokenizer: b, objective: clm, data: text }\n"
             "model critic { arch: encoder, vocab: 320, context: 64, layers: 1, d_model: 64, heads: 4, head: classifier }\n"
             'data reviews { source: builtin("tiny-reviews") }\n'
             'train fit { model: critic, tokenizer: a, objective: classify(label: "sentiment"), data: reviews }\n'
             "judge happy { model: critic from fit }\n"
             "rl r { policy: gpt from one, reference: two, reward: happy, rollouts { prompts: text.prefixes(tokens: 8) } }",
             "LMS110", text)
    assert d.message.startswith("rl 'r' continues the weights of 'two' (reference: two), which learned with 'b', but "
                                "scores the tokens of its policy, which come from 'a'")


# ------------------------------------------------------------------------------ GAP 19: sample_tokens


def test_sample_tokens_that_cannot_fit_the_context():
    d = only(f"{GPT}\ntrain t {{ model: gpt, objective: clm, data: text, sample_tokens: 64 }}", "LMS107")
    assert (d.severity, d.span.line, d.span.col) == ("warning", 5, 66)
    assert d.message == ("sample_tokens (64) cannot fit the context of 'gpt' (64): each sample is cut to what the "
                         "context leaves after its prompt, 63 tokens at most")
    assert d.help == "use sample_tokens below 64: the context holds the prompt too"
    assert "LMS107" not in codes(f"{GPT}\ntrain t {{ model: gpt, objective: clm, data: text, sample_tokens: 63 }}")
    # the default (128) is not a setting: a small model's samples are just shorter
    assert "LMS107" not in codes(f"{GPT}\n{PRE}")


# ------------------------------------------------------------------------------ GAP 20: positions per layer


def test_learned_positions_in_a_layer_override():
    d = only("model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, position: rope, "
             "layer 1 { position: learned } }", "LMS112")
    assert (d.span.line, d.span.col) == (4, 108)
    assert d.message == ("learned positions are added once, at the embeddings, from the model's `position` (rope); "
                         "`layer 1 { }` of 'gpt' cannot set them: its layers would have no position at all")
    assert d.help == ("set `position: learned` on the model, or use rope, alibi, relative or none here")
    assert d.labels[0].message == "position: rope"


def test_sinusoidal_positions_in_the_decoder_of_an_encoder_decoder():
    d = only("model t5 { arch: encoder_decoder, vocab: 262, context: 64, d_model: 64, heads: 4, position: relative, "
             "encoder { layers: 1 }, decoder { layers: 1, position: sinusoidal } }", "LMS112")
    assert "`decoder { }` of 't5' cannot set them: its layers would have no position at all" in d.message
    d = only("model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, position: learned, "
             "layer 1 { position: sinusoidal } }", "LMS112")
    assert d.message.endswith("its layers keep the learned positions of the embeddings")


def test_a_layer_override_that_repeats_the_models_learned_positions_is_fine():
    assert "LMS112" not in codes("model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, "
                                 "layer 0..1 { position: learned } }")


def test_a_learned_layer_really_has_no_position_at_run_time():
    from lmspec.compiler.build import build_model

    r = report("model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, position: rope, "
               "layer 1 { position: learned } }")
    model = build_model(r.models["gpt"])
    assert model.pos_embed is None and [b.attn.position for b in model.decoder.layers] == ["rope", "learned"]


# ------------------------------------------------------------------------------ GAP 21: pad_id and mask_id


def test_a_pad_id_that_is_not_the_tokenizers():
    d = only("model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, pad_id: 0 }\n" + PRE, "LMS111")
    assert (d.span.line, d.span.col) == (4, 80)
    assert d.message == "model 'gpt' says pad_id 0, but tokenizer 'tok' pads with 256: training pads with the tokenizer's"
    assert d.help == "write `pad_id: 256`, or remove pad_id" and d.labels[0].message == "train 'pre' tokenizes with 'tok'"
    assert "LMS111" not in codes(f"{GPT.replace(' }', ', pad_id: 256 }')}\n{PRE}")


def test_a_mask_id_that_is_not_the_tokenizers():
    d = only(BERT.replace(" }", ", mask_id: 7 }") + "\ntrain t { model: bert, objective: mlm, data: text }", "LMS111")
    assert d.message == ("model 'bert' says mask_id 7, but tokenizer 'tok' masks with 259: mlm masks with the "
                         "tokenizer's, and mask_id is never read")
    assert d.help == "write `mask_id: 259`, or remove mask_id"


def test_without_a_pad_token_training_pads_with_eos():
    text = 'lmspec 1\ntokenizer tok { kind: bytes, specials: [bos, eos] }\ndata text { source: builtin("tiny-stories") }\n'
    assert "LMS111" not in codes(f"{GPT.replace(' }', ', pad_id: 257 }')}\n{PRE}", text)
    d = only(f"{GPT.replace(' }', ', pad_id: 0 }')}\n{PRE}", "LMS111", text)
    assert "has no pad token (training pads with eos, 257)" in d.message


# ------------------------------------------------------------------------------ GAP 22: sequences too short


@pytest.mark.parametrize("arch, noise", [("encoder_decoder", 0.15), ("decoder", 0.15), ("decoder", 0.9)])
def test_the_shortest_span_corruption_sequence_is_the_runtimes(arch, noise):
    from lmspec.compiler.schema import SpanCorruption
    from lmspec.runtime.objectives import Context, build_objective

    prefix = arch == "decoder"
    shortest = next(n for n in range(1, 64) if span_counts(n, noise, 3.0, prefix) is not None)
    assert shortest == (4 if prefix else 2)
    for n in (shortest - 1, shortest, 40):
        ctx = Context(seq_len=n, vocab_size=300, specials={"pad": 256, "eos": 258}, arch=arch,
                      sentinels=list(range(270, 300)))
        if n < shortest:
            with pytest.raises(ValueError):
                build_objective(SpanCorruption(noise=noise), ctx)
        else:
            obj = build_objective(SpanCorruption(noise=noise), ctx)
            assert (obj.window, obj.num_noise, obj.num_spans) == span_counts(n, noise, 3.0, prefix)


def test_nsp_needs_five_tokens():
    from lmspec.compiler.schema import NSP
    from lmspec.runtime.objectives import Context, build_objective

    nsp_model = ("model bert { arch: encoder, vocab: 262, context: 64, layers: 1, d_model: 64, heads: 4, segments: 2, "
                 "pooler: true, head: [mlm, nsp] }\n")
    d = only(nsp_model + "train t { model: bert, objective: mlm + nsp, data: text, seq_len: 4 }", "LMS089")
    assert (d.span.line, d.span.col) == (5, 67)
    assert d.message == ("objective 'nsp' needs seq_len 5 or more (a pair of one token each, with [CLS] and two [SEP]), "
                         "found 4")
    assert d.help == "use seq_len: 5 or more"
    assert report(nsp_model + "train t { model: bert, objective: mlm + nsp, data: text, seq_len: 5 }").ok
    specials = {"cls": 261, "sep": 260, "pad": 256}
    with pytest.raises(ValueError, match="seq_len >= 5"):
        build_objective(NSP(), Context(seq_len=4, vocab_size=262, specials=specials))
    build_objective(NSP(), Context(seq_len=5, vocab_size=262, specials=specials))


def test_a_context_too_short_for_span_corruption():
    text = 'lmspec 1\ntokenizer tok { kind: bytes, sentinels: 8 }\ndata text { source: builtin("tiny-stories") }\n'
    d = only("model p { vocab: 320, context: 3, layers: 1, d_model: 64, heads: 4, attention: prefix }\n"
             "train t { model: p, objective: span_corruption, data: text }", "LMS089", text)
    assert d.message == ("objective 'span_corruption' needs sequences of 4 tokens or more (one corrupted token, two "
                         "sentinels and EOS, read as one sequence), but train 't' reads the context of 'p', 3")
    assert d.help == "give 'p' a context of 4 or more" and d.labels[0].message == "context of 'p'"


# ------------------------------------------------------------------------------ GAP 23: pooling the first token


def test_pool_first_in_a_causal_decoder():
    d = only("model critic { vocab: 262, context: 64, layers: 1, d_model: 64, heads: 4, "
             "head: classifier(pool: first) }", "LMS113")
    assert (d.severity, d.span.line, d.span.col) == ("warning", 4, 81)
    assert d.message == ("classifier(pool: first) of decoder 'critic' reads the first token, which sees no other "
                         "(causal attention): the head learns from one token")
    assert d.help == "use classifier(pool: last): the last token sees the whole sequence (or pool: mean)"
    assert "LMS113" not in codes("model critic { arch: encoder, vocab: 262, context: 64, layers: 1, d_model: 64, "
                                 "heads: 4, head: classifier(pool: first) }")


def test_pool_first_written_with_head_on_a_stage():
    d = only(f"{GPT}\n{PRE}\ntrain rm {{ model: gpt from pre with head scalar(pool: first), objective: clm, "
             "data: text }", "LMS113")
    assert (d.span.line, d.span.col) == (6, 42) and d.message.startswith("scalar(pool: first) of decoder 'gpt'")


# ------------------------------------------------------------------------------ GAP 24: settings with no effect


def test_eval_every_and_checkpoint_every_not_below_steps():
    found = problems(f"{GPT}\ntrain t {{ model: gpt, objective: clm, data: text, steps: 100, eval_every: 100, "
                     "checkpoint_every: 500 }")
    assert found == [
        "5:75 warning[LMS106] eval_every (100) is not shorter than the 100 steps of train 't': the stage evaluates only "
        "at its end, as it does without eval_every",
        "5:98 warning[LMS106] checkpoint_every (500) is not shorter than the 100 steps of train 't': the stage writes "
        "no checkpoint before its final weights (only on Ctrl-C)"]
    assert "LMS106" not in codes(f"{GPT}\ntrain t {{ model: gpt, objective: clm, data: text, steps: 100, "
                                 "eval_every: 99, checkpoint_every: 50 }")


def test_rl_checkpoint_every_against_the_default_steps():
    d = only(f"{GPT}\n{PRE}\n{CRITIC}\nrl r {{ policy: gpt from pre, reward: happy, checkpoint_every: 100, "
             "rollouts { prompts: text.prefixes(tokens: 8) } }", "LMS106")
    assert d.message.startswith("checkpoint_every (100) is not shorter than the 100 steps (the default) of rl 'r'")


def test_eval_every_without_a_validation_split():
    text = 'lmspec 1\ntokenizer tok { kind: bytes }\ndata text { source: builtin("tiny-stories"), validation: 0 }\n'
    d = only(f"{GPT}\ntrain t {{ model: gpt, objective: clm, data: text, eval_every: 50 }}", "LMS106", text)
    assert d.message == ("eval_every (50) evaluates nothing: data 'text' has no validation split (validation: 0); only "
                         "samples are drawn")
    assert d.help == "hold out a split (`validation: 2%` in data 'text'), or remove eval_every"


def test_samples_of_a_model_that_cannot_generate():
    d = only(f"{BERT}\ntrain t {{ model: bert, objective: mlm, data: text, samples: 4 }}", "LMS107")
    assert d.message == ("samples: 4 has no effect: train 't' draws no samples, because 'bert' is an encoder, which "
                         "cannot generate")
    assert d.help == "remove samples (`lmspec sample` samples a finished stage)"
    assert "LMS107" not in codes(f"{BERT}\ntrain t {{ model: bert, objective: mlm, data: text, samples: 0 }}")
    d = only(f"{GPT}\ntrain t {{ model: gpt, objective: clm, data: text, samples: 0, sample_tokens: 32 }}", "LMS107")
    assert d.message == "sample_tokens: 32 has no effect: train 't' draws no samples (samples: 0)"
    assert d.help == "remove sample_tokens"


def test_samples_of_a_stage_that_reads_preference_pairs():
    d = only(f"{GPT}\n{PRE}\n{CRITIC}\nfeedback prefs {{ policy: gpt from pre, prompts: text.prefixes(tokens: 8, "
             "count: 64), judge: happy }\ntrain align { model: gpt, init: pre, objective: dpo, data: prefs, samples: 2, "
             "sample_tokens: 40 }", "LMS107")
    assert d.message == ("samples: 2 and sample_tokens: 40 have no effect: train 'align' draws no samples, because it "
                         "reads preference pairs, and samples continue prompts of a data block")


def test_eval_batches_above_a_built_in_split():
    held = builtin_split(report(CRITIC).spec.blocks["reviews"].__class__(
        source={"kind": "builtin", "name": "tiny-reviews"}, validation=0.005))[1]
    d = only(CRITIC.replace('builtin("tiny-reviews")', 'builtin("tiny-reviews"), validation: 0.5%')
             .replace("data: reviews }", "data: reviews, eval_batches: 8 }"), "LMS106")
    batches = -(-held // 32)
    assert d.message == (f"eval_batches (8) is more than the validation split holds: its {held} records make "
                         f"{batches} batches of 32, and the stage evaluates on those")
    assert d.help == f"use eval_batches: {batches} or less"


def test_eval_batches_above_the_pairs_feedback_holds_out():
    d = only(f"{GPT}\n{PRE}\n{CRITIC}\nfeedback prefs {{ policy: gpt from pre, prompts: text.prefixes(tokens: 8, "
             "count: 100), judge: happy, samples: 3 }\ntrain rm { model: gpt with head scalar, init: pre, "
             "objective: bradley_terry, data: prefs, batch: 16, eval_batches: 4 }", "LMS106")
    # round(100 x 0.1) = 10 held-out prompts, 3 pairs each
    assert d.message.startswith("eval_batches (4) is more than the validation split holds: its 30 pairs make 2 batches")


def test_prompt_counts_above_the_documents_of_a_built_in_corpus():
    train_docs = builtin_split(report("").spec.blocks["text"])[0]
    d = only(f"{GPT}\n{PRE}\n{CRITIC}\nfeedback f {{ policy: gpt from pre, prompts: text.prefixes(tokens: 8, "
             "count: 30k), judge: happy }", "LMS108")
    assert d.message == (f"prefixes(count: 30000) asks feedback 'f' for more prompts than data 'text' has documents "
                         f"({train_docs}): the prompts repeat, the first {30000 - train_docs} twice")
    d = only(f"{GPT}\n{PRE}\n{CRITIC}\nrl r {{ policy: gpt from pre, reward: happy, rollouts {{ prompts: "
             'text.until("The end", tokens: 8, count: 30k) } }', "LMS109")
    assert d.severity == "error" and d.help == (f"use count: {train_docs} or less (only documents that hold the "
                                                "marker count)")


def test_rl_eval_prompts_and_samples_above_the_held_out_prompts():
    found = problems(f"{GPT}\n{PRE}\n{CRITIC}\nrl r {{ policy: gpt from pre, reward: happy, eval_prompts: 64, "
                     "samples: 30, rollouts { prompts: text.prefixes(tokens: 8, count: 200) } }")
    assert [f for f in found if "LMS10" in f and "[LMS083]" not in f] == [
        "10:59 warning[LMS106] eval_prompts (64) is cut to 20: rl 'r' holds out at most a tenth of its 200 prompts for "
        "evaluation",
        "10:72 warning[LMS107] samples (30) is more than the 20 held-out prompts of rl 'r': each evaluation shows 20"]


def test_the_eval_prompts_help_never_asks_for_more_prompts_than_the_documents():
    """A count above the documents would only repeat them (LMS108): the help offers a count only
    when the data holds it."""
    body = (f"{GPT}\n{PRE}\n{CRITIC}\nrl r {{ policy: gpt from pre, reward: happy, eval_prompts: EVAL, "
            "rollouts { prompts: text.prefixes(tokens: 8, count: 200) } }")
    (small,) = [d for d in _diagnostics(body.replace("EVAL", "64")) if d.code == "LMS106"]
    assert small.help == "use eval_prompts: 20 or less, or give the rollouts prompts count: 640"
    (large,) = [d for d in _diagnostics(body.replace("EVAL", "3000")) if d.code == "LMS106"]
    assert large.help == "use eval_prompts: 20 or less"  # 30000 prompts: tiny-stories has fewer documents


def test_a_one_step_stage_is_told_to_remove_the_setting():
    (d,) = [d for d in _diagnostics(f"{GPT}\ntrain t {{ model: gpt, objective: clm, data: text, steps: 1, "
                                    "eval_every: 1 }") if d.code == "LMS106"]
    assert d.help == "remove it"


def test_the_built_in_record_counts_are_the_runtimes():
    from lmspec.runtime.data import builtin

    assert {name: len(builtin.generate(name)) for name in builtin.NAMES} == BUILTIN_RECORDS


@pytest.mark.parametrize("seed, n, fraction", [(0, 20_000, 0.02), (7, 10_000, 0.05), (3, 6000, 0.5), (0, 50, 0.0)])
def test_the_split_is_the_runtimes(seed, n, fraction):
    from lmspec.runtime.data.order import is_validation

    assert held_out(seed, n, fraction) == int(is_validation(seed, np.arange(n), fraction).sum())


def test_the_split_of_a_small_built_in_block_is_what_the_runtime_prepares(tmp_path):
    from lmspec.runtime.data import prepare_dataset
    from lmspec.runtime.tokenizers import BytesTokenizer

    for validation in ("5%", "0.1%"):  # 0.1% of 300 holds none out: the runtime moves one over
        r = report(f'data small {{ source: builtin("tiny-reviews"), max_examples: 300, validation: {validation} }}')
        spec = r.spec.blocks["small"]
        ds = prepare_dataset(spec, name="small", spec_file="t.lmspec", tokenizer=BytesTokenizer(["pad", "eos"]),
                             cache_dir=tmp_path)
        assert builtin_split(spec) == (len(ds.train), len(ds.validation))


# ------------------------------------------------------------------------------ GAP 25: fractions the runtime clamps


@pytest.mark.parametrize("objective, message", [
    ("mlm(mask: 0)", "'mask' must be > 0, found 0"),
    ("span_corruption(noise: 100%)", "'noise' must be < 1, found 1"),
    ("span_corruption(noise: 0)", "'noise' must be > 0, found 0"),
    ("prefix_lm(prefix: 0)", "'prefix' must be > 0, found 0"),
    ("prefix_lm(prefix: 1)", "'prefix' must be < 1, found 1"),
])
def test_fractions_the_runtime_would_clamp_are_out_of_range(objective, message):
    d = only(f"{GPT}\ntrain t {{ model: gpt, objective: {objective}, data: text }}", "LMS043")
    assert d.message == message


def test_mlm_may_select_every_token():
    assert "LMS043" not in codes(f"{BERT}\ntrain t {{ model: bert, objective: mlm(mask: 100%), data: text }}")


# ------------------------------------------------------------------------------ no false alarms


def test_the_shipped_specs_draw_none_of_these():
    new = {f"LMS{n}" for n in range(105, 116)} | {"LMS073", "LMS089"}
    drawn = []
    for path in sorted(SPECS.glob("*.lmspec")) + sorted(SPECS.glob("*/*.lmspec")):
        drawn += [(path.name, d.code) for d in check_file(path).diagnostics if d.code in new]
    assert drawn == []


def test_a_data_field_nothing_reads_is_a_warning():
    """GAP 24's last static case: `prompt:` on data only clm reads, `text:` on data only sft reads."""
    prelude = 'lmspec 1\ntokenizer tok { kind: bytes }\n'
    sft_data = 'data d { source: builtin("tiny-instructions"), prompt: "instruction" }\n'
    (d,) = [d for d in _diagnostics(f"{sft_data}{GPT}\ntrain t {{ model: gpt, objective: clm, data: d }}", prelude)
            if d.code == "LMS106"]
    assert d.message == ("data 'd' names its prompts (sft) (prompt), but nothing reads them: it is read by "
                         "train 't' (clm)")
    assert (d.span.line, d.help) == (4, "remove `prompt:`, or read the data with an objective that uses it")
    assert "LMS106" not in {d.code for d in _diagnostics(
        f"{sft_data}{GPT}\ntrain t {{ model: gpt, objective: sft, data: d }}", prelude)}
    texts = 'data d { source: builtin("tiny-instructions"), text: "instruction" }\n'
    (d,) = [d for d in _diagnostics(f"{texts}{GPT}\ntrain t {{ model: gpt, objective: sft, data: d }}", prelude)
            if d.code == "LMS106"]
    assert d.message.startswith("data 'd' names its texts (text), but nothing reads them")


def test_position_none_under_embedded_positions_removes_nothing():
    body = ("model gpt { vocab: 262, context: 64, layers: 4, d_model: 64, heads: 4, position: learned, "
            "layer 2..3 { position: none } }")
    (d,) = [d for d in _diagnostics(body) if d.code == "LMS115"]
    assert d.severity == "warning" and "removes nothing" in d.message and "learned positions" in d.message
    rope = body.replace("position: learned", "position: rope")  # rope is the layers' own: none removes it
    assert "LMS115" not in {d.code for d in _diagnostics(rope)}

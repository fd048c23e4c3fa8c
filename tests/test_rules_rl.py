"""Static checks of rl and feedback stages before launch (issue 7, part 5), and the key gaps of
docs/keys.md that users meet most (issue 9): a spec snippet in, the exact diagnostic out, and
the figures `lmspec check` prints for an rl stage.

Every snippet is appended to the same lines, so its first line is line 5:

    1  lmspec 1
    2  tokenizer tok { kind: bytes }
    3  data text { source: builtin("tiny-stories") }
    4  model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lmspec.compiler.api import check_file, check_text
from lmspec.diagnostics import CODES

SPECS = Path(__file__).resolve().parents[1] / "specs"

PRELUDE = ('lmspec 1\ntokenizer tok { kind: bytes }\ndata text { source: builtin("tiny-stories") }\n'
           "model gpt { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }\n")
# a critic trained on the reviews, and the judge that reads it: lines 5-8
CRITIC = """\
model critic { arch: encoder, vocab: 262, context: 64, layers: 1, d_model: 32, heads: 4, head: classifier }
data reviews { source: builtin("tiny-reviews") }
train fit { model: critic, objective: classify(label: "sentiment"), data: reviews }
judge j { model: critic from fit }
"""
PRETRAIN = "train p { model: gpt, objective: clm, data: text }\n"  # line 9 after CRITIC


def report(body: str):
    return check_text(PRELUDE + textwrap.dedent(body).lstrip("\n"), "t.lmspec")


def only(body: str, code: str):
    """The one diagnostic with `code`."""
    found = [d for d in report(body).diagnostics if d.code == code]
    assert len(found) == 1, [f"{d.code} {d.message}" for d in report(body).diagnostics]
    return found[0]


def at(d) -> tuple[int, int]:
    return d.span.line, d.span.col


def labels(d) -> list[tuple[int, int, str]]:
    return [(lab.span.line, lab.span.col, lab.message) for lab in d.labels]


def codes(body: str) -> list[str]:
    return sorted(d.code for d in report(body).diagnostics)


def rl(algorithm: str = "", rollouts: str = "", extra: str = "") -> str:
    """An rl stage on line 10, after the critic and the pretraining."""
    return (CRITIC + PRETRAIN + f"rl r {{ policy: gpt from p, reward: j{algorithm}{extra}, rollouts {{ prompts: "
            f"text.prefixes(tokens: 8), max_new_tokens: 16{rollouts} }} }}")


def test_the_new_codes_are_registered():
    for code in ("LMS101", "LMS102", "LMS103", "LMS104"):
        assert CODES[code]
    assert CODES["LMS103"].endswith("(warning)") and CODES["LMS104"].endswith("(warning)")


# ------------------------------------------------------------------------------ rollouts split evenly: LMS089


def test_per_step_is_a_multiple_of_the_grpo_group():
    # the runtime samples per_step // group prompts, group times each, and drops the rest
    d = only(rl(", algorithm: grpo(group: 8)", ", per_step: 60"), "LMS089")
    assert at(d) == (10, 142)  # the 60
    assert d.message == ("per_step (60) is not a multiple of grpo's group (8): each step samples 7 prompts 8 times, "
                         "56 rollouts, and drops the other 4")
    assert d.help == "use per_step: 56 or 64"
    assert labels(d) == [(10, 62, "group: 8")]


def test_per_step_below_the_rloo_k_samples_nothing():
    d = only(rl(", algorithm: rloo(k: 4)", ", per_step: 2"), "LMS089")
    assert d.message == ("per_step (2) is smaller than rloo's k (4): a step samples 4 responses to each of "
                         "per_step // 4 = 0 prompts, so no rollout at all")
    assert d.help == "use per_step: 4 or a multiple of it"


def test_the_default_per_step_is_checked_at_the_rollouts_block():
    d = only(rl(", algorithm: grpo(group: 6)"), "LMS089")
    assert at(d) == (10, 66)  # `rollouts`: per_step is not written
    assert d.message.startswith("per_step (64, the default) is not a multiple of grpo's group (6): ")
    assert d.help == "use per_step: 60 or 66"


def test_minibatches_split_a_step_evenly_and_fit_in_it():
    d = only(rl(extra=", minibatch: 12", rollouts=", per_step: 32"), "LMS089")
    assert at(d) == (10, 50)
    assert d.message == "a step's 32 rollouts do not split into minibatches of 12: the updates take 12, 12, 8 rollouts"
    assert d.help == "use a minibatch that divides 32, e.g. 16"
    assert labels(d) == [(10, 130, "32 rollouts per step")]
    d = only(rl(extra=", minibatch: 64", rollouts=", per_step: 32"), "LMS089")
    assert d.message == "minibatch (64) is larger than the 32 rollouts of a step: every update takes all 32"
    assert d.help == "use minibatch: 32 or less (or leave it out: one update per epoch)"


def test_rollouts_that_split_evenly_pass():
    assert "LMS089" not in codes(rl(", algorithm: grpo(group: 8)", ", per_step: 32", ", minibatch: 16"))
    assert "LMS089" not in codes(rl(", algorithm: rloo(k: 4)", ", per_step: 8"))


# ------------------------------------------------------------------------------ sampling


def test_rl_rollouts_need_a_temperature_above_zero():
    # greedy decoding has no sampling distribution for the policy ratio: the runtime raises
    d = only(rl(rollouts=", temperature: 0"), "LMS043")
    assert at(d) == (10, 118)
    assert d.message == "'temperature' must be > 0, found 0"


def test_greedy_feedback_samples_are_identical_a_warning():
    d = only(CRITIC + PRETRAIN + "feedback f { policy: gpt from p, prompts: text.prefixes(tokens: 8), "
             "temperature: 0, judge: j }", "LMS103")
    assert (d.severity, *at(d)) == ("warning", 10, 82)
    assert d.message == ("feedback 'f' samples 2 responses per prompt greedily (temperature: 0): they are identical, "
                         "and the judge labels every pair a tie")
    assert d.help == "sample with a temperature such as 0.7 (1 is the default)"
    assert "LMS103" not in codes(CRITIC + PRETRAIN + "feedback f { policy: gpt from p, prompts: "
                                 "text.prefixes(tokens: 8), temperature: 0.7, judge: j }")


# ------------------------------------------------------------------------------ the policy generates: LMS078


def test_feedback_and_rl_policies_are_decoders_with_an_lm_head():
    body = """\
        model bert { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }
        model t5 { arch: encoder_decoder, vocab: 262, context: 64, d_model: 64, heads: 4, encoder { layers: 1 },
                   decoder { layers: 1 } }
        train m { model: bert, objective: mlm, data: text }
        train s { model: gpt with head scalar, objective: clm, data: text }
        train c { model: t5, objective: span_corruption, data: text }
        judge j { model: hf("judge") }
        feedback f { policy: bert from m, prompts: text.prefixes(tokens: 8), judge: j }
        rl r { policy: t5 from c, reward: j, rollouts { prompts: text.prefixes(tokens: 8) } }
        rl q { policy: gpt with head scalar from s, reward: j, rollouts { prompts: text.prefixes(tokens: 8) } }
    """
    found = sorted((d for d in report(body).diagnostics if d.code == "LMS078"), key=at)
    assert [(at(d), d.message) for d in found] == [
        ((12, 22), "the policy of feedback 'f' must generate text, but 'bert' is an encoder"),
        ((13, 16), "the policy of rl 'r' must be a decoder, but 't5' is an encoder-decoder: feedback and rl stages "
                   "read a prompt and its continuation as one sequence"),
        ((14, 16), "the policy of rl 'q' must generate text, but 'gpt' has no lm head (heads: scalar)")]
    assert found[1].help == "use a decoder with an lm head as the policy"
    assert labels(found[1]) == [(6, 18, "'t5' is an encoder-decoder")]


# ------------------------------------------------------------------------------ the KL reference: LMS075


REWARD_MODEL = """\
feedback f { policy: gpt from p, prompts: text.prefixes(tokens: 8), max_new_tokens: 16, judge: j }
train rm { model: gpt with head scalar, init: p, objective: bradley_terry, data: f }
"""  # lines 10-11


def test_the_kl_reference_is_a_stage_that_trained_the_policys_lm_head():
    d = only(CRITIC + PRETRAIN + REWARD_MODEL + "rl r { policy: gpt from p, reference: rm, reward: rm, rollouts { "
             "prompts: text.prefixes(tokens: 8), max_new_tokens: 16 } }", "LMS075")
    assert at(d) == (12, 39)
    assert d.message == ("reference: rm is no KL reference: train 'rm' trains 'gpt' with heads: scalar, and the KL "
                         "compares the policy's lm head with the reference's")
    assert d.help == "name a stage that trains the policy's lm head, such as the one it comes from"
    assert labels(d) == [(11, 19, "'rm' trains 'gpt' with heads: scalar")]


def test_a_reference_of_other_shapes_is_lms075_too():
    d = only("""\
        model wide { vocab: 262, context: 64, layers: 2, d_model: 128, heads: 4 }
        train w { model: wide, objective: clm, data: text }
        train p { model: gpt, objective: clm, data: text }
        judge j { model: hf("judge") }
        rl r { policy: gpt from p, reference: w, reward: j, rollouts { prompts: text.prefixes(tokens: 8) } }
    """, "LMS075")
    assert d.message == ("reference: w needs weights for 'gpt', but train 'w' trains 'wide', whose shapes differ "
                         "(d_model: 128 vs 64)")


def test_a_policy_from_a_reward_model_stage_does_not_load():
    d = only(CRITIC + PRETRAIN + REWARD_MODEL + "rl r { policy: gpt from rm, reward: rm, rollouts { prompts: "
             "text.prefixes(tokens: 8), max_new_tokens: 16 } }", "LMS075")
    assert at(d) == (12, 16)
    assert d.message == "'gpt from rm' loads the heads train 'rm' trained (scalar), but 'gpt' has heads: lm"
    assert d.help == ("write `gpt with head lm from rm` to start those heads fresh, or name a stage that trains "
                      "them")


def test_the_default_reference_of_a_policy_with_a_new_head():
    d = only("""\
        model bert { vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, head: scalar }
        train s { model: bert, objective: clm, data: text }
        judge j { model: hf("judge") }
        rl r { policy: bert with head lm from s, reward: j, rollouts { prompts: text.prefixes(tokens: 8) } }
    """, "LMS075")
    assert at(d) == (8, 16)
    assert d.message.startswith("the KL reference of rl 'r' is 's', the stage its policy comes from, but 's' trains "
                                "'bert' with heads: scalar")
    assert d.help == "add `reference: STAGE`, a stage that trains this model's lm head"


# ------------------------------------------------------------------------------ lengths: LMS089, LMS104


def test_until_prompts_count_their_tokens_as_the_longest_prompt():
    d = only(CRITIC + PRETRAIN + 'rl r { policy: gpt from p, reward: j, rollouts { prompts: '
             'text.until("In the end,", tokens: 40), max_new_tokens: 30 } }', "LMS089")
    assert d.message == ("the samples of rl 'r' are 40 prompt tokens + 30 new tokens = 70, longer than the context "
                         "of 'gpt' (64)")
    assert at(d) == (10, 114)  # the 30
    assert labels(d) == [(10, 93, "40-token prompts")]


def test_samples_longer_than_the_judge_reads_are_a_warning():
    # a judge keeps the last `context` tokens of prompt + response
    short_critic = CRITIC.replace("context: 64", "context: 32")
    d = only(short_critic + PRETRAIN + "feedback f { policy: gpt from p, prompts: text.prefixes(tokens: 8), judge: j }",
             "LMS104")
    assert (d.severity, *at(d)) == ("warning", 10, 76)  # `judge: j`
    assert d.message == ("the samples of feedback 'f' are up to 8 prompt tokens + 48 new tokens = 56, longer than the "
                         "context of judge 'j' (32): it reads only their last 32 tokens")
    assert d.help == "give 'critic' a context of 56, or generate max_new_tokens: 24 or fewer"
    assert labels(d) == [(5, 52, "context of 'critic'")]


def test_rollouts_longer_than_the_reward_model_or_an_eval_judge_reads():
    body = """\
        model small { vocab: 262, context: 32, layers: 1, d_model: 32, heads: 4, head: scalar }
        model critic { arch: encoder, vocab: 262, context: 16, layers: 1, d_model: 32, heads: 4, head: classifier }
        data reviews { source: builtin("tiny-reviews") }
        train fit { model: critic, objective: classify(label: "sentiment"), data: reviews }
        judge j { model: critic from fit }
        train p { model: gpt, objective: clm, data: text }
        feedback f { policy: gpt from p, prompts: text.prefixes(tokens: 8), max_new_tokens: 16, judge: j,
                     allow: ["LMS104"] }
        train rm { model: small, objective: bradley_terry, data: f }
        rl r { policy: gpt from p, reward: rm, eval_judges: [j],
               rollouts { prompts: text.prefixes(tokens: 8), max_new_tokens: 40 } }
    """
    found = sorted((d for d in report(body).diagnostics if d.code == "LMS104"), key=at)
    assert [(at(d), d.message) for d in found] == [
        ((14, 36), "the samples of rl 'r' are up to 8 prompt tokens + 40 new tokens = 48, longer than the context "
                   "of reward model 'rm' (32): it reads only their last 32 tokens"),
        ((14, 54), "the samples of rl 'r' are up to 8 prompt tokens + 40 new tokens = 48, longer than the context "
                   "of judge 'j' (16): it reads only their last 16 tokens")]


def test_lengths_in_another_tokenizer_are_not_compared():
    # stages exchange text: a judge re-reads the policy's samples with the tokenizer its own stage
    # used, so a policy's token counts say nothing exact about the judge's
    body = """\
        tokenizer wide { kind: bytes, sentinels: 4 }
        model critic { arch: encoder, vocab: 270, context: 32, layers: 1, d_model: 32, heads: 4, head: classifier }
        data reviews { source: builtin("tiny-reviews") }
        train fit { model: critic, tokenizer: wide, objective: classify(label: "sentiment"), data: reviews }
        judge j { model: critic from fit }
        train p { model: gpt, tokenizer: tok, objective: clm, data: text }
        feedback f { policy: gpt from p, prompts: text.prefixes(tokens: 8), judge: j }
    """
    assert codes(body) == []


def test_preference_pairs_fit_the_reward_models_seq_len():
    d = only(CRITIC + PRETRAIN + "feedback f { policy: gpt from p, prompts: text.prefixes(tokens: 20), "
             "max_new_tokens: 30, judge: j }\n"
             "train rm { model: gpt with head scalar, init: p, objective: bradley_terry, data: f, seq_len: 40 }",
             "LMS089")
    assert at(d) == (11, 94)  # the 40 of seq_len
    assert d.message == ("the pairs of feedback 'f' are up to 20 prompt tokens + 30 new tokens = 50, longer than the "
                         "40 tokens train 'rm' reads (its seq_len)")
    assert d.help == "raise seq_len to 50, or give feedback 'f' max_new_tokens: 20"
    assert labels(d) == [(10, 86, "the responses' length")]
    # dpo reads the same pairs; with the model's context as the limit the error sits on `data:`
    d = only(CRITIC.replace("context: 64", "context: 128") + PRETRAIN.replace("gpt", "gpt2")
             .replace("train p", "model gpt2 { vocab: 262, context: 128, layers: 2, d_model: 64, heads: 4 }\ntrain p")
             + "feedback f { policy: gpt2 from p, prompts: text.prefixes(tokens: 40), max_new_tokens: 40, judge: j }\n"
             "train d { model: gpt, objective: dpo, data: f }", "LMS089")
    assert at(d) == (12, 45)
    assert d.message == ("the pairs of feedback 'f' are up to 40 prompt tokens + 40 new tokens = 80, longer than the "
                         "64 tokens train 'd' reads (the context of 'gpt')")
    assert d.help == "raise the context to 80, or give feedback 'f' max_new_tokens: 24"


# ------------------------------------------------------------------------------ issue 9 gaps


def test_a_bpe_vocab_larger_than_a_builtin_corpus_yields():
    # GAP 1: the default bpe (4096) cannot be learned from any built-in corpus
    d = only("""\
        tokenizer big { kind: bpe(vocab: 4096, train_on: text) }
        model wide { vocab: 4096, context: 64, layers: 2, d_model: 64, heads: 4 }
        train t { model: wide, tokenizer: big, objective: clm, data: text }
    """, "LMS101")
    assert at(d) == (5, 34)  # the 4096 of bpe(vocab:)
    assert d.message == ("bpe(vocab: 4096) cannot be learned from data 'text': builtin(\"tiny-stories\") yields at "
                         "most 1852 tokens (1590 merges, 256 bytes, 6 specials, 0 sentinels)")
    assert d.help == "use bpe(vocab: 1852) or less, or kind: bytes"
    assert labels(d) == [(3, 21, "'text' is read here")]
    assert "LMS101" not in codes("tokenizer big { kind: bpe(vocab: 1852, train_on: text) }")


def test_a_bpe_vocab_below_its_fixed_tokens_and_a_bpe_without_data():
    d = only("tokenizer small { kind: bpe(vocab: 261) }", "LMS101")  # GAP 7
    assert d.message == ("bpe(vocab: 261) of tokenizer 'small' cannot hold its 256 byte symbols, 6 specials and "
                         "0 sentinels (262 ids)")
    assert d.help == "use bpe(vocab: 262) or more"
    d = only('data more { source: builtin("tiny-reviews") }\ntokenizer b { kind: bpe(vocab: 300) }', "LMS101")  # GAP 8
    assert d.message == ("tokenizer 'b' does not say which data its merges are learned from, and the spec has 2 data "
                         "blocks (text, more)")
    assert d.help == "write `kind: bpe(vocab: 300, train_on: NAME)`, NAME a data block"


@pytest.mark.parametrize("corpus", ["tiny-stories", "tiny-reviews", "tiny-instructions"])
def test_the_recorded_bpe_yield_and_fields_are_the_runtimes(corpus):
    from lmspec.compiler import schema as S
    from lmspec.compiler.rules_stages import BUILTIN_FIELDS
    from lmspec.compiler.rules_tokens import BUILTIN_BPE_MERGES, BUILTIN_VERSION
    from lmspec.runtime.data import builtin
    from lmspec.runtime.errors import RunError
    from lmspec.runtime.tokenizers import train_bpe

    assert BUILTIN_VERSION == builtin.VERSION
    assert tuple(BUILTIN_FIELDS[corpus]) == builtin.fields(corpus)
    first = builtin.generate(corpus)[0]
    assert {k: type(v) for k, v in first.items()} == BUILTIN_FIELDS[corpus]
    tok = S.TokenizerSpec(kind=S.BPETokenizer(vocab=100_000), specials=["eos"], sentinels=2)
    with pytest.raises(RunError) as err:  # the trainer runs out of pairs: it says how far it got
        train_bpe(tok, name="t", data_name="d", data_spec=S.DataSpec(source=S.BuiltinSource(name=corpus)),
                  spec_file="t.lmspec")
    assert f"learned only {256 + 1 + 2 + BUILTIN_BPE_MERGES[corpus]} tokens" in str(err.value)


def test_data_label_with_a_bare_classify_is_not_read():
    # GAP 2: the runtime reads classify(label:), whose default is "label"
    d = only("""\
        model critic { arch: encoder, vocab: 262, context: 64, layers: 1, d_model: 32, heads: 4, head: classifier }
        data reviews { source: builtin("tiny-reviews"), label: "sentiment" }
        train t { model: critic, objective: classify, data: reviews }
    """, "LMS072")
    assert at(d) == (7, 37)
    assert d.message == ("objective 'classify' reads the field 'label' (its default), but data 'reviews' names its "
                         "label 'sentiment'")
    assert d.help == 'write `classify(label: "sentiment")`'


def test_fields_a_builtin_corpus_does_not_have():
    # GAP 5: built-in fields are fixed; GAP 10: their labels are known (tiny-stories' ending is a word)
    body = """\
        data chat { source: builtin("tiny-instructions") }
        model critic { arch: encoder, vocab: 262, context: 64, layers: 1, d_model: 32, heads: 4, head: classifier }
        train a { model: gpt, objective: clm, data: chat }
        train b { model: gpt, objective: sft, data: text }
        train c { model: critic, objective: classify(label: "ending"), data: text }
        judge j { model: hf("judge") }
        feedback f { policy: gpt from b, prompts: chat.prefixes(tokens: 8), judge: j }
        train d { model: gpt, objective: sft, data: chat }
    """
    found = sorted((d for d in report(body).diagnostics if d.code == "LMS072"), key=at)
    assert [(at(d), d.message) for d in found] == [
        ((7, 34), "objective 'clm' reads the field 'text', but builtin(\"tiny-instructions\") records of data 'chat' "
                  "have prompt, response"),
        ((8, 34), "objective 'sft' reads the fields 'prompt', 'response', but builtin(\"tiny-stories\") records of "
                  "data 'text' have text, ending"),
        ((9, 37), "objective 'classify' reads class numbers from the field 'ending', but in builtin(\"tiny-stories\") "
                  "records of data 'text' it holds strings"),
        ((11, 43), "the prompts of feedback 'f' read the field 'text', but builtin(\"tiny-instructions\") records of "
                   "data 'chat' have prompt, response")]
    assert found[1].help == ('name the fields in data \'text\' with `prompt: "..."` and `response: "..."` (its text '
                             'fields: text, ending), or use data with those fields')
    assert found[2].help == "classify reads class numbers (0, 1, ...): use data with such a field"


def test_fields_of_text_files_and_of_a_jsonl_first_record(tmp_path):
    (tmp_path / "notes.txt").write_text("one document\n\nanother\n")
    (tmp_path / "chat.jsonl").write_text('{"question": "hi?", "answer": "hello", "stars": 4}\n')
    spec = tmp_path / "s.lmspec"
    spec.write_text(PRELUDE + 'data notes { source: text("notes.txt") }\n'
                    'data chat { source: jsonl("chat.jsonl"), prompt: "question" }\n'
                    "train a { model: gpt, objective: sft, data: notes }\n"
                    "train b { model: gpt, objective: sft, data: chat }\n")
    found = sorted((d for d in check_file(spec).diagnostics if d.code == "LMS072"), key=at)
    assert [(at(d), d.message) for d in found] == [
        ((7, 34), "objective 'sft' reads the fields 'prompt', 'response', but data 'notes' is text(\"notes.txt\"): "
                  "documents only"),
        ((8, 34), "objective 'sft' reads the field 'response', but the first record of jsonl(\"chat.jsonl\") of data "
                  "'chat' have question, answer, stars")]
    assert found[1].help == ('name the fields in data \'chat\' with `response: "..."` (its text fields: question, '
                             'answer), or use data with those fields')
    spec.write_text(spec.read_text().replace('prompt: "question"', 'prompt: "question", response: "answer"'))
    assert [d.message for d in check_file(spec).diagnostics if d.code == "LMS072"] == [found[0].message]


def test_specials_objectives_need_besides_mask():
    # GAP 6: sft and span_corruption end sequences with eos; nsp writes cls A sep B sep
    body = """\
        tokenizer plain { kind: bytes, specials: [pad] }
        data chat { source: builtin("tiny-instructions") }
        model bert { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, segments: 2,
                     pooler: true, head: [mlm, nsp] }
        train a { model: gpt, tokenizer: plain, objective: sft, data: chat }
        train b { model: bert, tokenizer: plain, objective: nsp, data: text }
    """
    found = sorted((d for d in report(body).diagnostics if d.code == "LMS071"), key=at)
    assert [(at(d), d.message, d.help) for d in found] == [
        ((9, 52), "objective 'sft' needs an eos token (it ends each response with one), but tokenizer 'plain' has "
                  "none", "add eos to `specials:` of tokenizer 'plain'"),
        ((10, 53), "objective 'nsp' needs cls and sep tokens (it writes each pair as cls A sep B sep), but tokenizer "
                   "'plain' has neither", "add cls and sep to `specials:` of tokenizer 'plain'")]
    assert labels(found[0]) == [(5, 42, "specials of 'plain'")]


def test_betas_and_mlm_replace_fractions():
    # GAP 11: torch rejects a beta outside [0, 1); GAP 12: three fractions summing to 100%
    d = only("train t { model: gpt, objective: clm, data: text, optimizer: adamw(betas: [0.9, 1.5]) }", "LMS043")
    assert (at(d), d.message) == ((5, 81), "'betas' must be < 1, found 1.5")
    bert = "model bert { arch: encoder, vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4 }\n"
    d = only(bert + "train t { model: bert, objective: mlm(replace: [0.5, 0.1]), data: text }", "LMS043")
    assert d.message == "'replace' must have 3 items, found 2"
    d = only(bert + "train t { model: bert, objective: mlm + 0.5 * mlm(replace: [0.5, 0.2, 0.2]), data: text }",
             "LMS043")
    assert at(d) == (6, 60)
    assert d.message == "mlm's replace must be [mask, random, unchanged] summing to 100%, found [50%, 20%, 20%] = 90%"
    assert d.help == "for example BERT's `replace: [0.8, 0.1, 0.1]`"


def test_starting_weights_given_twice():
    # GAP 13: `init` wins and `from` is ignored, yet its stage runs first
    d = only("""\
        train a { model: gpt, objective: clm, data: text }
        train b { model: gpt, objective: clm, data: text }
        train c { model: gpt from a, init: b, objective: clm, data: text }
    """, "LMS102")
    assert at(d) == (7, 36)
    assert d.message == ("train 'c' gives its starting weights twice: 'gpt from a' and 'init: b'; the stage would "
                         "start from b and ignore 'a'")
    assert d.help == "keep one: `model: gpt, init: b` or `model: gpt from a`"
    assert labels(d) == [(7, 18, "the other one")]


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.lmspec")), ids=lambda p: p.name)
def test_the_example_specs_draw_none_of_these_checks(path):
    new = {"LMS101", "LMS102", "LMS103", "LMS104", "LMS071", "LMS072", "LMS075", "LMS078", "LMS089", "LMS043"}
    assert [d.message for d in check_file(path).diagnostics if d.code in new] == []


# ------------------------------------------------------------------------------ what check prints for an rl stage

TINY_RL = """lmspec 1
tokenizer tok { kind: bytes }
data text { source: builtin("tiny-stories") }
data reviews { source: builtin("tiny-reviews") }
model gpt { vocab: 262, context: 32, layers: 1, d_model: 16, heads: 2, d_ff: 32 }
model critic { arch: encoder, vocab: 262, context: 32, layers: 1, d_model: 16, heads: 2, d_ff: 32, head: classifier }
train p { model: gpt, objective: clm, data: text }
train fit { model: critic, objective: classify(label: "sentiment"), data: reviews }
judge j { model: critic from fit }
rl r { policy: gpt from p, reward: j, algorithm: ppo(epochs: 2), minibatch: 2, steps: 2,
       rollouts { prompts: text.prefixes(tokens: 8), per_step: 4, max_new_tokens: 8 } }
"""


def test_an_rl_stage_counts_every_model_it_runs():
    from lmspec.compiler import analysis as A
    from lmspec.compiler.costs import spec_figures

    report = check_text(TINY_RL, "t.lmspec")
    assert report.ok and report.diagnostics == []
    figures, _ = spec_figures(report, meta=False)
    rl = figures.stages["r"].rl
    # per layer over T positions and S keys (d 16, 2 heads of 8, d_ff 32, vocab 262): projections
    # 2T.16.48 + 2T.16.16 = 2048T, scores and values 4.T.S.16 = 64TS, mlp 2T.16.32.2 = 2048T; the lm
    # head 2T.16.262 = 8384T. A rollout is 8 prompt + 8 new tokens, T = 16.
    policy = 4096 * 16 + 64 * 16 * 16 + 8384 * 16  # 216,064
    # generation: the prompt once (its last position through the head), then 7 passes of one position
    # over 9..15 keys; the 8th new token is never fed back
    generate = (4096 * 8 + 64 * 8 * 8 + 8384) + sum(4096 + 64 * (8 + j) + 8384 for j in range(1, 8))
    value = 4096 * 16 + 64 * 16 * 16 + 2 * 16 + 2 * 16 * 8  # body, pooled scalar head, scalar head per response token
    critic = 4096 * 16 + 64 * 16 * 16 + 2 * 16 * 2  # the judge reads prompt + response (16 tokens), classifier head
    rollouts = 2 * 4
    assert (rl.rollouts, rl.prompt_tokens, rl.new_tokens, rl.updates, rl.minibatch) == (8, 8, 8, 2 * 2 * 2, 2)
    assert rl.flops == {"generation": rollouts * generate, "old_logprobs": rollouts * policy,
                        "reference": rollouts * policy, "value": rollouts * value, "reward": rollouts * critic,
                        "training": 2 * rollouts * 3 * (policy + value)}
    assert rl.flops["generation"] == 1_103_872 and rl.flops["training"] == 14_317_056
    assert figures.stages["r"].flops == sum(rl.flops.values())
    # memory: the reference and the judge are frozen fp32 copies; the policy and the value model train
    params = {m: figures.models[m].params.total for m in ("gpt", "critic")}
    assert (rl.memory["reference"], rl.memory["reward"], rl.memory["judges"]) == (4 * params["gpt"],
                                                                                  4 * params["critic"], 0)
    assert rl.memory["kv_cache"] == 2 * 16 * 4 * 4 * 16  # k and v, 16 wide, fp32, 4 rollouts of 16 tokens
    policy_mem = A.training_memory(report.models["gpt"], batch=2, seq_len=16, precision="bf16")
    assert rl.memory["policy"] == policy_mem.total
    m = figures.stages["r"].memory
    value_params = params["gpt"] - 262 * 16 + 16 + 1  # the policy's body: the lm head gives way to a scalar head
    assert m.weights == policy_mem.weights + 4 * value_params + rl.memory["reference"] + rl.memory["reward"]
    assert m.total == rl.memory["policy"] + rl.memory["value"] + rl.memory["reference"] + rl.memory["reward"]


def test_generation_flops_are_what_a_flop_counter_counts():
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from lmspec.compiler.build import build_model
    from lmspec.compiler.costs import generation_flops

    for extra in ("", ", kv_heads: 1, position: rope", ", tie_embeddings: true"):
        arch = check_text("lmspec 1\nmodel m { vocab: 262, context: 32, layers: 2, d_model: 16, heads: 2, d_ff: 32"
                          f"{extra} }}\n").models["m"]
        model = build_model(arch).eval()
        prompts = torch.randint(0, 262, (3, 8))
        # the math kernel decomposes attention into products the counter sees (CPU's fused one it does not)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model.generate(prompts, max_new_tokens=8, generator=torch.Generator().manual_seed(0))
        assert counter.get_total_flops() == 3 * generation_flops(arch, 8, 8), extra


def test_check_prints_each_model_of_an_rl_stage():
    from lmspec.compiler.costs import render_figures, spec_figures

    text = render_figures(spec_figures(check_text(TINY_RL, "t.lmspec"), meta=False)[0])
    rows = text.split("rl stages\n", 1)[1].splitlines()
    assert rows[0].split() == ["stage", "rollouts", "tokens", "updates", "generate", "score", "train", "policy",
                               "reference", "value", "reward", "kv-cache"]
    assert rows[1].split() == ["r", "8", "8+8", "8", "1.1MFLOP", "4.77MFLOP", "14.3MFLOP", "238", "KiB", "43.6", "KiB",
                               "131", "KiB", "27.3", "KiB", "8", "KiB"]

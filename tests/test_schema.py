"""The schema: what each block kind accepts, and a located diagnostic for everything else.

Each test writes one mistake into an otherwise valid block and checks the code, the message,
the help line and the text the carets underline.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

import pytest

from conftest import GOOD_MODEL, at, diagnose, errors, only, where
from lmspec.compiler import schema as S
from lmspec.compiler.api import check_text
from lmspec.compiler.schema_check import variants_of


def model(extra: str) -> str:
    return f"model m {{ {GOOD_MODEL}, {extra} }}"


def value_in(text: str, written: str) -> str:
    """Where the value of `written` ("key: value", found once in `text`) is: `line:col-end_col`."""
    key, value = written.split(": ", 1)
    start = text.index(written) + len(key) + 2
    line = text.count("\n", 0, start) + 1
    col = start - (text.rfind("\n", 0, start) + 1) + 1
    return f"{line}:{col}-{col + len(value)}"


STAGES = """\
tokenizer tok { kind: bytes }
data d { source: builtin("tiny-stories") }
model m { vocab: tok.vocab_size, context: 16, layers: 2, d_model: 32, heads: 4 }
"""


def test_the_good_model_is_good():
    report = diagnose(f"lmspec 1\nmodel m {{ {GOOD_MODEL} }}")
    assert report.ok and report.diagnostics == []


# ----------------------------------------------------------------------------- LMS040, LMS041


def test_an_unknown_block_kind():
    d = only("lmspec 1\nmodle m { }", "LMS040")
    assert (where(d), d.message, d.help) == ("2:1-6", "unknown block kind 'modle'", "did you mean 'model'?")
    d = only("lmspec 1\nwidget w { }", "LMS040")
    assert d.help == "block kinds: " + ", ".join(S.BLOCK_KINDS)


def test_an_unknown_key_with_did_you_mean():
    text = model("bais: false")
    d = only(text, "LMS041")
    assert (where(d), d.message, d.help) == (at(text, "bais"), "unknown key 'bais' in model 'm'",
                                             "did you mean 'bias'?")


def test_an_unknown_key_without_a_near_one_lists_the_valid_keys():
    d = only("data d { source: text(\"a\"), colour: 1 }", "LMS041")
    assert d.help == "valid keys: " + ", ".join(S.DataSpec.model_fields)


@pytest.mark.parametrize("extra, message, underlined", [
    ("encoder { layers: 2, hedas: 3 }", "unknown key 'hedas' in 'encoder' of model 'm'", "hedas"),
    ("layer 0 { attn: causal }", "unknown key 'attn' in a layer override of model 'm'", "attn"),
    ("decoder { layers: 1, layer 0 { frist: 1 } }",
     "unknown key 'frist' in a layer override of 'decoder' of model 'm'", "frist"),
])
def test_unknown_keys_in_nested_blocks_and_layer_overrides(extra, message, underlined):
    d = only(model(extra), "LMS041")
    assert (d.message, where(d)) == (message, at(model(extra), underlined))


def test_a_layer_override_cannot_change_its_own_range():
    # `last` used to replace the range written after `layer`
    d = only(model("layer 0 { last: 1 }"), "LMS041")
    assert d.message == "unknown key 'last' in a layer override of model 'm'"
    assert "first" not in d.help and "last" not in d.help


# ----------------------------------------------------------------------------- LMS042


@pytest.mark.parametrize("extra, message", [
    ('dropout: "x"', """'dropout' must be a number, found the string "x\""""),
    ("tie_embeddings: 1", "'tie_embeddings' must be true or false, found the integer 1"),
    ("pad_id: true", "'pad_id' must be an integer, found the boolean true"),
    ("pad_id: 1.5", "'pad_id' must be a whole number, found the number 1.5"),
    ("activation: 3", "'activation' must be one of gelu, gelu_tanh, relu, silu, swiglu, geglu, geglu_tanh or reglu, "
                      "found the integer 3"),
    ("encoder: 3", "'encoder' is a nested block, found the integer 3"),
    ("head: 3", "'head' must be one of lm, mlm, nsp, classifier, scalar or none, found the integer 3"),
])
def test_a_value_of_the_wrong_type(extra, message):
    d = only(model(extra), "LMS042")
    assert (d.message, where(d)) == (message, value_in(model(extra), extra))


TRAIN = STAGES + "train t { model: m, data: d, objective: clm, "


@pytest.mark.parametrize("text, written, message, help", [
    (model('context: "256"').replace("context: 16, ", ""), 'context: "256"',
     "'context' must be an integer, found the string \"256\"", "write `context: 256`, without quotes"),
    (model('bias: "true"'), 'bias: "true"', "'bias' must be true or false, found the string \"true\"",
     "write `bias: true`, without quotes"),
    (model('bias: "yes"'), 'bias: "yes"', "'bias' must be true or false, found the string \"yes\"",
     "write `bias: true` or `bias: false`"),
    (model('norm: "rmsnorm"'), 'norm: "rmsnorm"',
     "'norm' must be one of layernorm or rmsnorm, found the string \"rmsnorm\"", "write `norm: rmsnorm`, without quotes"),
    (model('norm: "rmsnrom"'), 'norm: "rmsnrom"',
     "'norm' must be one of layernorm or rmsnorm, found the string \"rmsnrom\"", "write `norm: rmsnorm`, without quotes"),
    (model('position: "rope"'), 'position: "rope"', "'position' must be one of learned, sinusoidal, rope, alibi, "
     "relative or none, found the string \"rope\"", "write `position: rope`, without quotes"),
    (model('dropout: "10%"'), 'dropout: "10%"', "'dropout' must be a number, found the string \"10%\"",
     "write `dropout: 10%`, without quotes"),
    (TRAIN + 'steps: "10" }', 'steps: "10"', "'steps' must be an integer, found the string \"10\"",
     "write `steps: 10`, without quotes"),
    (TRAIN + 'optimizer: adamw(lr: "1e-3") }', 'lr: "1e-3"', "'lr' must be a number, found the string \"1e-3\"",
     "write `lr: 1e-3`, without quotes"),
    (TRAIN + 'precision: "bf16" }', 'precision: "bf16"',
     "'precision' must be one of auto, fp32, bf16 or fp16, found the string \"bf16\"",
     "write `precision: bf16`, without quotes"),
    ('tokenizer k { kind: bytes, specials: [pad, "bos"] }', 'specials: [pad, "bos"]',
     "'specials' must be one of pad, bos, eos, mask, sep, cls or unk, found the string \"bos\"",
     "write `bos`, without quotes"),
])
def test_a_string_is_never_a_number_a_boolean_or_a_choice(text, written, message, help):
    # pydantic's lax mode used to read "256" as 256, "true" as true and "rmsnorm" as rmsnorm
    d = only(text, "LMS042")
    quoted = written.split(": ", 1)[1]
    quoted = quoted[quoted.index('"'):quoted.index('"', quoted.index('"') + 1) + 1]
    assert (d.message, d.help, where(d)) == (message, help, at(text, quoted))


def test_a_quoted_init_is_neither_a_stage_nor_a_directory():
    # `init: "dir"` used to become hf() without its path: "'str' must be a string, found a block"
    d = only(TRAIN + 'init: "dir" }', "LMS042")
    assert (d.message, d.help) == ("'init' must name a train or rl block, or be hf(...), found the string \"dir\"",
                                   'for a checkpoint directory, write `init: hf("dir")`')
    d = only(TRAIN + 'init: "t" }', "LMS042")
    assert d.help == "write `init: t`, without quotes"


def test_number_literals_and_bare_names_keep_their_types():
    # strict, as the language means it: an integer is a number, a whole number an integer
    report = diagnose("lmspec 1\n" + TRAIN + "steps: 2k, batch: 1e2, clip_grad: 2, optimizer: adamw(lr: 1e-3),"
                      " schedule: cosine(warmup: 64 / 2.0, min_lr: 15%), precision: bf16 }")
    assert report.ok, [d.message for d in report.diagnostics]
    t = report.spec.blocks["t"]
    assert (t.steps, t.batch, t.clip_grad, t.optimizer.lr, t.schedule.warmup, t.schedule.min_lr, t.precision) == (
        2000, 100, 2.0, 1e-3, 32, 0.15, "bf16")
    assert report.spec.blocks["m"].vocab == 262
    assert diagnose('lmspec 1\ndata e { source: builtin("tiny-stories") }').ok  # names that are no identifiers


def test_a_boolean_is_not_a_number_in_a_list_either():
    text = STAGES + "train t { model: m, data: d, objective: clm, optimizer: adamw(betas: [true, 0.9]) }"
    d = only(text, "LMS042")
    assert (d.message, where(d)) == ("'betas' must be a number, found the boolean true", at(text, "true"))


def test_a_misspelt_name_where_a_number_belongs_is_undefined():
    d = only(model("kv_heads: hedas"), "LMS023")
    assert (d.message, d.help, where(d)) == ("'hedas' is not defined", "did you mean 'heads'?",
                                             at(model("kv_heads: hedas"), "hedas"))
    # `4 * name` could be a weighted objective (`0.5 * nsp`); a name close to a field is a typo
    d = only(model("d_ff: 4 * d_modle"), "LMS023")
    assert (d.message, d.help, where(d)) == ("'d_modle' is not defined", "did you mean 'd_model'?",
                                             at(model("d_ff: 4 * d_modle"), "d_modle"))
    d = only(model("d_ff: 4 * width"), "LMS023")  # near nothing: the schema says so for the value
    assert (d.message, d.help, where(d)) == ("'width' is not defined", "'d_ff' must be an integer",
                                             at(model("d_ff: 4 * width"), "4 * width"))


def test_an_unquoted_string_is_a_type_error_not_an_undefined_name():
    d = only('data d { source: text("a"), label: sentiment }', "LMS042")
    assert d.message == "'label' must be a string, found the name 'sentiment'"


# ----------------------------------------------------------------------------- LMS043


@pytest.mark.parametrize("text, message, written", [
    (model("dropout: 1.5"), "'dropout' must be < 1, found 1.5", "dropout: 1.5"),
    ("model m { vocab: 300, context: 16, layers: 0, d_model: 32, heads: 4 }",
     "'layers' must be >= 1, found 0", "layers: 0"),
    (model("head: classifier(classes: 1)"), "'classes' must be >= 2, found 1", "classes: 1"),
    ('data d { source: text("a"), validation: 100% }', "'validation' must be < 1, found 1", "validation: 100%"),
    (STAGES + "train t { model: m, data: d, objective: mlm(mask: 150%) }", "'mask' must be <= 1, found 1.5",
     "mask: 150%"),
    (STAGES + "train t { model: m, data: d, objective: clm, optimizer: adamw(lr: -1) }",
     "'lr' must be > 0, found -1", "lr: -1"),
    (STAGES + "train t { model: m, data: d, objective: clm, optimizer: adamw(betas: [0.9]) }",
     "'betas' must have 2 items, found 1", "betas: [0.9]"),
    (STAGES + "train t { model: m, data: d, objective: prefix_lm(prefix: 2) }", "'prefix' must be < 1, found 2",
     "prefix: 2"),
])
def test_a_value_out_of_range(text, message, written):
    d = only(text, "LMS043")
    assert (d.message, where(d)) == (message, value_in(text, written))


def test_a_key_named_like_a_variant_is_still_located():
    # `text` is both a DataSpec key and the tag of a source: the error used to land on the block name
    d = only('data d { source: text("a"), text: 5 }', "LMS042")
    assert (d.message, where(d)) == ("'text' must be a string, found the integer 5", "1:35-36")


# ----------------------------------------------------------------------------- LMS044


@pytest.mark.parametrize("extra, message, help, underlined", [
    ("norm: rmsnrom", "unknown norm 'rmsnrom'", "did you mean 'rmsnorm'?", "rmsnrom"),
    ("norm: batchnorm", "unknown norm 'batchnorm'", "choose one of layernorm or rmsnorm", "batchnorm"),
    ("attention: slidng(window: 4)", "unknown attention 'slidng'", "did you mean 'sliding'?", "slidng(window: 4)"),
    ("position: spiral", "unknown position 'spiral'",
     "choose one of learned, sinusoidal, rope, alibi, relative or none", "spiral"),
    ("head: [mlm, nsp, foo]", "unknown head 'foo'", "choose one of lm, mlm, nsp, classifier, scalar or none",
     "foo"),
    ("placement: middle", "unknown placement 'middle'", "choose one of pre, post or sandwich", "middle"),
])
def test_an_unknown_choice_lists_the_valid_ones(extra, message, help, underlined):
    d = only(model(extra), "LMS044")
    assert (d.message, d.help, where(d)) == (message, help, at(model(extra), underlined))


def test_unknown_objective_and_source():
    text = STAGES + "train t { model: m, data: d, objective: clmm }"
    d = only(text, "LMS044")
    assert (d.message, d.help, where(d)) == ("unknown objective 'clmm'", "did you mean 'clm'?", at(text, "clmm"))
    d = only('data e { source: builtin("tiny-storie") }', "LMS044")
    assert (d.message, d.help) == ("unknown name 'tiny-storie'", "did you mean 'tiny-stories'?")


# ----------------------------------------------------------------------------- LMS045


def test_missing_required_keys_point_at_the_block_name():
    report = diagnose("lmspec 1\nmodel m { layers: 2 }")
    assert [(d.code, d.message, where(d), d.help) for d in report.errors] == [
        ("LMS045", "model 'm' needs 'vocab'", "2:7-8", "add `vocab: ...`"),
        ("LMS045", "model 'm' needs 'context'", "2:7-8", "add `context: ...`"),
        ("LMS045", "model 'm' needs 'd_model'", "2:7-8", "add `d_model: ...`"),
        ("LMS045", "model 'm' needs 'heads'", "2:7-8", "add `heads: ...`"),
    ]


def test_a_missing_nested_block_and_a_key_missing_in_one():
    d = only(STAGES + "train t { model: m, data: d, objective: clm }\n"
             "rl r { policy: m from t, reward: t }", "LMS045")
    assert (d.message, d.help, where(d)) == ("rl 'r' needs 'rollouts'", "add `rollouts { ... }`", "5:4-5")
    text = ("model m { vocab: 300, context: 16, d_model: 32, heads: 4, arch: encoder_decoder,"
            " encoder { heads: 2 }, decoder { layers: 1 } }")
    d = only(text, "LMS045")
    assert (d.message, where(d)) == ("'encoder' of model 'm' needs 'layers'", at(text, "encoder", nth=2))


def test_a_wrong_value_in_a_nested_block_is_not_also_missing():
    text = STAGES + "train t { model: m, data: d, objective: clm }\nrl r { policy: m from t, reward: t,\n" \
                    "  rollouts { prompts: m.prefixes(tokens: 8) } }"
    assert [e.split(" ", 2)[1:] for e in errors(text)] == [
        ["LMS047", "'data' needs a data block, but 'm' is a model"]]


def test_a_missing_model_use_is_helped_as_a_key():
    d = only(STAGES + "train t { model: m, data: d, objective: clm }\nrl r { reward: t,"
             " rollouts { prompts: d.prefixes() } }", "LMS045")
    assert (d.message, d.help) == ("rl 'r' needs 'policy'", "add `policy: ...`")


def test_a_key_that_failed_to_resolve_is_not_also_missing():
    # `vocab` has an error of its own; "needs 'vocab'" would be noise
    assert [e.split(" ")[1] for e in errors("model m { vocab: nope.x, context: 16, layers: 2, d_model: 32,"
                                            " heads: 4 }")] == ["LMS023"]


# ----------------------------------------------------------------------------- LMS046


@pytest.mark.parametrize("extra, message, help, underlined", [
    ("position: rope(thetta: 5)", "rope(...) has no argument 'thetta'", "did you mean 'theta'?", "thetta"),
    ("position: alibi(slope: 2)", "alibi(...) has no argument 'slope'", "alibi takes no arguments", "slope"),
    ("position: sinusoidal(3)", "sinusoidal(...) takes at most 0 positional arguments, found 1",
     "arguments: none", "sinusoidal(3)"),
    ("attention: sliding", "sliding(...) needs 'window'", "write `sliding(window: ...)`", "sliding"),
    ("position: relative(8, 64, 2)", "relative(...) takes at most 2 positional arguments, found 3",
     "arguments: buckets, max_distance", "relative(8, 64, 2)"),
])
def test_variant_arguments(extra, message, help, underlined):
    d = only(model(extra), "LMS046")
    assert (d.message, d.help, where(d)) == (message, help, at(model(extra), underlined))


def test_positional_arguments_fill_variant_fields_in_order():
    report = diagnose("lmspec 1\n" + model("position: relative(16, 64)"))
    assert report.ok
    position = report.spec.blocks["m"].position
    assert (position.kind, position.buckets, position.max_distance) == ("relative", 16, 64)


def test_with_accepts_only_head():
    text = STAGES + "train t { model: m with heads 3, data: d, objective: clm }"
    d = only(text, "LMS046")
    assert (d.message, where(d)) == ("`with heads` is not supported; only `with head ...`", at(text, "m with heads 3"))


# ----------------------------------------------------------------------------- LMS047


@pytest.mark.parametrize("stage, message, written", [
    ("train t { model: tok, data: d, objective: clm }", "expected a model, but 'tok' is a tokenizer", "model: tok"),
    ("train t { model: m, data: m, objective: clm }", "'data' needs a data or feedback block, but 'm' is a model",
     "data: m"),
    ("train t { model: m, data: d, objective: clm, tokenizer: d }",
     "'tokenizer' needs a tokenizer block, but 'd' is a data", "tokenizer: d"),
    ("judge j { model: m from d }", "'from' needs a train or rl stage, but 'd' is a data", "model: m from d"),
])
def test_a_reference_to_a_block_of_the_wrong_kind(stage, message, written):
    d = only(STAGES + stage, "LMS047")
    assert (d.message, where(d)) == (message, value_in(STAGES + stage, written))


def test_a_quoted_block_name_is_not_a_reference():
    # used to pass the schema and crash a design rule looking up the block
    text = STAGES + 'judge j { model: m }\ntrain t { model: m, data: "j", objective: clm, tokenizer: "tok" }'
    report = diagnose(text)
    assert [(d.code, d.message, d.help) for d in report.errors if d.code == "LMS042"] == [
        ("LMS042", """'data' must name a data or feedback block, found the string "j\"""",
         "name one of the data or feedback blocks, e.g. `data: d`"),
        ("LMS042", """'tokenizer' must name a tokenizer block, found the string "tok\"""",
         "write `tokenizer: tok`, without quotes"),
    ]


def test_a_reference_to_an_undefined_block_suggests_one_of_the_right_kind():
    text = STAGES + "train t { model: mm, data: d, objective: clm }"
    d = only(text, "LMS023")
    assert (d.message, d.help, where(d)) == ("'mm' is not defined", "did you mean 'm'?", value_in(text, "model: mm"))
    d = only(STAGES + "train t { model: m, data: dd, objective: clm }", "LMS023")
    assert (d.message, d.help) == ("'dd' is not defined", "did you mean 'd'?")


# ----------------------------------------------------------------------------- valid forms


def test_forms_the_schema_reads():
    report = diagnose("lmspec 1\n" + STAGES + """\
model c { vocab: tok.vocab_size, context: 16, layers: 1, d_model: 32, heads: 4, arch: encoder,
          head: classifier(classes: 3) }
train t { model: m, data: d, objective: mlm + 0.5 * nsp, clip_grad: none, init: hf("dir"), steps: 1e3 }
""")
    typed = report.spec.blocks
    assert [h.kind for h in typed["c"].head] == ["classifier"]        # one head is a list of one
    assert typed["c"].head[0].classes == 3
    t = typed["t"]
    assert [(o.weight, o.objective.kind) for o in t.objective] == [(1.0, "mlm"), (0.5, "nsp")]
    assert t.clip_grad is None                                          # `none` for an optional key
    assert (t.init.kind, t.init.path) == ("hf", "dir")
    assert t.steps == 1000
    assert [d.code for d in report.errors if d.code.startswith("LMS04")] == []


def test_every_bad_term_of_a_weighted_objective_is_reported():
    from lmspec.compiler.api import check_text

    report = check_text('lmspec 1\ndata d { source: builtin("tiny-stories") }\n'
                        "model m { vocab: 300, context: 8, layers: 1, d_model: 8, heads: 2 }\n"
                        "train t { model: m, data: d, objective: mlm(mask: 150%) + nsp(1) }\n")
    assert sorted(d.code for d in report.diagnostics) == ["LMS043", "LMS046"]


def test_a_model_cannot_be_deeper_than_the_layer_limit():
    from lmspec.compiler.api import check_text

    report = check_text("lmspec 1\nmodel m { vocab: 300, context: 8, layers: 1.5B, d_model: 8, heads: 2 }\n")
    assert [(d.code, d.message) for d in report.diagnostics] == [("LMS043", "'layers' must be <= 4096, found 1500000000")]


def test_an_empty_head_list_is_refused():
    from lmspec.compiler.api import check_text

    report = check_text("lmspec 1\nmodel m { vocab: 300, context: 8, layers: 1, d_model: 8, heads: 2, head: [] }\n")
    assert [d.code for d in report.diagnostics] == ["LMS043"]


# ----------------------------------------------------------------------------- issue 9: helps that are valid values
#
# Every help line that shows a value shows one the schema takes: `e.g. source: builtin` was no
# value at all (builtin is a call). The keys are walked from the schema, and each is given a
# wrong value in the example spec specs/rlaif.lmspec (which has a block of every kind, through
# `--set`); the value each help suggests is then written in, and the schema must accept it.

RLAIF_PATH = Path(__file__).resolve().parents[1] / "specs" / "rlaif.lmspec"  # it imports its parts from specs/rlaif/
RLAIF = RLAIF_PATH.read_text()
_BLOCK_OF_KIND = {"tokenizer": "tok", "data": "stories", "model": "gpt", "train": "pretrain", "judge": "sentiment",
                  "feedback": "prefs", "rl": "align"}
_SCHEMA_CODES = {f"LMS0{n}" for n in range(40, 51)}


def _core(tp):
    """A type without Annotated and without the None of an optional."""
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp) \
                and len(typing.get_args(tp)) == 2:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp


def _choices_of(tp) -> list[str] | None:
    """The names a key takes as a choice (variants or literals), or None."""
    core = _core(tp)
    if typing.get_origin(core) is list:
        core = _core(typing.get_args(core)[0])
    if typing.get_origin(core) is typing.Literal:
        return list(typing.get_args(core))
    variants = variants_of(core)
    return list(variants) if variants else None


def _annotation(info):
    return typing.Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


def _choice_keys() -> list[tuple[str, str, list[str]]]:
    """(`--set` target, value template with `{}` for the choice, choices) of every key of every
    block kind (and of the rl block's `rollouts { }`) that takes a choice, and of every
    choice-valued argument of a variant."""
    out = []
    for kind, block in _BLOCK_OF_KIND.items():
        model = S.BLOCK_KINDS[kind]
        owners = [("", model)] + [(f"{key}.", _core(info.annotation)) for key, info in model.model_fields.items()
                                  if kind == "rl" and _core(info.annotation) is S.RolloutSpec]
        for prefix, owner in owners:
            for name, info in owner.model_fields.items():
                key, tp = info.alias or name, _annotation(info)
                if "RefTo" in repr(tp) or S.ModelUse in typing.get_args(_core(tp)):
                    continue  # a key that names blocks: not a choice
                if key == "objective":
                    tp = S.Objective  # a weighted sum of objectives; one term is a choice
                choices = _choices_of(tp)
                if not choices:
                    continue
                out.append((f"{block}.{prefix}{key}", "{}", choices))
                core = _core(tp)
                item = _core(typing.get_args(core)[0]) if typing.get_origin(core) is list else core
                for variant, cls in (variants_of(item) or {}).items():
                    for arg, arg_info in cls.model_fields.items():
                        arg_choices = _choices_of(arg_info.annotation) if arg != "kind" else None
                        if arg_choices:
                            out.append((f"{block}.{prefix}{key}", f"{variant}({arg_info.alias or arg}: {{}})",
                                        arg_choices))
    return out


_CHOICE_KEYS = _choice_keys()


def _value_of(help: str) -> str:
    """The value a help line writes (`key: VALUE` in its first backticks), placeholders filled."""
    written = re.search(r"`([^`]*)`", help).group(1)
    value = written.split(": ", 1)[1] if re.match(r"^\w+: ", written) and "(" not in written.split(": ", 1)[0] \
        else written
    return value.replace('"..."', '"x"').replace("...", "1")


def _set_each(assignments: list[tuple[str, str]]):
    return check_text(RLAIF, str(RLAIF_PATH), overrides=tuple(f"{target}={value}" for target, value in assignments))


def _batches(values_of) -> list[list[tuple]]:
    """Assignments in rounds, each `--set` target once a round (two values of one key would be
    one override replacing the other)."""
    rounds: list[list[tuple]] = []
    for target, template, choices in _CHOICE_KEYS:
        for i, value in enumerate(values_of(choices)):
            while len(rounds) <= i:
                rounds.append([])
            if all(t != target for t, _, _ in rounds[i]):
                rounds[i].append((target, template, value))
            else:  # the target is taken this round: the next free one
                j = next(j for j in range(i + 1, len(rounds) + 1) if j == len(rounds) or
                         all(t != target for t, _, _ in rounds[j]))
                if j == len(rounds):
                    rounds.append([])
                rounds[j].append((target, template, value))
    return rounds


def test_the_walk_finds_the_choice_keys():
    targets = {t for t, _, _ in _CHOICE_KEYS}
    assert {"tok.kind", "stories.source", "gpt.position", "gpt.norm", "gpt.head", "pretrain.objective",
            "sentiment.score", "prefs.debias", "align.algorithm", "align.rollouts.prompts"} <= targets
    assert ("gpt.head", "classifier(pool: {})", ["first", "last", "mean"]) in _CHOICE_KEYS


@pytest.mark.parametrize("wrong", ["5", "[1]", "prefs"])
def test_every_e_g_help_is_a_value_the_key_takes(wrong):
    rounds = _batches(lambda choices: [wrong])
    for assignments in rounds:
        report = _set_each([(t, tpl.format(wrong)) for t, tpl, _ in assignments])
        fixed = []
        for target, template, _ in assignments:
            key = re.findall(r"(\w+): \{\}", template) or [target.rsplit(".", 1)[1]]
            helps = [d.help for d in report.diagnostics if d.code == "LMS042" and d.span.file == "<--set>"
                     and f"'{key[0]}'" in d.message and d.span.line == assignments.index((target, template, _)) + 1]
            assert helps and "`" in helps[0], (target, template, helps)
            value = _value_of(helps[0])
            if wrong.startswith("[") and f"`{key[0]}: " not in helps[0]:
                value = f"[{value}]"  # the help of a list item shows the item
            fixed.append((target, template.format(value)))
        after = _set_each(fixed)
        assert [(str(d.span), d.message) for d in after.diagnostics if d.code in _SCHEMA_CODES] == [], fixed


def test_every_quoted_choice_is_helped_to_the_choice_itself():
    def quoted(choices):
        return [c for c in choices if c.isidentifier()]  # names that are no identifiers are strings

    for assignments in _batches(quoted):
        report = _set_each([(t, tpl.format(f'"{c}"')) for t, tpl, c in assignments])
        fixed = []
        for i, (target, template, choice) in enumerate(assignments):
            (d,) = [d for d in report.diagnostics if d.span is not None and d.span.file == "<--set>"
                    and d.span.line == i + 1]
            value = _value_of(d.help)
            # a bare choice loses its quotes (a list of choices its brackets too); one that
            # needs arguments is shown as a call
            if value.strip("[]") == choice:
                assert d.help.endswith(", without quotes"), (target, choice, d.help)
            else:
                assert re.match(rf"(\w+\.)?{choice}\(", value), (target, choice, d.help)  # `stories.prefixes()`
            fixed.append((target, template.format(value)))
        after = _set_each(fixed)
        assert [(str(d.span), d.message) for d in after.diagnostics if d.code in _SCHEMA_CODES] == [], fixed


@pytest.mark.parametrize("written, help", [
    ('"tiny-stories"', 'write `source: builtin("tiny-stories")`'),
    ('"tiny-storys"', 'did you mean `source: builtin("tiny-stories")`?'),
    ('"notes.txt"', 'for a path, write `source: text("notes.txt")`'),
    ('"pairs.jsonl"', 'for a path, write `source: jsonl("pairs.jsonl")`'),
    ('"builtin"', 'write `source: builtin("tiny-stories")`'),
    ("5", 'e.g. `source: builtin("tiny-stories")`'),
])
def test_a_source_written_as_a_string_is_helped_to_a_source(written, help):
    text = f"lmspec 1\ndata d {{ source: {written} }}"
    d = only(text, "LMS042")
    found = "the integer 5" if written == "5" else f"the string {written}"
    assert (d.message, d.help, where(d)) == (f"'source' must be one of builtin, text or jsonl, found {found}",
                                             help, at(text, written))


def test_the_builtin_corpora_the_schema_names_are_the_runtimes():
    from lmspec.runtime.data.builtin import NAMES

    assert typing.get_args(S.BuiltinSource.model_fields["name"].annotation) == NAMES


@pytest.mark.parametrize("wrong", ["5", "1.5", "true", '"x"', "[1]", "f(1)", "stories", "gpt from pretrain"])
def test_no_message_shows_a_python_type_name(wrong):
    # `init: hf(path: 5)` used to read "'str' must be a string, found a block": pydantic's name of
    # a union member, and of the dict the reader builds for a variant
    report = _set_each([(f"{block}.{key}", wrong) for kind, block in _BLOCK_OF_KIND.items()
                        for key in S.BLOCK_KINDS[kind].model_fields if key != "allow"] +
                       [("pretrain.init", f"hf(path: {wrong})"), ("gpt.position", f"rope(theta: {wrong})")])
    leaks = re.compile(r"'(str|int|float|bool|list|dict|NoneType)'|NoneType|Input should|\b(str|int|dict)\b")
    shown = [(d.code, d.message, d.help) for d in report.diagnostics]
    assert shown and all(d.help for d in report.diagnostics), [s for s in shown if not s[2]]
    assert [s for s in shown if leaks.search(s[1]) or leaks.search(s[2] or "")] == []
    path = [d for d in report.diagnostics if d.message.startswith("'path' must be a string")]
    assert path or wrong == '"x"', shown

"""Resolution: imports, extends, references, arithmetic and units, and what goes wrong with them.

Values are read from `lmspec.compiler.api.resolve` (a `ResolvedSpec`: plain values, before the
schema); diagnostics from the full check.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import at, diagnose, errors, only, where
from lmspec.compiler.api import check_file, resolve
from lmspec.compiler.values import CallValue, Combination, Ref, Symbol


def resolved(text: str):
    spec = resolve("r.lmspec", text="lmspec 1\n" + text)
    assert [d for d in spec.diagnostics if d.is_error] == [], [f"{d.span}: {d.message}" for d in spec.diagnostics]
    return spec


def fields(text: str, block: str) -> dict:
    return resolved(text).blocks[block].fields


# ----------------------------------------------------------------------------- imports


def test_imports_are_relative_to_the_importing_file(write, monkeypatch, tmp_path):
    write("lib/tokenizers.lmspec", "lmspec 1\ntokenizer tok { kind: bytes }\n")
    write("base.lmspec", 'lmspec 1\nimport "lib/tokenizers.lmspec"\n'
                         "model base { vocab: tok.vocab_size, context: 64, layers: 2, d_model: 64, heads: 4 }\n")
    main = write("exp/main.lmspec", 'lmspec 1\nimport "../base.lmspec"\nmodel big extends base { layers: 4 }\n')
    monkeypatch.chdir(tmp_path / "exp")  # where the command runs does not matter
    report = check_file(main)
    assert report.ok, [d.message for d in report.diagnostics]
    assert report.spec.resolved.blocks["big"].fields == {
        "vocab": 262, "context": 64, "layers": 4, "d_model": 64, "heads": 4}
    assert set(report.models) == {"base", "big"}
    assert len(report.sources) == 3  # every file read, for rendering diagnostics


def test_a_problem_in_an_imported_file_points_into_that_file(write):
    write("base.lmspec", "lmspec 1\ntokenizer tok { kind: bites }\n")
    main = write("main.lmspec", 'lmspec 1\nimport "base.lmspec"\n')
    (d,) = check_file(main).errors
    assert (d.code, d.span.file.endswith("base.lmspec"), d.span.line, d.span.col) == ("LMS044", True, 2, 23)
    assert d.help == "did you mean 'bytes'?"


def test_a_file_imported_twice_is_read_once(write):
    write("d.lmspec", "lmspec 1\ntokenizer tok { kind: bytes }\n")
    write("b.lmspec", 'lmspec 1\nimport "d.lmspec"\n')
    write("c.lmspec", 'lmspec 1\nimport "d.lmspec"\n')
    main = write("a.lmspec", 'lmspec 1\nimport "b.lmspec"\nimport "c.lmspec"\n')
    report = check_file(main)
    assert report.ok and list(report.spec.resolved.blocks) == ["tok"]


def test_a_missing_import(write, tmp_path):
    main = write("main.lmspec", 'lmspec 1\nimport "nowhere.lmspec"\n')
    (d,) = check_file(main).errors
    assert (d.code, d.message) == ("LMS020", "cannot import 'nowhere.lmspec': no such file")
    assert (d.span.line, d.span.col, d.span.end_col) == (2, 1, 24)  # the whole import line
    assert d.help == f"the path is relative to {tmp_path}"


def test_importing_a_directory(write, tmp_path):
    (tmp_path / "folder").mkdir()
    main = write("main.lmspec", 'lmspec 1\nimport "folder"\n')
    (d,) = check_file(main).errors
    assert (d.code, d.message) == ("LMS020", "cannot import 'folder': it is a directory")


def test_an_import_cycle_names_the_cycle(write):
    write("b.lmspec", 'lmspec 1\nimport "c.lmspec"\n')
    write("c.lmspec", 'lmspec 1\nimport "a.lmspec"\n')
    main = write("a.lmspec", 'lmspec 1\nimport "b.lmspec"\n')
    (d,) = check_file(main).errors
    assert (d.code, d.message) == ("LMS021", "import cycle: a.lmspec -> b.lmspec -> c.lmspec -> a.lmspec")
    assert Path(d.span.file).name == "c.lmspec" and d.span.line == 2  # the import that closes it
    assert d.help == "remove one of these imports"


def test_a_file_importing_itself(write):
    main = write("a.lmspec", 'lmspec 1\nimport "a.lmspec"\n')
    (d,) = check_file(main).errors
    assert d.message == "import cycle: a.lmspec -> a.lmspec"


# ----------------------------------------------------------------------------- block names


def test_duplicate_block_names_label_the_first():
    d = only("lmspec 1\ntokenizer tok { kind: bytes }\ndata tok { source: text(\"x\") }\n", "LMS022")
    assert (str(d.span), d.message, d.help) == ("spec.lmspec:3:6", "a block named 'tok' is already defined",
                                                "rename one of them")
    assert [(str(l.span), l.message) for l in d.labels] == [("spec.lmspec:2:11", "first defined here")]


def test_duplicate_block_names_across_files(write):
    write("base.lmspec", "lmspec 1\ntokenizer tok { kind: bytes }\n")
    main = write("main.lmspec", 'lmspec 1\nimport "base.lmspec"\ntokenizer tok { kind: bytes }\n')
    (d,) = check_file(main).errors  # reported where the name is redefined, not in the library
    assert (d.code, Path(d.span.file).name, d.span.line) == ("LMS022", "main.lmspec", 3)
    assert Path(d.labels[0].span.file).name == "base.lmspec"


# ----------------------------------------------------------------------------- extends

FAMILY = """\
model base {
  vocab: 1000, context: 64, layers: 4, d_model: 64, heads: 4
  d_ff: 4 * d_model
  encoder { layers: 2, heads: 2 }
  layer 0 { heads: heads / 2 }
}
model wide extends base {
  d_model: 128
  encoder { d_ff: 32 }
  layer 1..2 { d_ff: d_ff / 2 }
}
model wider extends wide { heads: 8 }
"""


def test_extends_overrides_fields_and_re_evaluates_expressions_with_the_heirs_values():
    spec = resolved(FAMILY)
    assert spec.blocks["base"].fields["d_ff"] == 256
    wide = spec.blocks["wide"]
    assert wide.fields == {"vocab": 1000, "context": 64, "layers": 4, "d_model": 128, "heads": 4, "d_ff": 512}


def test_extends_merges_nested_blocks():
    spec = resolved(FAMILY)
    assert spec.blocks["base"].nested["encoder"].fields == {"layers": 2, "heads": 2}
    assert spec.blocks["wide"].nested["encoder"].fields == {"layers": 2, "heads": 2, "d_ff": 32}


def test_extends_accumulates_layer_overrides_evaluated_in_the_heir():
    layers = lambda name: [(l.first, l.last, l.fields) for l in resolved(FAMILY).blocks[name].layers]
    assert layers("base") == [(0, 0, {"heads": 2})]
    assert layers("wide") == [(0, 0, {"heads": 2}), (1, 2, {"d_ff": 256})]
    assert layers("wider") == [(0, 0, {"heads": 4}), (1, 2, {"d_ff": 256})]  # heads / 2 with wider's heads


def test_an_heir_lowers_to_its_own_architecture():
    report = diagnose("lmspec 1\n" + FAMILY.replace("  encoder { layers: 2, heads: 2 }\n", "")
                      .replace("  encoder { d_ff: 32 }\n", ""))
    assert report.ok, [d.message for d in report.diagnostics]
    wider = report.models["wider"].decoder.layers
    assert [(l.heads, l.d_ff) for l in wider] == [(4, 512), (8, 256), (8, 256), (8, 512)]


def test_extends_an_undefined_block_suggests_a_name():
    d = only("lmspec 1\nmodel base { }\nmodel m extends bsae { }\n", "LMS024")
    assert (where(d), d.message, d.help) == ("3:17-21", "'m' extends 'bsae', which is not defined",
                                             "did you mean 'base'?")


def test_a_block_whose_extends_failed_is_not_also_missing_keys():
    # the keys are in the block it meant to extend
    assert errors("lmspec 1\nmodel m extends bsae { }\nmodel n extends m { }\nmodel base { }\n") == [
        "2:17 LMS024 'm' extends 'bsae', which is not defined",
        "4:7 LMS045 model 'base' needs 'vocab'", "4:7 LMS045 model 'base' needs 'context'",
        "4:7 LMS045 model 'base' needs 'd_model'", "4:7 LMS045 model 'base' needs 'heads'",
    ]


def test_a_block_that_failed_to_parse_is_not_also_undefined():
    # one syntax error, not a cascade of "'gpt' is not defined" wherever gpt is used
    assert errors("lmspec 1\nmodel gpt { layers = 2 }\ndata d { source: builtin(\"tiny-stories\") }\n"
                  "train t { model: gpt from t, data: d, objective: clm }\n"
                  "model g2 extends gpt { d_model: gpt.d_model }\n") == [
        "2:20 LMS005 '=' is not how lmspec assigns"]


def test_extends_a_block_of_another_kind():
    d = only("lmspec 1\ntokenizer tok { kind: bytes }\nmodel m extends tok { }\n", "LMS024")
    assert (where(d), d.message) == ("3:17-20", "a model cannot extend the tokenizer 'tok'")
    assert [(str(l.span), l.message) for l in d.labels] == [("spec.lmspec:2:1", "'tok' is a tokenizer")]


def test_an_extends_cycle_names_the_cycle():
    d = only("lmspec 1\nmodel a extends b { }\nmodel b extends c { }\nmodel c extends a { }\n", "LMS025")
    assert (where(d), d.message, d.help) == ("4:17-18", "blocks extend each other in a cycle: a -> b -> c -> a",
                                             "remove one `extends`")
    assert only("lmspec 1\nmodel a extends a { }\n", "LMS025").message == \
        "blocks extend each other in a cycle: a -> a"


def test_an_absurdly_long_extends_chain_is_refused_not_a_crash():
    text = "lmspec 1\n" + "".join(f"model m{i} extends m{i + 1} {{ }}\n" for i in range(200)) + "model m200 { }\n"
    d = only(text, "LMS011")  # once, though every 64 links of the chain exceed the limit
    assert (d.message, d.span.line) == ("more than 64 blocks extend one another in a chain", 66)


# ----------------------------------------------------------------------------- references


def test_a_tokenizer_vocab_size():
    f = fields("tokenizer tok { kind: bytes }\ntokenizer t5 { kind: bytes, sentinels: 100 }\n"
               "tokenizer bpe { kind: bpe(vocab: 8k) }\n"
               "model m { a: tok.vocab_size, b: t5.vocab_size, c: bpe.vocab_size }", "m")
    assert f == {"a": 262, "b": 362, "c": 8000}  # 256 bytes + 6 specials (+ sentinels)


def test_sibling_fields_in_any_order():
    assert fields("model m { d_ff: 4 * d_model, d_model: 64, head_dim: d_model / heads, heads: 8 }", "m") == {
        "d_ff": 256, "d_model": 64, "head_dim": 8, "heads": 8}


def test_nested_blocks_see_the_fields_of_their_parent():
    spec = resolved("model m { d_model: 64, heads: 4, decoder { d_ff: 2 * d_model, heads: heads * 2 } }")
    assert spec.blocks["m"].nested["decoder"].fields == {"d_ff": 128, "heads": 8}


def test_a_layer_override_reads_the_blocks_value_of_its_own_key():
    layer = resolved("model m { heads: 8, layer 0 { heads: heads / 2 } }").blocks["m"].layers[0]
    assert (layer.first, layer.last, layer.fields) == (0, 0, {"heads": 4})


def test_fields_of_other_blocks():
    f = fields("model a { d_model: 96 }\nmodel b { d_model: a.d_model * 2, dropout: a.dropout }", "b")
    assert f == {"d_model": 192, "dropout": 0.0}  # a.dropout: the schema's default


def test_schema_defaults_can_be_referenced():
    assert fields("model m { embed_scale: 2 * head_scale, x: norm_eps * 10 }", "m") == {
        "embed_scale": 2.0, "x": 1e-4}


MODEL = "model m { vocab: 300, context: 16, layers: 2, d_model: 32, heads: 4"


@pytest.mark.parametrize("block, layer, value", [
    ("dropout: dropout * 2", "", 0.0),        # a key reads its own default when the block leaves it unset
    ("norm_eps: norm_eps * 10", "", 1e-4),
    ("", "dropout: dropout + 0.1", 0.1),
    ("", "kv_heads: kv_heads / 2", 2),               # kv_heads = heads
    ("", "heads: 8, kv_heads: kv_heads / 2", 4),     # ... the layer's own heads
    ("", "head_dim: head_dim * 2", 16),              # head_dim = d_model / heads
    ("", "d_ff: d_ff / 2", 64),                      # d_ff = 4 * d_model
    ("", "heads: kv_heads * 2", 8),                  # the kv_heads it would have without this field
])
def test_a_name_reads_the_schema_default(block, layer, value):
    # these used to fail with "'dropout' is not defined — did you mean 'dropout'?"
    written = block or f"layer 0 {{ {layer} }}"
    m = resolved(f"{MODEL}, {written} }}").blocks["m"]
    key = (block or layer.split(", ")[-1]).split(":")[0]
    got = m.layers[0].fields[key] if layer else m.fields[key]
    assert got == pytest.approx(value) and type(got) is type(value)


def test_a_name_reads_the_default_of_its_nested_block_and_stack():
    spec = resolved("model m { vocab: 300, context: 16, d_model: 32, heads: 4, arch: encoder_decoder,\n"
                    "  encoder { layers: 1, layer 0 { attention: attention, d_ff: d_ff * 2 } }\n"
                    "  decoder { layers: 1, layer 0 { attention: attention } } }\n"
                    "rl r { rollouts { per_step: per_step / 2 } }")
    m = spec.blocks["m"]
    assert m.nested["encoder"].layers[0].fields == {"attention": Symbol("bidirectional"), "d_ff": 256}
    assert m.nested["decoder"].layers[0].fields == {"attention": Symbol("causal")}
    assert spec.blocks["r"].nested["rollouts"].fields == {"per_step": 32}


def test_another_blocks_defaults_are_those_lowering_applies():
    # `a.d_ff` used to be "the model 'a' has no attribute 'd_ff'"
    report = diagnose("lmspec 1\nmodel a { vocab: 300, context: 16, layers: 1, d_model: 96, heads: 3, arch: encoder }\n"
                      "model b { vocab: 300, context: 16, layers: 1, d_model: 96, heads: 3, kv_heads: a.kv_heads,\n"
                      "  head_dim: a.head_dim, d_ff: a.d_ff, attention: a.attention, final_norm: a.final_norm,\n"
                      "  head: a.head, norm: a.norm, position: a.position }")
    assert report.ok, [d.message for d in report.diagnostics]
    a, b = report.models["a"], report.models["b"]
    (layer_a,), (layer_b,) = a.encoder.layers, b.decoder.layers
    assert (layer_b.kv_heads, layer_b.head_dim, layer_b.d_ff) == (layer_a.kv_heads, layer_a.head_dim, layer_a.d_ff) \
        == (3, 32, 384)
    assert (layer_b.attention, layer_b.norm, layer_b.position) == (layer_a.attention, layer_a.norm, layer_a.position)
    assert (b.heads, b.decoder.final_norm) == (a.heads, a.encoder.final_norm)


@pytest.mark.parametrize("text, code, message, help", [
    ("model m { vocab: 300, heads: kv_heads }", "LMS026", "'heads' refers to itself: 'kv_heads' defaults to heads",
     "give 'kv_heads' a value of its own"),
    ("model m { vocab: 300, heads: heads }", "LMS026", "'heads' refers to itself",
     "write 'heads' as a number or an expression of other fields"),
    ("model m { heads: 4, layer 0 { d_ff: d_ff / 2 } }", "LMS023",
     "'d_ff' has no value: its default is 4 * d_model, and model 'm' does not set 'd_model'",
     "set 'd_model' in model 'm', or give 'd_ff' a value"),
    ("model m { d_model: 64, layer 0 { heads: heads / 2 } }", "LMS023",
     "'heads' has no value: model 'm' does not set it, and it has no default", "set `heads: ...` in model 'm'"),
    ("model a { heads: 4 }\nmodel b { d_ff: a.d_ff }", "LMS023",
     "'d_ff' has no value: its default is 4 * d_model, and model 'a' does not set 'd_model'",
     "set 'd_model' in model 'a', or give 'd_ff' a value"),
    ("train t { batch: seq_len }", "LMS023",
     "'seq_len' cannot be read here: its default, the model's context, is not known when the spec is resolved",
     "write the model's context itself, such as `gpt.context`"),
])
def test_a_default_that_cannot_be_read_says_why(text, code, message, help):
    # never "did you mean" the name itself
    d = only(text, code)
    name = message.split("'")[1] if code == "LMS023" else text.split("heads: ")[1].split(" ")[0]
    assert (d.message, d.help) == (message, help)
    assert where(d) == at(text, name, nth=text.count(name))  # at the name read, the last one written


def test_a_choice_read_from_a_default_is_a_name():
    report = diagnose("lmspec 1\n" + MODEL + ", layer 0 { norm: norm, activation: activation } }")
    assert report.ok, [d.message for d in report.diagnostics]
    assert report.spec.resolved.blocks["m"].layers[0].fields == {"norm": Symbol("layernorm"),
                                                                 "activation": Symbol("gelu")}


def test_names_that_are_not_fields_are_symbols_and_blocks_are_references():
    f = fields("tokenizer tok { kind: bytes }\ntrain t { model: gpt, tokenizer: tok, objective: mlm + 0.5 * nsp,"
               " optimizer: adamw(lr: 1e-3) }", "t")
    assert f["model"] == Symbol("gpt")
    assert f["tokenizer"] == Ref("tokenizer", "tok")
    assert f["objective"] == Combination(((1.0, Symbol("mlm")), (0.5, Symbol("nsp"))))
    assert f["optimizer"] == CallValue("adamw", (), (("lr", 0.001),))


def test_objectives_combine_as_weighted_sums():
    objective = lambda expr: fields(f"train t {{ objective: {expr} }}", "t")["objective"]
    assert objective("mlm + 0.5 * nsp") == Combination(((1.0, Symbol("mlm")), (0.5, Symbol("nsp"))))
    assert objective("2 * (mlm - nsp)") == Combination(((2.0, Symbol("mlm")), (-2.0, Symbol("nsp"))))
    assert objective("mlm + nsp / 4") == Combination(((1.0, Symbol("mlm")), (0.25, Symbol("nsp"))))
    assert objective("mlm(mask: 20%) * 3").terms[0][0] == 3.0


def test_a_reference_cycle_names_its_fields():
    d = only("model m { a: b + 1, b: c * 2, c: a }", "LMS026")
    assert (where(d), d.message) == ("1:14-19", "fields refer to each other in a cycle: a -> b -> c -> a")
    assert d.help == "give one of them a value that does not depend on the others"


def test_a_reference_cycle_across_blocks_names_the_blocks():
    d = only("model x { vocab: y.vocab }\nmodel y { vocab: x.vocab }", "LMS026")
    assert d.message == "fields refer to each other in a cycle: x.vocab -> y.vocab -> x.vocab"


def test_a_long_chain_of_references_is_one_error_not_a_crash():
    chain = "\n".join(f"a{i}: a{i + 1}" for i in range(3000))
    report = diagnose(f"lmspec 1\nmodel m {{\n{chain}\na3000: 1\n}}")
    (d,) = [d for d in report.diagnostics if d.code == "LMS011"]
    assert (d.span.line, d.message) == (3, "'a0' depends on a chain of references too long to evaluate")


# ----------------------------------------------------------------------------- undefined names


def test_an_undefined_block_suggests_a_name():
    d = only("lmspec 1\ntokenizer tok { kind: bytes }\nmodel m { vocab: tokk.vocab_size }", "LMS023")
    assert (where(d), d.message, d.help) == ("3:18-22", "'tokk' is not defined", "did you mean 'tok'?")


def test_an_undefined_name_in_arithmetic_is_reported_at_the_name():
    d = only("model m { d_model: 64, heads: 4, head_dim: d_modle / heads }", "LMS023")
    assert (where(d), d.message, d.help) == ("1:44-51", "'d_modle' is not defined", "did you mean 'd_model'?")
    d = only("model m { d_model: 64, norm_eps: -dmodel }", "LMS023")
    assert (where(d), d.help) == ("1:35-41", "did you mean 'd_model'?")


def test_an_undefined_attribute():
    d = only("lmspec 1\ntokenizer tok { kind: bytes }\nmodel m { vocab: tok.vocab_sise }", "LMS029")
    assert (where(d), d.message, d.help) == (
        "3:22-32", "the tokenizer 'tok' has no attribute 'vocab_sise'", "did you mean 'vocab_size'?")
    d = only("model m { d_model: 64, x: d_model.size }", "LMS029")
    assert (where(d), d.message) == ("1:35-39", "the integer 64 has no attribute 'size'")


def test_from_an_undefined_stage():
    d = only("model m { }\ntrain t { model: m from pretrian }\ntrain pretrain { }", "LMS023")
    assert (where(d), d.message, d.help) == ("2:25-33", "'pretrian' is not defined", "did you mean 'pretrain'?")


# ----------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("expr, value", [
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("8 / 2", 4),             # exact division stays an int
    ("7 / 2", 3.5),
    ("10 - 2 - 3", 5),
    ("-2 * -3", 6),
    ("2.0 * 3", 6.0),
    ("10k + 2M", 2_010_000),
    ("1.5B / 1k", 1_500_000),
    ("15% * 2", 0.3),
    ('"ab" + "cd"', "abcd"),
])
def test_arithmetic(expr, value):
    got = fields(f"model m {{ x: {expr} }}", "m")["x"]
    assert got == pytest.approx(value) and type(got) is type(value)


@pytest.mark.parametrize("written, value", [
    ("steps: 2k", ("train", "steps", 2000)),
    ("validation: 2%", ("data", "validation", 0.02)),
    ("vocab: 50_257", ("model", "vocab", 50257)),
    ("theta: 1M", ("model", "theta", 1_000_000)),
])
def test_unit_suffixes(written, value):
    kind, key, number = value
    assert fields(f"{kind} b {{ {written} }}", "b")[key] == number


def test_division_by_zero_points_at_the_divisor():
    d = only("model m { heads: 0, head_dim: 64 / heads }", "LMS028")
    assert (where(d), d.message) == ("1:36-41", "division by zero")


@pytest.mark.parametrize("expr, message, span", [
    ('"a" + 1', 'cannot compute the string "a" + the integer 1', "1:14-21"),
    ("[1] * 2", "cannot compute a list * the integer 2", "1:14-21"),
    ("true + 1", "cannot compute the boolean true + the integer 1", "1:14-22"),
    ('-"x"', 'cannot negate the string "x"', "1:14-18"),
])
def test_type_errors_in_arithmetic(expr, message, span):
    d = only(f"model m {{ x: {expr} }}", "LMS027")
    assert (d.message, where(d)) == (message, span)
    if "compute" in message:
        assert d.help == "arithmetic works on numbers; objectives combine as `mlm + 0.5 * nsp`"


def test_numbers_too_large():
    d = only("model m { vocab: 1e999 }", "LMS032")
    assert (where(d), d.message, d.help) == ("1:18-23", "the number '1e999' is too large",
                                             "numbers in a spec are at most 1.8e+308")
    d = only("model m { vocab: 1e308 * 10 }", "LMS032")
    assert (where(d), d.message) == ("1:18-28", "the result of this arithmetic is too large")
    assert only("model m { vocab: " + "9" * 5000 + " }", "LMS032").message.startswith("the number '99999")
    assert only("model m { vocab: " + "9" * 400 + " / 7 }", "LMS032")  # int / int beyond a float


# ----------------------------------------------------------------------------- duplicates


@pytest.mark.parametrize("body, second, first", [
    ("layers: 2, layers: 3", "1:22-28", "spec.lmspec:1:11"),
    ("encoder { layers: 2, layers: 3 }", "1:32-38", "spec.lmspec:1:21"),
    ("layer 0 { heads: 1, heads: 2 }", "1:31-36", "spec.lmspec:1:21"),
    ("layers: 2, layers { }", "1:22-28", "spec.lmspec:1:11"),
])
def test_a_key_given_twice(body, second, first):
    d = only(f"model m {{ {body} }}", "LMS030")
    assert (where(d), d.help) == (second, "remove one of them")
    assert d.message in ("'layers' is given twice", "'heads' is given twice")
    assert [(str(l.span), l.message) for l in d.labels] == [(first, "first given here")]


def test_an_argument_given_twice():
    d = only("model m { position: rope(theta: 1, theta: 2) }", "LMS030")
    assert (where(d), d.message) == ("1:36-41", "argument 'theta' is given twice")


@pytest.mark.parametrize("text, second, first", [
    ("model m { encoder { layers: 2 }\n  encoder { layers: 4 } }", "2:3-10", "spec.lmspec:1:11"),
    ("rl r { rollouts { per_step: 2 } rollouts { per_step: 4 } }", "1:33-41", "spec.lmspec:1:8"),
    ("model m { decoder { layers: 1, encoder { }, encoder { } } }", "1:45-52", "spec.lmspec:1:32"),
])
def test_a_nested_block_given_twice(text, second, first):
    # the second used to be merged into the first, its keys silently winning
    d = only(text, "LMS030")
    name = "rollouts" if "rollouts" in text else "encoder"
    assert (where(d), d.message, d.help) == (second, f"'{name}' is given twice", "remove one of them")
    assert [(str(l.span), l.message) for l in d.labels] == [(first, "first given here")]


def test_extends_and_set_still_merge_nested_blocks():
    # only a nested block written twice in one block's own text is an error
    text = ("lmspec 1\nmodel base { encoder { layers: 2, heads: 2 } }\n"
            "model m extends base { encoder { d_ff: 32 } }\n")
    spec = resolve("r.lmspec", text=text, overrides=("m.encoder.layers=4", "m.decoder.layers=1"))
    assert [d.message for d in spec.diagnostics if d.is_error] == []
    assert spec.blocks["m"].nested["encoder"].fields == {"layers": 4, "heads": 2, "d_ff": 32}
    assert spec.blocks["m"].nested["decoder"].fields == {"layers": 1}


def test_one_failed_value_gives_one_error():
    # a call or list holding an unresolvable value is itself unresolved: no second error
    assert errors("model m { vocab: 9, context: 8, layers: 1, d_model: 8, heads: 1,"
                  " position: rope(theta: nope.x) }") == ["1:88 LMS023 'nope' is not defined"]
    assert [e.split(" ", 2)[1] for e in errors(
        "model m { }\ndata d { }\ntrain t { model: m, data: d, objective: clm,"
        " optimizer: adamw(betas: [0.9, nope.y]) }")] == ["LMS045", "LMS045", "LMS045", "LMS045", "LMS045",
                                                         "LMS023"]


# ----------------------------------------------------------------------------- issue 9: names that are choices too
#
# Resolution reads a name that is a block as the block. A block named like a choice used to take
# the choice away: `tokenizer bytes { kind: bytes }` was "'kind' must be one of bytes, bpe or
# hf, found the tokenizer block 'bytes'", with the help `kind: bytes`, the very mistake.

SHADOWS = """lmspec 1
tokenizer bytes { kind: bytes, specials: [pad, bos, eos, mask, sep, cls] }
data text { source: builtin("tiny-stories") }
model decoder { arch: decoder, vocab: bytes.vocab_size, context: 16, layers: 1, d_model: 16, heads: 2 }
model mlm { arch: encoder, vocab: bytes.vocab_size, context: 16, layers: 1, d_model: 16, heads: 2, segments: 2,
            pooler: true, head: [mlm, nsp] }
train clm { model: decoder, objective: clm, data: text }
train nsp { model: mlm, objective: mlm + 0.5 * nsp, data: text }
"""


def test_a_block_named_like_a_choice_leaves_the_choice_to_keys_that_take_no_such_block():
    report = diagnose(SHADOWS)
    assert [(d.code, d.message) for d in report.diagnostics] == []
    blocks = report.spec.blocks
    assert blocks["bytes"].kind.kind == "bytes" and report.models["decoder"].vocab == 262  # its vocab_size is known
    assert (blocks["decoder"].arch, report.models["decoder"].decoder.layers[0].attention.kind) == ("decoder", "causal")
    assert [t.objective.kind for t in blocks["clm"].objective] == ["clm"]
    # a sum of objectives stays a sum beside blocks named mlm and nsp
    assert [(t.weight, t.objective.kind) for t in blocks["nsp"].objective] == [(1.0, "mlm"), (0.5, "nsp")]


def test_a_block_in_arithmetic_where_a_number_belongs_is_still_a_type_error():
    # blocks join sums (`mlm + nsp` beside a block named mlm), so the schema says what a
    # number key makes of one
    text = ("lmspec 1\ntokenizer tok { kind: bytes }\n"
            "model m { vocab: 2 * tok, context: 8, layers: 1, d_model: 8, heads: 2 }")
    d = only(text, "LMS027")
    assert (where(d), d.message, d.help) == (at(text, "2 * tok"), "cannot compute with the tokenizer block 'tok'",
                                             "arithmetic works on numbers: write `tok.KEY` to read one of its values")


def test_a_block_named_like_a_choice_of_a_key_that_also_takes_that_block_is_ambiguous():
    text = SHADOWS + "train none { model: decoder, objective: clm, data: text }\n" \
                     "train t { model: decoder, objective: clm, data: text, init: none }\n"
    d = only(text, "LMS050")
    assert (where(d), d.message, d.help) == (
        at(text, "none", 2), "'init: none' is ambiguous: the train block 'none' shadows the choice none",
        "rename the train block 'none' (and the references to it)")
    assert [(where_label(l), l.message) for l in d.labels] == [(at(text, "none"), "the train 'none' is defined here")]


def test_a_choice_that_needs_arguments_never_shadows_a_block():
    # hf alone is no value of `init` (hf("dir") is): `init: hf` can only be the stage
    report = diagnose(SHADOWS + "train hf { model: decoder, objective: clm, data: text }\n"
                                "train t { model: decoder, objective: clm, data: text, init: hf }\n")
    assert [(d.code, d.message) for d in report.diagnostics] == []
    assert report.spec.blocks["t"].init == "hf"


def where_label(label) -> str:
    return f"{label.span.line}:{label.span.col}-{label.span.end_col}"


# ----------------------------------------------------------------------------- issue 9: a base's problems once
#
# A block that others extend is evaluated and checked once per heir, and a mistake in its text
# was printed once for it and once for each heir (`unknown key 'bais' in model 'k1'`, ... 'k2').

_HEIRS = "model k1 extends base {}\nmodel k2 extends base { layers: 3 }\n"
_STAGES = ("train t1 { model: k1, objective: clm, data: text, steps: 1, batch: 1 }\n"
           "train t2 { model: k2, objective: clm, data: text, steps: 1, batch: 1 }\n")
_PRELUDE = 'lmspec 1\ntokenizer tok { kind: bytes }\ndata text { source: builtin("tiny-stories") }\n'


@pytest.mark.parametrize("base, stages, shown", [
    # resolution (a default read in each heir) and the schema (a key of every heir)
    ("vocab: 262, context: 64, layers: 2, d_model: 64, heads: 4, mask_id: pad_id, bais: true", "", [
        "error[LMS023]: 'pad_id' has no value: model 'base' does not set it, and it has no default",
        "error[LMS041]: unknown key 'bais' in model 'base'"]),
    # model rules, and a stage rule whose message names the heir each stage trains
    ("vocab: 262, context: 64, layers: 2, d_model: 64, heads: 5", _STAGES, [
        "error[LMS060]: heads (5) must divide d_model (64)"]),
    ("vocab: 200, context: 64, layers: 2, d_model: 64, heads: 4", _STAGES, [
        "error[LMS073]: model 'k1' has vocab 200, but tokenizer 'tok' produces 262 ids"]),
    # warnings only: the meta pass runs too
    ("vocab: 1030, context: 64, layers: 2, d_model: 64, heads: 4", _STAGES, [
        "warning[LMS081]: vocab 1030 is not a multiple of 64; 1088 is faster on GPUs"]),
])
@pytest.mark.parametrize("meta", [True, False])
def test_a_problem_in_a_base_block_is_printed_once(base, stages, shown, meta, write, capsys):
    from lmspec.cli import main

    path = write("s.lmspec", f"{_PRELUDE}model base {{ {base} }}\n{_HEIRS}{stages}")
    main(["check", str(path)] + ([] if meta else ["--no-meta"]))
    err = capsys.readouterr().err
    headers = [line.split(": ", 1)[1] for line in err.splitlines() if line.startswith(f"{path}:4:")]
    assert headers == shown
    notes = [line for line in err.splitlines() if "inherit" in line]
    if "'base'" in shown[0]:  # the base's own words: the heirs are named in a note
        assert notes == ["  = note: 'k1' and 'k2' inherit this from 'base'"] * len(shown)
    elif "'k1'" in shown[0]:  # the heir the first stage trains, and both stages' labels
        assert notes == ["  = note: 'k2' inherits this from 'base'"]
        assert err.count("pairs them here") == 2
